"""Nothing of the user's is lost: checkpoint rotation waits for the new checkpoint, ``--overwrite_output_dir`` deletes
only what a run wrote, a re-saved session keeps the other files of its folder, and paths and locks of the shared
write helpers hold."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_bad_inputs_training import _args, _run, _steps, _train_module

from diffusers_vincie.utils.io import (
    OutputLockedError,
    UnsafePathError,
    check_plain_name,
    exclusive_lock,
    resolve_inside,
)

# =====================================================================================================
#                                  Checkpoint rotation and --overwrite_output_dir
# =====================================================================================================


@pytest.fixture(scope="module")
def components(tmp_path_factory) -> Path:
    from diffusers_vincie.testing import write_tiny_components

    return write_tiny_components(tmp_path_factory.mktemp("components"))


def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint_and_latest_resumes_from_it(
    components, tmp_path, monkeypatch
):
    from accelerate import Accelerator

    from diffusers_vincie.training.checkpoints import find_checkpoint, incomplete_reason

    saves = []
    original = Accelerator.save_state

    def save_state_filling_the_disk(self, *args, **kwargs):
        saves.append(1)
        if len(saves) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, *args, **kwargs)

    out = tmp_path / "run"
    monkeypatch.setattr(Accelerator, "save_state", save_state_filling_the_disk)
    with pytest.raises(OSError, match="No space left"):
        _run(components, out, "--checkpoints_total_limit", "1")
    monkeypatch.undo()
    assert incomplete_reason(out / "checkpoint-2") is None  # the limit of 1 did not delete it before the new one
    assert find_checkpoint(out, "latest") == out / "checkpoint-2"

    _run(components, out, "--checkpoints_total_limit", "1", "--resume_from_checkpoint", "latest")
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4"]  # rotated once the new one was whole
    assert _steps(out) == [1, 2, 3, 4]


def test_rotation_keeps_the_newest_complete_checkpoints_and_never_an_incomplete_one_alone(tmp_path):
    from diffusers_vincie.training.checkpoints import COMPLETE_FILE, rotate_checkpoints

    for step in (2, 4, 6):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x")
        (folder / COMPLETE_FILE).write_text(json.dumps({"files": {"model.safetensors": 1}}))
    (tmp_path / "checkpoint-8").mkdir()  # a save killed before its marker
    assert [p.name for p in rotate_checkpoints(tmp_path, 1)] == ["checkpoint-2", "checkpoint-4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-6", "checkpoint-8"]


def test_a_second_run_into_the_same_output_dir_is_refused_while_the_first_runs(components, tmp_path):
    from diffusers_vincie.utils.cli import UsageError

    out = tmp_path / "run"
    with exclusive_lock(out / ".train.lock", "a first run"):
        with pytest.raises(UsageError, match="--output_dir .* is being written by another process"):
            _run(components, out)
        assert sorted(os.listdir(out)) == [".train.lock"]
    _run(components, out, "--max_train_steps", "2")  # the lock is gone with the first run; a fresh start is allowed
    assert _steps(out) == [1, 2]


def test_latest_refuses_to_start_over_when_only_an_interrupted_save_exists(tmp_path):
    from diffusers_vincie.training.checkpoints import CheckpointError, find_checkpoint

    (tmp_path / ".checkpoint-2.tmp").mkdir()
    with pytest.raises(CheckpointError, match="no complete checkpoint.*checkpoint-2.tmp"):
        find_checkpoint(tmp_path, "latest")


def test_overwrite_output_dir_keeps_the_users_validation_and_pipeline_files(components, tmp_path):
    out = tmp_path / "run"
    _run(components, out, "--validation_steps", "2", "--num_validation_sessions", "1")
    assert (out / "validation" / "step-2.png").is_file()
    (out / "validation" / "my_plot.png").write_bytes(b"mine")
    (out / "pipeline").mkdir()
    (out / "pipeline" / "notes.txt").write_text("my own pipeline notes")

    _run(components, out, "--overwrite_output_dir", "--max_train_steps", "2")
    assert (out / "validation" / "my_plot.png").read_bytes() == b"mine"
    assert (out / "pipeline" / "notes.txt").read_text() == "my own pipeline notes"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"] and _steps(out) == [1, 2]


def test_a_run_that_would_replace_a_pipeline_folder_it_did_not_write_is_refused_before_any_work(components, tmp_path):
    from diffusers_vincie.training.outputs import clear_run_outputs, record_output
    from diffusers_vincie.utils.cli import UsageError

    out = tmp_path / "run"
    (out / "pipeline").mkdir(parents=True)
    (out / "pipeline" / "model_index.json").write_text("{}")
    (out / "checkpoint-2").mkdir()
    train = _train_module()
    args = [a for a in _args(components, out, "--overwrite_output_dir") if a != "--no_save_pipeline"]
    with pytest.raises(UsageError, match="holds pipeline, which no training run wrote"):
        train.main(train.parse_args(args))
    assert (out / "pipeline" / "model_index.json").read_text() == "{}" and (out / "checkpoint-2").is_dir()

    record_output(out, "pipeline")  # what a run records before it writes its pipeline
    clear_run_outputs(out, "train_log.jsonl")
    assert sorted(os.listdir(out)) == [".train.lock"]  # the run lock stays (a lock file is never deleted)


# =====================================================================================================
#                                         Paths from data and locks
# =====================================================================================================


@pytest.mark.parametrize("bad", ["../outside.png", "/etc/passwd", "a/../../outside.png", "", None, 3])
def test_resolve_inside_refuses_paths_that_leave_their_folder(tmp_path, bad):
    with pytest.raises(UnsafePathError, match="field"):
        resolve_inside(tmp_path, bad, "field")


def test_resolve_inside_follows_symlinks(tmp_path):
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"secret")
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "in.png").write_bytes(b"ok")
    (folder / "out.png").symlink_to(outside)
    (folder / "alias.png").symlink_to(folder / "in.png")
    assert resolve_inside(folder, "sub/../in.png", "x") == folder / "sub/../in.png"
    assert resolve_inside(folder, "alias.png", "x").read_bytes() == b"ok"
    with pytest.raises(UnsafePathError, match="leads outside"):
        resolve_inside(folder, "out.png", "x")


@pytest.mark.parametrize("bad", ["..", ".", "", "a/b", "a\\b", "/abs", "x\0y", True, None])
def test_check_plain_name(bad):
    with pytest.raises(UnsafePathError):
        check_plain_name(bad, "index")
    assert check_plain_name(7, "index") == "7" and check_plain_name("img_01", "index") == "img_01"


def test_a_second_writer_is_refused_and_a_killed_holder_does_not_block(tmp_path):
    lock = tmp_path / "out" / ".lock"
    with exclusive_lock(lock, "out"), pytest.raises(OutputLockedError, match=f"pid {os.getpid()}"):
        with exclusive_lock(lock, "out"):
            pass
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
            "print('held', flush=True); time.sleep(60)",
            str(lock),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputLockedError):
            with exclusive_lock(lock, "out"):
                pass
    finally:
        holder.kill()  # kill -9: the kernel drops its lock
        holder.wait(timeout=30)
    with exclusive_lock(lock, "out"):
        assert lock.read_text() == str(os.getpid())


def test_a_killed_holder_does_not_block_while_its_forked_children_live(tmp_path):
    """A run's DataLoader workers are forked children of the lock holder; after ``kill -9`` of the holder they live
    on for seconds, and the lock must not live with them."""
    lock = tmp_path / "out" / ".lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import multiprocessing, sys, time\n"
            "from diffusers_vincie.utils.io import exclusive_lock\n"
            "with exclusive_lock(sys.argv[1], 'out'):\n"
            "    worker = multiprocessing.get_context('fork').Process(target=time.sleep, args=(60,))\n"
            "    worker.start()\n"
            "    print(worker.pid, flush=True)\n"
            "    time.sleep(60)\n",
            str(lock),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    worker = int(holder.stdout.readline())
    try:
        with pytest.raises(OutputLockedError, match=f"pid {holder.pid}"):
            with exclusive_lock(lock, "out"):
                pass
        holder.kill()
        holder.wait(timeout=30)
        os.kill(worker, 0)  # the forked child is still alive
        with exclusive_lock(lock, "out"):
            assert lock.read_text() == str(os.getpid())
    finally:
        holder.kill()
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker, signal.SIGKILL)


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# =====================================================================================================
#                                          Saved sessions
# =====================================================================================================


@pytest.fixture(scope="module")
def session_pipe():
    from diffusers_vincie.testing import tiny_pipeline

    pipe = tiny_pipeline(default_resolution=32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def edited(session_pipe):
    import numpy as np
    import PIL.Image

    image = PIL.Image.fromarray((np.random.RandomState(0).rand(32, 32, 3) * 255).astype(np.uint8))
    session = session_pipe.start_session(image)
    session.edit("add a red circle", num_inference_steps=1)
    return session


def test_resaving_a_session_keeps_the_users_files_in_its_folder(session_pipe, edited, tmp_path):
    from diffusers_vincie.pipelines.session import VincieEditingSession

    folder = tmp_path / "session"
    edited.save(folder)
    (folder / "notes.txt").write_text("my notes")
    (folder / "renders").mkdir()
    (folder / "renders" / "final.png").write_bytes(b"render")
    (folder / "turn_1.txt").write_text("not the session's")
    mine = _tree(folder)

    edited.branch(0).save(folder)  # fewer turns: turn_1.png is the session's own stale file
    assert not (folder / "turn_1.png").exists()
    assert {name: mine[name] for name in ("notes.txt", "renders/final.png", "turn_1.txt")} == {
        name: _tree(folder)[name] for name in ("notes.txt", "renders/final.png", "turn_1.txt")
    }
    assert len(VincieEditingSession.load(session_pipe, folder).turns) == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left

    outside = tmp_path / "outside.png"
    outside.write_bytes(b"not yours to overwrite")
    (folder / "source_0.png").unlink()
    (folder / "source_0.png").symlink_to(outside)  # a re-save replaces the link, never writes through it
    edited.save(folder)
    assert len(VincieEditingSession.load(session_pipe, folder).turns) == 1 and (folder / "notes.txt").is_file()
    assert outside.read_bytes() == b"not yours to overwrite" and not (folder / "source_0.png").is_symlink()


@pytest.mark.parametrize("victim", ["turn_1.png", "session.json", "session.safetensors"])
def test_a_saved_session_file_that_is_a_symlink_out_of_its_folder_is_refused(session_pipe, edited, tmp_path, victim):
    from diffusers_vincie.pipelines.session import VincieEditingSession

    folder = tmp_path / "session"
    edited.save(folder)
    outside = tmp_path / f"outside-{victim}"
    outside.write_bytes((folder / victim).read_bytes())  # same bytes: only the symlink check can catch it
    (folder / victim).unlink()
    (folder / victim).symlink_to(outside)
    with pytest.raises(UnsafePathError, match="leads outside"):
        VincieEditingSession.load(session_pipe, folder)


# =====================================================================================================
#                                       Session builds (data/video/build.py)
# =====================================================================================================


@pytest.fixture
def small_videos(tmp_path) -> Path:
    from diffusers_vincie.data.shapes.video import render_video
    from diffusers_vincie.data.shapes.world import ShapesWorld

    world = ShapesWorld(resolution=32)
    for seed in range(3):
        render_video(world, world.sample_session(seed, num_turns=2), tmp_path / "videos" / f"video{seed}.mp4", fps=8)
    return tmp_path / "videos"


def _build(videos: Path, out: Path, **kwargs):
    from diffusers_vincie.data.video.annotate import GroundTruthAnnotator
    from diffusers_vincie.data.video.build import SamplingConfig, build_sessions

    config = SamplingConfig(strategy="equal_interval", interval=1.0)
    return build_sessions([videos], out, GroundTruthAnnotator(), config=config, **kwargs)


def test_a_rebuild_removes_only_its_own_orphan_shards(small_videos, tmp_path):
    out = tmp_path / "out"
    _build(small_videos, out)
    shards = sorted(p.name for p in (out / "data").iterdir())
    (out / "data" / "NOTES.txt").write_text("my notes")
    (out / "data" / "extra.parquet").write_bytes(b"mine")
    (out / "data" / "train-0123abcd-r000-00007.parquet").write_bytes(b"a shard of a killed build")
    summary = _build(small_videos, out)
    assert summary.sessions == 3 and summary.skipped == 3
    assert sorted(p.name for p in (out / "data").iterdir()) == sorted([*shards, "NOTES.txt", "extra.parquet"])
    assert (out / "data" / "NOTES.txt").read_text() == "my notes"


def test_a_second_build_into_the_same_folder_is_refused_while_the_first_runs(small_videos, tmp_path):
    from datasets import load_dataset

    out = tmp_path / "out"
    refusals = []

    def start_a_second_build(video_id: str) -> None:
        if not refusals:
            with pytest.raises(OutputLockedError, match="being written by another process") as refused:
                _build(small_videos, out)
            refusals.append(str(refused.value))

    summary = _build(small_videos, out, on_video_done=start_a_second_build, shard_size=1)
    assert len(refusals) == 1 and summary.sessions == 3
    rows = load_dataset(str(out), split="train", cache_dir=str(tmp_path / "hf_cache"))["session_id"]
    assert sorted(rows) == ["video0/0", "video1/0", "video2/0"]  # no duplicate rows, no shard deleted
    assert _build(small_videos, out).skipped == 3  # the lock is gone with the first build


def test_the_build_cli_refuses_a_concurrent_build_in_one_line(small_videos, tmp_path, capsys):
    from conftest import load_script, one_error_line

    out = tmp_path / "out"
    cli = load_script(Path(__file__).resolve().parents[1] / "dataset_scripts" / "build_sessions.py", "build_cli")
    with exclusive_lock(out / "manifest" / ".build.lock", "test"), pytest.raises(SystemExit) as exit_info:
        cli.main([str(small_videos), "--output", str(out), "--annotator", "ground_truth"])
    assert exit_info.value.code == 2
    assert "another process" in one_error_line(capsys.readouterr().err)
    assert sorted(os.listdir(out)) == ["manifest"] and os.listdir(out / "manifest") == [".build.lock"]


# =====================================================================================================
#                                     The shapes text encoder's folder
# =====================================================================================================


def test_the_shapes_text_encoder_never_replaces_a_folder_of_other_files(tmp_path, capsys, monkeypatch):
    from conftest import load_script, one_error_line

    out = tmp_path / "text"
    out.mkdir()
    (out / "thesis.tex").write_text("mine")
    (out / "tokenizer").mkdir()
    cli = load_script(
        Path(__file__).resolve().parents[1] / "training_scripts" / "build_shapes_text_encoder.py", "bste"
    )
    monkeypatch.setattr(sys, "argv", ["build_shapes_text_encoder.py", "--output_dir", str(out)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2 and "thesis.tex" in one_error_line(capsys.readouterr().err)
    assert (out / "thesis.tex").read_text() == "mine" and sorted(os.listdir(out)) == ["thesis.tex", "tokenizer"]


def test_synthetic_videos_are_not_written_into_a_folder_of_other_files(tmp_path, capsys):
    from conftest import load_script, one_error_line

    cli = load_script(Path(__file__).resolve().parents[1] / "dataset_scripts" / "make_synthetic_videos.py", "msv")
    out = tmp_path / "videos"
    cli.main(["--output-dir", str(out), "--num-videos", "1", "--no-progress"])
    cli.main(["--output-dir", str(out), "--num-videos", "2", "--no-progress"])  # its own folder: adds a video
    assert sorted(p.suffix for p in out.iterdir()) == [".json", ".json", ".json", ".mp4", ".mp4"]
    (out / "my_world.json").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--output-dir", str(out), "--num-videos", "3", "--no-progress"])
    assert exit_info.value.code == 2 and "my_world.json" in one_error_line(capsys.readouterr().err)
    assert (out / "my_world.json").read_text() == "mine" and not (out / "synth_2.mp4").exists()
