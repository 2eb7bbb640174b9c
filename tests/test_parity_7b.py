"""Parity with the official VINCIE-7B code: the DiT, T5 text path, bf16 runs and sampler fixtures of the official
7B fixture set are reproduced, and perturbed weights are caught."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffusers_vincie.conversion.dit import load_official_dit
from diffusers_vincie.parity import forward_checks, run_parity, text_checks


@pytest.fixture(scope="module")
def checks(official_7b_fixtures):
    return run_parity(official_7b_fixtures)


def test_every_check_passes(checks):
    failed = [c.line() for c in checks if not c.passed]
    assert checks and failed == [], "\n".join(failed)


def test_every_7b_fixture_family_is_checked(checks):
    names = " ".join(c.name for c in checks)
    for needed in (
        "forward_session out ",
        "forward_session out from assembled inputs",
        "inter.block0.rope.vid_q",
        "inter.rope.vid_freqs",
        "inter.txt_in_mlp",
        "out_cfg",
        "forward_batch out",
        "bf16 q/k/v",
        "timestep as seen",
        "vid RoPE angles",
        "out (bf16 run)",
        "step3.pred_neg",
        "final latent",
        "timesteps 50 shift 10",
        "text kept rows",
        "text assembled session text",
        "text forward_session out.vid_sample from encoded text",
        "sample_session decoded_last_frame",
        "vae decode",
        "vae two-frame decode",
    ):
        assert needed in names, needed


def _forward_failures(model, folder) -> list[str]:
    session = load_file(folder / "forward_session.safetensors")
    cfg = json.loads((folder / "config.json").read_text())["diffusion"]["cfg"]["scale"]
    return [c.name for c in forward_checks(model, session, "forward_session", cfg) if not c.passed]


def test_perturbed_dit_weights_fail(official_7b_fixtures):
    model = load_official_dit(load_file(official_7b_fixtures / "dit_official.safetensors"))
    assert _forward_failures(model, official_7b_fixtures) == []
    with torch.no_grad():  # noise of 1% of the weights' spread on the MLP input of the last block
        weight = model.transformer_blocks[-1].ff.net[0].proj.weight
        weight.add_(0.01 * weight.std() * torch.randn_like(weight, generator=torch.Generator().manual_seed(0)))
    failed = _forward_failures(model, official_7b_fixtures)
    assert "forward_session out" in failed and "forward_session inter.block3.vid" in failed
    assert "forward_session inter.block2.vid" not in failed  # earlier blocks are untouched


def test_perturbed_t5_weights_fail(official_7b_fixtures, tmp_path):
    folder = tmp_path / "fixtures"
    folder.mkdir()
    for name in ("config.json", "text_path.safetensors"):
        (folder / name).write_bytes((official_7b_fixtures / name).read_bytes())
    weights = load_file(official_7b_fixtures / "t5_encoder.safetensors")
    key = "encoder.block.1.layer.1.DenseReluDense.wo.weight"
    weights[key] = weights[key] * 1.01
    save_file(weights, folder / "t5_encoder.safetensors")
    model = load_official_dit(load_file(official_7b_fixtures / "dit_official.safetensors"))
    config = json.loads((folder / "config.json").read_text())
    failed = {c.name for c in text_checks(model, folder, config, None) if not c.passed}
    assert {"text t5 last_hidden_state", "text kept rows", "text assembled session text"} <= failed
    assert "text turn embeddings" not in failed  # a DiT weight, unchanged


def test_the_stored_decode_fails_without_the_vae_or_with_perturbed_vae_weights(official_7b_fixtures, tmp_path):
    """The sampling run's stored decode goes through the folder's VAE: without one it is a failing "no check", and
    noise on one decoder weight fails it while the sampler's own checks still pass."""
    folder = tmp_path / "fixtures"
    folder.mkdir()
    for name in ("config.json", "dit_official.safetensors", "sample_session.safetensors"):
        shutil.copy(official_7b_fixtures / name, folder / name)
    decoded = "sample_session decoded_last_frame"
    missing = [c for c in run_parity(folder, {"sample"}) if c.name == decoded]
    assert len(missing) == 1 and missing[0].missing and not missing[0].passed

    weights = {k: v.float() for k, v in load_file(official_7b_fixtures / "vae_official.safetensors").items()}
    key = "decoder.up_blocks.0.resnets.0.conv1.weight"
    noise = torch.randn(weights[key].shape, generator=torch.Generator().manual_seed(0))
    weights[key] = weights[key] + 1e-2 * weights[key].std() * noise
    save_file(weights, folder / "vae_official.safetensors")
    failed = [c.name for c in run_parity(folder, {"sample"}) if not c.passed]
    assert failed == [decoded]
