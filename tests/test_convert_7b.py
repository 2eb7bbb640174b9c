"""The one converter on a VINCIE-7B-layout release (``ema.pth``, ``ema_vae.pth``, ``flan-ul2/``): recognised from its
files, converted with the documented command, loaded by ``DiffusionPipeline`` with the official 7B defaults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, one_error_line
from safetensors.torch import load_file

from diffusers_vincie.conversion.convert import VINCIE_3B, VINCIE_7B, detect_family, main
from diffusers_vincie.testing import tiny_t5_tokenizer

T5_WIDTH = 48  # the 7B fixture DiT's text input width (its flan-ul2 stand-in's d_model)


def write_tiny_flan_ul2(folder: Path) -> None:
    """A Hugging Face T5 folder as the release's ``flan-ul2/``: a full encoder-decoder T5 (the converter must keep
    only the encoder) in safetensors, and its fast tokenizer."""
    from transformers import T5Config, T5ForConditionalGeneration

    tokenizer = tiny_t5_tokenizer()
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=T5_WIDTH,
        d_kv=16,
        d_ff=64,
        num_layers=1,
        num_decoder_layers=1,
        num_heads=3,
        feed_forward_proj="gated-gelu",
        decoder_start_token_id=0,
    )
    T5ForConditionalGeneration(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def write_official_7b_release(folder: Path, fixtures: Path) -> Path:
    """The official-code 7B fixture DiT and VAE saved as the release's ``.pth`` files, plus a tiny ``flan-ul2/``."""
    folder.mkdir()
    torch.save(load_file(fixtures / "dit_official.safetensors"), folder / "ema.pth")
    torch.save(load_file(fixtures / "vae_official.safetensors"), folder / "ema_vae.pth")
    write_tiny_flan_ul2(folder / "flan-ul2")
    return folder


def convert_command(official: Path, out: Path) -> subprocess.CompletedProcess:
    """The command documented in the README and docs/converting.md, in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, "-m", "diffusers_vincie.conversion", "--official", str(official), "--out", str(out)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def test_family_is_recognised_from_the_files(tmp_path: Path) -> None:
    assert detect_family(tmp_path) is VINCIE_3B  # nothing yet: the 3B names are the ones reported missing
    (tmp_path / "ema_vae.pth").write_bytes(b"")
    assert detect_family(tmp_path) is VINCIE_7B
    (tmp_path / "llm14b").mkdir()
    with pytest.raises(ValueError, match="mixes the files of both releases"):
        detect_family(tmp_path)


def test_missing_7b_files_are_named(tmp_path: Path, capsys) -> None:
    (tmp_path / "release").mkdir()
    torch.save({}, tmp_path / "release" / "ema.pth")
    assert main(["--official", str(tmp_path / "release"), "--out", str(tmp_path / "out")]) == 2
    error = one_error_line(capsys.readouterr().err)
    assert "VINCIE-7B" in error and "ema_vae.pth" in error and "flan-ul2" in error and "VINCIE-7B')" in error
    assert not (tmp_path / "out").exists()


def test_pickled_flan_ul2_weights_are_refused_with_the_fix(official_7b_fixtures: Path, tmp_path: Path, capsys) -> None:
    official = write_official_7b_release(tmp_path / "VINCIE-7B", official_7b_fixtures)
    for weights in (official / "flan-ul2").glob("*.safetensors"):
        weights.rename(weights.with_name("pytorch_model.bin"))  # never opened: refused by its kind alone
    assert main(["--official", str(official), "--out", str(tmp_path / "out")]) == 2
    error = one_error_line(capsys.readouterr().err)
    assert "pytorch_model.bin" in error and "never unpickles" in error and "safetensors" in error
    assert not (tmp_path / "out").exists()


def test_converts_with_the_documented_command_and_edits_a_session(official_7b_fixtures: Path, tmp_path: Path) -> None:
    from diffusers import DiffusionPipeline
    from PIL import Image

    from diffusers_vincie.models import VincieAutoencoderKL7B
    from diffusers_vincie.pipelines import OFFICIAL_NEGATIVE_PROMPT

    official = write_official_7b_release(tmp_path / "VINCIE-7B", official_7b_fixtures)
    out = tmp_path / "VINCIE-7B-diffusers"
    result = convert_command(official, out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pth"))
    index = json.loads((out / "model_index.json").read_text())
    assert index["text_encoder"] == ["transformers", "T5EncoderModel"]  # not T5Model (AutoModel's choice)
    assert index["tokenizer"] == ["transformers", "T5TokenizerFast"]
    assert index["vae"][1] == "VincieAutoencoderKL7B"
    card = (out / "README.md").read_text()
    assert "ema.pth`: sha256" in card and "equal to the VINCIE-7B preset" not in card  # tiny, not the preset
    assert "T5EncoderModel from the release's T5 folder (1 layers, d_model 48" in card

    pipe = DiffusionPipeline.from_pretrained(out)
    assert type(pipe).__name__ == "VincieInContextPipeline"
    assert pipe.config.default_guidance_scale == 10.0 and pipe.scheduler.config.shift == 10.0
    assert pipe.config.default_resolution == 554 and pipe.config.default_negative_prompt == OFFICIAL_NEGATIVE_PROMPT
    assert isinstance(pipe.vae, VincieAutoencoderKL7B) and type(pipe.text_encoder).__name__ == "T5EncoderModel"
    assert pipe.transformer.config.text_projection == "mlp" and pipe.transformer.config.rope_type == "mmrope3d_v3"
    assert pipe.tokenizer.model_max_length == 150
    # the converted encoder is the folder's encoder half, weight for weight
    from transformers import T5EncoderModel

    source = T5EncoderModel.from_pretrained(official / "flan-ul2", use_safetensors=True)
    for name, tensor in source.state_dict().items():
        torch.testing.assert_close(pipe.text_encoder.state_dict()[name].float(), tensor.bfloat16().float())

    pipe.set_progress_bar_config(disable=True)
    session = pipe.start_session(Image.new("RGB", (48, 32), (200, 10, 10)), resolution=32)
    session.edit("make the circle red", num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    session.edit("add a star", num_inference_steps=2, generator=torch.Generator().manual_seed(1))
    assert len(session.images) == 2 and session.images[-1].size == (32, 16)  # 48x32 at area 32**2, 16-aligned
    assert session.images[-1] != session.images[-2]  # the second turn changed the image

    again = convert_command(official, out)  # resumable: finished components are kept
    assert again.returncode == 0 and "already converted, kept" in again.stdout


def test_t5_encoder_missing_a_tensor_is_refused_before_writing(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from diffusers_vincie.conversion.t5 import convert_t5_encoder

    write_tiny_flan_ul2(tmp_path / "flan-ul2")
    (weights,) = (tmp_path / "flan-ul2").glob("*.safetensors")
    state = load_file(weights)
    del state["encoder.final_layer_norm.weight"]
    save_file(state, weights)
    with pytest.raises(ValueError, match="lack \\['encoder.final_layer_norm.weight'\\]"):
        convert_t5_encoder(tmp_path / "flan-ul2", tmp_path / "out", torch.bfloat16)
    assert not (tmp_path / "out").exists()
