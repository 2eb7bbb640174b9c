#!/usr/bin/env python
"""Writes synthetic shape videos (mp4) with exact ground truth (JSON sidecars) for the sessions build pipeline.

Example:
    python dataset_scripts/make_synthetic_videos.py --output-dir synthetic_videos --num-videos 100 --seed 0

Each ``synth_<index>.mp4`` comes with ``synth_<index>.json`` (instructions, ops, camera motion, exact RoE masks,
key-state timestamps; read it with ``diffusers_vincie.data.shapes.video.read_ground_truth``). Deterministic by
``--seed``; rerunning skips the videos already written.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from diffusers_vincie.data.shapes.video import make_synthetic_videos
from diffusers_vincie.data.shapes.world import ShapesWorld
from diffusers_vincie.utils.cli import UsageError, check_number, run_cli
from diffusers_vincie.utils.io import write_json_atomic


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, required=True, help="folder for the mp4 files and sidecars")
    parser.add_argument("--num-videos", type=int, required=True, help="number of videos to write")
    parser.add_argument("--seed", type=int, default=0, help="base seed (same seed, same videos)")
    parser.add_argument("--num-turns", type=int, default=5, help="edits per video (key states = turns + 1)")
    parser.add_argument("--world-resolution", type=int, default=32, help="resolution of the world's geometry")
    parser.add_argument("--resolution", type=int, default=128, help="video side in pixels (even)")
    parser.add_argument("--fps", type=int, default=8)
    parser.add_argument("--seconds-per-turn", type=float, default=1.0, help="time each key state occupies")
    parser.add_argument("--transition-fraction", type=float, default=0.5, help="part of a turn spent animating")
    parser.add_argument("--pan-weight", type=float, default=0.5, help="relative frequency of camera pans (0: none)")
    parser.add_argument(
        "--move-weight", type=float, default=1.0, help="relative frequency of one-cell moves (add, remove: 1)"
    )
    parser.add_argument("--max-objects", type=int, default=4)
    parser.add_argument("--crf", type=int, default=12, help="H.264 quality, 0 = best")
    parser.add_argument(
        "--composition-fraction",
        type=float,
        default=0.0,
        help="share of videos that introduce objects one by one, then show a scene with them",
    )
    parser.add_argument("--story-fraction", type=float, default=0.0, help="share of videos that move the camera only")
    parser.add_argument(
        "--shard",
        default="0/1",
        help="INDEX/COUNT: write only the videos whose index is INDEX modulo COUNT (COUNT processes share one set)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser.parse_args(argv)


# What the script writes into --output-dir (videos, sidecars, the world, temporaries of a killed run).
OWN = re.compile(r"synth_\d+\.(mp4|json)|world\.json|\..+\.\d+-[0-9a-f]{8}\.tmp.*")
_BOUNDS = {
    "num_videos": (1, None),
    "num_turns": (1, None),
    "world_resolution": (8, None),
    "resolution": (16, None),
    "fps": (1, None),
    "seconds_per_turn": (0, None),
    "transition_fraction": (0, 1),
    "pan_weight": (0, None),
    "move_weight": (0, None),
    "max_objects": (1, None),
    "crf": (0, 51),
    "composition_fraction": (0, 1),
    "story_fraction": (0, 1),
}


def parse_shard(text: str) -> tuple[int, int]:
    """``"INDEX/COUNT"`` -> ``(index, count)``; anything else is a :class:`UsageError` naming ``--shard``."""
    match = re.fullmatch(r"(\d+)/(\d+)", text)
    if not match or not int(match[1]) < int(match[2]):
        raise UsageError(f"--shard must be INDEX/COUNT with 0 <= INDEX < COUNT (e.g. 0/4), got {text!r}.")
    return int(match[1]), int(match[2])


def build_world(args: argparse.Namespace) -> ShapesWorld:
    """The checked flags' world; every problem is a :class:`UsageError` naming the flag, before any video."""
    for name, (minimum, maximum) in _BOUNDS.items():
        check_number(f"--{name.replace('_', '-')}", getattr(args, name), minimum, maximum)
    if args.seconds_per_turn <= 0:
        raise UsageError(f"--seconds-per-turn must be > 0, got {args.seconds_per_turn}.")
    if args.composition_fraction + args.story_fraction > 1:
        raise UsageError("--composition-fraction and --story-fraction must add up to at most 1.")
    if args.composition_fraction > 0 and args.max_objects < 2:
        raise UsageError(
            f"--composition-fraction needs --max-objects >= 2 (objects to compose), got {args.max_objects}."
        )
    if args.resolution % 2:
        raise UsageError(f"--resolution must be even (H.264 4:2:0), got {args.resolution}.")
    if args.output_dir.exists() and not args.output_dir.is_dir():
        raise UsageError(f"--output-dir {args.output_dir} is a file; give a folder.")
    if args.output_dir.is_dir() and (
        foreign := sorted(p.name for p in args.output_dir.iterdir() if not OWN.fullmatch(p.name))
    ):
        raise UsageError(  # world.json and same-named videos would be replaced, and the build would read the rest
            f"--output-dir {args.output_dir} holds files this script does not write ({', '.join(foreign[:5])}); "
            "give a new folder or one it wrote (to add videos or resume)."
        )
    try:
        return ShapesWorld(
            resolution=args.world_resolution,
            max_objects=args.max_objects,
            op_weights={"pan": args.pan_weight, "move": args.move_weight},
        )
    except ValueError as error:  # the world's own checks name its argument
        raise UsageError(f"bad world flags: {error}") from error


def main(argv: list[str] | None = None) -> list[Path]:
    args = parse_args(argv)
    world = run_cli(lambda: build_world(args), "make_synthetic_videos.py")
    shard = run_cli(lambda: parse_shard(args.shard), "make_synthetic_videos.py")
    paths = make_synthetic_videos(
        args.output_dir,
        args.num_videos,
        seed=args.seed,
        world=world,
        num_turns=args.num_turns,
        fps=args.fps,
        seconds_per_turn=args.seconds_per_turn,
        resolution=args.resolution,
        transition_fraction=args.transition_fraction,
        crf=args.crf,
        progress=not args.no_progress,
        composition_fraction=args.composition_fraction,
        story_fraction=args.story_fraction,
        shard=shard,
    )
    write_json_atomic(args.output_dir / "world.json", world.config)
    print(f"{len(paths)} videos in {args.output_dir}")
    return paths


if __name__ == "__main__":
    main()
