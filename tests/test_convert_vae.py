"""Official causal 3D VAE -> 2D diffusers AutoencoderKL: parity with the official fixture, both up-sampler paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import official_fixtures_dir
from diffusers import AutoencoderKL
from safetensors.torch import load_file

from diffusers_vincie.conversion.checkpoint import load_torch_state_dict
from diffusers_vincie.conversion.vae import (
    DepthToSpaceUpsample2D,
    VincieAutoencoderKL,
    convert_official_vae,
    upscale_conv_is_identity,
    vae_parity_checks,
)

FIXTURES = official_fixtures_dir()
needs_fixtures = pytest.mark.skipif(
    not (FIXTURES / "vae_official.safetensors").is_file() and not os.environ.get("CI"),
    reason=f"official fixtures not found at {FIXTURES}; set VINCIE_OFFICIAL_FIXTURES to the fixture folder",
)


def _official_state_dict() -> dict[str, torch.Tensor]:
    return load_file(FIXTURES / "vae_official.safetensors")


def _fixture_vae_config() -> dict:
    import json

    return json.loads((FIXTURES / "config.json").read_text())["vae"]


def _decode_fixture_latent(vae: AutoencoderKL) -> torch.Tensor:
    io = load_file(FIXTURES / "vae_io.safetensors")
    latent = io["decode_input_latent_scaled_channels_last"].permute(0, 3, 1, 2) / vae.config.scaling_factor
    with torch.no_grad():
        return vae.decode(latent).sample


def _identity_upscale(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reset every upscale_conv to the official identity-replication initialisation."""
    result = dict(state_dict)
    for key, tensor in state_dict.items():
        if key.endswith("upscale_conv.weight"):
            rows, channels = tensor.shape[:2]
            result[key] = torch.eye(channels).repeat(rows // channels, 1)[:, :, None, None, None].clone()
            result[key[: -len("weight")] + "bias"] = torch.zeros(rows)
    return result


# ----------------------------------------------------------------------------------------------------------------------
# Independent reference: the official up-sampler in 3D on one frame
# ----------------------------------------------------------------------------------------------------------------------


def reference_upsampler_3d(
    x: torch.Tensor, up_w: torch.Tensor, up_b: torch.Tensor, conv_w: torch.Tensor, conv_b: torch.Tensor
) -> torch.Tensor:
    """MAGViT-style up-sampler of the official VAE, written from spec 9.2 in 3D.

    x: (B, C, T, H, W). upscale_conv output channel ((x*2 + y)*z_r + z)*C + c -> pixel (t*z_r + z, 2h + x, 2w + y);
    a temporal block drops frame 1 of the doubled sequence; then a causal 3x3x3 conv (first frame replicated twice
    in front, zero padding in space).
    """
    batch, channels, frames, height, width = x.shape
    z_r = up_w.shape[0] // (4 * channels)
    y = F.conv3d(x, up_w, up_b)
    y = y.view(batch, 2, 2, z_r, channels, frames, height, width)  # (b, x, y, z, c, t, h, w)
    y = y.permute(0, 4, 5, 3, 6, 1, 7, 2).reshape(batch, channels, frames * z_r, 2 * height, 2 * width)
    if z_r == 2:
        y = torch.cat([y[:, :, :1], y[:, :, 2:]], dim=2)
    kt = conv_w.shape[2]
    y = torch.cat([y[:, :, :1]] * (kt - 1) + [y], dim=2)
    return F.conv3d(y, conv_w, conv_b, padding=(0, 1, 1))


@pytest.mark.parametrize("temporal_factor", [1, 2])
def test_depth_to_space_upsampler_matches_3d_reference(temporal_factor: int) -> None:
    generator = torch.Generator().manual_seed(0)
    channels = 3
    up_w = torch.randn(4 * temporal_factor * channels, channels, 1, 1, 1, generator=generator)
    up_b = torch.randn(4 * temporal_factor * channels, generator=generator)
    conv_w = torch.randn(channels, channels, 3, 3, 3, generator=generator)
    conv_b = torch.randn(channels, generator=generator)
    frame = torch.randn(2, channels, 1, 5, 7, generator=generator)

    state = {
        "decoder.up_blocks.0.upsamplers.0.upscale_conv.weight": up_w,
        "decoder.up_blocks.0.upsamplers.0.upscale_conv.bias": up_b,
        "decoder.up_blocks.0.upsamplers.0.conv.weight": conv_w,
        "decoder.up_blocks.0.upsamplers.0.conv.bias": conv_b,
    }
    from diffusers_vincie.conversion.vae import _map_vae_weights

    mapped = _map_vae_weights(state, depth_to_space=[0])
    module = DepthToSpaceUpsample2D(channels)
    module.load_state_dict({k.split("upsamplers.0.")[1]: v for k, v in mapped.items()})

    expected = reference_upsampler_3d(frame, up_w, up_b, conv_w, conv_b)
    assert expected.shape == (2, channels, 1, 10, 14)
    with torch.no_grad():
        ours = module(frame[:, :, 0])
    torch.testing.assert_close(ours, expected[:, :, 0], atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------------------
# Fixture parity
# ----------------------------------------------------------------------------------------------------------------------


@needs_fixtures
def test_fixture_parity_non_identity_upscale_conv() -> None:
    checks = vae_parity_checks(FIXTURES)
    assert len(checks) == 9
    for name, ours, expected, tolerance in checks:
        assert ours.shape == expected.shape, name
        error = (ours - expected).abs().max().item()
        assert error <= tolerance, f"{name}: max abs error {error:.3e} > {tolerance}"


@needs_fixtures
def test_non_identity_upscale_conv_uses_depth_to_space_and_reloads(tmp_path: Path) -> None:
    vae = convert_official_vae(_official_state_dict(), _fixture_vae_config())
    assert isinstance(vae, VincieAutoencoderKL)
    assert list(vae.config.depth_to_space_upsamplers) == [0, 1, 2]
    assert vae.config.scaling_factor == pytest.approx(0.9152)
    assert vae.config.shift_factor == 0.0

    vae.save_pretrained(tmp_path / "vae")
    reloaded = VincieAutoencoderKL.from_pretrained(tmp_path / "vae")
    assert isinstance(reloaded.decoder.up_blocks[0].upsamplers[0], DepthToSpaceUpsample2D)
    expected = load_file(FIXTURES / "vae_io.safetensors")["decoded"][:, :, 0]
    torch.testing.assert_close(_decode_fixture_latent(reloaded), expected, atol=1e-4, rtol=0)


@needs_fixtures
def test_dropping_upscale_conv_breaks_parity() -> None:
    """The fixture's upscale_conv is random, so the stock nearest up-sampler must NOT reproduce it."""
    vae = convert_official_vae(_official_state_dict(), _fixture_vae_config())
    stock = AutoencoderKL(
        **{k: v for k, v in vae.config.items() if not k.startswith("_") and k != "depth_to_space_upsamplers"}
    )
    stock_state = {k: v for k, v in vae.state_dict().items() if "upscale_conv" not in k}
    stock.load_state_dict(stock_state)
    expected = load_file(FIXTURES / "vae_io.safetensors")["decoded"][:, :, 0]
    assert (_decode_fixture_latent(stock) - expected).abs().max() > 1e-2


@needs_fixtures
def test_identity_upscale_conv_uses_stock_upsample_and_matches_depth_to_space() -> None:
    state = _identity_upscale(_official_state_dict())
    assert all(
        upscale_conv_is_identity(state[k], state[k[: -len("weight")] + "bias"])
        for k in state
        if k.endswith("upscale_conv.weight")
    )
    stock = convert_official_vae(state, _fixture_vae_config())
    assert type(stock) is AutoencoderKL
    exact = convert_official_vae(state, _fixture_vae_config(), force_depth_to_space=True)
    assert isinstance(exact, VincieAutoencoderKL)
    # The depth-to-space path is checked against the official fixture above and against the 3D reference
    # up-sampler; with identity weights the stock nearest path must reproduce it.
    torch.testing.assert_close(_decode_fixture_latent(stock), _decode_fixture_latent(exact), atol=1e-5, rtol=0)


@needs_fixtures
def test_old_attention_names_are_accepted() -> None:
    renames = {"to_q.": "query.", "to_k.": "key.", "to_v.": "value.", "to_out.0.": "proj_attn."}
    state = {}
    for key, tensor in _official_state_dict().items():
        for new, old in renames.items():
            if ".attentions.0." in key and new in key:
                key = key.replace(new, old)
        state[key] = tensor
    assert any(".attentions.0.proj_attn." in key for key in state)
    vae = convert_official_vae(state, _fixture_vae_config())
    expected = load_file(FIXTURES / "vae_io.safetensors")["decoded"][:, :, 0]
    torch.testing.assert_close(_decode_fixture_latent(vae), expected, atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------------------------------------------------
# Refusals
# ----------------------------------------------------------------------------------------------------------------------


@needs_fixtures
def test_unknown_key_is_refused() -> None:
    state = _official_state_dict()
    state["decoder.extra_head.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match="unknown keys.*extra_head"):
        convert_official_vae(state, _fixture_vae_config())


@needs_fixtures
def test_missing_key_is_refused() -> None:
    state = _official_state_dict()
    del state["decoder.mid_block.resnets.0.norm1.weight"]
    with pytest.raises(ValueError, match="missing keys.*mid_block.resnets.0.norm1.weight"):
        convert_official_vae(state, _fixture_vae_config())


@needs_fixtures
def test_shape_mismatch_is_refused() -> None:
    state = _official_state_dict()
    state["decoder.mid_block.attentions.0.to_q.weight"] = torch.zeros(16, 8)
    with pytest.raises(ValueError, match="to_q.weight.*shape"):
        convert_official_vae(state, _fixture_vae_config())


@needs_fixtures
def test_config_disagreeing_with_weights_is_refused() -> None:
    config = dict(_fixture_vae_config(), latent_channels=16)
    with pytest.raises(ValueError, match="latent_channels"):
        convert_official_vae(_official_state_dict(), config)


class _NotATensor:
    pass


def test_non_tensor_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "vae.pth"
    torch.save({"encoder.conv_in.weight": torch.zeros(1), "payload": _NotATensor()}, path)
    with pytest.raises(ValueError, match="objects other than tensors"):
        load_torch_state_dict(path)


def test_nested_state_dict_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "vae.pth"
    torch.save({"state_dict": {"encoder.conv_in.weight": torch.zeros(1)}}, path)
    with pytest.raises(ValueError, match="not a flat state dict"):
        load_torch_state_dict(path)


@needs_fixtures
def test_pth_round_trip_through_safe_loader(tmp_path: Path) -> None:
    path = tmp_path / "vae.pth"
    torch.save(_official_state_dict(), path)
    vae = convert_official_vae(load_torch_state_dict(path), _fixture_vae_config())
    expected = load_file(FIXTURES / "vae_io.safetensors")["decoded"][:, :, 0]
    torch.testing.assert_close(_decode_fixture_latent(vae), expected, atol=1e-4, rtol=0)
