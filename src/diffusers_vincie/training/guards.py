"""Checks that stop a training run before it produces a wrong model: flags the model cannot train with, and a
diverged run (non-finite loss or weights), which ends with a clear error instead of saving its weights."""

from __future__ import annotations

import math
from typing import Iterable, Optional

import torch

from ..utils.cli import UsageError, check_number


class TrainingDiverged(UsageError):
    """The loss or the weights became NaN or infinite; nothing is saved from that point on."""


def check_lora_flags(rank: int, alpha: Optional[float], dropout: float) -> None:
    """LoRA flags: ``--lora_rank`` >= 1, ``--lora_alpha`` finite and > 0 (or left out), ``--lora_dropout`` in
    [0, 1)."""
    check_number("--lora_rank", rank, 1)
    check_number("--lora_alpha", alpha, 0, strict_minimum=True)
    check_number("--lora_dropout", dropout, 0)
    if dropout >= 1:
        raise UsageError(f"--lora_dropout must be < 1 (1 drops every input of the adapters), got {dropout:g}.")


def check_resolution(resolution: Optional[int], patch_size: int, spatial_factor: int) -> None:
    """Frames are resized to ``resolution`` squares: their latents must split into whole patches."""
    multiple = patch_size * spatial_factor
    if resolution is not None and resolution % multiple:
        below, above = resolution - resolution % multiple, resolution - resolution % multiple + multiple
        nearest = f"{below} or {above}" if below else f"{above}"
        raise UsageError(
            f"--resolution {resolution} is not a multiple of {multiple} (the VAE's factor {spatial_factor} x the "
            f"transformer's patch size {patch_size}); use {nearest}."
        )


def check_finite_loss(loss: float, step: int, output_dir: str) -> None:
    """Stops the run at the first NaN or infinite loss (the same value on every process)."""
    if not math.isfinite(loss):
        raise TrainingDiverged(
            f"training diverged: the loss is {loss} at step {step}; nothing more was saved in {output_dir} (its "
            "checkpoints hold only finite weights). Lower --learning_rate or --max_grad_norm and resume or restart."
        )


def check_finite_weights(parameters: Iterable[torch.Tensor], step: int, output_dir: str, accelerator=None) -> None:
    """Refuses to save NaN or infinite weights; with an ``accelerator``, every process takes the same decision."""
    finite = all(bool(torch.isfinite(p.detach()).all()) for p in parameters)
    if accelerator is not None and accelerator.num_processes > 1:
        flags = accelerator.gather(torch.tensor([float(finite)], device=accelerator.device))
        finite = bool(flags.min() > 0)
    if not finite:
        raise TrainingDiverged(
            f"training diverged: the weights hold NaN or infinite values after step {step}; they were not saved in "
            f"{output_dir}. Lower --learning_rate or --max_grad_norm and resume from the last checkpoint or restart."
        )
