"""Bad inputs and faults of the session build: a missing or corrupt sidecar, a truncated video, a torn manifest
line and bad CLI arguments are each a clear reject or error; no video is lost for good and the card matches the rows."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import load_script, one_error_line
from datasets import load_dataset

from diffusers_vincie.data.shapes.video import render_video
from diffusers_vincie.data.shapes.world import ShapesWorld
from diffusers_vincie.data.video.annotate import GroundTruthAnnotator
from diffusers_vincie.data.video.build import SamplingConfig, build_sessions, read_manifest

REPO = Path(__file__).resolve().parents[1]
GT_SAMPLING = SamplingConfig(strategy="equal_interval", interval=1.0)


def _videos(folder: Path, count: int, num_turns: int = 2) -> Path:
    world = ShapesWorld(resolution=32)
    for seed in range(count):
        render_video(world, world.sample_session(seed, num_turns=num_turns), folder / f"video{seed}.mp4", fps=8)
    return folder


@pytest.fixture
def videos(tmp_path) -> Path:
    return _videos(tmp_path / "videos", 3)


def _rejects(out: Path) -> dict[str, str]:
    return {r["video_id"]: r["reason"] for r in map(json.loads, (out / "rejects.jsonl").read_text().splitlines())}


def _rows(out: Path) -> list[str]:
    dataset = load_dataset(str(out), split="train", cache_dir=str(out.parent / "hf_cache"))
    return sorted(dataset["session_id"])


def _card_examples(out: Path) -> int:
    import yaml

    header = (out / "README.md").read_text().split("---\n")[1]
    return yaml.safe_load(header)["dataset_info"]["splits"][0]["num_examples"]


def _build(videos: Path, out: Path, **kwargs):
    return build_sessions([videos], out, GroundTruthAnnotator(), config=GT_SAMPLING, **kwargs)


# =====================================================================================================
#                                  A video without usable ground truth is retried
# =====================================================================================================


@pytest.mark.parametrize(
    "damage, reason",
    [
        ("missing", "no usable ground-truth sidecar"),
        ("truncated", "no usable ground-truth sidecar"),
        ("wrong types", "corrupt ground-truth sidecar"),
    ],
)
def test_a_video_without_usable_sidecar_is_a_reject_and_is_retried(videos, tmp_path, damage, reason):
    sidecar = videos / "video1.json"
    good = sidecar.read_text()
    if damage == "missing":
        sidecar.unlink()
    elif damage == "truncated":
        sidecar.write_text(good[: len(good) // 2])
    else:
        sidecar.write_text(json.dumps({**json.loads(good), "hold_intervals": 5}))
    out = tmp_path / "out"
    summary = _build(videos, out)
    assert summary.rejected_videos == 1 and summary.sessions == 2
    assert list(_rejects(out)) == ["video1"] and reason in _rejects(out)["video1"]
    assert read_manifest(out)["video1"]["status"] == "rejected"

    sidecar.write_text(good)  # restored: the next run builds the video instead of skipping it
    summary = _build(videos, out)
    assert (summary.skipped, summary.processed, summary.rejected_videos) == (2, 1, 0)
    assert _rows(out) == ["video0/0", "video1/0", "video2/0"] and _rejects(out) == {}
    assert _card_examples(out) == 3


def test_a_video_whose_transitions_are_all_rejected_is_a_reject_with_the_reasons(videos, tmp_path):
    out = tmp_path / "out"
    config = SamplingConfig(strategy="equal_interval", interval=0.5)  # two frames per key state
    build_sessions([videos / "video0.mp4"], out, GroundTruthAnnotator(), config=config)
    assert "no transition could be annotated" in _rejects(out)["video0"]
    assert "key states" in _rejects(out)["video0"]


# =====================================================================================================
#                                       Truncated and too-short videos
# =====================================================================================================


def _faststart_counter_video(path: Path, seconds: int = 8, fps: int = 8) -> None:
    """A video with its index (moov) at the front, as web-ready files are: cut short, it still opens."""
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = fps
        for i in range(seconds * fps):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), (i * 4) % 256, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_a_truncated_faststart_video_is_a_reject_not_a_short_session(tmp_path):
    from diffusers_vincie.data.video.frames import probe_video

    path = tmp_path / "videos" / "cut.mp4"
    path.parent.mkdir()
    _faststart_counter_video(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.7)])  # cut at ~2.9 s: whole packets, no decode error
    assert probe_video(path).duration == pytest.approx(8, abs=0.2)  # the header still promises 8 s
    out = tmp_path / "out"
    summary = build_sessions([path], out, GroundTruthAnnotator(), config=GT_SAMPLING)
    assert summary.sessions == 0 and summary.rejected_videos == 1
    assert "truncated" in _rejects(out)["cut"]


def test_a_video_too_short_for_two_frames_is_a_reject(tmp_path):
    path = tmp_path / "videos" / "short.mp4"
    path.parent.mkdir()
    _faststart_counter_video(path, seconds=1)
    out = tmp_path / "out"
    build_sessions([path], out, GroundTruthAnnotator(), config=SamplingConfig(strategy="equal_interval", interval=3.0))
    assert "too short" in _rejects(out)["short"]


# =====================================================================================================
#                                    A torn manifest line (a crash mid-append)
# =====================================================================================================


def test_a_torn_last_manifest_line_is_dropped_and_the_card_matches_the_rows(tmp_path):
    videos = _videos(tmp_path / "videos", 4)
    out = tmp_path / "out"
    _build(videos, out, shard_size=1)
    manifest = out / "manifest" / "rank-000.jsonl"
    lines = manifest.read_text().splitlines()
    torn = lines[-1][: len(lines[-1]) // 2]
    manifest.write_text("\n".join(lines[:-1] + [torn]))  # no newline: what a kill mid-append leaves
    (out / "README.md").unlink()

    summary = _build(videos, out, shard_size=1)
    assert summary.processed == 1 and summary.sessions == 4  # the torn video is redone, once
    assert _rows(out) == [f"video{i}/0" for i in range(4)]
    assert _card_examples(out) == 4
    assert all(json.loads(line) for line in manifest.read_text().splitlines())  # nothing glued together


def test_garbage_manifest_lines_do_not_stop_a_build(tmp_path):
    videos = _videos(tmp_path / "videos", 2)
    out = tmp_path / "out"
    _build(videos, out)
    with open(out / "manifest" / "rank-000.jsonl", "a") as manifest:
        manifest.write('[1, 2]\n{"shard": null}\n"text"\n')
    summary = _build(videos, out)
    assert (summary.skipped, summary.sessions) == (2, 2)


# =====================================================================================================
#                                   CLI: one line, exit 2, before any decoding
# =====================================================================================================


def _cli():
    return load_script(REPO / "dataset_scripts" / "build_sessions.py", "build_sessions_cli")


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--interval", "0"], "interval"),
        (["--interval", "nan"], "interval"),
        (["--min-frames", "1"], "min_frames"),
        (["--min-frames", "5", "--max-frames", "3"], "max_frames"),
        (["--max-side", "8"], "max_side"),
        (["--scene-threshold", "2"], "scene_threshold"),
        (["--shard-size", "0"], "--shard-size"),
        (["--encode-workers", "0"], "--encode-workers"),
        (["--max-attempts", "0"], "--max-attempts"),
        (["--annotator", "vlm"], "--vlm-model"),
    ],
)
def test_bad_build_flags_are_one_line_and_exit_2_before_decoding(videos, tmp_path, capsys, extra, words):
    out = tmp_path / "out"
    args = [str(videos), "--output", str(out), "--annotator", "ground_truth", *extra]
    with pytest.raises(SystemExit) as exit_info:
        _cli().main(args)
    assert exit_info.value.code == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("build_sessions.py: error:") and words in line, line
    assert not out.exists()  # nothing was started


@pytest.mark.parametrize("bad_input", ["missing", "empty folder", "output is a file", "output is someone's folder"])
def test_bad_build_inputs_are_one_line_and_exit_2(tmp_path, videos, capsys, bad_input):
    out = tmp_path / "out"
    inputs = str(videos)
    if bad_input == "missing":
        inputs = str(tmp_path / "nowhere")
    elif bad_input == "empty folder":
        (tmp_path / "empty").mkdir()
        inputs = str(tmp_path / "empty")
    elif bad_input == "output is a file":
        out.write_text("mine")
    else:
        out.mkdir()
        (out / "README.md").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        _cli().main([inputs, "--output", str(out), "--annotator", "ground_truth"])
    assert exit_info.value.code == 2
    line = one_error_line(capsys.readouterr().err)
    assert "inputs" in line or "--output" in line, line
    if bad_input == "output is a file":
        assert out.read_text() == "mine"
    elif bad_input != "missing" and bad_input != "empty folder":
        assert sorted(p.name for p in out.iterdir()) == ["README.md"] and (out / "README.md").read_text() == "mine"


# =====================================================================================================
#                             One bad video is one reject, never the end of the build
# =====================================================================================================


class _EveryTransition(GroundTruthAnnotator):
    """Annotates any transition (no sidecar needed), so that only the frames can fail."""

    def annotate(self, transition):
        from diffusers_vincie.data.video.annotate import TransitionAnnotation

        return TransitionAnnotation(instruction="change it")


def _video_whose_frames_change_size(path: Path) -> None:
    """Two MPEG-TS segments of different sizes, back to back (what a stream that switches resolution gives)."""
    data = b""
    for first, (size, shade) in enumerate(((32, 40), (48, 200))):
        segment = path.with_name(f"segment{size}.ts")
        with av.open(str(segment), "w", format="mpegts") as container:
            stream = container.add_stream("libx264", rate=8)
            stream.width = stream.height = size
            stream.pix_fmt = "yuv420p"
            for index in range(16 * first, 16 * first + 16):  # one time line across the two segments
                frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), shade, np.uint8), format="rgb24")
                frame.pts, frame.time_base = index, Fraction(1, 8)
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        data += segment.read_bytes()
        segment.unlink()
    path.write_bytes(data)


@pytest.mark.parametrize(
    "damage, reason",
    [
        ("sidecar is a JSON list", "no usable ground-truth sidecar"),
        ("int instructions", "instructions[0]"),
        ("numeric masks", "no usable ground-truth sidecar"),
        ("frames change size", "size"),
    ],
)
def test_one_bad_video_is_a_reject_with_its_reason_and_the_build_goes_on(videos, tmp_path, damage, reason):
    sidecar = videos / "video1.json"
    truth = json.loads(sidecar.read_text())
    annotator = GroundTruthAnnotator()
    if damage == "sidecar is a JSON list":
        sidecar.write_text(json.dumps([truth]))
    elif damage == "int instructions":
        sidecar.write_text(json.dumps({**truth, "instructions": [5 for _ in truth["instructions"]]}))
    elif damage == "numeric masks":
        sidecar.write_text(json.dumps({**truth, "source_masks": [7 for _ in truth["source_masks"]]}))
    else:
        (videos / "video1.mp4").unlink()
        _video_whose_frames_change_size(videos / "video1.mp4")
        annotator = _EveryTransition()
    out = tmp_path / "out"
    for _ in range(2):  # the rerun retries the reject and goes past it again
        summary = build_sessions([videos], out, annotator, config=GT_SAMPLING)
        assert summary.rejected_videos == 1 and summary.sessions >= 2
        assert list(_rejects(out)) == ["video1"] and reason in _rejects(out)["video1"], _rejects(out)
