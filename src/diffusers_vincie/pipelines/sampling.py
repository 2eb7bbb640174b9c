"""The sampler of VINCIE, in a few lines: official flow-matching schedule, guided velocity, Euler loop.

Official conventions (spec 6.8): ``x_t = (1 - t) x0 + t noise`` with ``t = sigma`` in [0, 1] (timesteps fed to the
model as ``1000 t``); the model predicts ``v = noise - x0``; timesteps are the trailing grid ``1, 1 - 1/N, ...,
1/N`` shifted by ``s t / (1 + (s - 1) t)`` with ``s = 12``; each Euler step is ``x + (t_next - t) v`` and the last
one jumps to ``t = 0`` (``x - t v``, the clean estimate). This is diffusers' ``FlowMatchEulerDiscreteScheduler``
with ``shift=12`` given the trailing sigmas.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from ..assembly import FRAME, clean_context_frames, noisy_target_frames, pack_frames, sequence_order
from ..models.transformer_vincie import VincieContextCache, VincieTransformer

OFFICIAL_SHIFT = 12.0

StepHook = Callable[[int, torch.Tensor, torch.Tensor, Optional[torch.Tensor]], None]


def official_scheduler(shift: float = OFFICIAL_SHIFT) -> FlowMatchEulerDiscreteScheduler:
    """``FlowMatchEulerDiscreteScheduler`` with the official static shift (use with `set_trailing_timesteps`)."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift, use_dynamic_shifting=False)


def set_trailing_timesteps(scheduler: FlowMatchEulerDiscreteScheduler, num_inference_steps: int, device=None) -> torch.Tensor:
    """Sets the official uniform trailing grid ``1, 1 - 1/N, ..., 1/N`` (shifted by the scheduler); returns timesteps."""
    if num_inference_steps < 1:
        raise ValueError(f"`num_inference_steps` must be >= 1, got {num_inference_steps}.")
    sigmas = np.linspace(1.0, 1.0 / num_inference_steps, num_inference_steps)
    scheduler.set_timesteps(sigmas=sigmas, device=device)
    return scheduler.timesteps


# =====================================================================================================
#                                      Guided velocity of one frame set
# =====================================================================================================


@dataclass
class FullAttentionVelocity:
    """Official layout: every frame of the session is integrated; positive and negative texts in one batch.

    Args:
        transformer: the model.
        cond: ``(F, h, w, C+1)`` condition (`diffusers_vincie.assembly.build_condition`).
        text, negative_text: packed session texts ``(L, text_dim)``; ``negative_text`` None disables CFG.
        guidance_scale: ``v = neg + scale * (pos - neg)``; at 1.0 the negative pass is skipped.
    """

    transformer: VincieTransformer
    cond: torch.Tensor
    text: torch.Tensor
    negative_text: Optional[torch.Tensor]
    guidance_scale: float
    frame_index: Optional[torch.Tensor] = None

    def __call__(self, x: torch.Tensor, t: torch.Tensor):
        video = pack_frames(x, self.cond)
        shape = torch.tensor([list(x.shape[:3])], device=x.device)
        texts = [self.text] if not self._guided else [self.text, self.negative_text]
        batch = len(texts)
        out = self.transformer(
            video.repeat(batch, 1),
            shape.repeat(batch, 1),
            torch.cat(texts),
            torch.tensor([len(s) for s in texts], device=x.device),
            t.reshape(1).expand(batch),
            frame_index=None if self.frame_index is None else self.frame_index.repeat(batch),
        ).sample.view(batch, *x.shape[:3], -1)
        return _guide(out[0], out[1] if self._guided else None, self.guidance_scale)

    @property
    def _guided(self) -> bool:
        return self.negative_text is not None and self.guidance_scale != 1.0


@dataclass
class CachedContextVelocity:
    """Block-causal layout: the clean context is encoded once; each step runs only the frame being generated.

    Args:
        transformer: a block-causal model.
        context_latents: ``(N, h, w, C)`` clean latents of the context frames, in session order.
        items: the session items in order (``FRAME`` or a text segment length) for the context, as in
            `diffusers_vincie.assembly.sequence_order`; the generated frame comes after them.
        text, negative_text: packed texts of the segments in ``items`` (negative: one segment, after frame 0).
        frame_index: ``(N + 1,)`` temporal RoPE index of the context frames and the generated frame
            (default ``0..N``).
    """

    transformer: VincieTransformer
    context_latents: torch.Tensor
    items: list
    text: torch.Tensor
    negative_text: Optional[torch.Tensor]
    guidance_scale: float
    frame_index: Optional[torch.Tensor] = None
    caches: list = field(init=False)

    def __post_init__(self):
        if self.frame_index is None:
            self.frame_index = torch.arange(len(self.context_latents) + 1, device=self.context_latents.device)
        self.caches = [self._encode(self.items, self.text)]
        if self.negative_text is not None and self.guidance_scale != 1.0:
            num_frames = sum(item == FRAME for item in self.items)
            negative_items = [FRAME, len(self.negative_text)] + [FRAME] * (num_frames - 1)
            self.caches.append(self._encode(negative_items, self.negative_text))

    def _encode(self, items: list, text: torch.Tensor) -> tuple[VincieContextCache, int]:
        frame_order, text_order = sequence_order(items)
        n, h, w, _ = self.context_latents.shape
        device = self.context_latents.device
        cache = self.transformer.encode_context(
            clean_context_frames(self.context_latents).flatten(0, 2),
            torch.tensor([[n, h, w]], device=device),
            text,
            torch.tensor([len(text)], device=device),
            frame_order.to(device),
            text_order.to(device),
            frame_index=self.frame_index[:n],
        )
        return cache, len(items)

    def __call__(self, x: torch.Tensor, t: torch.Tensor):
        n, h, w, _ = self.context_latents.shape
        device = x.device
        outs = []
        for cache, target_order in self.caches:
            outs.append(
                self.transformer(
                    noisy_target_frames(x).flatten(0, 2),
                    torch.tensor([[1, h, w]], device=device),
                    None,
                    cache.text_lengths,
                    torch.zeros(1, device=device),
                    frame_timestep=t.reshape(1).float(),
                    frame_index=self.frame_index[n:],
                    frame_order=torch.tensor([target_order], device=device),
                    frame_is_noisy=torch.ones(1, dtype=torch.bool, device=device),
                    attention_layout="block_causal",
                    context_cache=cache,
                ).sample.view(1, h, w, -1)
            )
        return _guide(outs[0], outs[1] if len(outs) > 1 else None, self.guidance_scale)


def _guide(pos: torch.Tensor, neg: Optional[torch.Tensor], scale: float):
    if neg is None:
        return pos, pos, None
    return neg + scale * (pos - neg), pos, neg


# =====================================================================================================
#                                              Euler loop
# =====================================================================================================


def run_sampler(
    scheduler: FlowMatchEulerDiscreteScheduler,
    x: torch.Tensor,
    velocity: Callable,
    on_step: Optional[StepHook] = None,
    progress=None,
    after_step: Optional[Callable[[int, torch.Tensor, torch.Tensor], Optional[torch.Tensor]]] = None,
) -> torch.Tensor:
    """Integrates ``x`` over ``scheduler.timesteps`` (set beforehand).

    ``on_step(i, x, pos, neg)`` sees each step's input and predictions; ``after_step(i, t, x)`` may replace the
    new ``x`` (pipeline callbacks) or return ``None`` to stop early (interrupt).
    """
    for i, t in enumerate(scheduler.timesteps):
        v, pos, neg = velocity(x, t)
        if on_step is not None:
            on_step(i, x, pos, neg)
        x = scheduler.step(v.float(), t, x.float(), return_dict=False)[0].to(x.dtype)
        if progress is not None:
            progress.update()
        if after_step is not None:
            replaced = after_step(i, t, x)
            if replaced is None:
                break
            x = replaced
    return x


def sample_session(
    transformer: VincieTransformer,
    scheduler: FlowMatchEulerDiscreteScheduler,
    noise: torch.Tensor,
    cond: torch.Tensor,
    text: torch.Tensor,
    negative_text: Optional[torch.Tensor],
    guidance_scale: float,
    num_inference_steps: int,
    on_step: Optional[StepHook] = None,
) -> torch.Tensor:
    """One official sampling run (full attention) from given noise: returns the final latents of all frames."""
    set_trailing_timesteps(scheduler, num_inference_steps, device=noise.device)
    velocity = FullAttentionVelocity(transformer, cond, text, negative_text, guidance_scale)
    return run_sampler(scheduler, noise, velocity, on_step)
