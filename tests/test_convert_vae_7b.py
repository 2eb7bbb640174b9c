"""Official VINCIE-7B VAE (``ema_vae.pth`` layout) -> VincieAutoencoderKL7B: fixture parity through the image owner,
4-D and 5-D kernels, strictness, the full-size key list, and a verifier that fails on perturbed weights."""

from __future__ import annotations

import json
import os
import shutil
import weakref
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, official_7b_fixtures_dir
from safetensors.torch import load_file, save_file

from diffusers_vincie.conversion import vae as vae_module
from diffusers_vincie.conversion.vae import (
    _map_vae_7b_weights,
    _upscale_conv_7b_rows,
    convert_official_vae,
    describe_converted_vae,
    official_vae_layout,
    vae_7b_config_from_state_dict,
    vae_parity_checks,
    write_official_vae,
)
from diffusers_vincie.image_latents import decode_latents
from diffusers_vincie.models.autoencoder_kl_vincie_7b import PixelShuffleUpsample2D, VincieAutoencoderKL7B
from diffusers_vincie.parity import main

FIXTURES = official_7b_fixtures_dir()
KEY_LIST = Path(os.environ.get("VINCIE_OFFICIAL_REFERENCE", REPO.parent / "shared" / "reference")) / (
    "official-7b-vae-keys.json"
)
needs_fixtures = pytest.mark.skipif(
    not (FIXTURES / "vae_official.safetensors").is_file() and not os.environ.get("CI"),
    reason=f"official 7B fixtures not found at {FIXTURES}; set VINCIE_OFFICIAL_7B_FIXTURES to the fixture folder",
)


def _official() -> dict[str, torch.Tensor]:
    return load_file(FIXTURES / "vae_official.safetensors")


def _fixture_vae_config() -> dict:
    return json.loads((FIXTURES / "config.json").read_text())["vae"]


def _failed(checks) -> list[str]:
    return [name for name, ours, expected, tol in checks if (ours - expected).abs().max() > tol]


# ----------------------------------------------------------------------------------------------------------------------
# Independent reference: the official up-sampler in 3D on one frame
# ----------------------------------------------------------------------------------------------------------------------


def _causal_conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Causal 3D conv: the first frame repeated (kt - 1) times in front, zero padding in space."""
    kt = weight.shape[2]
    x = torch.cat([x[:, :, :1]] * (kt - 1) + [x], dim=2)
    return F.conv3d(x, weight, bias, padding=(0, weight.shape[3] // 2, weight.shape[4] // 2))


def reference_upsampler_3d(x, up_w, up_b, conv_w, conv_b) -> torch.Tensor:
    """``upscale_conv``, output channels read as (z, x, y, c) and moved to (frame copy z, row 2h + x, column 2w + y),
    the duplicated head frame dropped for a temporal block, then ``conv``."""
    batch, channels, frames, height, width = x.shape
    z_r = up_w.shape[0] // (4 * channels)
    y = _causal_conv3d(x, up_w, up_b).view(batch, z_r, 2, 2, channels, frames, height, width)
    y = y.permute(0, 4, 5, 1, 6, 2, 7, 3).reshape(batch, channels, frames * z_r, 2 * height, 2 * width)
    if z_r == 2:
        y = torch.cat([y[:, :, :1], y[:, :, 2:]], dim=2)
    return _causal_conv3d(y, conv_w, conv_b)


@pytest.mark.parametrize("temporal_factor", [1, 2])
def test_pixel_shuffle_upsampler_matches_the_3d_reference_on_one_frame(temporal_factor):
    g = torch.Generator().manual_seed(0)
    channels = 3

    def weights(*shape):  # small integers: the float32 conversion is exact, so float64 shows the mapping alone
        return torch.randint(-3, 4, shape, generator=g).double()

    up_w, up_b = weights(4 * temporal_factor * channels, channels, 3, 3, 3), weights(4 * temporal_factor * channels)
    conv_w, conv_b = weights(channels, channels, 3, 3, 3), weights(channels)
    frame = torch.randn(2, channels, 1, 5, 7, generator=g, dtype=torch.float64)
    module = PixelShuffleUpsample2D(channels).double()
    weight, bias = _upscale_conv_7b_rows(up_w, up_b)
    module.load_state_dict(
        {"upscale_conv.weight": weight, "upscale_conv.bias": bias, "conv.weight": conv_w.sum(2), "conv.bias": conv_b}
    )  # load_state_dict copies into the float64 parameters
    expected = reference_upsampler_3d(frame, up_w, up_b, conv_w, conv_b)
    assert expected.shape == (2, channels, 1, 10, 14)
    with torch.no_grad():
        torch.testing.assert_close(module(frame[:, :, 0]), expected[:, :, 0], atol=1e-10, rtol=0)


# ----------------------------------------------------------------------------------------------------------------------
# Fixture parity
# ----------------------------------------------------------------------------------------------------------------------


@needs_fixtures
def test_fixture_parity_encode_and_decode():
    checks = vae_parity_checks(FIXTURES)
    names = [name for name, *_ in checks]
    for needed in (
        "encoder moments",
        "posterior std",
        "mode scaled channels-last",
        "encode with a seeded posterior sample",
        "decode",
        "two-frame decode",
        "scaling_factor and shifting_factor",
    ):
        assert needed in names, needed
    for name, ours, expected, tolerance in checks:
        assert ours.shape == expected.shape, name
        error = (ours - expected).abs().max().item()
        assert error <= tolerance, f"{name}: max abs error {error:.3e} > {tolerance}"
    vae = convert_official_vae(_official(), _fixture_vae_config())
    assert isinstance(vae, VincieAutoencoderKL7B) and vae.spatial_compression_ratio == 16
    assert main([str(FIXTURES), "--only", "vae"]) == 0  # the verifier's command line, VAE checks only
    assert "VincieAutoencoderKL7B (48 latent channels, 16x" in describe_converted_vae(vae)  # the model card line
    assert (vae.config.scaling_factor, vae.config.shift_factor) == (0.9045, -0.0025)


@needs_fixtures
@pytest.mark.parametrize(
    "component",
    [
        "encoder.down_blocks.1.resnets.0.conv1.weight",
        "encoder.conv_norm_out.weight",
        "decoder.conv_in.weight",
        "decoder.up_blocks.1.upsampler.upscale_conv.weight",
        "decoder.final_block.resnets.0.norm1.weight",
    ],
)
def test_the_verifier_fails_when_the_vae_weights_are_perturbed(component, tmp_path, capsys):
    folder = tmp_path / "fixtures"
    folder.mkdir()
    for name in ("config.json", "vae_io.safetensors"):
        shutil.copy(FIXTURES / name, folder / name)
    weights = {key: tensor.float() for key, tensor in _official().items()}
    noise = torch.randn(weights[component].shape, generator=torch.Generator().manual_seed(0))
    # 1% of the tensor's spread: far above float32 error, far below what training changes. (A uniform scale would be
    # a weak probe: the GroupNorm after most convolutions divides it out.)
    weights[component] = weights[component] + 1e-2 * weights[component].std() * noise
    save_file(weights, folder / "vae_official.safetensors")
    assert main([str(folder), "--only", "vae"]) == 1
    failed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("FAIL")]
    if component.startswith("encoder"):
        assert any("encoder moments" in line for line in failed) and not any("decode" in line for line in failed)
    else:
        assert any("decode" in line for line in failed) and not any("moments" in line for line in failed)


# ----------------------------------------------------------------------------------------------------------------------
# 4-D kernels (inflated "tail" style by the official loader)
# ----------------------------------------------------------------------------------------------------------------------


def _tail_inflated(weight_2d: torch.Tensor, depth: int, rows: int | None = None) -> torch.Tensor:
    """What the official loader makes of a 4-D kernel: rows tiled up to ``rows`` (up-samplers), the kernel in the
    last temporal slice, zeros elsewhere."""
    if rows is not None:
        weight_2d = weight_2d.repeat(rows // weight_2d.shape[0], 1, 1, 1)
    weight_3d = torch.zeros(*weight_2d.shape[:2], depth, *weight_2d.shape[2:])
    weight_3d[:, :, -1] = weight_2d
    return weight_3d


@needs_fixtures
def test_4d_kernels_convert_exactly_as_the_official_loader_inflates_them():
    official = {key: tensor.float() for key, tensor in _official().items()}
    flat, inflated = {}, {}
    for key, tensor in official.items():
        if tensor.ndim == 5 and "upscale_conv" in key:
            channels = tensor.shape[1]
            flat[key] = tensor[: 4 * channels].sum(2)  # a 2D up-sampler: the 4C rows one frame uses
            flat[key.replace("weight", "bias")] = official[key.replace("weight", "bias")][: 4 * channels]
            inflated[key] = _tail_inflated(flat[key], tensor.shape[2], rows=tensor.shape[0])
            inflated[key.replace("weight", "bias")] = flat[key.replace("weight", "bias")].repeat(
                tensor.shape[0] // (4 * channels)
            )
        elif tensor.ndim == 5:
            flat[key] = tensor.sum(2)
            inflated[key] = _tail_inflated(flat[key], tensor.shape[2])
        elif key not in flat:
            flat[key] = inflated[key] = tensor
    from_4d = convert_official_vae(flat).state_dict()
    from_inflated = convert_official_vae(inflated).state_dict()
    from_5d = convert_official_vae(official).state_dict()
    for key, value in from_4d.items():
        assert torch.equal(value, from_inflated[key]), key
        torch.testing.assert_close(value, from_5d[key], rtol=0, atol=1e-6)
    vae = convert_official_vae(flat)
    io = load_file(FIXTURES / "vae_io.safetensors")
    decoded = decode_latents(vae, io["latent_scaled_channels_last"])
    torch.testing.assert_close(decoded, io["decoded_from_latent_scaled"].permute(1, 0, 2, 3), rtol=0, atol=1e-4)


# ----------------------------------------------------------------------------------------------------------------------
# Sizes, strictness
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not KEY_LIST.is_file() and not os.environ.get("CI"), reason=f"{KEY_LIST} not found")
def test_the_full_size_key_list_maps_onto_the_default_config_key_for_key():
    shapes = json.loads(KEY_LIST.read_text())
    state = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    assert official_vae_layout(state) == "7b"
    config = vae_7b_config_from_state_dict(state)
    assert config["encoder_block_out_channels"] == [128, 256, 384, 512, 768]
    assert config["decoder_block_out_channels"] == [768, 512, 384, 256, 128]
    assert (config["encoder_layers_per_block"], config["decoder_layers_per_block"]) == (2, 3)
    with torch.device("meta"):
        model = VincieAutoencoderKL7B(**config)
    defaults = VincieAutoencoderKL7B.extract_init_dict({})[0]  # the class defaults: the official configuration
    assert {name: model.config[name] for name in defaults} == {
        name: list(value) if isinstance(value, tuple) else value for name, value in defaults.items()
    }
    assert model.spatial_compression_ratio == 16 and model.config.latent_channels == 48
    mapped = _map_vae_7b_weights(state)
    expected = model.state_dict()
    assert sorted(mapped) == sorted(expected) and len(mapped) == len(shapes) == 252
    for key, tensor in mapped.items():
        assert tuple(tensor.shape) == tuple(expected[key].shape), key


@needs_fixtures
def test_unknown_missing_and_mismatched_keys_are_refused():
    state = _official()
    state["decoder.extra_head.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match="unknown keys.*extra_head"):
        convert_official_vae(state)
    state = _official()
    del state["decoder.up_blocks.2.resnets.1.norm2.bias"]
    with pytest.raises(ValueError, match="missing keys.*up_blocks.2.resnets.1.norm2.bias"):
        convert_official_vae(state)
    state = _official()
    del state["decoder.up_blocks.0.upsampler.upscale_conv.weight"]
    with pytest.raises(ValueError, match="upscale_conv.bias.*not its weight"):
        convert_official_vae(state)
    with pytest.raises(ValueError, match="enc_layers_per_block"):
        convert_official_vae(_official(), {"args": dict(_fixture_vae_config()["args"], enc_layers_per_block=2)})
    with pytest.raises(ValueError, match="neither encoder.mid_block"):
        convert_official_vae({"encoder.conv_in.weight": torch.zeros(8, 3, 3, 3, 3)})


def _public(config) -> dict:
    """A model config without the entries diffusers adds on saving and loading (version, source path)."""
    return {key: value for key, value in config.items() if not key.startswith("_")}


@needs_fixtures
def test_the_streamed_vae_folder_equals_the_in_memory_conversion_holding_one_tensor_at_a_time(tmp_path, monkeypatch):
    official = _official()
    input_storages = {tensor.untyped_storage().data_ptr() for tensor in official.values()}
    converted: list[weakref.ref] = []  # new tensors the conversion made (an input passed through is not one)
    written: list[str] = []

    class OneTensorAtATime(vae_module.StreamingSafetensorsWriter):
        def write(self, name: str, tensor: torch.Tensor) -> None:
            assert all(ref() is None for ref in converted), f"an earlier converted tensor is still held at {name}"
            super().write(name, tensor)
            written.append(name)
            if tensor.untyped_storage().data_ptr() not in input_storages:
                converted.append(weakref.ref(tensor))

    monkeypatch.setattr(vae_module, "StreamingSafetensorsWriter", OneTensorAtATime)
    line = write_official_vae(official, tmp_path / "vae", _fixture_vae_config())
    assert sorted(written) == sorted(official) and len(converted) > len(official) // 2
    in_memory = convert_official_vae(_official(), _fixture_vae_config())
    assert line == describe_converted_vae(in_memory)
    streamed = VincieAutoencoderKL7B.from_pretrained(tmp_path / "vae")
    assert _public(streamed.config) == _public(in_memory.config)
    expected = in_memory.state_dict()
    saved = load_file(tmp_path / "vae" / "diffusion_pytorch_model.safetensors")
    assert sorted(saved) == sorted(expected)
    for key, tensor in saved.items():
        assert torch.equal(tensor, expected[key]), key

    state = _official()
    state["decoder.extra_head.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match="unknown keys.*extra_head"):
        write_official_vae(state, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()  # refused from the names and shapes, before anything is written
