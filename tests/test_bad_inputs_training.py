"""Bad inputs and faults of training: checkpoints never unpickle code, a broken newest checkpoint falls back to the
last complete one, a fresh run never writes into another run, and every bad flag is a clear error before any work."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "training_scripts"
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
}


def _train_module():
    sys.path.insert(0, str(SCRIPTS))
    return load_script(SCRIPTS / "train_vincie.py", "train_vincie")


def _reset_accelerate():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


class MarkerPickle:
    """Unpickling this object creates ``path``: what an attacker's checkpoint file would do (with any command)."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def _plant(path: Path, marker: Path) -> None:
    """Writes a marker-writing pickle at ``path`` (torch format) and checks it is live: a plain load runs it."""
    torch.save(MarkerPickle(marker), path)
    torch.load(path, weights_only=False)
    assert marker.exists(), "the planted pickle must run code when unpickled, or the test proves nothing"
    marker.unlink()


def _reseal(folder: Path) -> None:
    """Rewrites the completeness marker to match the folder as it is now (an attacker can do that too)."""
    from diffusers_vincie.training.checkpoints import COMPLETE_FILE

    record = json.loads((folder / COMPLETE_FILE).read_text())
    record["files"] = {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file() and p.name != COMPLETE_FILE}
    (folder / COMPLETE_FILE).write_text(json.dumps(record))


@pytest.fixture(scope="module")
def components(tmp_path_factory) -> Path:
    from diffusers_vincie.testing import write_tiny_components

    return write_tiny_components(tmp_path_factory.mktemp("components"))


def _args(components: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--transformer_config",
        str(components / "transformer.json"),
        "--text_encoder_name_or_path",
        str(components / "text_encoder"),
        "--tokenizer_name_or_path",
        str(components / "tokenizer"),
        "--output_dir",
        str(out),
        "--train_batch_size",
        "2",
        "--seed",
        "0",
        "--synthetic_world",
        "--resolution",
        "16",
        "--synthetic_world_config",
        '{"grid": 2}',
        "--synthetic_num_sessions",
        "8",
        "--synthetic_num_turns",
        "2",
        "--attention_layout",
        "block_causal",
        "--max_train_steps",
        "4",
        "--checkpointing_steps",
        "2",
        "--use_ema",
        "--no_save_pipeline",
        "--lr_scheduler",
        "constant",
        "--learning_rate",
        "1e-3",
        *extra,
    ]


def _run(components: Path, out: Path, *extra: str) -> dict:
    train = _train_module()
    _reset_accelerate()
    return train.main(train.parse_args(_args(components, out, *extra)))


def _steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def finished_run(components, tmp_path_factory) -> Path:
    """4 steps with EMA, checkpoints at 2 and 4."""
    out = tmp_path_factory.mktemp("run") / "run"
    _run(components, out)
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    return out


# =====================================================================================================
#                                     Checkpoints hold nothing that unpickles
# =====================================================================================================


def test_checkpoints_are_safetensors_and_json_with_a_completeness_marker(finished_run):
    from safetensors.torch import load_file

    from diffusers_vincie.training.checkpoints import (
        COMPLETE_FILE,
        EMA_FILE,
        incomplete_reason,
    )

    folder = finished_run / "checkpoint-4"
    assert not list(folder.glob("custom_checkpoint_*"))
    assert incomplete_reason(folder) is None
    assert json.loads((folder / COMPLETE_FILE).read_text())["step"] == 4
    shadow = load_file(folder / EMA_FILE)
    model = load_file(folder / "model.safetensors")
    assert len(shadow) == len(model) and all(torch.isfinite(t).all() for t in shadow.values())
    assert not list(finished_run.glob(".checkpoint-*"))


@pytest.mark.parametrize(
    "victim", ["custom_checkpoint_0.pkl", "optimizer.bin", "scheduler.bin", "random_states_0.pkl"]
)
def test_a_marker_writing_pickle_in_a_checkpoint_never_runs(components, run_copy, tmp_path, victim):
    """The repro of the issue (a pickled EMA replaced by code), and the same for each file accelerate loads with
    torch.load: resuming runs none of them and the error names the file."""
    from diffusers_vincie.training.checkpoints import CheckpointError

    marker = tmp_path / "pwned"
    folder = run_copy / "checkpoint-4"
    _plant(folder / victim, marker)
    _reseal(folder)
    with pytest.raises(CheckpointError) as error:
        _run(components, run_copy, "--resume_from_checkpoint", "latest", "--max_train_steps", "6")
    assert not marker.exists()
    message = str(error.value)
    assert "checkpoint-4" in message and (
        victim in message or "weights_only" in message.lower() or "unpickl" in message.lower()
    ), message


def test_a_marker_writing_model_bin_instead_of_safetensors_never_runs(components, run_copy, tmp_path):
    from diffusers_vincie.training.checkpoints import CheckpointError

    marker = tmp_path / "pwned"
    folder = run_copy / "checkpoint-4"
    (folder / "model.safetensors").unlink()
    _plant(folder / "pytorch_model.bin", marker)
    _reseal(folder)
    with pytest.raises(CheckpointError, match="checkpoint-4"):
        _run(components, run_copy, "--resume_from_checkpoint", "latest", "--max_train_steps", "6")
    assert not marker.exists()


def test_legacy_pickled_ema_is_refused_and_the_migration_reads_it_without_code(run_copy, tmp_path):
    from diffusers_vincie.training.checkpoints import (
        EMA_FILE,
        CheckpointError,
        find_checkpoint,
        load_ema_shadow,
        migrate_legacy_checkpoint,
    )

    folder = run_copy / "checkpoint-4"
    shadow, scalars = load_ema_shadow(folder / EMA_FILE)
    (folder / EMA_FILE).unlink()
    torch.save({**scalars, "shadow_params": shadow}, folder / "custom_checkpoint_0.pkl")  # the old layout
    with pytest.raises(CheckpointError, match="--migrate"):
        find_checkpoint(run_copy, "latest")
    migrate_legacy_checkpoint(folder)
    assert find_checkpoint(run_copy, "latest") == folder
    migrated, _ = load_ema_shadow(folder / EMA_FILE)
    assert all(torch.equal(a, b) for a, b in zip(migrated, shadow))

    marker = tmp_path / "pwned"
    _plant(run_copy / "checkpoint-2" / "custom_checkpoint_0.pkl", marker)
    with pytest.raises(CheckpointError, match="not a plain EMA state"):
        migrate_legacy_checkpoint(run_copy / "checkpoint-2")
    assert not marker.exists()


# =====================================================================================================
#                                     A broken newest checkpoint falls back
# =====================================================================================================


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage", ["truncated model", "missing optimizer", "no marker"])
def test_latest_skips_a_broken_newest_checkpoint_with_a_warning(run_copy, caplog, damage):
    from diffusers_vincie.training.checkpoints import COMPLETE_FILE, find_checkpoint

    folder = run_copy / "checkpoint-4"
    if damage == "truncated model":
        _truncate(folder / "model.safetensors")
    elif damage == "missing optimizer":
        (folder / "optimizer.bin").unlink()
    else:
        (folder / COMPLETE_FILE).unlink()
    with caplog.at_level("WARNING"):
        assert find_checkpoint(run_copy, "latest") == run_copy / "checkpoint-2"
    assert "checkpoint-4" in caplog.text and "Skipping incomplete" in caplog.text


def test_an_empty_newest_checkpoint_folder_is_skipped(run_copy):
    from diffusers_vincie.training.checkpoints import find_checkpoint

    (run_copy / "checkpoint-6").mkdir()
    assert find_checkpoint(run_copy, "latest") == run_copy / "checkpoint-4"


def test_a_named_incomplete_checkpoint_is_a_clear_error(run_copy):
    from diffusers_vincie.training.checkpoints import CheckpointError, find_checkpoint

    _truncate(run_copy / "checkpoint-4" / "model.safetensors")
    with pytest.raises(CheckpointError, match="checkpoint-4 is incomplete: model.safetensors has"):
        find_checkpoint(run_copy, "checkpoint-4")


def test_latest_with_no_complete_checkpoint_refuses_instead_of_starting_over(run_copy):
    from diffusers_vincie.training.checkpoints import CheckpointError, find_checkpoint

    for name in ("checkpoint-2", "checkpoint-4"):
        (run_copy / name / "optimizer.bin").unlink()
    with pytest.raises(CheckpointError, match="no complete checkpoint.*--overwrite_output_dir"):
        find_checkpoint(run_copy, "latest")


@pytest.mark.parametrize("name", ["checkpoint-99", "not-a-checkpoint"])
def test_a_missing_or_misnamed_checkpoint_is_a_clear_error(run_copy, name):
    from diffusers_vincie.training.checkpoints import CheckpointError, find_checkpoint

    if name == "not-a-checkpoint":
        (run_copy / name).mkdir()
    with pytest.raises(CheckpointError, match=f"--resume_from_checkpoint.*{name}"):
        find_checkpoint(run_copy, name)


def test_resume_after_a_truncated_newest_checkpoint_continues_from_the_last_complete_one(components, run_copy):
    """The newest checkpoint truncated (a crash or a partial copy) and a torn log line: the resume uses checkpoint-2,
    the log is cut back to step 2, and every step is logged once."""
    _truncate(run_copy / "checkpoint-4" / "model.safetensors")
    with open(run_copy / "train_log.jsonl", "a") as log:
        log.write('{"step": 5, "lo')  # a kill mid-append
    result = _run(components, run_copy, "--resume_from_checkpoint", "latest")
    assert result["global_step"] == 4
    assert _steps(run_copy) == [1, 2, 3, 4]


# =====================================================================================================
#                                     A fresh run never writes into another run
# =====================================================================================================


def test_a_fresh_run_refuses_a_used_output_dir_and_leaves_it_as_it_was(components, run_copy):
    train = _train_module()
    before = sorted((p.relative_to(run_copy), p.stat().st_size) for p in run_copy.rglob("*") if p.is_file())
    with pytest.raises(ValueError, match="--output_dir .* is not empty.*--resume_from_checkpoint latest"):
        train.parse_args(_args(components, run_copy))
    after = sorted((p.relative_to(run_copy), p.stat().st_size) for p in run_copy.rglob("*") if p.is_file())
    assert before == after


def test_overwrite_output_dir_starts_over_without_mixing_runs(components, run_copy):
    (run_copy / "notes.txt").write_text("mine")
    (run_copy / "checkpoint-40").mkdir()  # from a longer old run: must not survive to be resumed later
    _run(components, run_copy, "--overwrite_output_dir", "--max_train_steps", "2")
    assert sorted(p.name for p in run_copy.glob("checkpoint-*")) == ["checkpoint-2"]
    assert _steps(run_copy) == [1, 2]
    assert (run_copy / "notes.txt").read_text() == "mine"


# =====================================================================================================
#                                            Bad flags
# =====================================================================================================


@pytest.mark.parametrize(
    "extra, flag",
    [
        (["--max_train_steps", "-5"], "--max_train_steps"),
        (["--max_train_steps", "0"], "--max_train_steps"),
        (["--checkpointing_steps", "0"], "--checkpointing_steps"),
        (["--learning_rate", "nan"], "--learning_rate"),
        (["--learning_rate=-1e-3"], "--learning_rate"),
        (["--ema_decay", "1.5"], "--ema_decay"),
        (["--text_dropout", "2"], "--text_dropout"),
        (["--text_dropout_with_masks=-0.5"], "--text_dropout_with_masks"),
        (["--mask_probability=-0.1"], "--mask_probability"),
        (["--max_grad_norm", "inf"], "--max_grad_norm"),
        (["--resolution", "0"], "--resolution"),
        (["--validation_steps=-1"], "--validation_steps"),
        (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps"),
        (["--train_batch_size", "0"], "--train_batch_size"),
        (["--min_turns", "3", "--max_turns", "2"], "--min_turns"),
        (["--task_weights", "a,b,c"], "--task_weights"),
        (["--task_weights", "0,0,0"], "--task_weights"),
        (["--task_weights", "1,-1,1"], "--task_weights"),
        (["--resume_from_checkpoint", "latest", "--overwrite_output_dir"], "--overwrite_output_dir"),
        (["--transformer_config", "/missing/transformer.json"], "--transformer_config"),
        (["--synthetic_world_config", "{bad"], "--synthetic_world_config"),
        (["--synthetic_world_config", "[1, 2]"], "--synthetic_world_config"),
        (["--lr_scheduler", "cosinus"], "--lr_scheduler"),
        (["--lr_decay_steps", "0"], "--lr_decay_steps"),
        (["--max_train_steps", "4", "--lr_decay_steps", "3"], "--lr_decay_steps"),
        (["--adam_beta2", "1.5"], "--adam_beta2"),
        (["--scheduler_shift", "0"], "--scheduler_shift"),
        (["--report_to", "tensorbored"], "--report_to"),
        (["--max_text_length", "1"], "--max_text_length"),
        (["--seed=-1"], "--seed"),
        (["--text_encoder_name_or_path", "/missing/text_encoder"], "--text_encoder_name_or_path"),
        (["--vae_name_or_path", "/missing/vae"], "--vae_name_or_path"),
    ],
)
def test_bad_flags_are_clear_errors_naming_the_flag(components, tmp_path, extra, flag):
    from diffusers_vincie.utils.cli import UsageError

    train = _train_module()
    with pytest.raises(UsageError) as error:
        train.parse_args(_args(components, tmp_path / "run") + extra)
    assert flag in str(error.value)


def test_output_dir_that_is_a_file_is_a_clear_error(components, tmp_path):
    from diffusers_vincie.utils.cli import UsageError

    (tmp_path / "run").write_text("not a folder")
    with pytest.raises(UsageError, match="--output_dir .* is a file"):
        _train_module().parse_args(_args(components, tmp_path / "run"))


def test_the_cli_prints_one_line_and_exits_2_before_any_work(components, tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, str(SCRIPTS / "train_vincie.py"), *_args(components, out, "--max_train_steps", "-5")],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr  # (the environment may log unrelated library warnings first)
    assert result.stderr.strip().splitlines()[-1] == "train_vincie.py: error: --max_train_steps must be >= 1, got -5."
    assert not out.exists()  # nothing written, no pipeline saved


@pytest.mark.parametrize(
    "extra, flag",
    [
        (["--synthetic_world_config", '{"grid": -1}'], "--synthetic_world_config"),
        (["--synthetic_world_config", '{"no_such_argument": 1}'], "--synthetic_world_config"),
    ],
)
def test_a_bad_world_is_a_clear_error_before_the_models_load(components, tmp_path, monkeypatch, extra, flag):
    from diffusers_vincie.utils.cli import UsageError

    train = _train_module()
    monkeypatch.setattr(train, "load_components", lambda args: pytest.fail("models loaded before the data check"))
    _reset_accelerate()
    with pytest.raises(UsageError, match=flag):
        train.main(train.parse_args(_args(components, tmp_path / "run") + extra))


def test_a_missing_dataset_is_a_clear_error_before_the_models_load(components, tmp_path, monkeypatch):
    from diffusers_vincie.utils.cli import UsageError

    train = _train_module()
    monkeypatch.setattr(train, "load_components", lambda args: pytest.fail("models loaded before the data check"))
    argv = [a for a in _args(components, tmp_path / "run") if a != "--synthetic_world"]
    argv += ["--dataset_name", str(tmp_path / "no_sessions")]
    _reset_accelerate()
    with pytest.raises(UsageError, match="--dataset_name .*no_sessions does not exist"):
        train.main(train.parse_args(argv))


def test_a_dataset_smaller_than_one_batch_is_a_clear_error(components, tmp_path, monkeypatch):
    from diffusers_vincie.utils.cli import UsageError

    train = _train_module()
    monkeypatch.setattr(train, "load_components", lambda args: pytest.fail("models loaded before the data check"))
    _reset_accelerate()
    with pytest.raises(UsageError, match="8 sessions, fewer than one global batch.*--train_batch_size"):
        train.main(train.parse_args(_args(components, tmp_path / "run", "--train_batch_size", "9")))


def test_the_trained_layout_is_the_saved_one(components, tmp_path):
    """From scratch, --attention_layout sets the config's layout (the exported pipeline samples as it was
    trained); a pretrained transformer of another layout is refused instead of silently mis-sampled."""
    from diffusers_vincie.testing import tiny_transformer
    from diffusers_vincie.utils.cli import UsageError

    train = _train_module()
    args = train.parse_args(_args(components, tmp_path / "run"))  # block_causal; the tiny config says full
    assert json.loads((components / "transformer.json").read_text()).get("attention_layout", "full") == "full"
    assert train.build_transformer(args, {}).config.attention_layout == "block_causal"
    args.transformer_config = None
    with pytest.raises(
        UsageError, match="--attention_layout block_causal, but the pretrained transformer uses 'full'"
    ):
        train.build_transformer(args, {"transformer": tiny_transformer(latent_channels=3, text_embed_dim=16)})
