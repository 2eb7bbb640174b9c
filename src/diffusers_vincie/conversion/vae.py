"""Official causal 3D video VAEs -> 2D diffusers autoencoders used one frame at a time, and their parity checks.

VINCIE only ever encodes and decodes single frames. On one frame every causal 3D convolution sees copies of that
frame in time (the causal padding repeats the first frame), so it equals a 2D convolution whose kernel is the sum
of its temporal slices. Two official layouts convert, recognised from the keys (:func:`official_vae_layout`):

- ``"3b"`` (VINCIE-3B ``vae.pth``): an SD3-like ``AutoencoderKL`` with a mid block. Its decoder up-sampler is a
  1x1x1 ``upscale_conv`` + depth-to-space: while that conv is still its identity-replication initialisation it equals
  nearest-neighbour up-sampling (diffusers' ``Upsample2D``); otherwise the z = 0 rows become a
  :class:`DepthToSpaceUpsample2D`. Result: ``AutoencoderKL`` or :class:`VincieAutoencoderKL`.
- ``"7b"`` (VINCIE-7B ``ema_vae.pth``): no mid block, ``final_block``s, 4x4 stride-2 down-sampling convs and a
  3x3x3 ``upscale_conv`` + depth-to-space up-sampler. Result: :class:`VincieAutoencoderKL7B`.

Every size is read from the keys and shapes, so a tiny official-layout VAE converts with the same code as the real
one; loading is strict (no unknown, missing or mis-shaped tensor).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from diffusers import AutoencoderKL

# Folders converted before the VAE classes moved to `models/` name this module in model_index.json; diffusers'
# loader looks the class and its loadable base class (ModelMixin) up here, so both stay importable from here.
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401
from diffusers.utils import SAFETENSORS_WEIGHTS_NAME
from safetensors.torch import load_file

from ..image_latents import decode_latents, encode_images
from ..models.autoencoder_kl_vincie import (
    OFFICIAL_VAE_SCALING_FACTOR,
    OFFICIAL_VAE_SHIFT_FACTOR,
    DepthToSpaceUpsample2D,  # noqa: F401  (re-exported for folders and code that name it here)
    VincieAutoencoderKL,
)
from ..models.autoencoder_kl_vincie_7b import (
    OFFICIAL_7B_VAE_SCALING_FACTOR,
    OFFICIAL_7B_VAE_SHIFT_FACTOR,
    VincieAutoencoderKL7B,
)
from .checkpoint import StreamingSafetensorsWriter

# GroupNorm groups of the official VAEs (hard-coded in the 7B code); the only size the state dict cannot tell.
OFFICIAL_VAE_NORM_NUM_GROUPS = 32

# Old diffusers attention names, renamed by the official 3B loader as well.
_OLD_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_OLD_ATTENTION_PATTERN = re.compile(r"(mid_block\.attentions\.\d+\.)(query|key|value|proj_attn)\.")
_UPSCALE_CONV_PATTERN = re.compile(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.upscale_conv\.(weight|bias)$")
_UPSCALE_CONV_7B_PATTERN = re.compile(r"^decoder\.up_blocks\.(\d+)\.upsampler\.upscale_conv\.(weight|bias)$")
VAE_LAYOUTS = ("3b", "7b")


# ----------------------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------------------


def _count_indices(state_dict: Mapping[str, torch.Tensor], pattern: str) -> int:
    regex = re.compile(pattern)
    indices = {int(match.group(1)) for key in state_dict if (match := regex.match(key))}
    return max(indices) + 1 if indices else 0


def official_vae_layout(state_dict: Mapping[str, torch.Tensor]) -> str:
    """``"7b"`` for a state dict with ``encoder.final_block`` keys, ``"3b"`` for one with ``encoder.mid_block`` keys."""
    if any(key.startswith("encoder.final_block.") for key in state_dict):
        return "7b"
    if any(key.startswith("encoder.mid_block.") for key in state_dict):
        return "3b"
    raise ValueError(
        "VAE state dict has neither encoder.mid_block (VINCIE-3B vae.pth) nor encoder.final_block (VINCIE-7B "
        "ema_vae.pth) keys; is this an official VINCIE VAE?"
    )


def vae_config_from_state_dict(
    state_dict: Mapping[str, torch.Tensor], official_config: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The configuration of the converted model's class, for either official layout (see the module docstring)."""
    if official_vae_layout(state_dict) == "7b":
        return vae_7b_config_from_state_dict(state_dict, official_config)
    return autoencoder_kl_config_from_state_dict(state_dict, official_config)


def autoencoder_kl_config_from_state_dict(
    state_dict: Mapping[str, torch.Tensor], official_config: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Derive the 2D ``AutoencoderKL`` configuration from the official 3B state dict (and optionally its config).

    Sizes are read from key names and shapes, so any size of the official architecture converts; the group count
    comes from ``official_config`` (the ``vae`` section of the official/fixture config) or defaults to 32.

    Args:
        state_dict: official 3D VAE state dict.
        official_config: official VAE constructor arguments; when given, its sizes must agree with the weights.
    """
    for key in ("encoder.conv_in.weight", "decoder.conv_in.weight", "decoder.conv_out.weight"):
        if key not in state_dict:
            raise ValueError(f"VAE state dict has no {key!r}; is this the official vae.pth?")
    num_blocks = _count_indices(state_dict, r"^encoder\.down_blocks\.(\d+)\.")
    block_out_channels = [
        int(state_dict[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"].shape[0]) for i in range(num_blocks)
    ]
    config: dict[str, Any] = {
        "in_channels": int(state_dict["encoder.conv_in.weight"].shape[1]),
        "out_channels": int(state_dict["decoder.conv_out.weight"].shape[0]),
        "down_block_types": ["DownEncoderBlock2D"] * num_blocks,
        "up_block_types": ["UpDecoderBlock2D"] * num_blocks,
        "block_out_channels": block_out_channels,
        "layers_per_block": _count_indices(state_dict, r"^encoder\.down_blocks\.0\.resnets\.(\d+)\."),
        "act_fn": "silu",
        "latent_channels": int(state_dict["decoder.conv_in.weight"].shape[1]),
        "norm_num_groups": OFFICIAL_VAE_NORM_NUM_GROUPS,
        "scaling_factor": OFFICIAL_VAE_SCALING_FACTOR,
        "shift_factor": OFFICIAL_VAE_SHIFT_FACTOR,
        "use_quant_conv": False,
        "use_post_quant_conv": False,
        "mid_block_add_attention": True,
    }
    if official_config is not None:
        config["norm_num_groups"] = int(official_config.get("norm_num_groups", config["norm_num_groups"]))
        for name in ("in_channels", "out_channels", "block_out_channels", "layers_per_block", "latent_channels"):
            if name in official_config and _as_list(official_config[name]) != _as_list(config[name]):
                raise ValueError(
                    f"official_config[{name!r}] = {official_config[name]} disagrees with the weights "
                    f"({config[name]}); pass the config that belongs to this vae.pth"
                )
        for name in ("use_quant_conv", "use_post_quant_conv"):
            if official_config.get(name, False):
                raise ValueError(f"official_config[{name!r}] is true; only the quant-conv-free official VAE converts")
    return config


def _as_list(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def _out_channels(state_dict: Mapping[str, torch.Tensor], key: str, dim: int = 0) -> int:
    if key not in state_dict:
        raise ValueError(f"VAE state dict is missing {key!r}; the checkpoint is incomplete")
    return int(state_dict[key].shape[dim])


def vae_7b_config_from_state_dict(
    state_dict: Mapping[str, torch.Tensor], official_config: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Derive the :class:`VincieAutoencoderKL7B` configuration from the official 7B state dict.

    Args:
        state_dict: official 7B VAE state dict (``ema_vae.pth``).
        official_config: optional official ``vae`` section: the constructor arguments (or a dict holding them under
            ``args``), and optionally ``scaling_factor`` / ``shifting_factor``; its sizes must agree with the weights.
    """
    levels = _count_indices(state_dict, r"^encoder\.down_blocks\.(\d+)\.") + 1
    decoder_levels = _count_indices(state_dict, r"^decoder\.up_blocks\.(\d+)\.") + 1
    if levels < 2 or levels != decoder_levels:
        raise ValueError(
            f"VAE state dict has {levels - 1} encoder down blocks and {decoder_levels - 1} decoder up blocks; the "
            "official 7B VAE has the same number (at least one) in both"
        )

    def width(key: str) -> int:
        return _out_channels(state_dict, key)

    encoder = [width(f"encoder.down_blocks.{i}.resnets.0.conv1.weight") for i in range(levels - 1)]
    decoder = [width(f"decoder.up_blocks.{i}.resnets.0.conv1.weight") for i in range(levels - 1)]
    latent_channels = _out_channels(state_dict, "decoder.conv_in.weight", dim=1)
    if _out_channels(state_dict, "encoder.conv_out.weight") != 2 * latent_channels:
        raise ValueError(
            f"encoder.conv_out has {width('encoder.conv_out.weight')} output channels, expected 2 x the decoder's "
            f"{latent_channels} latent channels (mean and log-variance)"
        )
    config: dict[str, Any] = {
        "in_channels": _out_channels(state_dict, "encoder.conv_in.weight", dim=1),
        "out_channels": width("decoder.conv_out.weight"),
        "encoder_block_out_channels": encoder + [width("encoder.final_block.resnets.0.conv1.weight")],
        "decoder_block_out_channels": decoder + [width("decoder.final_block.resnets.0.conv1.weight")],
        "encoder_layers_per_block": _count_indices(state_dict, r"^encoder\.down_blocks\.0\.resnets\.(\d+)\."),
        "decoder_layers_per_block": _count_indices(state_dict, r"^decoder\.up_blocks\.0\.resnets\.(\d+)\."),
        "latent_channels": latent_channels,
        "norm_num_groups": OFFICIAL_VAE_NORM_NUM_GROUPS,
        "scaling_factor": OFFICIAL_7B_VAE_SCALING_FACTOR,
        "shift_factor": OFFICIAL_7B_VAE_SHIFT_FACTOR,
    }
    if official_config is not None:
        arguments = official_config.get("args", official_config)
        config["scaling_factor"] = float(official_config.get("scaling_factor", config["scaling_factor"]))
        config["shift_factor"] = float(official_config.get("shifting_factor", config["shift_factor"]))
        official_names = {
            "in_channels": "in_channels",
            "out_channels": "out_channels",
            "enc_block_out_channels": "encoder_block_out_channels",
            "dec_block_out_channels": "decoder_block_out_channels",
            "enc_layers_per_block": "encoder_layers_per_block",
            "dec_layers_per_block": "decoder_layers_per_block",
            "latent_channels": "latent_channels",
        }
        for official, ours in official_names.items():
            if official in arguments and _as_list(arguments[official]) != _as_list(config[ours]):
                raise ValueError(
                    f"official_config[{official!r}] = {arguments[official]} disagrees with the weights "
                    f"({config[ours]}); pass the config that belongs to this ema_vae.pth"
                )
        for name in ("use_quant_conv", "use_post_quant_conv"):
            if arguments.get(name, False):
                raise ValueError(f"official_config[{name!r}] is true; only the quant-conv-free official VAE converts")
        factor = arguments.get("spatial_downsample_factor")
        if factor is not None and int(factor) != 2 ** (levels - 1):
            raise ValueError(
                f"official_config['spatial_downsample_factor'] = {factor}, but the weights have {levels} levels "
                f"(factor {2 ** (levels - 1)})"
            )
    return config


# ----------------------------------------------------------------------------------------------------------------------
# Weight mapping
# ----------------------------------------------------------------------------------------------------------------------


def _rename_old_attention(key: str) -> str:
    return _OLD_ATTENTION_PATTERN.sub(lambda m: m.group(1) + _OLD_ATTENTION_NAMES[m.group(2)] + ".", key)


def _sum_over_time(weight: torch.Tensor) -> torch.Tensor:
    """(out, in, kt, kh, kw) -> (out, in, kh, kw): on a replicated single frame the temporal taps add up."""
    return weight.float().sum(dim=2)


def upscale_conv_is_identity(weight: torch.Tensor, bias: torch.Tensor) -> bool:
    """Whether an official ``upscale_conv`` is still its identity-replication initialisation.

    Args:
        weight: ``(r * C, C, 1, 1, 1)`` kernel.
        bias: ``(r * C,)`` bias.
    """
    rows, channels = weight.shape[:2]
    identity = torch.eye(channels).repeat(rows // channels, 1)  # row k*C + c copies input channel c
    return bool(torch.equal(weight.float().reshape(rows, channels), identity) and not bias.float().any())


def _upscale_conv_z0(weight: torch.Tensor, bias: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``((x * 2 + y) * z_r + 0) * C + c`` of ``upscale_conv``: the only ones a single frame keeps."""
    rows = weight.shape[0]
    if weight.shape[1:] != (channels, 1, 1, 1) or rows not in (4 * channels, 8 * channels):
        raise ValueError(
            f"upscale_conv weight has shape {tuple(weight.shape)}; expected ({4 * channels} or {8 * channels}, "
            f"{channels}, 1, 1, 1)"
        )
    temporal_factor = rows // (4 * channels)
    index = torch.tensor(
        [(xy * temporal_factor) * channels + c for xy in range(4) for c in range(channels)], dtype=torch.long
    )
    return weight.float()[index, :, 0, 0, 0][:, :, None, None], bias.float()[index]


def _identity_upsamplers(state_dict: Mapping[str, torch.Tensor]) -> dict[int, bool]:
    """Per decoder up-block index: whether its ``upscale_conv`` is identity."""
    found: dict[int, bool] = {}
    for key in state_dict:
        match = _UPSCALE_CONV_PATTERN.match(key)
        if match and match.group(2) == "weight":
            index = int(match.group(1))
            bias_key = key[: -len("weight")] + "bias"
            if bias_key not in state_dict:
                raise ValueError(f"VAE state dict has {key!r} but no {bias_key!r}")
            found[index] = upscale_conv_is_identity(state_dict[key], state_dict[bias_key])
    return found


def _map_vae_weights(state_dict: Mapping[str, torch.Tensor], depth_to_space: Sequence[int]) -> dict[str, torch.Tensor]:
    """Official 3D keys/tensors -> 2D keys/tensors (float32), before checking against the model."""
    mapped: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        match = _UPSCALE_CONV_PATTERN.match(key)
        if match:
            # Identity up-samplers are dropped (== nearest up-sampling of the stock Upsample2D); depth-to-space ones
            # keep their z = 0 rows, weight and bias together.
            if int(match.group(1)) in depth_to_space and match.group(2) == "weight":
                bias_key = key[: -len("weight")] + "bias"
                mapped[key], mapped[bias_key] = _upscale_conv_z0(tensor, state_dict[bias_key], int(tensor.shape[1]))
            continue
        new_key = _rename_old_attention(key)
        if new_key in mapped:
            raise ValueError(f"VAE state dict holds {new_key!r} twice (old and new attention names)")
        if tensor.ndim == 5 and ".attentions." not in new_key:
            mapped[new_key] = _sum_over_time(tensor)
        elif ".attentions." in new_key and tensor.ndim > 2:
            mapped[new_key] = tensor.float().reshape(tensor.shape[0], -1)  # (o, i, 1, 1[, 1]) linear as conv
        else:
            mapped[new_key] = tensor.float()
    return mapped


def _spatial_kernel(weight: torch.Tensor) -> torch.Tensor:
    """A 5-D causal kernel summed over time; a 4-D kernel as it is (the official loader inflates it "tail" style,
    i.e. into the last temporal slice with zeros elsewhere, whose temporal sum is the kernel itself)."""
    return _sum_over_time(weight) if weight.ndim == 5 else weight.float()


def _upscale_conv_7b_rows(weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``4C`` rows of a 7B ``upscale_conv`` that one frame keeps, reordered for ``nn.PixelShuffle(2)``.

    Output channel ``((z * 2 + x) * 2 + y) * C + c`` of the official conv lands on frame copy ``z``, pixel
    ``(2h + x, 2w + y)``, channel ``c``; one frame keeps the copy ``z = 0``, i.e. the first ``4C`` rows (a temporal
    block has ``8C``). ``nn.PixelShuffle`` reads channel ``c * 4 + x * 2 + y`` instead. A 4-D kernel is tiled along
    its rows up to the layer's size by the official loader (its bias too), so row ``i`` is its row ``i mod rows``.
    """
    rows, channels = int(weight.shape[0]), int(weight.shape[1])
    kept = 4 * channels
    if weight.ndim not in (4, 5) or weight.shape[-2:] != (3, 3):
        raise ValueError(f"upscale_conv weight has shape {tuple(weight.shape)}; expected (r * C, C, [3,] 3, 3)")
    if weight.ndim == 5 and rows not in (kept, 2 * kept):
        raise ValueError(f"upscale_conv weight has {rows} rows for {channels} channels; expected {kept} or {2 * kept}")
    if weight.ndim == 4 and rows != 2 * kept and kept % rows:
        raise ValueError(f"4-D upscale_conv weight has {rows} rows for {channels} channels; they must divide {kept}")
    tiled = torch.arange(kept) % rows if weight.ndim == 4 else torch.arange(kept)
    bias_rows = torch.arange(kept) % bias.shape[0] if weight.ndim == 4 else torch.arange(kept)
    if weight.ndim == 5 and bias.shape[0] != rows:
        raise ValueError(f"upscale_conv bias has {bias.shape[0]} rows, its weight {rows}")
    shuffle = torch.arange(kept).view(4, channels).t().reshape(-1)  # row c*4 + xy <- official row xy*C + c
    return _spatial_kernel(weight[tiled])[shuffle], bias.float()[bias_rows][shuffle]


def _iter_vae_7b_weights(state_dict: Mapping[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
    """Official 7B keys/tensors -> :class:`VincieAutoencoderKL7B` keys/tensors (float32; the names are the same), one
    converted tensor at a time."""
    converted: set[str] = set()
    for key, tensor in state_dict.items():
        match = _UPSCALE_CONV_7B_PATTERN.match(key)
        if match and match.group(2) == "weight":
            bias_key = key[: -len("weight")] + "bias"
            if bias_key not in state_dict:
                raise ValueError(f"VAE state dict has {key!r} but no {bias_key!r}")
            pair = list(_upscale_conv_7b_rows(tensor, state_dict[bias_key]))
            converted.update((key, bias_key))
            yield key, pair.pop(0)  # popped: the caller holds the only reference while the next one is converted
            yield bias_key, pair.pop(0)
        elif not match:
            yield key, _spatial_kernel(tensor) if tensor.ndim >= 4 else tensor.float()
    unpaired = [key for key in state_dict if _UPSCALE_CONV_7B_PATTERN.match(key) and key not in converted]
    if unpaired:
        raise ValueError(f"VAE state dict has {unpaired[0]!r} but not its weight")


def _map_vae_7b_weights(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """All of :func:`_iter_vae_7b_weights` at once."""
    return dict(_iter_vae_7b_weights(state_dict))


def _check_and_load(model: nn.Module, mapped: Mapping[str, torch.Tensor], what: str) -> None:
    _check_mapped(model, mapped, what)
    model.load_state_dict(mapped, strict=True)


def _check_mapped(model: nn.Module, mapped: Mapping[str, torch.Tensor], what: str) -> None:
    """Refuses unknown, missing or mis-shaped tensors (``mapped`` and ``model`` may be on the meta device)."""
    expected = model.state_dict()
    unknown = sorted(set(mapped) - set(expected))
    missing = sorted(set(expected) - set(mapped))
    if unknown:
        raise ValueError(f"{what} has unknown keys {unknown[:5]} ({len(unknown)} in all); is this the official file?")
    if missing:
        raise ValueError(f"{what} is missing keys {missing[:5]} ({len(missing)} in all); the checkpoint is incomplete")
    for key, tensor in mapped.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ValueError(
                f"{what}: {key!r} has shape {tuple(tensor.shape)} after conversion, the model expects "
                f"{tuple(expected[key].shape)}"
            )


# ----------------------------------------------------------------------------------------------------------------------
# Public conversion API
# ----------------------------------------------------------------------------------------------------------------------


def convert_official_vae(
    state_dict: Mapping[str, torch.Tensor],
    official_config: Mapping[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
    force_depth_to_space: bool = False,
) -> ModelMixin:
    """Convert an official 3D VAE to a 2D diffusers autoencoder with identical single-frame outputs.

    Args:
        state_dict: official ``vae.pth`` (3B: 5-D conv kernels, old or new attention key names) or ``ema_vae.pth``
            (7B) contents; the layout is recognised from the keys.
        official_config: optional official VAE constructor arguments (``norm_num_groups`` is taken from it).
        dtype: dtype of the returned model (kernels are summed in float32 first).
        force_depth_to_space: use the depth-to-space up-sampler even where ``upscale_conv`` is identity (both are
            exact then; used to cross-check the two paths).

    Returns:
        For the 7B layout a :class:`VincieAutoencoderKL7B` (:func:`convert_official_vae_7b`). For the 3B layout a
        stock ``AutoencoderKL`` when every ``upscale_conv`` is identity (and not forced), else a
        :class:`VincieAutoencoderKL`; ``scaling_factor`` 0.9152, ``shift_factor`` 0.
    """
    if official_vae_layout(state_dict) == "7b":
        if force_depth_to_space:
            raise ValueError("force_depth_to_space applies to the 3B layout only; the 7B up-sampler is always learned")
        return convert_official_vae_7b(state_dict, official_config, dtype)
    config = autoencoder_kl_config_from_state_dict(state_dict, official_config)
    identity = _identity_upsamplers(state_dict)
    expected_upsamplers = set(range(len(config["block_out_channels"]) - 1))
    if set(identity) != expected_upsamplers:
        raise ValueError(
            f"VAE state dict has upscale_conv weights for up blocks {sorted(identity)}, expected "
            f"{sorted(expected_upsamplers)}; is this the official causal 3D VAE?"
        )
    depth_to_space = sorted(
        index for index, is_identity in identity.items() if force_depth_to_space or not is_identity
    )
    if depth_to_space:
        model: AutoencoderKL = VincieAutoencoderKL(**config, depth_to_space_upsamplers=tuple(depth_to_space))
    else:
        model = AutoencoderKL(**config)
    _check_and_load(model, _map_vae_weights(state_dict, depth_to_space), what="VAE state dict")
    if dtype != torch.float32:
        model = model.to(dtype)
    return model.eval()


def convert_official_vae_7b(
    state_dict: Mapping[str, torch.Tensor],
    official_config: Mapping[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
) -> VincieAutoencoderKL7B:
    """Convert the official VINCIE-7B VAE (``ema_vae.pth``) to :class:`VincieAutoencoderKL7B`, exact on one frame.

    Args:
        state_dict: official state dict; convolution kernels 5-D ``(out, in, kt, kh, kw)`` or 4-D (read as the
            official loader inflates them).
        official_config: optional official ``vae`` section (see :func:`vae_7b_config_from_state_dict`).
        dtype: dtype of the returned model (kernels are summed in float32 first).
    """
    model = VincieAutoencoderKL7B(**vae_7b_config_from_state_dict(state_dict, official_config))
    _check_and_load(model, _map_vae_7b_weights(state_dict), what="VAE state dict")
    if dtype != torch.float32:
        model = model.to(dtype)
    return model.eval()


def write_official_vae(
    state_dict: Mapping[str, torch.Tensor], folder: Path, official_config: Mapping[str, Any] | None = None
) -> str:
    """Converts an official VAE into the diffusers model folder ``folder`` (float32); returns the model card line.

    The 7B VAE (552.8M parameters, 154.6M once converted) is streamed: every converted name and shape is checked
    first, on the meta device, then each tensor is converted and written in turn, so at most one converted tensor is
    held. The 3B layout is converted in memory (:func:`convert_official_vae`).
    """
    if official_vae_layout(state_dict) != "7b":
        vae = convert_official_vae(state_dict, official_config)
        vae.save_pretrained(folder)
        return describe_converted_vae(vae)
    with torch.device("meta"):
        vae = VincieAutoencoderKL7B(**vae_7b_config_from_state_dict(state_dict, official_config))
    planned = _map_vae_7b_weights({key: torch.empty(t.shape, device="meta") for key, t in state_dict.items()})
    _check_mapped(vae, planned, what="VAE state dict")
    plan = [(key, tuple(tensor.shape)) for key, tensor in planned.items()]
    folder.mkdir(parents=True, exist_ok=True)
    writer = StreamingSafetensorsWriter(folder / SAFETENSORS_WEIGHTS_NAME, plan, torch.float32)
    for key, tensor in _iter_vae_7b_weights(state_dict):
        writer.write(key, tensor)
    writer.close()
    vae.save_config(folder)
    return describe_converted_vae(vae)


def describe_converted_vae(vae: ModelMixin) -> str:
    """The model card's line on a VAE :func:`convert_official_vae` returned."""
    if isinstance(vae, VincieAutoencoderKL7B):
        kind = (
            f"VincieAutoencoderKL7B ({vae.config.latent_channels} latent channels, {vae.spatial_compression_ratio}x; "
            "temporally summed kernels, pixel-shuffle up-samplers from the first temporal copy of upscale_conv)"
        )
    else:
        upsamplers = list(getattr(vae.config, "depth_to_space_upsamplers", ()))
        upsampling = f"depth-to-space up-samplers in up blocks {upsamplers}" if upsamplers else "stock Upsample2D"
        kind = f"2D AutoencoderKL (temporally summed kernels, {upsampling})"
    return f"vae: causal 3D VAE -> {kind}, strict load (no unknown, missing or mis-shaped tensor), float32"


# ----------------------------------------------------------------------------------------------------------------------
# Parity against the official fixture
# ----------------------------------------------------------------------------------------------------------------------

# Float32 re-implementations of these networks differ from the official float32 run by about 1e-6 of the output's
# scale (summed temporal kernels and another summation order): the tolerance allows 100 times that, relative to
# the larger of 1 and the largest reference value, so any size of VAE is held to the same float32 standard.
VAE_PARITY_RELATIVE_TOLERANCE = 1e-4


def vae_parity_tolerance(expected: torch.Tensor) -> float:
    """Largest absolute error accepted against ``expected`` (see ``VAE_PARITY_RELATIVE_TOLERANCE``)."""
    return VAE_PARITY_RELATIVE_TOLERANCE * max(1.0, float(expected.abs().max()) if expected.numel() else 0.0)


@torch.no_grad()
def vae_parity_checks(
    folder: str | os.PathLike, force_depth_to_space: bool = False
) -> list[tuple[str, torch.Tensor, torch.Tensor, float]]:
    """Convert a fixture folder's ``vae_official.safetensors`` and compare with ``vae_io.safetensors``. Latents are
    normalised and decoded through `diffusers_vincie.image_latents`, as the pipeline and training do.

    Args:
        folder: official fixture folder (``config.json``, ``vae_official.safetensors``, ``vae_io.safetensors``).
        force_depth_to_space: (3B layout) convert with depth-to-space up-samplers everywhere.

    Returns:
        ``(name, ours, expected, max_abs_tolerance)`` per check, all in float32.
    """
    folder = os.fspath(folder)
    with open(os.path.join(folder, "config.json")) as handle:
        fixture_config = json.load(handle)
    official = load_file(os.path.join(folder, "vae_official.safetensors"))
    io_path = os.path.join(folder, "vae_io.safetensors")
    io = load_file(io_path)
    vae = convert_official_vae(official, fixture_config["vae"], force_depth_to_space=force_depth_to_space)
    image = io["image"][:, :, 0]  # (1, 3, 1, H, W) -> (1, 3, H, W): one frame
    posterior = vae.encode(image).latent_dist

    def frame(name: str) -> torch.Tensor:
        return io[name][:, :, 0]  # drop the frame axis of (B, C, 1, H, W)

    sample = posterior.mean + posterior.std * frame("posterior_sample_eps")
    checks = [
        ("encoder moments", vae.encoder(image), frame("encoder_moments")),  # no quant conv in either layout
        ("posterior mean", posterior.mean, frame("posterior_mean")),
        ("posterior logvar", posterior.logvar, frame("posterior_logvar")),
        ("posterior std", posterior.std, frame("posterior_std")),
        ("mode scaled channels-last", encode_images(vae, image, "mode"), io["latent_mode_scaled_channels_last"]),
        ("sample from stored eps", sample, frame("posterior_sample")),
    ]
    if official_vae_layout(official) == "3b":
        checks += [
            ("decode", decode_latents(vae, io["decode_input_latent_scaled_channels_last"]), frame("decoded")),
            ("round trip", decode_latents(vae, io["latent_mode_scaled_channels_last"]), frame("roundtrip_decoded")),
        ]
    else:
        checks += _vae_7b_parity_checks(vae, io, _metadata(io_path))
    results = [(name, ours, expected, vae_parity_tolerance(expected)) for name, ours, expected in checks]
    # the normalisation factors of the converted config: equal up to the fixture's float32 rounding
    names = [name for name in ("scaling_factor", "shifting_factor") if name in io]
    ours = torch.tensor([vae.config.scaling_factor, vae.config.shift_factor or 0.0][: len(names)])
    results.append((" and ".join(names), ours, torch.stack([io[name] for name in names]), 1e-7))
    return results


def _metadata(path: str) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(path, "pt") as handle:
        return handle.metadata() or {}


def _vae_7b_parity_checks(vae, io: dict, metadata: dict) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """The 7B fixture's single- and two-frame decodes and seeded posterior sample (the sampling run's stored decode
    is checked with the sampler's checks, ``parity.sample_checks``)."""
    checks = [
        (
            "decode",
            decode_latents(vae, io["latent_scaled_channels_last"]),
            _frames_first(io["decoded_from_latent_scaled"]),
        ),
        (
            "round trip",
            decode_latents(vae, io["latent_mode_scaled_channels_last"]),
            _frames_first(io["roundtrip_decoded_from_mode"]),
        ),
        (
            "two-frame decode",
            decode_latents(vae, io["decode2_input_latent_scaled_channels_last"]),
            _frames_first(io["decode2_output"]),
        ),
    ]
    if "encode_rng_seed" in metadata:
        # the official encode draws eps from the global RNG seeded before encoding: a generator with that seed
        # gives the same draw through the pipeline's encode path
        generator = torch.Generator().manual_seed(int(metadata["encode_rng_seed"]))
        sampled = encode_images(vae, io["image"][:, :, 0], "sample", generator)
        checks.append(("encode with a seeded posterior sample", sampled, io["latent_scaled_channels_last"]))
    return checks


def _frames_first(decoded: torch.Tensor) -> torch.Tensor:
    return decoded.permute(1, 0, 2, 3)  # official vae_decode output (3, frames, H, W) -> (frames, 3, H, W)
