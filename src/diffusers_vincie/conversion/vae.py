"""Official causal 3D video VAE (``vae.pth``) -> a 2D diffusers ``AutoencoderKL`` used one frame at a time.

VINCIE only ever encodes and decodes single frames. On one frame every causal 3D convolution sees copies of that
frame in time, so it equals a 2D convolution whose kernel is the sum of its temporal slices (spec 9.4). The only
layer without a stock 2D counterpart is the decoder up-sampler: ``upscale_conv`` (1x1x1 conv to ``r * C``
channels) + depth-to-space. While ``upscale_conv`` is still its identity-replication initialisation it equals
nearest-neighbour up-sampling, i.e. diffusers' ``Upsample2D``; otherwise :class:`DepthToSpaceUpsample2D` keeps the
z = 0 rows as a 1x1 conv and rearranges depth to space exactly.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
from diffusers import AutoencoderKL
from diffusers.configuration_utils import register_to_config

# diffusers' pipeline loader looks up the loadable base classes (ModelMixin) in the module that model_index.json
# names for a component, i.e. this one, so it must be importable from here.
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401
from safetensors.torch import load_file

OFFICIAL_VAE_SCALING_FACTOR = 0.9152
OFFICIAL_VAE_SHIFT_FACTOR = 0.0

# Official 3B/7B VAE (`models/vae/s8_c16_t4_inflation_sd3.yaml`, spec 9.1); only the group count cannot be read
# from the state dict.
OFFICIAL_VAE_NORM_NUM_GROUPS = 32

# Old diffusers attention names, renamed by the official loader as well (spec 1.3).
_OLD_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_OLD_ATTENTION_PATTERN = re.compile(r"(mid_block\.attentions\.\d+\.)(query|key|value|proj_attn)\.")
_UPSCALE_CONV_PATTERN = re.compile(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.upscale_conv\.(weight|bias)$")


# ----------------------------------------------------------------------------------------------------------------------
# Model: AutoencoderKL with optional depth-to-space up-samplers
# ----------------------------------------------------------------------------------------------------------------------


class DepthToSpaceUpsample2D(nn.Module):
    """2x spatial up-sampler of the official VAE on one frame: 1x1 conv to 4C, depth-to-space, 3x3 conv.

    The 1x1 conv output channel ``(x * 2 + y) * C + c`` becomes channel ``c`` of output pixel ``(2h + x, 2w + y)``
    (C innermost, unlike ``torch.pixel_shuffle``).

    Args:
        channels: number of input and output channels C.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.upscale_conv = nn.Conv2d(channels, 4 * channels, kernel_size=1)
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        batch, _, height, width = hidden_states.shape
        depth = self.upscale_conv(hidden_states)  # (B, 4C, H, W), channel = (x, y, c)
        depth = depth.view(batch, 2, 2, self.channels, height, width)  # (B, x, y, C, H, W)
        space = depth.permute(0, 3, 4, 1, 5, 2).reshape(batch, self.channels, 2 * height, 2 * width)
        return self.conv(space)


class VincieAutoencoderKL(AutoencoderKL):
    """``AutoencoderKL`` whose listed decoder up-blocks use :class:`DepthToSpaceUpsample2D`.

    Only needed when the official ``upscale_conv`` weights are no longer identity; otherwise the converter returns a
    stock ``AutoencoderKL``.

    Args:
        depth_to_space_upsamplers: indices of ``decoder.up_blocks`` whose up-sampler is depth-to-space.
        **kwargs: the ``AutoencoderKL`` configuration.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",),
        up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",),
        block_out_channels: tuple[int, ...] = (64,),
        layers_per_block: int = 1,
        act_fn: str = "silu",
        latent_channels: int = 4,
        norm_num_groups: int = 32,
        sample_size: int = 32,
        scaling_factor: float = OFFICIAL_VAE_SCALING_FACTOR,
        shift_factor: float | None = OFFICIAL_VAE_SHIFT_FACTOR,
        latents_mean: tuple[float, ...] | None = None,
        latents_std: tuple[float, ...] | None = None,
        force_upcast: bool = True,
        use_quant_conv: bool = False,
        use_post_quant_conv: bool = False,
        mid_block_add_attention: bool = True,
        depth_to_space_upsamplers: tuple[int, ...] = (),
    ):
        super().__init__(
            in_channels=in_channels,
            out_channels=out_channels,
            down_block_types=down_block_types,
            up_block_types=up_block_types,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            act_fn=act_fn,
            latent_channels=latent_channels,
            norm_num_groups=norm_num_groups,
            sample_size=sample_size,
            scaling_factor=scaling_factor,
            shift_factor=shift_factor,
            latents_mean=latents_mean,
            latents_std=latents_std,
            force_upcast=force_upcast,
            use_quant_conv=use_quant_conv,
            use_post_quant_conv=use_post_quant_conv,
            mid_block_add_attention=mid_block_add_attention,
        )
        for index in depth_to_space_upsamplers:
            up_block = self.decoder.up_blocks[index]
            if up_block.upsamplers is None:
                raise ValueError(
                    f"depth_to_space_upsamplers lists up block {index}, which has no up-sampler; "
                    f"valid indices are 0..{len(self.decoder.up_blocks) - 2}"
                )
            up_block.upsamplers[0] = DepthToSpaceUpsample2D(up_block.upsamplers[0].channels)


# ----------------------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------------------


def _count_indices(state_dict: Mapping[str, torch.Tensor], pattern: str) -> int:
    regex = re.compile(pattern)
    indices = {int(match.group(1)) for key in state_dict if (match := regex.match(key))}
    return max(indices) + 1 if indices else 0


def vae_config_from_state_dict(
    state_dict: Mapping[str, torch.Tensor], official_config: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Derive the 2D ``AutoencoderKL`` configuration from the official state dict (and optionally its config).

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
    """Rows ``((x * 2 + y) * z_r + 0) * C + c`` of ``upscale_conv``: the only ones a single frame keeps (spec 9.4)."""
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


def _check_and_load(model: nn.Module, mapped: Mapping[str, torch.Tensor], what: str) -> None:
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
    model.load_state_dict(mapped, strict=True)


# ----------------------------------------------------------------------------------------------------------------------
# Public conversion API
# ----------------------------------------------------------------------------------------------------------------------


def convert_official_vae(
    state_dict: Mapping[str, torch.Tensor],
    official_config: Mapping[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
    force_depth_to_space: bool = False,
) -> AutoencoderKL:
    """Convert the official 3D VAE weights to a 2D diffusers autoencoder with identical single-frame outputs.

    Args:
        state_dict: official ``vae.pth`` contents (5-D conv kernels; old or new attention key names).
        official_config: optional official VAE constructor arguments (``norm_num_groups`` is taken from it).
        dtype: dtype of the returned model (kernels are summed in float32 first).
        force_depth_to_space: use the depth-to-space up-sampler even where ``upscale_conv`` is identity (both are
            exact then; used to cross-check the two paths).

    Returns:
        A stock ``AutoencoderKL`` when every ``upscale_conv`` is identity (and not forced), else a
        :class:`VincieAutoencoderKL`; ``scaling_factor`` 0.9152, ``shift_factor`` 0.
    """
    config = vae_config_from_state_dict(state_dict, official_config)
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


# ----------------------------------------------------------------------------------------------------------------------
# Parity against the official fixture
# ----------------------------------------------------------------------------------------------------------------------

VAE_PARITY_TOLERANCE = 1e-4


@torch.no_grad()
def vae_parity_checks(
    folder: str | os.PathLike, force_depth_to_space: bool = False
) -> list[tuple[str, torch.Tensor, torch.Tensor, float]]:
    """Convert a fixture folder's ``vae_official.safetensors`` and compare with ``vae_io.safetensors``.

    Args:
        folder: official fixture folder (``config.json``, ``vae_official.safetensors``, ``vae_io.safetensors``).
        force_depth_to_space: convert with depth-to-space up-samplers everywhere.

    Returns:
        ``(name, ours, expected, max_abs_tolerance)`` per check, all in float32.
    """
    folder = os.fspath(folder)
    with open(os.path.join(folder, "config.json")) as handle:
        fixture_config = json.load(handle)
    official = load_file(os.path.join(folder, "vae_official.safetensors"))
    io = load_file(os.path.join(folder, "vae_io.safetensors"))
    vae = convert_official_vae(official, fixture_config["vae"], force_depth_to_space=force_depth_to_space)
    scaling = vae.config.scaling_factor
    if abs(scaling - float(io["scaling_factor"])) > 1e-6:
        raise ValueError(
            f"converted scaling_factor {scaling} differs from the fixture's {float(io['scaling_factor'])}"
        )

    image = io["image"][:, :, 0]  # (1, 3, 1, H, W) -> (1, 3, H, W): one frame
    moments = vae.encoder(image)  # (1, 2C, h, w); no quant conv
    posterior = vae.encode(image).latent_dist
    mode_channels_last = (posterior.mode() * scaling).permute(0, 2, 3, 1)  # frames=1 as batch: (1, h, w, C)
    sample = posterior.mean + posterior.std * io["posterior_sample_eps"][:, :, 0]

    def decode_channels_last(latent: torch.Tensor) -> torch.Tensor:
        return vae.decode(latent.permute(0, 3, 1, 2) / scaling).sample  # (1, h, w, C) -> (1, 3, H, W)

    def frame(name: str) -> torch.Tensor:
        return io[name][:, :, 0]  # drop the frame axis of (B, C, 1, H, W)

    return [
        ("encoder moments", moments, frame("encoder_moments"), VAE_PARITY_TOLERANCE),
        ("posterior mean", posterior.mean, frame("posterior_mean"), VAE_PARITY_TOLERANCE),
        ("posterior logvar", posterior.logvar, frame("posterior_logvar"), VAE_PARITY_TOLERANCE),
        ("posterior std", posterior.std, frame("posterior_std"), VAE_PARITY_TOLERANCE),
        (
            "mode scaled channels-last",
            mode_channels_last,
            io["latent_mode_scaled_channels_last"],
            VAE_PARITY_TOLERANCE,
        ),
        ("sample from stored eps", sample, frame("posterior_sample"), VAE_PARITY_TOLERANCE),
        (
            "decode",
            decode_channels_last(io["decode_input_latent_scaled_channels_last"]),
            frame("decoded"),
            VAE_PARITY_TOLERANCE,
        ),
        ("round trip", decode_channels_last(mode_channels_last), frame("roundtrip_decoded"), VAE_PARITY_TOLERANCE),
    ]
