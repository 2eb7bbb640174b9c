#!/usr/bin/env python
"""Accuracy of the pixel annotator (``build_sessions.py --annotator pixels``) against the renderer's log.

Held-out videos are rendered with ``make_synthetic_videos`` (the video maker's defaults: 128 px H.264, camera
pans, 5 edits per video; ``--composition_fraction`` / ``--story_fraction`` add composition shots and camera-only
videos) from base seed ``--seed``; the frames are sampled exactly as the session build samples
them (``equal_interval`` at the world's ``seconds_per_turn``). Every transition is annotated twice: from its
pixels (:class:`~diffusers_vincie.data.video.annotate.ShapesPixelAnnotator`) and from the sidecar
(:class:`~diffusers_vincie.data.video.annotate.GroundTruthAnnotator`, the log, used here only to score). Per op
of the log: instruction exact match, IoU of the current-frame and next-frame regions of editing (two empty
regions count as IoU 1) and the share of transitions the pixel annotator rejected.

Video ``i`` is the session of seed ``video_session_seed(seed, i)``, a 63-bit hash, so held-out sessions never
coincide with the seed ranges of training (``0 .. 7,000,000``), ShapesBench (``10,000,000 ..``), the instruction
sensitivity probe (``20,000,000 ..``) or the move probe (``31,000,000 ..``); the script checks it. Usage::

    OMP_NUM_THREADS=1 python benchmarks/annotator_accuracy.py --num_videos 200 --output_dir runs/annotator_accuracy

Writes ``results.json`` and ``results.md`` (the table) to ``--output_dir``; the videos stay in
``<output_dir>/videos`` (a rerun reuses them).
"""

from __future__ import annotations

import argparse
import json
import time
from itertools import pairwise
from pathlib import Path
from typing import Optional

import numpy as np

from diffusers_vincie.data.shapes.shots import SHOT_OPS
from diffusers_vincie.data.shapes.video import make_synthetic_videos, video_session_seed
from diffusers_vincie.data.shapes.world import OP_KINDS, ShapesWorld
from diffusers_vincie.data.video.annotate import (
    AnnotationRejected,
    GroundTruthAnnotator,
    ShapesPixelAnnotator,
    Transition,
)
from diffusers_vincie.data.video.build import SamplingConfig, _clip_frame_times, list_videos
from diffusers_vincie.data.video.frames import decode_frames_at, probe_video
from diffusers_vincie.utils.io import write_text_atomic

HELD_OUT_SEED = 27_000_000
# Session seeds used elsewhere (training recipes, ShapesBench, sensitivity and move probes), all below this.
RESERVED_SEEDS_BELOW = 40_000_000


def iou(a: Optional[np.ndarray], b: Optional[np.ndarray]) -> float:
    """IoU of two bool masks; two empty masks agree perfectly."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def score_video(path: Path, video_id: str, config: SamplingConfig, pixels, truth) -> list[dict]:
    """One row per transition of the video whose frames both lie on key states (the log annotates those)."""
    rows = []
    for clip in _clip_frame_times(probe_video(path).duration, path, video_id, config):
        frames = decode_frames_at(path, clip, max_side=config.max_side)
        transitions = [Transition(str(path), video_id, a, b) for a, b in pairwise(frames)]
        for expected, got in zip(truth.annotate_many(transitions), pixels.annotate_many(transitions)):
            if isinstance(expected, AnnotationRejected):
                continue  # off the key states: the log has no single edit to compare with
            row = {"video": video_id, "op": expected.details["op"], "expected": expected.instruction}
            if isinstance(got, AnnotationRejected):
                row.update(rejected=True, reason=got.reason, exact=False, iou_current=0.0, iou_next=0.0)
            else:
                row.update(
                    rejected=False,
                    instruction=got.instruction,
                    exact=got.instruction == expected.instruction,
                    iou_current=iou(got.source_mask, expected.source_mask),
                    iou_next=iou(got.target_mask, expected.target_mask),
                )
            rows.append(row)
    return rows


def summarize(rows: list[dict]) -> dict:
    """Per op and overall: transitions, exact-match rate, mean IoUs (accepted transitions), rejection rate."""

    def stats(chosen: list[dict]) -> dict:
        accepted = [r for r in chosen if not r["rejected"]]
        return {
            "n": len(chosen),
            "exact_match": float(np.mean([r["exact"] for r in chosen])) if chosen else float("nan"),
            "iou_current": float(np.mean([r["iou_current"] for r in accepted])) if accepted else float("nan"),
            "iou_next": float(np.mean([r["iou_next"] for r in accepted])) if accepted else float("nan"),
            "rejected": float(np.mean([r["rejected"] for r in chosen])) if chosen else float("nan"),
        }

    ops = [op for op in (*OP_KINDS, *sorted(SHOT_OPS)) if any(r["op"] == op for r in rows)]
    return {"per_op": {op: stats([r for r in rows if r["op"] == op]) for op in ops}, "all": stats(rows)}


def markdown(summary: dict, num_videos: int, seconds: float) -> str:
    lines = [
        f"Pixel annotator vs the renderer's log, {num_videos} held-out videos ({summary['all']['n']} transitions; "
        f"{seconds:.0f} s).",
        "",
        "| op | transitions | instruction exact match | IoU current region | IoU next region | rejected |",
        "|---|---|---|---|---|---|",
    ]
    for op, row in [*summary["per_op"].items(), ("**all**", summary["all"])]:
        lines.append(
            f"| {op} | {row['n']} | {row['exact_match']:.3f} | {row['iou_current']:.3f} | {row['iou_next']:.3f} | "
            f"{row['rejected']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_videos", type=int, default=200)
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED, help="base seed of the held-out videos")
    parser.add_argument("--resolution", type=int, default=128, help="video side (the video maker's default)")
    parser.add_argument("--pan_weight", type=float, default=0.5, help="camera pans (the video maker's default)")
    parser.add_argument("--composition_fraction", type=float, default=0.0, help="share of composition videos")
    parser.add_argument("--story_fraction", type=float, default=0.0, help="share of camera-only videos")
    parser.add_argument(
        "--max_side", type=int, default=None, help="decode frames at most this large, as build_sessions.py --max-side"
    )
    parser.add_argument("--output_dir", type=Path, default=Path("runs/annotator_accuracy"))
    args = parser.parse_args(argv)
    if args.num_videos < 1:
        parser.error(f"--num_videos must be >= 1, got {args.num_videos}")
    seeds = [video_session_seed(args.seed, i) for i in range(args.num_videos)]
    if min(seeds) < RESERVED_SEEDS_BELOW:
        parser.error(f"--seed {args.seed} draws a session seed below {RESERVED_SEEDS_BELOW:,} (training/benchmarks)")

    world = ShapesWorld(op_weights={"pan": args.pan_weight})
    videos = args.output_dir / "videos"
    make_synthetic_videos(
        videos,
        args.num_videos,
        seed=args.seed,
        world=world,
        resolution=args.resolution,
        composition_fraction=args.composition_fraction,
        story_fraction=args.story_fraction,
    )
    # the video maker's seconds_per_turn
    config = SamplingConfig(strategy="equal_interval", interval=1.0, max_side=args.max_side)
    pixels, truth = ShapesPixelAnnotator(world), GroundTruthAnnotator()
    start = time.perf_counter()
    rows = [
        row for video_id, path in list_videos([videos]) for row in score_video(path, video_id, config, pixels, truth)
    ]
    seconds = time.perf_counter() - start
    summary = {**summarize(rows), "config": {k: str(v) for k, v in vars(args).items()}, "seconds": seconds}
    summary["mismatches"] = [r for r in rows if not r["exact"]]
    args.output_dir.mkdir(parents=True, exist_ok=True)
    table = markdown(summary, args.num_videos, seconds)
    write_text_atomic(args.output_dir / "results.json", json.dumps(summary, indent=2))
    write_text_atomic(args.output_dir / "results.md", table)
    print(table)
    return summary


if __name__ == "__main__":
    main()
