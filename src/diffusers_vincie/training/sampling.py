"""Validation sampling during training (teacher-forced context, next image only) on the pipeline's own sampler.

It reuses ``diffusers_vincie.pipelines.sampling`` (guided velocity of either attention layout, Euler loop over
the flow-matching scheduler), so validation grids show exactly what ``VincieInContextPipeline`` would generate from
the same context, without needing a pipeline object around the training modules.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..assembly import FRAME, build_condition
from ..pipelines.sampling import (
    CachedContextVelocity,
    FullAttentionVelocity,
    official_scheduler,
    run_sampler,
    set_trailing_timesteps,
)


@torch.no_grad()
def sample_next_image(
    transformer,
    context: torch.Tensor,
    segments: Sequence[torch.Tensor],
    negative_segments: Optional[Sequence[torch.Tensor]] = None,
    layout: str = "full",
    frame_index_mode: str = "compact",
    num_inference_steps: int = 10,
    guidance_scale: float = 1.0,
    generator: Optional[torch.Generator] = None,
    shift: float = 1.0,
) -> torch.Tensor:
    """Generates ``I_{N}`` from images ``I_0..I_{N-1}`` and their ``N`` instructions (no masks in the sequence).

    Args:
        transformer: a ``VincieTransformer``.
        context: ``(N, h, w, C)`` clean context latents.
        segments: ``N`` instruction embeddings ``(n_i, dim)`` (turn tokens are added here).
        negative_segments: the unconditional text (one segment, CFG); needed when ``guidance_scale > 1``.
        layout: ``"full"`` or ``"block_causal"``.
        frame_index_mode: ``"compact"`` (index ``k`` for ``I_k``) or ``"slots"`` (``3k``).
        num_inference_steps: Euler steps from ``t = 1`` to ``t = 0``.
        guidance_scale: classifier-free guidance scale (1 = off).
        generator: for the initial noise (CPU generator).
        shift: static timestep shift of the schedule (the run's ``--scheduler_shift``).

    Returns:
        ``(h, w, C)`` latent of the generated image.
    """
    n, h, w, c = context.shape
    device = context.device
    if len(segments) != n:
        raise ValueError(f"Need one instruction per context image ({n}), got {len(segments)}.")
    if guidance_scale > 1 and negative_segments is None:
        raise ValueError("`guidance_scale` > 1 needs `negative_segments` (the unconditional text).")
    text = transformer.build_session_text(list(segments))
    negative = None if guidance_scale <= 1 else transformer.build_session_text(list(negative_segments))
    frame_index = torch.arange(n + 1, device=device) * (3 if frame_index_mode == "slots" else 1)
    if layout == "full":
        velocity = FullAttentionVelocity(transformer, build_condition(context), text, negative, guidance_scale,
                                         frame_index=frame_index)
        num_frames = n + 1
    else:
        items = [item for segment in segments for item in (FRAME, len(segment) + 1)]  # I_0, T_0, I_1, T_1, ...
        velocity = CachedContextVelocity(transformer, context, items, text, negative, guidance_scale,
                                         frame_index=frame_index)
        num_frames = 1
    scheduler = official_scheduler(shift=shift)
    set_trailing_timesteps(scheduler, num_inference_steps, device=device)
    x = torch.randn((num_frames, h, w, c), generator=generator).to(device)
    return run_sampler(scheduler, x, velocity)[-1]


__all__ = ["sample_next_image"]
