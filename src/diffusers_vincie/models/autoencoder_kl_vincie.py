"""VincieAutoencoderKL: the VINCIE-3B VAE on single frames, a diffusers ``AutoencoderKL`` with depth-to-space
up-samplers.

The official 3B VAE is a causal 3D autoencoder; on one frame it is a 2D ``AutoencoderKL`` except for its decoder
up-sampler, a learned 1x1 convolution to ``4C`` channels followed by depth-to-space. While that convolution is
still its identity-replication initialisation it equals nearest-neighbour up-sampling (the stock ``Upsample2D``);
trained weights need :class:`DepthToSpaceUpsample2D`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from diffusers import AutoencoderKL
from diffusers.configuration_utils import register_to_config

# diffusers' pipeline loader looks up the loadable base classes (ModelMixin) in the module that model_index.json
# names for a component, i.e. this one, so it must be importable from here.
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401

# Latent normalisation of the official VINCIE-3B VAE: latent = z * 0.9152 (no shift).
OFFICIAL_VAE_SCALING_FACTOR = 0.9152
OFFICIAL_VAE_SHIFT_FACTOR = 0.0


class DepthToSpaceUpsample2D(nn.Module):
    """2x spatial up-sampler of the official 3B VAE on one frame: 1x1 conv to 4C, depth-to-space, 3x3 conv.

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
