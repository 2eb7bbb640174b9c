"""The sampler of VINCIE, in a few lines: official flow-matching schedule, guided velocity, one Euler loop.

Official conventions: ``x_t = (1 - t) x0 + t noise`` with ``t = sigma`` in [0, 1] (timesteps fed to the model as
``1000 t``); the model predicts ``v = noise - x0``; timesteps are the trailing grid ``1, 1 - 1/N, ..., 1/N``
shifted by ``s t / (1 + (s - 1) t)`` with the scheduler's ``shift`` ``s`` (12 for VINCIE-3B, 10 for VINCIE-7B);
each Euler step is ``x + (t_next - t) v`` and the last one jumps to ``t = 0`` (``x - t v``, the clean estimate).
This is diffusers' ``FlowMatchEulerDiscreteScheduler`` with that shift given the trailing sigmas.

Every caller (the pipeline and its sessions, training validation, parity) samples through :func:`sample_frame`
or, with a velocity of its own making, :func:`run_sampler`; :func:`frame_velocity` is the one place that picks
the velocity of a model's attention layout. :func:`consensus_index` keeps the sample of several that agrees most
with the others (the pipeline's ``consensus_samples``).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

from ..models.transformer_vincie import VincieContextCache, VincieTransformer
from ..sequence import (
    Frame,
    Item,
    PackedText,
    block_causal_layout,
    build_condition,
    clean_context_frames,
    frame_indices,
    noisy_target_frames,
    pack_frames,
    unconditional_items,
)

OFFICIAL_SHIFT = 12.0


class GuidedPrediction(NamedTuple):
    """One step's velocity ``v`` and the conditional / unconditional predictions it was guided from."""

    velocity: torch.Tensor
    positive: torch.Tensor
    negative: Optional[torch.Tensor]


@dataclass
class Guidance:
    """Classifier-free guidance of a sampling run (official ``cfg``: ``scale``, ``partial``, ``rescale``).

    Args:
        scale: ``v = neg + scale * (pos - neg)``; 1 skips the negative pass.
        interval: fraction of the leading steps that are guided (official ``cfg.partial``; 1 = every step).
        rescale: mixes in the guided velocity rescaled to the conditional one's std (official ``cfg.rescale``,
            diffusers' ``guidance_rescale``; 0 = off).
    """

    scale: float = 1.0
    interval: float = 1.0
    rescale: float = 0.0

    def scale_at(self, step: int, num_steps: int) -> float:
        return self.scale if step < round(self.interval * num_steps) else 1.0


class SamplerStep(NamedTuple):
    """What ``on_step`` sees after each Euler step."""

    index: int
    timestep: torch.Tensor
    latents_before: torch.Tensor
    prediction: GuidedPrediction
    latents: torch.Tensor
    guidance: Guidance


# ``on_step(step) -> x`` returns the latents to continue from (a pipeline callback may replace them and change
# ``step.guidance``), or ``None`` to stop the loop after this step with ``step.latents`` (interrupt).
StepCallback = Callable[[SamplerStep], Optional[torch.Tensor]]


def official_scheduler(shift: float = OFFICIAL_SHIFT) -> FlowMatchEulerDiscreteScheduler:
    """``FlowMatchEulerDiscreteScheduler`` with the official static shift (use with `set_trailing_timesteps`)."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift, use_dynamic_shifting=False)


def set_trailing_timesteps(
    scheduler: FlowMatchEulerDiscreteScheduler, num_inference_steps: int, device=None
) -> torch.Tensor:
    """Sets the official uniform trailing grid ``1, 1 - 1/N, ..., 1/N`` (shifted by the scheduler); returns timesteps."""
    if num_inference_steps < 1:
        raise ValueError(f"`num_inference_steps` must be >= 1, got {num_inference_steps}.")
    sigmas = np.linspace(1.0, 1.0 / num_inference_steps, num_inference_steps)
    scheduler.set_timesteps(sigmas=sigmas, device=device)
    return scheduler.timesteps


def _cache_context(transformer: VincieTransformer, name: str):
    """diffusers' per-branch cache state (``transformer.enable_cache(FirstBlockCacheConfig(...))``), when enabled."""
    return transformer.cache_context(name) if transformer.is_cache_enabled else nullcontext()


def _guide(pos: torch.Tensor, neg: Optional[torch.Tensor], scale: float, rescale: float) -> GuidedPrediction:
    if neg is None:
        return GuidedPrediction(pos, pos, None)
    guided = neg + scale * (pos - neg)
    if rescale > 0:
        guided = rescale_noise_cfg(guided[None], pos[None], guidance_rescale=rescale)[0]
    return GuidedPrediction(guided, pos, neg)


# =====================================================================================================
#                                      Guided velocity of one frame
# =====================================================================================================


@dataclass
class FullAttentionVelocity:
    """Official layout: every frame of the session is integrated; positive and negative texts in one batch.

    Args:
        transformer: the model.
        cond: ``(F, h, w, C+1)`` condition (`diffusers_vincie.sequence.build_condition`).
        text, negative_text: the session's texts; ``negative_text`` None disables CFG.
        frame_index: ``(F,)`` temporal RoPE index of the frames (default ``0..F-1``).

    Called as ``velocity(x, t, guidance_scale, guidance_rescale)``; at scale 1 the negative pass is skipped.
    """

    transformer: VincieTransformer
    cond: torch.Tensor
    text: PackedText
    negative_text: Optional[PackedText]
    frame_index: Optional[torch.Tensor] = None

    def __call__(self, x: torch.Tensor, t: torch.Tensor, scale: float = 1.0, rescale: float = 0.0) -> GuidedPrediction:
        guided = self.negative_text is not None and scale != 1.0
        texts = [self.text, self.negative_text] if guided else [self.text]
        turn_ids = None if texts[0].turn_ids is None else torch.cat([s.turn_ids for s in texts])
        with _cache_context(self.transformer, "cond_uncond" if guided else "cond"):
            out = self._forward(x, t, texts, turn_ids)
        return _guide(out[0], out[1] if guided else None, scale, rescale)

    def _forward(self, x, t, texts, turn_ids):
        batch = len(texts)
        return self.transformer(
            pack_frames(x, self.cond).repeat(batch, 1),
            [list(x.shape[:3])] * batch,  # host-side sizes: no sync in the step loop
            torch.cat([s.states for s in texts]),
            [len(s) for s in texts],
            t.reshape(1),  # one timestep shared by both branches
            frame_index=None if self.frame_index is None else self.frame_index.repeat(batch),
            text_turn_ids=turn_ids,
        ).sample.view(batch, *x.shape[:3], -1)


@dataclass
class CachedContextVelocity:
    """Block-causal layout: the clean context is encoded once; each step runs only the frame being generated.

    Args:
        transformer: a block-causal model.
        items: the context's items in session order (frames and texts); the target follows them.
        context_latents: ``(N, h, w, C)`` clean latents of the frames of ``items``, in order.
        text, negative_text: the texts of ``items`` (negative: the unconditional text, `unconditional_items`;
            ``None`` disables CFG).
        target: the frame being generated (its kind and turn set its slot in ``"slots"`` mode).
        frame_index_mode: ``"compact"`` or ``"slots"``.

    Called as ``velocity(x, t, guidance_scale, guidance_rescale)``; at scale 1 the negative pass is skipped.
    """

    transformer: VincieTransformer
    items: list
    context_latents: torch.Tensor
    text: PackedText
    negative_text: Optional[PackedText]
    target: Frame
    frame_index_mode: str = "compact"
    branches: list = field(init=False)

    def __post_init__(self):
        self.branches = [self._encode(self.items, self.text, "cond")]
        if self.negative_text is not None:
            self.branches.append(self._encode(unconditional_items(self.items), self.negative_text, "uncond"))

    def _encode(
        self, items: list, text: PackedText, branch: str
    ) -> tuple[VincieContextCache, torch.Tensor, torch.Tensor]:
        frames = [item for item in items if isinstance(item, Frame)]
        layout = block_causal_layout(
            [*items, self.target], text.segment_lengths, frames, [self.target], self.frame_index_mode
        )
        device = self.context_latents.device
        with _cache_context(self.transformer, f"context_{branch}"):  # one cache state per token layout
            cache = self._encode_context(layout, text)
        return cache, layout.target_order.to(device), layout.target_index.to(device)

    def _encode_context(self, layout, text: PackedText) -> VincieContextCache:
        n, h, w, _ = self.context_latents.shape
        device = self.context_latents.device
        return self.transformer.encode_context(
            clean_context_frames(self.context_latents).flatten(0, 2),
            [[n, h, w]],
            text.states,
            [len(text)],
            layout.context_order.to(device),
            layout.text_order.to(device),
            frame_index=layout.context_index.to(device),
            text_turn_ids=text.turn_ids,
        )

    def __call__(self, x: torch.Tensor, t: torch.Tensor, scale: float = 1.0, rescale: float = 0.0) -> GuidedPrediction:
        outs = []
        branches = self.branches[: 2 if scale != 1.0 else 1]
        for branch, (cache, target_order, target_index) in zip(("cond", "uncond"), branches):
            with _cache_context(self.transformer, branch):
                outs.append(self._target(x, t, cache, target_order, target_index))
        return _guide(outs[0], outs[1] if len(outs) > 1 else None, scale, rescale)

    def _target(self, x, t, cache, target_order, target_index) -> torch.Tensor:
        _, h, w, _ = self.context_latents.shape
        device = x.device
        return self.transformer(
            noisy_target_frames(x).flatten(0, 2),
            [[1, h, w]],  # host-side sizes: no sync in the step loop
            None,
            cache.text_lengths,
            torch.zeros(1, device=device),
            frame_timestep=t.reshape(1).float(),
            frame_index=target_index,
            frame_order=target_order,
            frame_is_noisy=torch.ones(1, dtype=torch.bool, device=device),
            attention_layout="block_causal",
            context_cache=cache,
        ).sample.view(1, h, w, -1)


def frame_latent_shape(transformer: VincieTransformer, num_context_frames: int, frame_shape: Sequence[int]) -> tuple:
    """Shape of the latents a turn integrates: the new frame alone (block-causal) or every frame (official)."""
    frames = 1 if transformer.config.attention_layout == "block_causal" else num_context_frames + 1
    return (frames, *frame_shape)


def frame_velocity(
    transformer: VincieTransformer,
    items: Sequence[Item],
    context_latents: torch.Tensor,
    text: PackedText,
    negative_text: Optional[PackedText],
    target: Frame,
    frame_index_mode: str,
):
    """The guided velocity of the frame that follows ``items``, for the model's attention layout.

    Returns the velocity and the shape of the latents it integrates: ``(1, h, w, C)`` in the block-causal layout,
    ``(N + 1, h, w, C)`` in the official full layout (every frame of the session is integrated).
    """
    frames = [item for item in items if isinstance(item, Frame)]
    n = context_latents.shape[0]
    if len(frames) != n:
        raise ValueError(f"{len(frames)} frames among the items but {n} context latents; give one latent per frame.")
    if transformer.is_cache_enabled:  # a new frame: the block cache starts afresh (its shapes change per frame)
        transformer._reset_stateful_cache()
    shape = frame_latent_shape(transformer, n, context_latents.shape[1:])
    if transformer.config.attention_layout == "block_causal":
        velocity = CachedContextVelocity(
            transformer, list(items), context_latents, text, negative_text, target, frame_index_mode
        )
        return velocity, shape
    frame_index = frame_indices([*frames, target], frame_index_mode).to(context_latents.device)
    velocity = FullAttentionVelocity(transformer, build_condition(context_latents), text, negative_text, frame_index)
    return velocity, shape


# =====================================================================================================
#                                              Euler loop
# =====================================================================================================


def run_sampler(
    scheduler: FlowMatchEulerDiscreteScheduler,
    x: torch.Tensor,
    velocity: Callable[..., GuidedPrediction],
    guidance: Union[Guidance, float] = 1.0,
    on_step: Optional[StepCallback] = None,
    progress=None,
    on_step_begin: Optional[Callable[[int, torch.Tensor], None]] = None,
) -> torch.Tensor:
    """Integrates ``x`` over ``scheduler.timesteps`` (set beforehand).

    ``on_step(SamplerStep)`` runs after each step and returns the latents to continue from (pipeline callbacks may
    replace them, or change the guidance of later steps), or ``None`` to stop after this step (interrupt).
    ``on_step_begin(index, timestep)`` runs before each step's model call (the pipeline's ``current_timestep``).
    """
    guidance = guidance if isinstance(guidance, Guidance) else Guidance(float(guidance))
    timesteps = scheduler.timesteps
    for i, t in enumerate(timesteps):
        if on_step_begin is not None:
            on_step_begin(i, t)
        prediction = velocity(x, t, guidance.scale_at(i, len(timesteps)), guidance.rescale)
        x_next = scheduler.step(prediction.velocity.float(), t, x.float(), return_dict=False)[0].to(x.dtype)
        if progress is not None:
            progress.update()
        if on_step is not None:
            replaced = on_step(SamplerStep(i, t, x, prediction, x_next, guidance))
            if replaced is None:
                return x_next
            x_next = replaced
        x = x_next
    return x


def sample_frame(
    transformer: VincieTransformer,
    scheduler: FlowMatchEulerDiscreteScheduler,
    items: Sequence[Item],
    context_latents: torch.Tensor,
    text: PackedText,
    negative_text: Optional[PackedText],
    guidance: Union[Guidance, float],
    num_inference_steps: int,
    noise: torch.Tensor,
    target: Frame = Frame(),
    frame_index_mode: str = "compact",
    on_step: Optional[StepCallback] = None,
    progress=None,
    on_step_begin: Optional[Callable[[int, torch.Tensor], None]] = None,
) -> torch.Tensor:
    """Generates the frame ``target`` that follows ``items`` from ``noise``; returns its latent ``(h, w, C)``.

    Args:
        transformer, scheduler: the model and a flow-matching scheduler (its timesteps are set here).
        items: the context's frames and texts in session order.
        context_latents: ``(N, h, w, C)`` clean latents of the frames of ``items``.
        text, negative_text: texts of ``items`` and the unconditional text (CFG; ``None`` = off).
        guidance: CFG scale, or a `Guidance` (scale, interval, rescale).
        num_inference_steps: Euler steps from ``t = 1`` to ``t = 0``.
        noise: initial latents of the shape `frame_velocity` integrates for this layout.
        target: the frame to generate (default an image).
        frame_index_mode: ``"compact"`` or ``"slots"``.
        on_step, on_step_begin: see `run_sampler`.
        progress: a progress bar with ``update()``.
    """
    velocity, shape = frame_velocity(
        transformer, items, context_latents, text, negative_text, target, frame_index_mode
    )
    if tuple(noise.shape) != shape:
        raise ValueError(f"`latents` must have shape {shape} for this turn; got {tuple(noise.shape)}.")
    set_trailing_timesteps(scheduler, num_inference_steps, device=noise.device)
    return run_sampler(scheduler, noise, velocity, guidance, on_step, progress, on_step_begin)[-1]


def consensus_index(samples: Sequence[torch.Tensor]) -> int:
    """The sample closest to the others: the index of the smallest summed mean absolute difference to every other
    sample (the medoid; the first on a tie). Samples of one instruction that agree are the model's likely answer;
    a sample that went astray (a stray blob, the object in the wrong cell) is far from the rest.

    Args:
        samples: decoded images of one frame, each ``(3, H, W)`` (any range, the same for all).
    """
    if len(samples) == 1:  # the default: no copy of a (large) decoded image to compare it with nothing
        return 0
    flat = torch.stack([sample.detach().float().flatten() for sample in samples])  # (K, 3 * H * W)
    distances = torch.cdist(flat[None], flat[None], p=1)[0] / flat.shape[1]  # (K, K)
    return int(distances.sum(1).argmin())
