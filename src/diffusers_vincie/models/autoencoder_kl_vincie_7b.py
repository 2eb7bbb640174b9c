"""VincieAutoencoderKL7B: the VINCIE-7B VAE on single frames (48 latent channels, 16x spatial compression).

The official 7B VAE is a causal 3D autoencoder that VINCIE only ever runs on single frames. On one frame every
causal convolution sees copies of that frame in time, so the network is this 2D autoencoder:

    encoder: conv_in -> per level: resnets + 4x4 stride-2 conv -> final_block (resnets to the widest channels)
             -> GroupNorm -> SiLU -> conv_out (mean and log-variance)
    decoder: conv_in -> per level: resnets + (3x3 conv to 4C, pixel shuffle, 3x3 conv) -> final_block (resnets)
             -> GroupNorm -> SiLU -> conv_out

No mid block, no attention, no quant convolutions; GroupNorm with eps 1e-6, SiLU everywhere. The resnets are
diffusers' ``ResnetBlock2D`` and the down-samplers diffusers' ``Downsample2D``; the up-sampler is
:class:`PixelShuffleUpsample2D`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.downsampling import Downsample2D
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.resnet import ResnetBlock2D
from diffusers.utils.accelerate_utils import apply_forward_hook

# Latent normalisation of the official VINCIE-7B VAE: latent = (z - (-0.0025)) * 0.9045.
OFFICIAL_7B_VAE_SCALING_FACTOR = 0.9045
OFFICIAL_7B_VAE_SHIFT_FACTOR = -0.0025
_NORM_EPS = 1e-6


class PixelShuffleUpsample2D(nn.Module):
    """Learned 2x up-sampler: 3x3 conv to ``4C`` channels, ``nn.PixelShuffle(2)``, 3x3 conv.

    Args:
        channels: number of input and output channels C.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.upscale_conv = nn.Conv2d(channels, 4 * channels, kernel_size=3, padding=1)
        self.pixel_shuffle = nn.PixelShuffle(2)
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pixel_shuffle(self.upscale_conv(hidden_states)))


def _resnets(in_channels: int, out_channels: int, num_layers: int, groups: int) -> nn.ModuleList:
    """``num_layers`` resnets; the first one changes the channels (1x1 shortcut conv)."""
    return nn.ModuleList(
        ResnetBlock2D(
            in_channels=in_channels if i == 0 else out_channels,
            out_channels=out_channels,
            temb_channels=None,
            groups=groups,
            eps=_NORM_EPS,
        )
        for i in range(num_layers)
    )


class _ResnetStack(nn.Module):
    """Resnets in a row: a level's first part, and the final block of the encoder and of the decoder."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int):
        super().__init__()
        self.resnets = _resnets(in_channels, out_channels, num_layers, groups)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            hidden_states = resnet(hidden_states, None)
        return hidden_states


class _DownLevel(_ResnetStack):
    """Resnets, then a 4x4 stride-2 convolution (``downsampler.conv``, as the official checkpoints name it)."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int):
        super().__init__(in_channels, out_channels, num_layers, groups)
        # name "op" registers the conv once, as `conv` (what AutoencoderKL does too)
        self.downsampler = Downsample2D(
            out_channels, use_conv=True, out_channels=out_channels, padding=1, kernel_size=4, name="op"
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.downsampler(super().forward(hidden_states))


class _UpLevel(_ResnetStack):
    """Resnets, then a :class:`PixelShuffleUpsample2D` (``upsampler``, as the official checkpoints name it)."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int):
        super().__init__(in_channels, out_channels, num_layers, groups)
        self.upsampler = PixelShuffleUpsample2D(out_channels)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.upsampler(super().forward(hidden_states))


class _Encoder(nn.Module):
    def __init__(self, in_channels: int, latent_channels: int, block_out_channels, layers: int, groups: int):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, padding=1)
        channels = [block_out_channels[0], *block_out_channels[:-1]]  # input width of each level
        self.down_blocks = nn.ModuleList(
            _DownLevel(channels[i], block_out_channels[i], layers, groups) for i in range(len(block_out_channels) - 1)
        )
        self.final_block = _ResnetStack(block_out_channels[-2], block_out_channels[-1], layers, groups)
        self.conv_norm_out = nn.GroupNorm(groups, block_out_channels[-1], eps=_NORM_EPS)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(block_out_channels[-1], 2 * latent_channels, kernel_size=3, padding=1)

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        hidden_states = self.conv_in(sample)
        for level in self.down_blocks:
            hidden_states = level(hidden_states)
        hidden_states = self.final_block(hidden_states)
        return self.conv_out(self.conv_act(self.conv_norm_out(hidden_states)))


class _Decoder(nn.Module):
    def __init__(self, latent_channels: int, out_channels: int, block_out_channels, layers: int, groups: int):
        super().__init__()
        self.conv_in = nn.Conv2d(latent_channels, block_out_channels[0], kernel_size=3, padding=1)
        channels = [block_out_channels[0], *block_out_channels[:-1]]  # input width of each level
        self.up_blocks = nn.ModuleList(
            _UpLevel(channels[i], block_out_channels[i], layers, groups) for i in range(len(block_out_channels) - 1)
        )
        self.final_block = _ResnetStack(block_out_channels[-2], block_out_channels[-1], layers, groups)
        self.conv_norm_out = nn.GroupNorm(groups, block_out_channels[-1], eps=_NORM_EPS)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(block_out_channels[-1], out_channels, kernel_size=3, padding=1)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        hidden_states = self.conv_in(latents)
        for level in self.up_blocks:
            hidden_states = level(hidden_states)
        hidden_states = self.final_block(hidden_states)
        return self.conv_out(self.conv_act(self.conv_norm_out(hidden_states)))


class VincieAutoencoderKL7B(ModelMixin, ConfigMixin):
    """The VINCIE-7B VAE on single frames: images ``(B, 3, H, W)`` <-> latents ``(B, C, H / f, W / f)``.

    ``f = 2 ** (levels - 1)`` (16 for the official 5 levels). ``encode`` returns the diagonal Gaussian posterior
    (first ``C`` channels mean, last ``C`` log-variance) as an ``AutoencoderKLOutput``; ``decode`` a
    ``DecoderOutput``. The latent the transformer sees is ``(z - shift_factor) * scaling_factor``.

    Args:
        in_channels: image channels.
        out_channels: decoded image channels.
        encoder_block_out_channels: encoder width per level; the last entry is the width of the final block.
        decoder_block_out_channels: decoder width per level; the last entry is the width of the final block.
        encoder_layers_per_block: resnets per encoder level (and in the encoder's final block).
        decoder_layers_per_block: resnets per decoder level (and in the decoder's final block).
        latent_channels: latent channels C.
        norm_num_groups: GroupNorm groups (32 in the official model); divides every width.
        scaling_factor: latent scale of the normalisation above.
        shift_factor: latent shift of the normalisation above.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        encoder_block_out_channels: tuple[int, ...] = (128, 256, 384, 512, 768),
        decoder_block_out_channels: tuple[int, ...] = (768, 512, 384, 256, 128),
        encoder_layers_per_block: int = 2,
        decoder_layers_per_block: int = 3,
        latent_channels: int = 48,
        norm_num_groups: int = 32,
        scaling_factor: float = OFFICIAL_7B_VAE_SCALING_FACTOR,
        shift_factor: float = OFFICIAL_7B_VAE_SHIFT_FACTOR,
    ):
        super().__init__()
        if len(encoder_block_out_channels) < 2 or len(encoder_block_out_channels) != len(decoder_block_out_channels):
            raise ValueError(
                f"encoder_block_out_channels {list(encoder_block_out_channels)} and decoder_block_out_channels "
                f"{list(decoder_block_out_channels)} must have the same length (levels), at least 2."
            )
        for name, widths in (
            ("encoder_block_out_channels", encoder_block_out_channels),
            ("decoder_block_out_channels", decoder_block_out_channels),
        ):
            if any(width % norm_num_groups for width in widths):
                raise ValueError(f"Every entry of {name} {list(widths)} must be a multiple of norm_num_groups.")
        self.encoder = _Encoder(
            in_channels, latent_channels, encoder_block_out_channels, encoder_layers_per_block, norm_num_groups
        )
        self.decoder = _Decoder(
            latent_channels, out_channels, decoder_block_out_channels, decoder_layers_per_block, norm_num_groups
        )

    @property
    def spatial_compression_ratio(self) -> int:
        """Image pixels per latent pixel along each side."""
        return 2 ** (len(self.config.encoder_block_out_channels) - 1)

    @apply_forward_hook  # model offloading hooks wrap forward(); encode and decode are entry points too
    def encode(self, sample: torch.Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple:
        """``(B, in_channels, H, W)`` images (H, W multiples of ``spatial_compression_ratio``) -> posterior."""
        factor = self.spatial_compression_ratio
        if sample.ndim != 4 or sample.shape[-1] % factor or sample.shape[-2] % factor:
            raise ValueError(
                f"`sample` must be (B, {self.config.in_channels}, H, W) with H and W multiples of {factor}; got "
                f"{tuple(sample.shape)}."
            )
        posterior = DiagonalGaussianDistribution(self.encoder(sample))
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    @apply_forward_hook
    def decode(self, z: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple:
        """``(B, latent_channels, h, w)`` latents (before the normalisation) -> images."""
        decoded = self.decoder(z)
        return DecoderOutput(sample=decoded) if return_dict else (decoded,)

    def forward(
        self,
        sample: torch.Tensor,
        sample_posterior: bool = False,
        return_dict: bool = True,
        generator: torch.Generator | None = None,
    ) -> DecoderOutput | tuple:
        """Encode then decode ``sample`` through the posterior mode (or a sample drawn with ``generator``)."""
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z, return_dict=return_dict)
