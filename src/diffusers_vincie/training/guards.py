"""Checks that stop a training run before it produces a wrong model: flags the model cannot train with, and a
diverged run (non-finite loss or weights), which ends with a clear error instead of saving its weights."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Iterable, Optional

import torch

from ..utils.cli import UsageError, check_number


class TrainingDiverged(UsageError):
    """The loss or the weights became NaN or infinite; nothing is saved from that point on."""


# The numeric flags of the training scripts: (flag, minimum, maximum, minimum excluded); None: no bound.
NUMBER_FLAGS = (
    ("max_train_steps", 1, None, False),
    ("checkpointing_steps", 1, None, False),
    ("train_batch_size", 1, None, False),
    ("gradient_accumulation_steps", 1, None, False),
    ("learning_rate", 0, None, True),
    ("lr_warmup_steps", 0, None, False),
    ("max_grad_norm", 0, None, False),
    ("adam_beta1", 0, 1, False),
    ("adam_beta2", 0, 1, False),
    ("adam_weight_decay", 0, None, False),
    ("adam_epsilon", 0, None, True),
    ("ema_decay", 0, 1, False),
    ("validation_steps", 0, None, False),
    ("num_validation_sessions", 1, None, False),
    ("validation_inference_steps", 1, None, False),
    ("validation_guidance_scale", 0, None, False),
    ("scheduler_shift", 0, None, True),
    ("resolution", 1, None, False),
    ("max_train_samples", 1, None, False),
    ("dataloader_num_workers", 0, None, False),
    ("synthetic_num_sessions", 1, None, False),
    ("synthetic_num_turns", 1, None, False),
    ("min_turns", 1, None, False),
    ("max_turns", 1, None, False),
    ("max_text_length", 2, None, False),
    ("seed", 0, 2**32 - 1, False),
    ("synthetic_world_seed", 0, None, False),
    ("mask_probability", 0, 1, False),
    ("drop_current_frame", 0, 1, False),
    ("drop_current_mask", 0, 1, False),
    ("drop_next_mask", 0, 1, False),
    ("text_dropout", 0, 1, False),
    ("text_dropout_with_masks", 0, 1, False),
    ("logit_std", 0, None, True),
    ("logit_mean", None, None, False),
    ("timestep_shift", 0, None, True),
    ("mode_scale", -1, 2 / (math.pi - 2), False),
    ("sensitivity_steps", 0, None, False),
    ("num_sensitivity_sessions", 1, None, False),
    ("lr_decay_steps", 1, None, False),
)


def check_number_flags(args) -> None:
    """Every numeric flag finite and in range (``--max_train_steps -5`` used to exit 0 with an untrained model)."""
    for flag, minimum, maximum, strict in NUMBER_FLAGS:
        check_number(f"--{flag}", getattr(args, flag), minimum, maximum, strict_minimum=strict)
    if args.min_turns > args.max_turns:
        raise UsageError(f"--min_turns {args.min_turns} is above --max_turns {args.max_turns}.")
    if args.lr_decay_steps is not None and args.lr_decay_steps < args.max_train_steps:
        raise UsageError(
            f"--lr_decay_steps {args.lr_decay_steps} is below --max_train_steps {args.max_train_steps} "
            "(past its end a cosine schedule rises again); give at least --max_train_steps."
        )


def check_json_object(flag: str, value: str, file_only: bool) -> None:
    """``value`` is a JSON file (or, unless ``file_only``, a JSON string) holding an object."""
    if file_only and not os.path.isfile(value):
        raise UsageError(f"{flag} {value} is not a file (a JSON object of arguments).")
    try:
        parsed = json.loads(Path(value).read_text() if os.path.isfile(value) else value)
    except ValueError as error:
        raise UsageError(f"{flag} is not valid JSON ({error}); give a JSON file or a JSON object.") from error
    if not isinstance(parsed, dict):
        raise UsageError(f"{flag} must hold a JSON object of arguments, got {type(parsed).__name__}.")


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
