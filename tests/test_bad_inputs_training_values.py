"""Training values: a diverging run stops with a clear error and saves no non-finite weights, and LoRA and
resolution flags the model cannot train with are one-line errors."""

import argparse
import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import load_script
from safetensors.torch import load_file

from diffusers_vincie.training.guards import TrainingDiverged
from diffusers_vincie.utils.cli import UsageError

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "training_scripts"


def _script(name: str):
    sys.path.insert(0, str(SCRIPTS))
    return load_script(SCRIPTS / f"{name}.py", name)


@pytest.fixture(scope="module")
def components(tmp_path_factory) -> Path:
    from diffusers_vincie.testing import write_tiny_components

    return write_tiny_components(tmp_path_factory.mktemp("components"))


def _args(components: Path, out: Path, *extra: str) -> list[str]:
    return [
        *("--transformer_config", str(components / "transformer.json")),
        *("--text_encoder_name_or_path", str(components / "text_encoder")),
        *("--tokenizer_name_or_path", str(components / "tokenizer")),
        *("--output_dir", str(out), "--train_batch_size", "2", "--seed", "0", "--synthetic_world"),
        *("--resolution", "16", "--synthetic_world_config", '{"grid": 2}', "--synthetic_num_sessions", "8"),
        *("--synthetic_num_turns", "2", "--max_train_steps", "4", "--checkpointing_steps", "1"),
        *("--lr_scheduler", "constant", "--validation_steps", "0"),
        *extra,
    ]


def _train(argv: list[str]) -> dict:
    from accelerate.state import AcceleratorState

    train = _script("train_vincie")
    AcceleratorState._reset_state(reset_partial_state=True)
    return train.main(train.parse_args(argv))


@pytest.mark.parametrize("learning_rate", ["1e30", "1e10"])
def test_a_diverging_run_stops_with_a_clear_error_and_saves_nothing_non_finite(components, tmp_path, learning_rate):
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="training diverged.*--learning_rate"):
        _train(_args(components, out, "--learning_rate", learning_rate))
    assert not (out / "pipeline").exists() and not (out / "model_index.json").exists(), "a final model was saved"
    for checkpoint in out.glob("checkpoint-*"):
        for name in ("model.safetensors", "ema.safetensors"):
            if (checkpoint / name).exists():
                for key, tensor in load_file(checkpoint / name).items():
                    assert torch.isfinite(tensor).all(), f"{checkpoint.name}/{name}: {key} is not finite"


def test_a_sane_run_still_finishes(components, tmp_path):
    result = _train(_args(components, tmp_path / "run", "--learning_rate", "1e-3", "--max_train_steps", "2"))
    assert result["global_step"] == 2 and torch.isfinite(torch.tensor(result["last_loss"]))


def test_a_resolution_the_patches_do_not_divide_is_one_error_naming_the_fix(components, tmp_path):
    patch = json.loads((components / "transformer.json").read_text())["patch_size"]
    with pytest.raises(UsageError, match=f"--resolution 30 is not a multiple of {patch}.*use 28 or 32"):
        _train(_args(components, tmp_path / "run", "--resolution", "30"))


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--lora_alpha", "nan"], "--lora_alpha must be a finite number"),
        (["--lora_alpha", "0"], "--lora_alpha must be > 0"),
        (["--lora_dropout", "1.5"], "--lora_dropout must be < 1"),
        (["--lora_dropout=-0.1"], "--lora_dropout must be >= 0"),
        (["--lora_rank", "0"], "--lora_rank must be >= 1"),
    ],
)
def test_lora_numbers_are_refused_up_front(tmp_path, extra, words):
    lora = _script("train_vincie_lora")
    pipeline = tmp_path / "pipeline"
    (pipeline / "transformer").mkdir(parents=True)
    (pipeline / "text_encoder").mkdir()
    argv = ["--pretrained_model_name_or_path", str(pipeline), "--synthetic_world", "--output_dir", str(tmp_path / "r")]
    with pytest.raises(UsageError, match=words):
        lora.parse_args(argv + extra)


def test_a_lora_target_module_that_does_not_exist_is_one_error():
    from diffusers_vincie.testing import tiny_transformer

    lora = _script("train_vincie_lora")
    args = argparse.Namespace(
        base_dtype="fp32", lora_rank=2, lora_alpha=None, lora_dropout=0.0, lora_target_modules="no_such_layer"
    )
    with pytest.raises(UsageError, match=r"--lora_target_modules \['no_such_layer'\] matched no module"):
        lora.LoraSetup().prepare_transformer(args, tiny_transformer(latent_channels=3, text_embed_dim=16))
