"""One training step's tensors: planned samples -> noised, packed batch -> model prediction -> loss.

:class:`VincieTrainingModule` takes a whole :class:`TrainingBatch` in ``forward``, so DDP, FSDP and DeepSpeed wrap
one module call per step (the transformer looks its turn tokens up inside its own ``forward``).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn

from .data import PlannedSample, item_generator
from .flow import sample_timesteps, weighted_frame_mse
from .sequences import (
    SequenceConfig,
    TrainingBatch,
    assemble_block_causal,
    assemble_full_attention,
    collate_samples,
)
from .text import session_prompts


class VincieTrainingModule(nn.Module):
    """``forward(batch) -> predicted velocity (sum F*h*w, C)`` for a :class:`TrainingBatch`.

    Args:
        transformer: a ``VincieTransformer``.
        attention_layout: ``"full"`` or ``"block_causal"``.
    """

    def __init__(self, transformer: nn.Module, attention_layout: str):
        super().__init__()
        self.transformer = transformer
        self.attention_layout = attention_layout

    def forward(self, batch: TrainingBatch) -> torch.Tensor:
        inputs = batch.inputs.model_inputs()
        if self.attention_layout == "full":  # full attention: no order, one timestep per sample
            for name in ("frame_order", "text_order", "frame_is_noisy", "frame_timestep"):
                inputs.pop(name, None)
        self.transformer.check_input_values(inputs["hidden_states"], inputs.get("text_turn_ids"))
        return self.transformer(**inputs, timestep=batch.timestep, attention_layout=self.attention_layout).sample


def _noise(shape, step: int, index: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(item_generator(seed, step, index, stream=1).integers(2**62)))
    return torch.randn(shape, generator=g)


def _times(count: int, step: int, index: int, seed: int, distribution: dict) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(item_generator(seed, step, index, stream=2).integers(2**62)))
    return sample_timesteps(count, generator=g, **distribution)


def build_training_batch(
    samples: Sequence[PlannedSample],
    latents: Sequence[dict],
    encode_text: Callable[[list[str]], list[torch.Tensor]],
    config: SequenceConfig,
    seed: int,
    text_dropout: float = 0.1,
    negative_prompt: Optional[str] = None,
    text_dropout_with_masks: Optional[float] = None,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    timestep_sampling: str = "logit_normal",
    timestep_shift: float = 1.0,
    mode_scale: float = -0.5,
) -> TrainingBatch:
    """Draws times / noise / text dropout for each planned sample and packs the batch (all on CPU, deterministic
    in ``(seed, micro-step, index)``).

    Args:
        samples: planned samples of this micro-step.
        latents: per sample ``FrameItem -> (h, w, C)`` clean latents (``encode_plan_frames``).
        encode_text: prompt strings -> per-prompt embeddings (``PromptEmbeddingCache``).
        config: the sequence configuration (layout, task weights, frame index mode).
        seed: run seed.
        text_dropout: probability that a sample's instructions are replaced by the negative prompt (CFG).
        negative_prompt: text of dropped instructions (default empty).
        text_dropout_with_masks: that probability for a sample whose sequence holds RoE masks (default
            ``text_dropout``): without its instructions such a sample's edits are told only by the masks, an
            incentive to read them (drag, controllable editing).
        logit_mean, logit_std: logit-normal time distribution.
        timestep_sampling, timestep_shift, mode_scale: the time distribution (``flow.sample_timesteps``; default
            the official logit-normal, unshifted).
    """
    distribution = dict(
        sampling=timestep_sampling, mean=logit_mean, std=logit_std, mode_scale=mode_scale, shift=timestep_shift
    )
    tensors = []
    for s, lat in zip(samples, latents):
        dropout = text_dropout if text_dropout_with_masks is None or not s.plan.with_masks else text_dropout_with_masks
        drop = bool(item_generator(seed, s.step, s.index, stream=3).random() < dropout)
        segments = [e.cpu() for e in encode_text(session_prompts(s.instructions(), drop, negative_prompt))]
        lat = {k: v.cpu() for k, v in lat.items()}
        if config.layout == "full":
            n = len(s.plan.frames)
            shape = (n, *next(iter(lat.values())).shape)
            t = _times(1, s.step, s.index, seed, distribution)[0]
            tensors.append(
                assemble_full_attention(
                    s.plan,
                    lat,
                    segments,
                    t,
                    _noise(shape, s.step, s.index, seed),
                    config.task_weights,
                    config.frame_index,
                )
            )
        else:
            n = len(s.plan.targets)
            shape = (n, *next(iter(lat.values())).shape)
            t = _times(n, s.step, s.index, seed, distribution)
            tensors.append(
                assemble_block_causal(
                    s.plan,
                    lat,
                    segments,
                    t,
                    _noise(shape, s.step, s.index, seed),
                    config.task_weights,
                    config.frame_index,
                )
            )
    return collate_samples(tensors)


def training_loss(model: nn.Module, batch: TrainingBatch) -> torch.Tensor:
    """Flow-matching loss of ``model`` (a :class:`VincieTrainingModule`) on a packed batch (float32 scalar)."""
    prediction = model(batch)
    return weighted_frame_mse(prediction, batch.velocity, batch.loss_weight, batch.pixels_per_frame)


def padding_report(batches: Sequence[TrainingBatch], patch_size: int) -> dict[str, float]:
    """Tokens of packed batches vs what a padded ``(B, max_len)`` layout would hold.

    Packing keeps every per-token layer free of padding; only attention pads each sample's joint sequence to the
    longest of the batch. Returns the real tokens, the padded tokens and the waste of padding for attention.
    """
    real = padded = 0
    for b in batches:
        video_tokens = (
            b.inputs.video_shapes[:, 0]
            * (b.inputs.video_shapes[:, 1] // patch_size)
            * (b.inputs.video_shapes[:, 2] // patch_size)
        )
        lengths = video_tokens + b.inputs.text_lengths
        real += int(lengths.sum())
        padded += int(lengths.max()) * len(lengths)
    return {
        "real_tokens": float(real),
        "padded_tokens": float(padded),
        "attention_padding_waste": 1.0 - real / padded if padded else 0.0,
        "packed_padding_waste": 0.0,
    }


__all__ = ["VincieTrainingModule", "build_training_batch", "padding_report", "training_loss"]
