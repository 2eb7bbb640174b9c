"""Checks of the user-facing arguments of the pipeline and its sessions, run once per call or edit before any work.

Each error names the argument and the fix. The pipeline's ``check_inputs`` and ``VincieEditingSession.edit`` share
these, so the same bad value gets the same message on both paths.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional, Union

import numpy as np
import torch

from ..image_latents import POSTERIORS  # noqa: F401  (re-exported: the pipeline and session check `posterior`)
from .image_processing import to_rgb

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
FIDELITIES = ("exact", "official")


def check_choice(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {allowed}; got {value!r}.")


def check_real(name: str, value, minimum: float, maximum: float = math.inf, hint: str = "") -> float:
    """A finite real number in ``[minimum, maximum]`` (bools and strings refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a number, got {type(value).__name__} {value!r}.{hint}")
    value = float(value)
    if not math.isfinite(value) or not minimum <= value <= maximum:
        bound = f"in [{minimum:g}, {maximum:g}]" if math.isfinite(maximum) else f">= {minimum:g}"
        raise ValueError(f"`{name}` must be a finite number {bound}; got {value}.{hint}")
    return value


def check_int(name: str, value, minimum: int, maximum: Optional[int] = None, hint: str = "") -> int:
    """An integer in ``[minimum, maximum]`` (floats such as 2.5, bools and strings refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an integer, got {type(value).__name__} {value!r}.{hint}")
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
        raise ValueError(f"`{name}` must be an integer {bound}; got {value}.{hint}")
    return value


def check_flag(name: str, value) -> bool:
    """A ``True``/``False`` switch: a string such as ``"no"`` or a number would silently count as true."""
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be True or False, got {type(value).__name__} {value!r}.")
    return value


def check_text(name: str, text: str) -> str:
    """Text that a tokenizer can read: no lone surrogate (what an undecodable byte of a command line or a file
    read with ``errors="surrogateescape"`` becomes)."""
    if not isinstance(text, str):
        raise TypeError(f"`{name}` must be a string, got {type(text).__name__} {text!r}.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(
            f"`{name}` is not valid text: {text[error.start]!r} at position {error.start} is a lone surrogate (an "
            "undecodable byte); give UTF-8 text."
        ) from None
    return text


def check_generator(generator, num_candidates: int) -> list[Optional[torch.Generator]]:
    """One generator (or ``None``) per candidate: a single generator serves every candidate in turn, a list must
    give exactly one per candidate (diffusers' convention)."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != num_candidates:
            raise ValueError(
                f"`generator` is a list of {len(generator)} generators but {num_candidates} candidate(s) are asked "
                "(`num_images_per_prompt`); give one generator per candidate, or a single generator."
            )
        for g in generator:
            check_generator(g, 1)
        return list(generator)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"`generator` must be a torch.Generator (e.g. torch.Generator().manual_seed(0)) or a list of them; got "
            f"{type(generator).__name__} {generator!r}."
        )
    return [generator] * num_candidates


def as_image_list(image) -> list:
    """The images of ``image``: a list or tuple as given, a 4-D stack in diffusers' batched layout (torch
    ``(N, 3, H, W)``, numpy ``(N, H, W, 3)``) as its N images, ``None`` as none, anything else as one image."""
    if isinstance(image, (list, tuple)):
        return list(image)
    if isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim == 4:
        return list(image.unbind(0) if isinstance(image, torch.Tensor) else image)
    return [] if image is None else [image]


def check_image(name: str, image) -> None:
    """A PIL image, a numpy array or a torch tensor that the one image rule (`to_rgb`: layouts, dtypes and their
    value ranges) accepts."""
    to_rgb(image, name)


def check_embeddings(name: str, embeds, text_dim: int) -> torch.Tensor:
    """One prompt's embedding as `encode_prompt` returns it: a finite floating ``(tokens, text_dim)`` tensor with
    data (not on the meta device)."""
    if not isinstance(embeds, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch tensor from `pipe.encode_prompt`; got {type(embeds).__name__}.")
    if embeds.ndim != 2 or embeds.shape[0] == 0 or embeds.shape[1] != text_dim:
        raise ValueError(
            f"`{name}` must be one (tokens, {text_dim}) tensor per prompt, {text_dim} being this model's text width "
            f"(`pipe.encode_prompt` makes them); got shape {tuple(embeds.shape)}."
        )
    if embeds.device.type == "meta":
        raise ValueError(f"`{name}` is a meta tensor without values; give embeddings with data.")
    if not embeds.is_floating_point():
        raise ValueError(f"`{name}` must be floating point; got {embeds.dtype}.")
    if not torch.isfinite(embeds).all():
        raise ValueError(f"`{name}` contains NaN or Inf values; encode the prompt again.")
    return embeds


def check_sampling(
    config,
    num_inference_steps,
    guidance_scale,
    guidance_interval,
    guidance_rescale,
    num_images_per_prompt,
    consensus_samples,
    generator,
    callback_on_step_end,
    callback_on_step_end_tensor_inputs,
    allowed_tensor_inputs,
) -> tuple[int, float, int, list[Optional[torch.Generator]]]:
    """The per-turn sampling arguments, ``None`` steps / guidance scale / consensus samples taken from the pipeline
    ``config``'s defaults; returns the steps, the guidance scale, the consensus samples and the generator of each
    candidate."""
    if num_inference_steps is None:
        num_inference_steps = config.default_num_inference_steps
    if guidance_scale is None:
        guidance_scale = config.default_guidance_scale
    if consensus_samples is None:
        consensus_samples = config.default_consensus_samples
    check_int("num_inference_steps", num_inference_steps, 1, 1000)
    check_int("consensus_samples", consensus_samples, 1, 64, hint=" (1 keeps the only sample)")
    check_real("guidance_scale", guidance_scale, 1.0, hint=" (1 disables guidance)")
    check_real("guidance_interval", guidance_interval, 0.0, 1.0, hint=" (fraction of the steps guided)")
    check_real("guidance_rescale", guidance_rescale, 0.0, 1.0)
    count = check_int("num_images_per_prompt", num_images_per_prompt, 1, 64)
    if callback_on_step_end is not None and not callable(callback_on_step_end):
        raise TypeError(f"`callback_on_step_end` must be callable; got {type(callback_on_step_end).__name__}.")
    bad = set(callback_on_step_end_tensor_inputs) - set(allowed_tensor_inputs)
    if bad:
        raise ValueError(
            f"`callback_on_step_end_tensor_inputs` may only hold {allowed_tensor_inputs}; got {sorted(bad)}."
        )
    return num_inference_steps, guidance_scale, consensus_samples, check_generator(generator, count)


def callback_outputs(outputs: Union[dict, None]) -> dict:
    """What ``callback_on_step_end`` returned: a dict (diffusers' convention), checked."""
    if not isinstance(outputs, dict):
        raise TypeError(
            f"`callback_on_step_end` must return a dict (e.g. `return callback_kwargs`), got {type(outputs).__name__}."
        )
    return outputs
