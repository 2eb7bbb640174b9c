"""Images <-> the latents the transformer sees, for every VAE, shared by the pipeline, training and conversion.

Everything a VAE family changes is read from the VAE itself (its config), never chosen by family in the callers:

- latent normalisation: ``(z - shift_factor) * scaling_factor`` (VINCIE-3B: scale 0.9152, no shift; VINCIE-7B:
  scale 0.9045, shift -0.0025), or per-channel ``(z - latents_mean) * scaling_factor / latents_std`` for VAEs whose
  config carries ``latents_mean`` / ``latents_std``; :func:`normalize_latents` / :func:`denormalize_latents`;
- spatial factor: the VAE's ``spatial_compression_ratio`` where it defines one, else ``2 ** (levels - 1)`` of its
  ``block_out_channels`` (diffusers' convention); :func:`spatial_factor`;
- latent channels: ``latent_channels`` of its config; :func:`latent_channels`;
- posterior: :func:`encode_images` takes ``"sample"`` (what the official code of both families does, drawn from
  ``generator``) or ``"mode"`` (deterministic: the training targets); VAEs without a posterior (``AutoencoderTiny``)
  return their latents as they are;
- class: :func:`load_vae` loads the class a VAE folder's ``config.json`` names (``_class_name``), diffusers' own or
  this package's (registered with diffusers when the package is imported).

``vae=None`` is pixel space: the images in [-1, 1] are the latents (3 channels, spatial factor 1).

Latents are channel-last ``(N, h, w, C)``, the transformer's layout; images are ``(N, 3, H, W)`` in [-1, 1]. Images
and latents are encoded and decoded one at a time, as the official code of both families does: a batched
convolution may round differently from a single one, and an image's latent must not depend on what else the
caller encodes with it (the pipeline encodes one image, training all frames of a sample).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import retrieve_latents

POSTERIORS = ("sample", "mode")
PIXEL_SPACE_CHANNELS = 3


def latent_channels(vae) -> int:
    """Channels C of the latents (3 in pixel space)."""
    return PIXEL_SPACE_CHANNELS if vae is None else int(vae.config.latent_channels)


def spatial_factor(vae) -> int:
    """Image pixels per latent pixel along each side (1 in pixel space)."""
    if vae is None:
        return 1
    ratio = getattr(vae, "spatial_compression_ratio", None)
    if ratio is not None:
        return int(ratio)
    return 2 ** (len(vae.config.block_out_channels) - 1)


def _channel_statistics(vae, like: torch.Tensor) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """The config's per-channel ``latents_mean`` / ``latents_std``, shaped to broadcast over channel-first ``like``,
    or ``(None, None)`` for VAEs normalised by ``shift_factor`` alone."""
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    if mean is None and std is None:
        return None, None
    if mean is None or std is None:
        raise ValueError("The VAE config sets only one of `latents_mean` / `latents_std`; set both or neither.")
    if getattr(vae.config, "shift_factor", None):
        raise ValueError("The VAE config sets both `shift_factor` and `latents_mean`; keep one normalisation.")
    shape = (1, -1) + (1,) * (like.ndim - 2)
    return tuple(torch.tensor(v, device=like.device, dtype=like.dtype).view(shape) for v in (mean, std))


def _shift(vae) -> float:
    return float(getattr(vae.config, "shift_factor", None) or 0.0)  # VAEs without one (AutoencoderTiny) have none


def normalize_latents(vae, z: torch.Tensor) -> torch.Tensor:
    """Raw VAE latents ``(N, C, h, w)`` -> the normalised latents the transformer sees (same layout)."""
    mean, std = _channel_statistics(vae, z)
    if mean is None:
        return (z - _shift(vae)) * vae.config.scaling_factor
    return (z - mean) * vae.config.scaling_factor / std


def denormalize_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalize_latents`: normalised latents ``(N, C, h, w)`` -> what the VAE decodes."""
    mean, std = _channel_statistics(vae, latents)
    if mean is None:
        return latents / vae.config.scaling_factor + _shift(vae)
    return latents * std / vae.config.scaling_factor + mean


def encode_images(
    vae,
    images: torch.Tensor,
    posterior: str = "sample",
    generator: Optional[torch.Generator] = None,
    device=None,
) -> torch.Tensor:
    """``(N, 3, H, W)`` images in [-1, 1] -> normalised channel-last latents ``(N, h, w, C)`` in the VAE's dtype.

    Args:
        vae: a diffusers VAE, or ``None`` for pixel space.
        images: the images; ``H`` and ``W`` multiples of :func:`spatial_factor`.
        posterior: ``"sample"`` draws ``mean + std * eps`` with ``eps`` from ``generator``; ``"mode"`` takes the mean.
        generator: the generator of the posterior sample (the global RNG when ``None``).
        device: where the VAE runs (default: its own device; a pipeline passes its execution device).
    """
    if posterior not in POSTERIORS:
        raise ValueError(f"`posterior` must be one of {POSTERIORS}, got {posterior!r}.")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"`images` must be (N, 3, H, W) in [-1, 1]; got {tuple(images.shape)}.")
    if vae is None:
        return images.permute(0, 2, 3, 1)
    latents = []
    for image in images.to(device or vae.device, vae.dtype):  # one at a time: see the module docstring
        z = retrieve_latents(vae.encode(image[None]), generator, "argmax" if posterior == "mode" else "sample")
        latents.append(normalize_latents(vae, z))
    return torch.cat(latents).permute(0, 2, 3, 1)


def decode_latents(vae, latents: torch.Tensor, device=None) -> torch.Tensor:
    """Normalised channel-last latents ``(N, h, w, C)`` -> float32 images ``(N, 3, H, W)`` (not clamped).

    Args:
        vae: a diffusers VAE, or ``None`` for pixel space.
        latents: the latents.
        device: where the VAE runs (default: its own device; a pipeline passes its execution device).
    """
    if latents.ndim != 4 or latents.shape[-1] != latent_channels(vae):
        raise ValueError(f"`latents` must be (N, h, w, {latent_channels(vae)}); got {tuple(latents.shape)}.")
    if vae is None:
        return latents.permute(0, 3, 1, 2).float()
    z = latents.permute(0, 3, 1, 2).to(device or vae.device, vae.dtype)
    return torch.cat([vae.decode(denormalize_latents(vae, one[None])).sample.float() for one in z])


def vae_class(class_name: str):
    """The VAE class a config names: diffusers' own, or this package's (registered on the diffusers namespace)."""
    import diffusers
    from diffusers.models.modeling_utils import ModelMixin

    cls = getattr(diffusers, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, ModelMixin) and hasattr(cls, "encode")):
        raise ValueError(f"{class_name!r} is not a diffusers VAE class (a ModelMixin with `encode` / `decode`).")
    return cls


def load_vae(path: str | Path, **kwargs):
    """Loads the VAE at ``path`` with the class its ``config.json`` names (``_class_name``).

    Args:
        path: a VAE folder (``config.json`` + weights, e.g. a pipeline's ``vae/``) or a Hub repository id.
        **kwargs: passed to ``from_pretrained`` (``subfolder``, ``torch_dtype``, ...).
    """
    from diffusers import AutoencoderKL  # any ConfigMixin reads a config.json; this one names the file so

    try:
        config = AutoencoderKL.load_config(path, subfolder=kwargs.get("subfolder"))
    except OSError as error:
        raise ValueError(f"{path} is not a diffusers VAE folder: {error}") from error
    class_name = config.get("_class_name")
    if not class_name:
        raise ValueError(f"The config.json of {path} names no `_class_name`; it is not a diffusers model config.")
    return vae_class(class_name).from_pretrained(path, **kwargs)


__all__ = [
    "POSTERIORS",
    "decode_latents",
    "denormalize_latents",
    "encode_images",
    "latent_channels",
    "load_vae",
    "normalize_latents",
    "spatial_factor",
    "vae_class",
]
