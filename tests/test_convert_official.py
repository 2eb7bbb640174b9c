"""`python -m diffusers_vincie.conversion` on a synthetic folder in the official release format."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import official_fixtures_dir
from safetensors.torch import load_file, save_file

from diffusers_vincie.conversion.convert import main

FIXTURES = official_fixtures_dir()
needs_fixtures = pytest.mark.skipif(
    not (FIXTURES / "dit_official.safetensors").is_file() and not os.environ.get("CI"),
    reason=f"official fixtures not found at {FIXTURES}; set VINCIE_OFFICIAL_FIXTURES to the fixture folder",
)

VAE_CONFIG = ["--vae-config", str(FIXTURES / "config.json")]  # the tiny VAE has 4 groups, the release 32
TEXT_DIM = 48  # the fixture DiT's txt_in_dim = the text encoder's hidden size
MERGES = [b"th", b"he", b"the", b" the", b"in", b"ing", b"ed", b" s"]


def _write_tiny_llm(folder: Path) -> None:
    """A first-generation Qwen folder: config.json, qwen.tiktoken, one safetensors shard."""
    folder.mkdir(parents=True)
    ranks = [bytes([b]) for b in range(256)] + MERGES
    (folder / "qwen.tiktoken").write_text(
        "".join(f"{base64.b64encode(token).decode()} {rank}\n" for rank, token in enumerate(ranks))
    )
    vocab, heads, ffn = 512, 4, 64
    config = {
        "model_type": "qwen",
        "hidden_size": TEXT_DIM,
        "num_attention_heads": heads,
        "num_hidden_layers": 1,
        "intermediate_size": 2 * ffn,
        "kv_channels": TEXT_DIM // heads,
        "vocab_size": vocab,
        "layer_norm_epsilon": 1e-6,
        "rotary_emb_base": 10000,
        "rotary_pct": 1.0,
        "no_bias": True,
    }
    (folder / "config.json").write_text(json.dumps(config))
    generator = torch.Generator().manual_seed(0)
    shapes = {
        "transformer.wte.weight": (vocab, TEXT_DIM),
        "transformer.ln_f.weight": (TEXT_DIM,),
        "transformer.h.0.ln_1.weight": (TEXT_DIM,),
        "transformer.h.0.ln_2.weight": (TEXT_DIM,),
        "transformer.h.0.attn.c_attn.weight": (3 * TEXT_DIM, TEXT_DIM),
        "transformer.h.0.attn.c_attn.bias": (3 * TEXT_DIM,),
        "transformer.h.0.attn.c_proj.weight": (TEXT_DIM, TEXT_DIM),
        "transformer.h.0.mlp.w1.weight": (ffn, TEXT_DIM),
        "transformer.h.0.mlp.w2.weight": (ffn, TEXT_DIM),
        "transformer.h.0.mlp.c_proj.weight": (TEXT_DIM, ffn),
        "lm_head.weight": (vocab, TEXT_DIM),
    }
    state = {name: torch.randn(*shape, generator=generator) * 0.1 for name, shape in shapes.items()}
    save_file({k: v.bfloat16() for k, v in state.items()}, folder / "model-00001-of-00001.safetensors")


def write_official_release(folder: Path) -> Path:
    """The fixture DiT and VAE saved as .pth the way the official loaders read them, plus a tiny llm14b/."""
    folder.mkdir()
    torch.save(load_file(FIXTURES / "dit_official.safetensors"), folder / "dit.pth")
    torch.save(load_file(FIXTURES / "vae_official.safetensors"), folder / "vae.pth")
    _write_tiny_llm(folder / "llm14b")
    return folder


@pytest.fixture
def official_folder(tmp_path: Path) -> Path:
    return write_official_release(tmp_path / "VINCIE-tiny")


# ----------------------------------------------------------------------------------------------------------------------
# End to end
# ----------------------------------------------------------------------------------------------------------------------


@needs_fixtures
def test_converts_end_to_end_and_pipeline_runs(official_folder: Path, tmp_path: Path, capsys) -> None:
    from transformers import Qwen2Model

    from diffusers_vincie.conversion.vae import VincieAutoencoderKL
    from diffusers_vincie.pipelines import VincieInContextPipeline

    out = tmp_path / "diffusers"
    assert main(["--official", str(official_folder), "--out", str(out), *VAE_CONFIG]) == 0
    for name in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (out / name).is_dir(), name
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pth"))

    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "VincieInContextPipeline"
    assert index["text_encoder"] == ["transformers", "Qwen2Model"]
    assert index["tokenizer"] == ["transformers", "PreTrainedTokenizerFast"]
    assert json.loads((out / "tokenizer" / "tokenizer_config.json").read_text())["tokenizer_class"] == (
        "PreTrainedTokenizerFast"
    )
    assert index["vae"][1] == "VincieAutoencoderKL"  # the fixture's upscale_conv weights are not identity

    card = (out / "README.md").read_text()
    assert "VINCIE-tiny" in card and "sha256" in card
    assert "tokenizer ids equal tiktoken's" in card
    assert "depth-to-space up-samplers in up blocks [0, 1, 2]" in card

    pipe = VincieInContextPipeline.from_pretrained(out)
    assert isinstance(pipe.vae, VincieAutoencoderKL) and isinstance(pipe.text_encoder, Qwen2Model)
    assert pipe.tokenizer.eos_token_id == 256 + len(MERGES)
    official = load_file(FIXTURES / "dit_official.safetensors")
    torch.testing.assert_close(pipe.transformer.state_dict()["context_embedder.weight"], official["txt_in.weight"])

    # The converted VAE in the folder reproduces the official VAE fixture.
    io = load_file(FIXTURES / "vae_io.safetensors")
    with torch.no_grad():
        latent = io["decode_input_latent_scaled_channels_last"][0]  # (h, w, C)
        decoded = pipe.decode_latent(latent)
    torch.testing.assert_close(decoded, io["decoded"][0, :, 0], atol=1e-4, rtol=0)

    image = torch.rand(3, 32, 32) * 2 - 1
    from PIL import Image

    pil = Image.fromarray(((image.permute(1, 2, 0) + 1) * 127.5).to(torch.uint8).numpy())
    result = pipe(
        image=pil,
        prompt=["make the sky red"],
        num_inference_steps=2,
        resolution=32,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    )
    frames = result.images
    assert torch.isfinite(torch.as_tensor(frames[0] if isinstance(frames, list) else frames)).all()

    # A second run keeps every finished component.
    stamp = (out / "vae" / "config.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["--official", str(official_folder), "--out", str(out), "--no-hash", *VAE_CONFIG]) == 0
    assert "vae/ already converted, kept" in capsys.readouterr().out
    assert (out / "vae" / "config.json").stat().st_mtime_ns == stamp


LOAD_IN_FRESH_PROCESS = """
import sys
import diffusers_vincie
pipe = diffusers_vincie.VincieInContextPipeline.from_pretrained(sys.argv[1])
print(type(pipe.vae).__name__)
"""


@needs_fixtures
def test_converted_folder_loads_after_plain_package_import(official_folder: Path, tmp_path: Path) -> None:
    """A user only runs `import diffusers_vincie`; diffusers loads components only from modules already imported."""
    out = tmp_path / "diffusers"
    assert main(["--official", str(official_folder), "--out", str(out), "--no-hash", *VAE_CONFIG]) == 0
    result = subprocess.run(
        [sys.executable, "-c", LOAD_IN_FRESH_PROCESS, str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "VincieAutoencoderKL"


def test_documented_command_is_the_conversion_package() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "diffusers_vincie.conversion", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage: python -m diffusers_vincie.conversion ")


# ----------------------------------------------------------------------------------------------------------------------
# Refusals
# ----------------------------------------------------------------------------------------------------------------------


def test_missing_release_files_are_named(tmp_path: Path, capsys) -> None:
    (tmp_path / "release").mkdir()
    torch.save({}, tmp_path / "release" / "dit.pth")
    assert main(["--official", str(tmp_path / "release"), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "vae.pth" in error and "llm14b" in error and "snapshot_download" in error


class _Payload:
    pass


@needs_fixtures
def test_non_tensor_pickle_is_refused(official_folder: Path, tmp_path: Path, capsys) -> None:
    torch.save({"encoder.conv_in.weight": torch.zeros(1), "hook": _Payload()}, official_folder / "vae.pth")
    assert main(["--official", str(official_folder), "--out", str(tmp_path / "out"), "--no-hash", *VAE_CONFIG]) == 2
    assert "objects other than tensors" in capsys.readouterr().err
    assert not (tmp_path / "out" / "vae").exists()


@needs_fixtures
def test_unknown_vae_key_is_refused(official_folder: Path, tmp_path: Path, capsys) -> None:
    state = load_file(FIXTURES / "vae_official.safetensors")
    state["decoder.conv_out.extra"] = torch.zeros(3)
    torch.save(state, official_folder / "vae.pth")
    assert main(["--official", str(official_folder), "--out", str(tmp_path / "out"), "--no-hash", *VAE_CONFIG]) == 2
    assert "unknown keys" in capsys.readouterr().err


@needs_fixtures
def test_dit_shape_mismatch_is_refused(official_folder: Path, tmp_path: Path, capsys) -> None:
    state = load_file(FIXTURES / "dit_official.safetensors")
    state["blocks.0.attn.proj_out.vid.weight"] = torch.zeros(64, 32)
    torch.save(state, official_folder / "dit.pth")
    assert main(["--official", str(official_folder), "--out", str(tmp_path / "out"), "--no-hash", *VAE_CONFIG]) == 2
    assert "checkpoint (64, 32)" in capsys.readouterr().err
    assert not (tmp_path / "out" / "transformer").exists()


@needs_fixtures
def test_missing_turn_table_is_refused(official_folder: Path, tmp_path: Path, capsys) -> None:
    state = load_file(FIXTURES / "dit_official.safetensors")
    del state["prompt_id_embedding.embedding.weight"]
    torch.save(state, official_folder / "dit.pth")
    assert main(["--official", str(official_folder), "--out", str(tmp_path / "out"), "--no-hash", *VAE_CONFIG]) == 2
    assert "prompt_id_embedding.embedding.weight" in capsys.readouterr().err
