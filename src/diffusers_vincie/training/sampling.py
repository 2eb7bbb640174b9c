"""A minimal Euler sampler for validation during training (teacher-forced context, next image only).

The user-facing sampler is ``VincieInContextPipeline``; this one exists so that training can draw validation
grids without it and mirrors the two formulations exactly: in the ``full`` layout every frame starts from noise
and is integrated (official inference, spec 6.5-6.8); in the ``block_causal`` layout the clean context enters at
``t = 0`` and only the target is integrated.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..assembly import build_condition, clean_context_frames, noisy_target_frames, pack_frames


def _velocity(transformer, frames: torch.Tensor, segments, t: float, layout: str, frame_index, frame_order,
              text_order, num_context: int) -> torch.Tensor:
    f, h, w, _ = frames.shape
    text = transformer.build_session_text(list(segments))
    common = dict(
        hidden_states=frames.flatten(0, 2),
        video_shapes=torch.tensor([[f, h, w]], device=frames.device),
        encoder_hidden_states=text,
        text_lengths=torch.tensor([text.shape[0]], device=frames.device),
        frame_index=frame_index,
        attention_layout=layout,
    )
    if layout == "full":
        out = transformer(**common, timestep=torch.tensor([1000.0 * t], device=frames.device)).sample
    else:
        frame_timestep = torch.tensor([0.0] * num_context + [1000.0 * t] * (f - num_context), device=frames.device)
        is_noisy = torch.tensor([False] * num_context + [True] * (f - num_context), device=frames.device)
        out = transformer(**common, timestep=torch.zeros(1, device=frames.device), frame_timestep=frame_timestep,
                          frame_order=frame_order, text_order=text_order, frame_is_noisy=is_noisy).sample
    return out.view(f, h, w, -1)


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
) -> torch.Tensor:
    """Generates ``I_{N}`` from images ``I_0..I_{N-1}`` and their ``N`` instructions (no masks in the sequence).

    Args:
        transformer: a ``VincieTransformer``.
        context: ``(N, h, w, C)`` clean context latents.
        segments: ``N`` instruction embeddings ``(n_i, dim)`` (turn tokens are added here).
        negative_segments: ``N`` embeddings of the unconditional text (CFG); needed when ``guidance_scale > 1``.
        layout: ``"full"`` or ``"block_causal"``.
        frame_index_mode: ``"compact"`` (index ``k`` for ``I_k``) or ``"slots"`` (``3k``).
        num_inference_steps: Euler steps from ``t = 1`` to ``t = 0``.
        guidance_scale: classifier-free guidance scale (1 = off).
        generator: for the initial noise (CPU generator).

    Returns:
        ``(h, w, C)`` latent of the generated image.
    """
    n, h, w, c = context.shape
    device = context.device
    if len(segments) != n:
        raise ValueError(f"Need one instruction per context image ({n}), got {len(segments)}.")
    if guidance_scale > 1 and negative_segments is None:
        raise ValueError("`guidance_scale` > 1 needs `negative_segments` (the unconditional text).")
    step = 3 if frame_index_mode == "slots" else 1
    frame_index = torch.arange(n + 1, device=device) * step
    # block-causal orders of I_0, T_0, I_1, T_1, ..., I_N (images only)
    frame_order = torch.arange(n + 1, device=device) * 2
    text_order = torch.cat([torch.full((s.shape[0] + 1,), 2 * k + 1, device=device) for k, s in enumerate(segments)])
    num_frames = n + 1 if layout == "full" else 1
    x = torch.randn((num_frames, h, w, c), generator=generator).to(device)
    times = torch.linspace(1.0, 0.0, num_inference_steps + 1).tolist()
    for t, t_next in zip(times[:-1], times[1:]):
        if layout == "full":
            frames = pack_frames(x, build_condition(context)).view(n + 1, h, w, -1)
        else:
            frames = torch.cat([clean_context_frames(context), noisy_target_frames(x)])
        v = _velocity(transformer, frames, segments, t, layout, frame_index, frame_order, text_order, n)
        if guidance_scale > 1:
            neg_order = torch.cat(
                [torch.full((s.shape[0] + 1,), 2 * k + 1, device=device) for k, s in enumerate(negative_segments)]
            )
            v_neg = _velocity(transformer, frames, negative_segments, t, layout, frame_index, frame_order, neg_order, n)
            v = v_neg + guidance_scale * (v - v_neg)
        v = v[-num_frames:]
        x = x + (t_next - t) * v
    return x[-1]


__all__ = ["sample_next_image"]
