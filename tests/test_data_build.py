"""Tests of the video -> sessions build pipeline with the ground-truth annotator (frames, build, resume, I/O)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import load_script
from datasets import load_dataset

from diffusers_vincie.data.loaders import iter_session_records, load_sessions
from diffusers_vincie.data.schema import SESSION_FEATURES, SessionRecord, mask_to_array
from diffusers_vincie.data.shapes.video import read_ground_truth, render_video
from diffusers_vincie.data.shapes.world import ShapesWorld
from diffusers_vincie.data.video import build as build_module
from diffusers_vincie.data.video.annotate import (
    GroundTruthAnnotator,
    Transition,
    TransitionAnnotation,
    TransitionAnnotator,
)
from diffusers_vincie.data.video.build import SamplingConfig, build_sessions, list_videos, read_manifest
from diffusers_vincie.data.video.frames import (
    VideoDecodeError,
    decode_frames_at,
    detect_scene_cuts,
    probe_video,
    sample_timestamps,
    split_at_cuts,
)

REPO = Path(__file__).resolve().parents[1]
GT_SAMPLING = SamplingConfig(strategy="equal_interval", interval=1.0)  # one frame per key state (1 s per turn)

# ================================================================================================
# Fixtures: tiny videos
# ================================================================================================


def write_counter_video(
    path: Path, num_frames: int = 40, fps: int = 8, gop: int = 8, cut_at: int | None = None
) -> None:
    """64x64 H.264 video whose frame i has grey level 6 * i (or white after ``cut_at``)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = gop
        stream.options = {"crf": "10"}
        for i in range(num_frames):
            pixels = np.full((64, 64, 3), min(6 * i, 255), np.uint8)
            if cut_at is not None and i >= cut_at:
                pixels[:] = 250
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def make_synthetic_videos(folder: Path, count: int, num_turns: int = 4) -> dict[str, Path]:
    world = ShapesWorld(resolution=64)
    paths = {}
    for seed in range(count):
        path = folder / f"video{seed}.mp4"
        render_video(world, world.sample_session(seed, num_turns=num_turns), path, fps=8)
        paths[path.stem] = path
    return paths


@pytest.fixture(scope="module")
def synthetic_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("videos")
    make_synthetic_videos(folder, count=3)
    return folder


def rows_by_id(folder: Path) -> dict[str, dict]:
    dataset = load_dataset(str(folder), split="train", cache_dir=str(folder.parent / "hf_cache"))
    rows = {}
    for row in dataset:
        assert row["session_id"] not in rows, f"duplicate session {row['session_id']}"
        rows[row["session_id"]] = row
    return rows


def comparable(row: dict) -> tuple:
    """Content of a row without the annotator JSON order or image object identity."""
    return (
        row["video_id"],
        tuple(row["instructions"]),
        tuple(row["timestamps"]),
        tuple(row["camera_motion"]),
        tuple(np.asarray(f).tobytes() for f in row["frames"]),
        tuple(np.asarray(m).tobytes() for m in row["source_masks"] + row["target_masks"]),
    )


# ================================================================================================
# Frame sampling
# ================================================================================================


def test_sample_timestamps_strategies():
    assert sample_timestamps(0, 10, strategy="equal_interval", interval=3) == [2.0, 5.0, 8.0]
    assert sample_timestamps(0, 8, strategy="fixed_count", max_frames=4) == [1.0, 3.0, 5.0, 7.0]
    counts = {len(sample_timestamps(0, 8, strategy="fixed_count", rng=np.random.default_rng(s))) for s in range(40)}
    assert counts == {2, 3, 4, 5, 6}
    # hybrid: equal-interval when it yields 2..6 frames, else a clamped fixed count
    assert sample_timestamps(0, 10, strategy="hybrid", interval=3) == [2.0, 5.0, 8.0]
    assert len(sample_timestamps(0, 60, strategy="hybrid", interval=3)) == 6
    assert sample_timestamps(0, 4, strategy="hybrid", interval=3) == [1.0, 3.0]
    for bad, match in (
        ({"strategy": "random"}, "strategy"),
        ({"min_frames": 1}, "min_frames"),
        ({"interval": 0}, "interval"),
    ):
        with pytest.raises(ValueError, match=match):
            sample_timestamps(0, 10, **bad)


# MPEG-TS starts after 0 s and has no seek index (with one key frame, every seek lands nowhere)
@pytest.mark.parametrize(
    "name, gop", [("counter.mp4", 8), ("counter.mp4", 250), ("counter.ts", 8), ("counter.ts", 250)]
)
def test_decode_frames_at_seeks_to_the_right_frames(tmp_path, name, gop):
    path = tmp_path / name
    write_counter_video(path, num_frames=40, fps=8, gop=gop)
    info = probe_video(path)
    assert (info.fps, info.duration, info.width, info.height) == (8.0, 5.0, 64, 64)
    targets = [4.0, 0.0, 1.06, 2.5, 2.5, 4.99]  # unsorted, a repeat, between frames, past the last frame
    frames = decode_frames_at(path, targets, seek_threshold=0.2)
    assert [f.frame_index for f in frames] == [0, 8, 20, 20, 32, 39]
    for frame in frames:  # the pixels are those of that frame (grey level 6 * index)
        assert abs(np.asarray(frame.image).mean() - 6 * frame.frame_index) < 2
        assert frame.timestamp == pytest.approx(frame.frame_index / 8)
    small = decode_frames_at(path, [1.0], max_side=32)[0]
    assert small.image.size == (32, 32)


def test_scene_cuts_split_clips(tmp_path):
    path = tmp_path / "cut.mp4"
    write_counter_video(path, num_frames=48, fps=8, gop=48, cut_at=20)
    cuts = detect_scene_cuts(path, threshold=0.3, probe_fps=8)
    assert cuts == [2.5]
    assert split_at_cuts(6.0, cuts) == [(0.0, 2.5), (2.5, 6.0)]
    assert split_at_cuts(6.0, cuts, min_length=3.0) == [(2.5, 6.0)]


class FrameIndexAnnotator(TransitionAnnotator):
    """Names each transition after its frame indices (exercises the build without a sidecar)."""

    name = "frame_index"

    def annotate(self, transition: Transition) -> TransitionAnnotation:
        return TransitionAnnotation(
            f"go from frame {transition.source.frame_index} to {transition.target.frame_index}"
        )


def test_sessions_never_span_a_scene_cut(tmp_path):
    path = tmp_path / "cut.mp4"
    write_counter_video(path, num_frames=48, fps=8, gop=48, cut_at=20)  # 6 s, cut at 2.5 s
    config = SamplingConfig(strategy="fixed_count", min_frames=2, max_frames=2, scene_cuts=True)
    result = build_module.sessions_from_video(path, "cut", FrameIndexAnnotator(), config)
    # clips [0, 2.5) and [2.5, 6): 2 frames each at the bin centres, one session per clip
    assert [s.timestamps for s in result.sessions] == [[0.625, 1.875], [3.375, 5.125]]
    assert [s.instructions for s in result.sessions] == [["go from frame 5 to 15"], ["go from frame 27 to 41"]]
    assert all(s.source_masks == [None] for s in result.sessions)  # no exact masks, no region masker
    without_cuts = SamplingConfig(strategy="fixed_count", max_frames=2)
    uncut = build_module.sessions_from_video(path, "cut", FrameIndexAnnotator(), without_cuts).sessions
    assert [s.timestamps for s in uncut] == [[1.5, 4.5]]


def test_unreadable_video_raises_decode_error(tmp_path):
    path = tmp_path / "broken.mp4"
    path.write_bytes(b"\x00not a video" * 50)
    with pytest.raises(VideoDecodeError, match="broken.mp4"):
        probe_video(path)
    with pytest.raises(VideoDecodeError):
        decode_frames_at(path, [0.0])


def test_list_videos_files_folders_and_lists(tmp_path):
    (tmp_path / "a" / "sub").mkdir(parents=True)
    for name in ("a/one.mp4", "a/sub/two.MKV", "a/notes.txt", "three.webm"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "list.txt").write_text("# my videos\nthree.webm\n\n")
    found = list_videos([tmp_path / "a", tmp_path / "list.txt"])
    assert [(video_id, path.name) for video_id, path in found] == [
        ("one", "one.mp4"),
        ("sub/two", "two.MKV"),
        ("three", "three.webm"),
    ]
    with pytest.raises(FileNotFoundError, match="missing"):
        list_videos([tmp_path / "missing"])
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "one.mp4").write_bytes(b"")
    with pytest.raises(ValueError, match="'one'"):
        list_videos([tmp_path / "a" / "one.mp4", tmp_path / "b" / "one.mp4"])


def test_sampling_config_rejects_bad_values():
    with pytest.raises(ValueError, match="strategy"):
        SamplingConfig(strategy="every_frame")
    with pytest.raises(ValueError, match="max_frames"):
        SamplingConfig(min_frames=4, max_frames=3)
    with pytest.raises(ValueError, match="max_side"):
        SamplingConfig(max_side=4)


# ================================================================================================
# End to end with the ground-truth annotator
# ================================================================================================


def test_build_with_ground_truth_matches_the_simulator(tmp_path, synthetic_folder):
    corrupt = tmp_path / "inputs" / "corrupt.mp4"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"this is not an mp4" * 20)
    out = tmp_path / "sessions"
    summary = build_sessions(
        [synthetic_folder, corrupt], out, GroundTruthAnnotator(), config=GT_SAMPLING, shard_size=2
    )
    assert (summary.videos, summary.processed, summary.rejected_videos, summary.sessions) == (4, 4, 1, 3)

    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [r["video_id"] for r in rejects] == ["corrupt"] and "InvalidData" in rejects[0]["reason"]

    rows = rows_by_id(out)
    assert sorted(rows) == ["video0/0", "video1/0", "video2/0"]
    world = ShapesWorld(resolution=64)
    for seed in range(3):
        row = rows[f"video{seed}/0"]
        truth = read_ground_truth(synthetic_folder / f"video{seed}.json")
        session = world.sample_session(seed, num_turns=4)
        assert row["instructions"] == truth["instructions"] == session.instructions
        assert row["camera_motion"] == truth["camera_motion"]
        assert row["timestamps"] == pytest.approx([k + 0.5 for k in range(5)])
        for k in range(4):
            np.testing.assert_array_equal(mask_to_array(row["source_masks"][k]), truth["source_masks"][k])
            np.testing.assert_array_equal(mask_to_array(row["target_masks"][k]), truth["target_masks"][k])
        # each decoded key frame is (lossy) its rendered state, and closer to it than to any other state
        for k, frame in enumerate(row["frames"]):
            errors = [np.abs(np.asarray(frame).astype(int) - state.astype(int)).mean() for state in session.frames]
            assert errors[k] < 8 and int(np.argmin(errors)) == k
        annotator = json.loads(row["annotator"])
        assert annotator["name"] == "ground_truth"
        assert [t["op"] for t in annotator["transitions"]] == truth["ops"]


def test_ground_truth_rejects_transitions_off_key_states(tmp_path, synthetic_folder):
    # fixed-count sampling lands frames on arbitrary states: multi-edit or animated pairs are rejected, the
    # session is split there, and every kept transition is still exactly one ground-truth edit
    out = tmp_path / "sessions"
    config = SamplingConfig(strategy="fixed_count", min_frames=3, max_frames=3, seed=1)
    result = build_module.sessions_from_video(
        synthetic_folder / "video0.mp4", "video0", GroundTruthAnnotator(), config
    )
    # 3 frames at 5/6, 2.5 and 25/6 s: key state 0, key state 2 (two edits apart), then mid-animation
    assert result.sessions == [] and len(result.rejected_transitions) == 2
    assert "key states 0 and 2" in result.rejected_transitions[0]
    assert "inside an animation" in result.rejected_transitions[1]
    build_sessions([synthetic_folder / "video0.mp4"], out, GroundTruthAnnotator(), config=config)
    assert read_manifest(out)["video0"]["sessions"] == 0 and not list((out / "data").glob("*.parquet"))


def test_long_runs_are_split_into_sessions_of_max_frames(tmp_path, synthetic_folder):
    config = SamplingConfig(strategy="equal_interval", interval=1.0, max_frames=3)
    result = build_module.sessions_from_video(
        synthetic_folder / "video1.mp4", "video1", GroundTruthAnnotator(), config
    )
    truth = read_ground_truth(synthetic_folder / "video1.json")
    assert [s.session_id for s in result.sessions] == ["video1/0", "video1/1"]
    assert [s.instructions for s in result.sessions] == [truth["instructions"][:2], truth["instructions"][2:]]


# ================================================================================================
# Resume, atomicity, round trip
# ================================================================================================


class Interrupted(Exception):
    pass


def test_resume_after_a_crash_has_no_duplicate_or_lost_sessions(tmp_path):
    videos = make_synthetic_videos(tmp_path / "videos", count=5, num_turns=2)
    reference = tmp_path / "reference"
    build_sessions([tmp_path / "videos"], reference, GroundTruthAnnotator(), config=GT_SAMPLING)

    out = tmp_path / "resumed"
    done = []

    def crash_after_two(video_id: str) -> None:
        done.append(video_id)
        if len(done) == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        build_sessions(
            [tmp_path / "videos"],
            out,
            GroundTruthAnnotator(),
            config=GT_SAMPLING,
            shard_size=1,
            on_video_done=crash_after_two,
        )
    assert sorted(read_manifest(out)) == sorted(done)
    summary = build_sessions([tmp_path / "videos"], out, GroundTruthAnnotator(), config=GT_SAMPLING, shard_size=1)
    assert (summary.skipped, summary.processed, summary.sessions) == (2, 3, len(videos))
    resumed, expected = rows_by_id(out), rows_by_id(reference)
    assert sorted(resumed) == sorted(expected)
    assert all(comparable(resumed[key]) == comparable(expected[key]) for key in expected)
    # a third run has nothing left to do and changes nothing
    assert build_sessions([tmp_path / "videos"], out, GroundTruthAnnotator(), config=GT_SAMPLING).processed == 0
    assert sorted(rows_by_id(out)) == sorted(expected)


KILL_SCRIPT = """
import os, signal, sys
from diffusers_vincie.data.video.annotate import GroundTruthAnnotator
from diffusers_vincie.data.video.build import SamplingConfig, build_sessions
done = []
def kill_after_three(video_id):
    done.append(video_id)
    if len(done) == 3:  # video 3 is encoded in the background but its shard is not written yet
        os.kill(os.getpid(), signal.SIGKILL)
build_sessions([sys.argv[1]], sys.argv[2], GroundTruthAnnotator(),
               config=SamplingConfig(strategy="equal_interval", interval=1.0), shard_size=2,
               on_video_done=kill_after_three)
"""


@pytest.mark.slow  # one fresh Python process
def test_resume_after_sigkill_mid_run(tmp_path):
    make_synthetic_videos(tmp_path / "videos", count=5, num_turns=2)
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    killed = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(tmp_path / "videos"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert sorted(read_manifest(out)) == ["video0", "video1"]  # only the first shard (2 videos) was recorded
    summary = build_sessions([tmp_path / "videos"], out, GroundTruthAnnotator(), config=GT_SAMPLING)
    assert (summary.skipped, summary.processed, summary.sessions) == (2, 3, 5)
    reference = tmp_path / "reference"
    build_sessions([tmp_path / "videos"], reference, GroundTruthAnnotator(), config=GT_SAMPLING)
    resumed, expected = rows_by_id(out), rows_by_id(reference)
    assert sorted(resumed) == sorted(expected) == [f"video{i}/0" for i in range(5)]
    assert all(comparable(resumed[key]) == comparable(expected[key]) for key in expected)


def test_shard_written_but_not_recorded_is_discarded_and_redone(tmp_path, monkeypatch):
    make_synthetic_videos(tmp_path / "videos", count=3, num_turns=2)
    out = tmp_path / "out"
    original = build_module._ShardWriter._append_manifest
    calls = []

    def killed_before_second_record(self, shard, entries):
        calls.append(shard)
        if len(calls) == 2:
            raise Interrupted  # the second shard is already renamed into data/, its manifest line never written
        original(self, shard, entries)

    monkeypatch.setattr(build_module._ShardWriter, "_append_manifest", killed_before_second_record)
    with pytest.raises(Interrupted):
        build_sessions([tmp_path / "videos"], out, GroundTruthAnnotator(), config=GT_SAMPLING, shard_size=1)
    assert len(list((out / "data").glob("*.parquet"))) == 2 and len(read_manifest(out)) == 1
    monkeypatch.setattr(build_module._ShardWriter, "_append_manifest", original)

    summary = build_sessions([tmp_path / "videos"], out, GroundTruthAnnotator(), config=GT_SAMPLING, shard_size=1)
    assert (summary.skipped, summary.processed, summary.sessions) == (1, 2, 3)
    assert sorted(rows_by_id(out)) == ["video0/0", "video1/0", "video2/0"]
    assert not [p for p in (out / "data").iterdir() if p.name.startswith(".")]  # no temp files left


def test_load_dataset_round_trip_of_every_feature(tmp_path, synthetic_folder):
    out = tmp_path / "sessions"
    build_sessions([synthetic_folder / "video2.mp4"], out, GroundTruthAnnotator(), config=GT_SAMPLING)
    direct = build_module.sessions_from_video(
        synthetic_folder / "video2.mp4", "video2", GroundTruthAnnotator(), GT_SAMPLING
    )
    expected = direct.sessions[0].to_row()

    dataset = load_dataset(str(out), split="train", cache_dir=str(tmp_path / "hf_cache"))
    assert dataset.features == SESSION_FEATURES
    streamed = next(iter(load_dataset(str(out), split="train", streaming=True)))
    for row in (dataset[0], streamed):
        assert set(row) == set(SESSION_FEATURES)
        for name in ("session_id", "video_id", "timestamps", "instructions", "camera_motion", "annotator"):
            assert row[name] == expected[name], name
        for name in ("frames", "source_masks", "target_masks"):
            assert [np.asarray(image).tolist() for image in row[name]] == [
                np.asarray(i).tolist() for i in expected[name]
            ]
        record = SessionRecord.from_row(row)
        assert record.num_turns == 4 and record.annotator["name"] == "ground_truth"
    # the package's loader reads the folder as is
    (loaded,) = iter_session_records(load_sessions(out, cache_dir=str(tmp_path / "hf_cache")))
    assert loaded.session_id == "video2/0" and loaded.instructions == expected["instructions"]
    card = (out / "README.md").read_text()
    assert card.startswith("---\nconfigs:") and "data/train-" in card


# ================================================================================================
# CLI
# ================================================================================================


def load_cli():
    return load_script(REPO / "dataset_scripts" / "build_sessions.py", "build_sessions_cli")


def test_cli_builds_a_loadable_dataset_and_explains_bad_arguments(tmp_path, synthetic_folder, capsys):
    cli = load_cli()
    out = tmp_path / "cli"
    assert (
        cli.main(
            [
                str(synthetic_folder),
                "--output",
                str(out),
                "--annotator",
                "ground_truth",
                "--strategy",
                "equal_interval",
                "--interval",
                "1.0",
            ]
        )
        == 0
    )
    assert "3 sessions from 3 videos" in capsys.readouterr().out
    assert sorted(rows_by_id(out)) == ["video0/0", "video1/0", "video2/0"]
    with pytest.raises(SystemExit):
        cli.main([str(synthetic_folder), "--output", str(out), "--annotator", "vlm"])
    assert "--vlm-model" in capsys.readouterr().err


def test_a_build_without_sessions_fails_clearly_and_writes_no_card(tmp_path, synthetic_folder, capsys):
    """The default sampling (every 3 s) misses the synthetic videos' key states: every video is rejected. The CLI
    exits 1 with the reason and the fix, and leaves no dataset card (one listing no shard breaks load_dataset)."""
    cli = load_cli()
    out = tmp_path / "empty"
    assert cli.main([str(synthetic_folder), "--output", str(out), "--annotator", "ground_truth"]) == 1
    messages = [line for line in capsys.readouterr().err.splitlines() if line.startswith("build_sessions.py:")]
    assert len(messages) == 1  # one line (the progress bar aside)
    error = messages[0]
    assert "no session was built" in error and "key states" in error and "--strategy equal_interval" in error
    assert not (out / "README.md").exists() and (out / "rejects.jsonl").is_file()
    with pytest.raises(ValueError, match="no parquet shard"):
        build_module.write_dataset_card(out)
    # the fixed command completes the same folder into a loadable dataset
    args = [str(synthetic_folder), "--output", str(out), "--annotator", "ground_truth"]
    assert cli.main(args + ["--strategy", "equal_interval", "--interval", "1.0"]) == 0
    assert len(load_dataset(str(out), split="train")) == 3


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow  # two fresh Python processes importing torch: ~30 s on 2 shared cores
def test_two_accelerate_processes_build_the_same_rows_as_one(tmp_path, synthetic_folder):
    single, double = tmp_path / "single", tmp_path / "double"
    config = SamplingConfig(strategy="hybrid", interval=1.0)
    build_sessions([synthetic_folder], single, GroundTruthAnnotator(), config=config)
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        str(REPO / "dataset_scripts" / "build_sessions.py"),
        str(synthetic_folder),
        "--output",
        str(double),
        "--annotator",
        "ground_truth",
        "--strategy",
        "hybrid",
        "--interval",
        "1.0",
        "--shard-size",
        "1",
    ]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    # both ranks wrote: the videos really were split between the processes
    assert {p.name for p in (double / "manifest").glob("*.jsonl")} == {"rank-000.jsonl", "rank-001.jsonl"}
    rows_one, rows_two = rows_by_id(single), rows_by_id(double)
    assert sorted(rows_one) == sorted(rows_two) and len(rows_one) == 3
    assert all(comparable(rows_one[key]) == comparable(rows_two[key]) for key in rows_one)


def test_jpeg_frames_and_bad_build_arguments(tmp_path, synthetic_folder):
    video = synthetic_folder / "video0.mp4"
    build_sessions([video], tmp_path / "png", GroundTruthAnnotator(), config=GT_SAMPLING)
    build_sessions([video], tmp_path / "jpeg", GroundTruthAnnotator(), config=GT_SAMPLING, frame_format="jpeg")
    png, jpeg = rows_by_id(tmp_path / "png")["video0/0"], rows_by_id(tmp_path / "jpeg")["video0/0"]
    assert [f.format for f in png["frames"]] == ["PNG"] * 5 and [f.format for f in jpeg["frames"]] == ["JPEG"] * 5
    assert [m.format for m in jpeg["source_masks"]] == ["PNG"] * 4  # masks stay lossless
    assert png["source_masks"] and all(
        np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(png["source_masks"], jpeg["source_masks"])
    )
    for a, b in zip(png["frames"], jpeg["frames"]):
        assert np.abs(np.asarray(a).astype(int) - np.asarray(b).astype(int)).mean() < 2
    for bad, match in (
        ({"shard_size": 0}, "shard_size"),
        ({"encode_workers": 0}, "encode_workers"),
        ({"frame_format": "gif"}, "frame_format"),
    ):
        with pytest.raises(ValueError, match=match):
            build_sessions([video], tmp_path / "bad", GroundTruthAnnotator(), **bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="inputs: no video files"):
        build_sessions([tmp_path / "empty"], tmp_path / "bad", GroundTruthAnnotator())
