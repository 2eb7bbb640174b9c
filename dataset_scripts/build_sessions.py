"""Turn a folder of videos into a VINCIE sessions dataset (parquet shards + dataset card).

Synthetic videos with their ground truth (no model needed)::

    python dataset_scripts/build_sessions.py videos/ --output sessions/ \
        --annotator ground_truth --strategy equal_interval --interval 1.0

Synthetic videos annotated from their pixels alone (the VLM's stand-in; the sidecars are never read)::

    python dataset_scripts/build_sessions.py videos/ --output sessions/ \
        --annotator pixels --world-config videos/world.json --strategy equal_interval --interval 1.0

Real videos with a vision-language model and GroundingDINO + SAM2 regions, on every GPU (on CPUs:
``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N ...``)::

    accelerate launch dataset_scripts/build_sessions.py videos/ list.txt --output sessions/ \
        --annotator vlm --vlm-model Qwen/Qwen2.5-VL-7B-Instruct

Rerunning the same command resumes (finished videos are skipped). Then::

    from datasets import load_dataset
    sessions = load_dataset("sessions", split="train")   # or streaming=True
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from diffusers_vincie.data.shapes.world import ShapesWorld
from diffusers_vincie.data.video.annotate import (
    GroundTruthAnnotator,
    ShapesPixelAnnotator,
    TransitionAnnotator,
    VLMAnnotator,
)
from diffusers_vincie.data.video.build import (
    FRAME_FORMATS,
    REJECTS_FILE,
    VIDEO_EXTENSIONS,
    SamplingConfig,
    build_sessions,
    check_output_dir,
    distributed_state,
    list_videos,
)
from diffusers_vincie.data.video.frames import SAMPLING_STRATEGIES
from diffusers_vincie.data.video.regions import DEFAULT_DETECTOR, DEFAULT_SEGMENTER, RegionMasker
from diffusers_vincie.utils.cli import UsageError, run_cli
from diffusers_vincie.utils.io import OutputLockedError


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="video files, folders (recursive) and .txt lists of videos")
    parser.add_argument("--output", required=True, help="dataset folder to create or resume")
    parser.add_argument(
        "--annotator",
        choices=("ground_truth", "pixels", "vlm"),
        default="vlm",
        help="ground_truth: synthetic-video sidecars; pixels: synthetic videos read from their frames alone; "
        "vlm: a transformers chat model",
    )
    parser.add_argument(
        "--world-config",
        default=None,
        help="--annotator pixels: the shapes world's JSON config (world.json of make_synthetic_videos.py; "
        "default: the default world)",
    )
    parser.add_argument("--vlm-model", default=None, help="image-text-to-text model for --annotator vlm")
    parser.add_argument("--max-attempts", type=int, default=3, help="VLM tries per transition before rejecting it")
    parser.add_argument("--max-new-tokens", type=int, default=512, help="VLM generation budget per try")
    parser.add_argument("--vlm-batch-size", type=int, default=8, help="transitions per VLM generate call")
    parser.add_argument("--detector", default=DEFAULT_DETECTOR, help="GroundingDINO checkpoint for RoE masks")
    parser.add_argument("--segmenter", default=DEFAULT_SEGMENTER, help="SAM2 checkpoint for RoE masks")
    parser.add_argument(
        "--no-regions", action="store_true", help="store null masks instead of running GroundingDINO+SAM2"
    )
    parser.add_argument("--strategy", choices=SAMPLING_STRATEGIES, default="hybrid", help="frame sampling strategy")
    parser.add_argument("--interval", type=float, default=3.0, help="seconds between frames (equal_interval, hybrid)")
    parser.add_argument("--min-frames", type=int, default=2, help="fewest frames per session")
    parser.add_argument("--max-frames", type=int, default=6, help="most frames per session")
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-video frame-count draws")
    parser.add_argument("--scene-cuts", action="store_true", help="split videos at hard cuts (one extra decode pass)")
    parser.add_argument("--scene-threshold", type=float, default=0.3, help="thumbnail difference counted as a cut")
    parser.add_argument("--max-side", type=int, default=None, help="downscale frames larger than this (pixels)")
    parser.add_argument("--shard-size", type=int, default=64, help="sessions per parquet shard")
    parser.add_argument(
        "--frame-format",
        choices=("png", "jpeg"),
        default="png",
        help="frames as lossless PNG or JPEG q95 (faster to write); masks are always PNG",
    )
    parser.add_argument("--encode-workers", type=int, default=2, help="threads encoding images in the background")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every rejected transition")
    return parser.parse_args(argv)


def sampling_config(args: argparse.Namespace) -> SamplingConfig:
    """The checked arguments' sampling settings; raises :class:`UsageError` naming the flag, before any video is
    opened or any model loaded."""
    if args.annotator == "vlm" and not args.vlm_model:
        raise UsageError(
            "--annotator vlm needs --vlm-model (e.g. Qwen/Qwen2.5-VL-7B-Instruct); "
            "use --annotator ground_truth for synthetic videos"
        )
    if args.world_config is not None and args.annotator != "pixels":
        raise UsageError("--world-config is read only by --annotator pixels.")
    for flag in ("max_attempts", "max_new_tokens", "vlm_batch_size", "shard_size", "encode_workers"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}.")
    if args.frame_format not in FRAME_FORMATS:
        raise UsageError(f"--frame-format must be one of {FRAME_FORMATS}, got {args.frame_format!r}.")
    try:
        config = SamplingConfig(
            strategy=args.strategy,
            interval=args.interval,
            min_frames=args.min_frames,
            max_frames=args.max_frames,
            seed=args.seed,
            scene_cuts=args.scene_cuts,
            scene_threshold=args.scene_threshold,
            max_side=args.max_side,
        )
    except ValueError as error:  # its messages name the setting; the flag is the same word with dashes
        raise UsageError(
            f"bad sampling flags (--interval, --min-frames, --max-frames, --scene-threshold, --max-side): {error}"
        ) from error
    try:
        videos = list_videos(args.inputs)
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(str(error)) from error
    if not videos:
        raise UsageError(f"inputs: no video files ({', '.join(VIDEO_EXTENSIONS)}) in {' '.join(args.inputs)}")
    try:
        check_output_dir(Path(args.output))
    except ValueError as error:
        raise UsageError(str(error).replace("output_dir:", "--output", 1)) from error
    return config


def shapes_world(path: str | None) -> ShapesWorld:
    """The world of ``--world-config`` (default world without it); raises :class:`UsageError` when unusable."""
    if path is None:
        return ShapesWorld()
    try:
        config = json.loads(Path(path).read_text())
        return ShapesWorld(**config)
    except (OSError, ValueError, TypeError) as error:
        raise UsageError(f"--world-config {path}: not a shapes world config ({error}).") from error


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    config = run_cli(lambda: sampling_config(args), "build_sessions.py")  # one line and exit 2 when bad
    world = (
        run_cli(lambda: shapes_world(args.world_config), "build_sessions.py") if args.annotator == "pixels" else None
    )
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    state = distributed_state()
    device = str(state.device)
    annotator: TransitionAnnotator
    region_masker = None
    if args.annotator == "ground_truth":
        annotator = GroundTruthAnnotator()  # exact masks: no region models needed
    elif args.annotator == "pixels":
        annotator = ShapesPixelAnnotator(world)  # masks from the read scenes: no region models needed
    else:
        annotator = VLMAnnotator.from_pretrained(
            args.vlm_model,
            device=device,
            max_attempts=args.max_attempts,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.vlm_batch_size,
        )
        if not args.no_regions:
            region_masker = RegionMasker.from_pretrained(args.detector, args.segmenter, device=device)
    summary = run_cli(  # a second build into the same folder: one line, exit 2
        lambda: build_sessions(
            args.inputs,
            args.output,
            annotator,
            config=config,
            region_masker=region_masker,
            shard_size=args.shard_size,
            encode_workers=args.encode_workers,
            frame_format=args.frame_format,
        ),
        "build_sessions.py",
        errors=(OutputLockedError,),
    )
    if summary.sessions == 0:
        if state.is_main_process:
            print(f"build_sessions.py: {no_sessions_message(args)}", file=sys.stderr)
        return 1
    if state.is_main_process:
        print(
            f"{summary.sessions} sessions from {summary.videos} videos in {args.output} "
            f"({summary.processed} processed now, {summary.skipped} already done, "
            f"{summary.rejected_videos} rejected: see rejects.jsonl) in {summary.seconds:.1f}s"
        )
    return 0


def no_sessions_message(args: argparse.Namespace) -> str:
    """One line saying why a build produced no session: the most frequent rejection reason, and the fix for
    synthetic videos (ground truth needs frames on the key states)."""
    rejects = Path(args.output) / REJECTS_FILE
    reasons = Counter(json.loads(line)["reason"] for line in rejects.read_text().splitlines() if line.strip())
    reason, count = reasons.most_common(1)[0] if reasons else ("no video had usable frames", 0)
    hint = (
        " For synthetic videos sample the key states: --strategy equal_interval --interval <their "
        "--seconds-per-turn, 1.0 by default>."
        if args.annotator == "ground_truth"
        else ""
    )
    return (
        f"no session was built in {args.output} (no dataset card written); {count} video(s) rejected for: "
        f"{reason} (all reasons: {rejects}).{hint}"
    )


if __name__ == "__main__":
    sys.exit(main())
