"""Benchmark of the session build pipeline on synthetic videos with the ground-truth (or ``--annotator pixels``)
annotator.

Measures, in the same run and on the same videos and frames:

* decode-only time: probe + choose timestamps + decode the sampled frames with PyAV, one video after the
  other (what any build decodes);
* build time: ``build_sessions`` end to end (decode, annotate from the sidecars or the pixels, encode PNGs,
  write parquet shards, manifests and the dataset card) -> sessions/s and the ratio build / decode-only (goal
  <= 1.5x);
* the same ratio in CPU seconds (all threads of the process): the extra work, independent of how much the
  background decoding and image encoding can overlap with annotating on the machine's free cores;
* streaming read-back: ``load_dataset(folder, streaming=True)`` iterating every row with its images
  decoded -> rows/s.

Each timing is the best of ``--repeats`` runs (the machine is shared). Usage::

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/bench_build_sessions.py --videos 24 --resolution 128
    # the recipe's build: pixel annotator, composition and story videos, frames read at 64 px
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/bench_build_sessions.py --videos 24 --resolution 128 \
        --annotator pixels --composition-fraction 0.1 --story-fraction 0.1 --max-side 64 --repeats 10

The videos are those of the training recipe (``make_synthetic_videos.py``: 5 edits, camera pans, world geometry at
``--world-resolution`` 32 drawn at ``--resolution``; ``--composition-fraction`` / ``--story-fraction`` add
composition shots and camera-only videos, e.g. 0.1 each as in the recipe).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from diffusers_vincie.utils.io import write_json_atomic


def make_videos(
    folder: Path, count: int, world, resolution: int, turns: int, fps: int, composition: float, story: float
) -> None:
    from diffusers_vincie.data.shapes.video import make_synthetic_videos

    make_synthetic_videos(
        folder,
        count,
        world=world,
        num_turns=turns,
        fps=fps,
        resolution=resolution,
        composition_fraction=composition,
        story_fraction=story,
        progress=False,
    )


def decode_only(folder: Path, config) -> int:
    """Decodes exactly the frames the build samples; returns the number of frames."""
    from diffusers_vincie.data.video.build import _clip_frame_times, list_videos
    from diffusers_vincie.data.video.frames import decode_frames_at, probe_video

    frames = 0
    for video_id, path in list_videos([folder]):
        clips = _clip_frame_times(probe_video(path).duration, path, video_id, config)
        decoded = decode_frames_at(path, [t for clip in clips for t in clip], max_side=config.max_side)
        frames += len(decoded)
    return frames


def build_once(folder: Path, output: Path, config, shard_size: int, frame_format: str, annotator: str, world):
    from diffusers_vincie.data.video.annotate import GroundTruthAnnotator, ShapesPixelAnnotator
    from diffusers_vincie.data.video.build import build_sessions

    shutil.rmtree(output, ignore_errors=True)
    # the pixel annotator knows the videos' world (its config, as build_sessions.py --world-config gives it)
    chosen = GroundTruthAnnotator() if annotator == "ground_truth" else ShapesPixelAnnotator(world)
    return build_sessions([folder], output, chosen, config=config, shard_size=shard_size, frame_format=frame_format)


def stream_rows(output: Path, cache_dir: Path) -> int:
    from datasets import load_dataset

    rows = 0
    for row in load_dataset(str(output), split="train", streaming=True, cache_dir=str(cache_dir)):
        for image in row["frames"] + row["source_masks"] + row["target_masks"]:
            np.asarray(image)  # force decoding
        rows += 1
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=24, help="synthetic videos to build from")
    parser.add_argument("--resolution", type=int, default=128, help="video side in pixels")
    parser.add_argument("--world-resolution", type=int, default=32, help="resolution of the world's geometry")
    parser.add_argument("--composition-fraction", type=float, default=0.0, help="share of composition videos")
    parser.add_argument("--story-fraction", type=float, default=0.0, help="share of camera-only videos")
    parser.add_argument("--turns", type=int, default=5, help="edits per synthetic video")
    parser.add_argument("--fps", type=int, default=8, help="frame rate of the synthetic videos")
    parser.add_argument("--shard-size", type=int, default=64, help="sessions per parquet shard")
    parser.add_argument("--frame-format", choices=("png", "jpeg"), default="png", help="how frames are stored")
    parser.add_argument("--max-side", type=int, default=None, help="frames decoded at most this large (pixels)")
    parser.add_argument("--repeats", type=int, default=3, help="timings are the best of this many runs")
    parser.add_argument(
        "--annotator",
        choices=("ground_truth", "pixels"),
        default="ground_truth",
        help="ground_truth: the sidecars; pixels: the frames alone (ShapesPixelAnnotator)",
    )
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()

    from datasets.utils.logging import disable_progress_bar

    from diffusers_vincie.data.shapes.world import ShapesWorld
    from diffusers_vincie.data.video.build import SamplingConfig

    disable_progress_bar()
    logging.getLogger("diffusers_vincie").setLevel(logging.ERROR)
    # one frame per key state (1 s per turn)
    config = SamplingConfig(strategy="equal_interval", interval=1.0, max_side=args.max_side)
    with tempfile.TemporaryDirectory() as workdir:
        work = Path(workdir)
        (work / "videos").mkdir()
        # the video maker's world: camera pans at half weight, geometry at --world-resolution
        world = ShapesWorld(resolution=args.world_resolution, op_weights={"pan": 0.5})
        make_videos(
            work / "videos",
            args.videos,
            world,
            args.resolution,
            args.turns,
            args.fps,
            args.composition_fraction,
            args.story_fraction,
        )

        decode_times, build_times, stream_times, decode_cpu, build_cpu = [], [], [], [], []
        for repeat in range(args.repeats):
            started, started_cpu = time.perf_counter(), time.process_time()
            frames = decode_only(work / "videos", config)
            decode_times.append(time.perf_counter() - started)
            decode_cpu.append(time.process_time() - started_cpu)

            started, started_cpu = time.perf_counter(), time.process_time()
            summary = build_once(
                work / "videos",
                work / "out",
                config,
                args.shard_size,
                args.frame_format,
                args.annotator,
                world,
            )
            build_times.append(time.perf_counter() - started)
            build_cpu.append(time.process_time() - started_cpu)

            started = time.perf_counter()
            rows = stream_rows(work / "out", work / f"cache{repeat}")
            stream_times.append(time.perf_counter() - started)

        decode_s, build_s, stream_s = min(decode_times), min(build_times), min(stream_times)
        results = {
            "videos": args.videos,
            "annotator": args.annotator,
            "resolution": args.resolution,
            "world_resolution": args.world_resolution,
            "composition_fraction": args.composition_fraction,
            "story_fraction": args.story_fraction,
            "frame_format": args.frame_format,
            "max_side": args.max_side,
            "frames": frames,
            "sessions": summary.sessions,
            "decode_only_s": round(decode_s, 4),
            "build_s": round(build_s, 4),
            "build_over_decode": round(build_s / decode_s, 3),
            # CPU seconds of all threads: the work done, whatever the machine's other load
            "build_over_decode_cpu": round(min(build_cpu) / min(decode_cpu), 3),
            "sessions_per_s": round(summary.sessions / build_s, 2),
            "frames_per_s_decode_only": round(frames / decode_s, 1),
            "stream_rows": rows,
            "stream_rows_per_s": round(rows / stream_s, 2),
        }
    print(json.dumps(results, indent=2))
    print(
        f"build / decode-only = {results['build_over_decode']:.2f}x wall, "
        f"{results['build_over_decode_cpu']:.2f}x CPU (goal <= 1.5x)"
    )
    if args.json:
        write_json_atomic(args.json, results)


if __name__ == "__main__":
    main()
