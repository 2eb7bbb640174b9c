"""Benchmark of the session build pipeline on synthetic videos with the ground-truth (or ``--annotator pixels``)
annotator.

Measures, in the same run and on the same videos and frames:

* decode-only time: probe + choose timestamps + decode the sampled frames with PyAV (the floor any build
  pays);
* build time: ``build_sessions`` end to end (decode, annotate from the sidecars, encode PNGs, write parquet
  shards, manifests and the dataset card) -> sessions/s and the ratio build / decode-only (goal <= 1.5x);
* the same ratio in CPU seconds (all threads of the process): the extra work, independent of how much
  the background image encoding can overlap with decoding on the machine's free cores;
* streaming read-back: ``load_dataset(folder, streaming=True)`` iterating every row with its images
  decoded -> rows/s.

Each timing is the best of ``--repeats`` runs (the machine is shared). Usage::

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/bench_build_sessions.py --videos 24 --resolution 128
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


def make_videos(folder: Path, count: int, resolution: int, turns: int, fps: int) -> None:
    from diffusers_vincie.data.shapes.video import render_video
    from diffusers_vincie.data.shapes.world import ShapesWorld

    world = ShapesWorld(resolution=resolution)
    for seed in range(count):
        render_video(world, world.sample_session(seed, num_turns=turns), folder / f"video{seed:04d}.mp4", fps=fps)


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


def build_once(
    folder: Path, output: Path, config, shard_size: int, frame_format: str, annotator: str, resolution: int
):
    from diffusers_vincie.data.shapes.world import ShapesWorld
    from diffusers_vincie.data.video.annotate import GroundTruthAnnotator, ShapesPixelAnnotator
    from diffusers_vincie.data.video.build import build_sessions

    shutil.rmtree(output, ignore_errors=True)
    # the pixel annotator knows the videos' world (make_videos: world resolution = video side)
    chosen = GroundTruthAnnotator() if annotator == "ground_truth" else ShapesPixelAnnotator(ShapesWorld(resolution))
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
    parser.add_argument("--turns", type=int, default=5, help="edits per synthetic video")
    parser.add_argument("--fps", type=int, default=8, help="frame rate of the synthetic videos")
    parser.add_argument("--shard-size", type=int, default=64, help="sessions per parquet shard")
    parser.add_argument("--frame-format", choices=("png", "jpeg"), default="png", help="how frames are stored")
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

    from diffusers_vincie.data.video.build import SamplingConfig

    disable_progress_bar()
    logging.getLogger("diffusers_vincie").setLevel(logging.ERROR)
    config = SamplingConfig(strategy="equal_interval", interval=1.0)  # one frame per key state (1 s per turn)
    with tempfile.TemporaryDirectory() as workdir:
        work = Path(workdir)
        (work / "videos").mkdir()
        make_videos(work / "videos", args.videos, args.resolution, args.turns, args.fps)

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
                args.resolution,
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
            "frame_format": args.frame_format,
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
    print(f"build / decode-only = {results['build_over_decode']:.2f}x (goal <= 1.5x)")
    if args.json:
        write_json_atomic(args.json, results)


if __name__ == "__main__":
    main()
