"""Streaming sessions for training (``diffusers_vincie.training.streaming``): every session once per epoch over
processes x dataloader workers, and an exact mid-epoch resume through the saved data state."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from diffusers_vincie.data.loaders import records_to_dataset
from diffusers_vincie.data.shapes.world import ShapesWorld
from diffusers_vincie.training import SequenceConfig
from diffusers_vincie.training.streaming import StreamingBatches, StreamingSessions, session_data_files

NUM_SESSIONS, NUM_SHARDS = 36, 8  # uneven shards (4 or 5 sessions): workers and processes drift apart in epochs


@pytest.fixture(scope="module")
def sharded_sessions(tmp_path_factory):
    """A sessions folder of 8 parquet shards of 4-5 synthetic sessions each (16x16, 3 edits, exact masks)."""
    folder = tmp_path_factory.mktemp("streamed") / "sessions"
    world = ShapesWorld(resolution=16, grid=2, max_objects=3)
    records = [world.sample_session(seed, num_turns=3).to_record() for seed in range(NUM_SESSIONS)]
    bounds = [round(i * NUM_SESSIONS / NUM_SHARDS) for i in range(NUM_SHARDS + 1)]
    for shard in range(NUM_SHARDS):
        rows = records_to_dataset(records[bounds[shard] : bounds[shard + 1]])
        rows.to_parquet(str(folder / "data" / f"train-{shard:05d}-of-{NUM_SHARDS:05d}.parquet"))
    return folder


def _sessions(folder, **kwargs) -> StreamingSessions:
    config = SequenceConfig(layout="block_causal", max_turns=3)
    return StreamingSessions.from_source(str(folder), "train", config, seed=3, **kwargs)


def _batches(folder, process_index, num_processes=2, num_workers=2, batch_size=3) -> StreamingBatches:
    return StreamingBatches(_sessions(folder), batch_size, num_processes, process_index, num_workers)


def _read(batches, count):
    """``count`` batches as (session id, epoch, micro-step, plan) tuples."""
    out, stream = [], iter(batches)
    for _ in range(count):
        planned = next(stream)
        out += [(p.sample.session_id, e, p.step, p.plan) for p, e in zip(planned, batches.epochs_seen)]
    return out


def test_the_shards_of_a_folder_and_their_length(sharded_sessions):
    files = session_data_files(str(sharded_sessions), "train")
    assert len(files) == NUM_SHARDS and all(f.endswith(".parquet") for f in files)
    assert len(_sessions(sharded_sessions)) == NUM_SESSIONS
    assert _sessions(sharded_sessions).session(2).frames.shape == (4, 16, 16, 3)


@pytest.mark.parametrize("num_processes", [2, 3])  # whole shards per process, or every 3rd session of all shards
def test_two_epochs_over_processes_and_workers_see_each_session_once_per_epoch(sharded_sessions, num_processes):
    """Over all processes x 2 workers, epoch 0 and epoch 1 each hold every session exactly once; no process runs
    dry (the streams continue into the next epoch)."""
    seen = []
    for rank in range(num_processes):
        seen += _read(_batches(sharded_sessions, rank, num_processes), 40 // num_processes)
    ids = {f"synthetic-{seed}/0" for seed in range(NUM_SESSIONS)}
    for epoch in (0, 1):
        counts = Counter(session for session, e, _, _ in seen if e == epoch)
        assert set(counts) == ids and set(counts.values()) == {1}, epoch
    epoch0 = [s for s, e, _, _ in seen if e == 0]
    epoch1 = [s for s, e, _, _ in seen if e == 1]
    assert epoch0 != epoch1  # the shard order changes with the epoch


def test_more_readers_than_shards_is_refused(sharded_sessions):
    with pytest.raises(ValueError, match="fewer than its 5 reader.*--dataloader_num_workers 5"):
        _batches(sharded_sessions, 0, num_processes=2, num_workers=5)


def test_resume_mid_epoch_continues_exactly(sharded_sessions, tmp_path):
    """A run stopped after 5 batches and restored from its saved JSON state reads the same following batches (same
    sessions, epochs, micro-steps and sequence plans) as the uninterrupted run, across the epoch boundary."""
    reference = _read(_batches(sharded_sessions, 1), 10)

    first = _batches(sharded_sessions, 1)
    head = _read(first, 5)
    assert head == reference[: len(head)]
    first.save(tmp_path)
    state = json.loads((tmp_path / "data_state_1.json").read_text())
    assert state["step"] == 5 and state["num_workers"] == 2

    resumed = _batches(sharded_sessions, 1)
    resumed.load(tmp_path)
    tail = _read(resumed, 5)
    assert head + tail == reference
    assert {e for _, e, _, _ in tail} == {0, 1}  # the resumed part crosses into epoch 1

    other_layout = _batches(sharded_sessions, 1, num_workers=1)
    with pytest.raises(ValueError, match="same number of processes and --dataloader_num_workers"):
        other_layout.load(tmp_path)
    with pytest.raises(ValueError, match="not saved by a streaming run"):
        _batches(sharded_sessions, 0).load(tmp_path)


# =====================================================================================================
#                                     The training script, streaming
# =====================================================================================================

SCRIPT = Path(__file__).resolve().parents[1] / "training_scripts" / "train_vincie.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _train_command(components: Path, sessions: Path, out: Path, steps: int) -> list[str]:
    return [
        sys.executable,
        str(SCRIPT),
        "--transformer_config",
        str(components / "transformer.json"),
        "--text_encoder_name_or_path",
        str(components / "text_encoder"),
        "--tokenizer_name_or_path",
        str(components / "tokenizer"),
        "--dataset_name",
        str(sessions),
        "--streaming",
        "--dataloader_num_workers",
        "2",
        "--resolution",
        "16",
        "--attention_layout",
        "block_causal",
        "--max_turns",
        "3",
        "--train_batch_size",
        "2",
        "--max_train_steps",
        str(steps),
        "--checkpointing_steps",
        "2",
        "--lr_scheduler",
        "constant",
        "--learning_rate",
        "2e-3",
        "--no_save_pipeline",
        "--seed",
        "0",
        "--output_dir",
        str(out),
        "--resume_from_checkpoint",
        "latest",
    ]


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def components(tmp_path_factory) -> Path:
    from diffusers_vincie.testing import write_tiny_components

    return write_tiny_components(tmp_path_factory.mktemp("components"))


def test_streaming_training_killed_mid_epoch_resumes_exactly(sharded_sessions, components, tmp_path):
    """train_vincie.py --streaming with 2 workers, SIGKILLed mid-epoch (36 sessions = 18 steps of 2) and resumed from
    its latest checkpoint: every step's loss equals the uninterrupted run's (same batches, plans, noise)."""
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    subprocess.run(
        _train_command(components, sharded_sessions, reference, 7), env=ENV, check=True, capture_output=True
    )
    expected = {r["step"]: r["loss"] for r in _log(reference)}
    assert sorted(expected) == list(range(1, 8))
    assert (reference / "checkpoint-6" / "data_state_0.json").is_file()

    proc = subprocess.Popen(
        _train_command(components, sharded_sessions, killed, 1000),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline, log = time.time() + 240, killed / "train_log.jsonl"
    while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(log.read_text().splitlines()) >= 3, "the run did not reach step 3 in time"
    assert list(killed.glob("checkpoint-*")), "no checkpoint to resume from"

    subprocess.run(_train_command(components, sharded_sessions, killed, 7), env=ENV, check=True, capture_output=True)
    records = _log(killed)
    assert [r["step"] for r in records] == list(range(1, 8))
    for r in records:
        assert r["loss"] == pytest.approx(expected[r["step"]], abs=1e-6), r["step"]


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--synthetic_world"], "--streaming reads a sessions dataset"),
        (["--dataset_name", "x", "--dataset_format", "pairwise"], "--streaming reads a sessions dataset"),
        (["--dataset_name", "x", "--max_train_samples", "4"], "--max_train_samples does not apply to --streaming"),
    ],
)
def test_streaming_flag_combinations_are_checked(components, tmp_path, extra, match):
    from conftest import load_script

    from diffusers_vincie.utils.cli import UsageError

    sys.path.insert(0, str(SCRIPT.parent))
    train = load_script(SCRIPT, "train_vincie")
    argv = _train_command(components, tmp_path, tmp_path / "run", 1)[2:]
    argv = argv[: argv.index("--dataset_name")] + argv[argv.index("--dataset_name") + 2 :] + extra
    with pytest.raises(UsageError, match=match):
        train.parse_args(argv)


def test_two_processes_stream_and_resume_under_accelerate_launch(sharded_sessions, components, tmp_path):
    """2 CPU processes (gloo) x 2 workers: each process saves its own data state, and a resumed run restores both."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    env = {**ENV, "ACCELERATE_USE_CPU": "1"}
    for steps in (2, 3):
        command = launch + _train_command(components, sharded_sessions, tmp_path, steps)[1:]
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]
    states = [json.loads((tmp_path / "checkpoint-2" / f"data_state_{rank}.json").read_text()) for rank in (0, 1)]
    assert [(s["process_index"], s["num_processes"], s["step"]) for s in states] == [(0, 2, 2), (1, 2, 2)]
    assert [r["step"] for r in _log(tmp_path)] == [1, 2, 3]


@pytest.mark.parametrize("streaming", [True, False])
def test_frames_are_resized_with_the_filter_the_flag_names(sharded_sessions, streaming):
    """``--image_interpolation_mode`` reaches both dataset kinds: nearest halves a 16-px frame by taking one pixel of
    each 2x2 block (the hard edges kept), bicubic blends the blocks at the shapes' edges; masks are nearest in
    both."""
    import argparse

    from diffusers_vincie.training.sources import build_dataset

    def session(mode):
        args = argparse.Namespace(
            synthetic_world=False,
            streaming=streaming,
            dataset_name=str(sharded_sessions),
            dataset_split="train",
            dataset_format="sessions",
            max_train_samples=None,
            seed=0,
            resolution=8,
            no_group_turns=False,
            image_interpolation_mode=mode,
        )
        return build_dataset(args, SequenceConfig(layout="block_causal", max_turns=3)).session(0)

    stored = _sessions(sharded_sessions).session(0)  # 16 px, as stored
    nearest, bicubic = session("nearest"), session("bicubic")
    assert nearest.frames.shape == bicubic.frames.shape == (4, 8, 8, 3)
    assert (nearest.frames == stored.frames[:, 1::2, 1::2]).all()
    assert (bicubic.frames != nearest.frames).any()
    assert (bicubic.target_masks == nearest.target_masks).all()
    assert (nearest.target_masks == stored.target_masks[:, 1::2, 1::2]).all()


def test_an_unknown_filter_is_refused_naming_the_argument(sharded_sessions):
    with pytest.raises(ValueError, match="`interpolation` must be one of"):
        _sessions(sharded_sessions, interpolation="cubic")
