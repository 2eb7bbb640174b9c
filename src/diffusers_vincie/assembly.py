"""Session assembly: the small pure functions that turn an editing session into VincieTransformer inputs.

A VINCIE session is an interleaved sequence ``I_0, T_0, I_1, T_1, ..., I_N`` of images and instructions
(instruction ``T_k`` turns image ``I_k`` into ``I_{k+1}``). The transformer sees it in the official
"native-aspect" packed format:

* video: every frame of every sample, channel-last latent pixels flattened in (frame, row, col) order and
  concatenated over samples -> ``(sum_b F_b*h_b*w_b, channels)`` plus ``video_shapes`` rows ``(F_b, h_b, w_b)``;
* text: per sample the concatenation of its turn segments ``[E[k], tokens(T_k)]`` (``E`` = turn-embedding
  table, inserted *before* the text projection), concatenated over samples -> ``(sum_b L_b, text_dim)`` plus
  ``text_lengths``.

Everything here is deterministic tensor bookkeeping (no learned weights), so it is unit-tested against the
pre-assembly pieces of the official fixtures.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Optional, Sequence

import torch

# =====================================================================================================
#                                         Prompt templating
# =====================================================================================================

PROMPT_TEMPLATE = "Based on <IMG{index}>, {instruction}. Output <IMG{next_index}>: "


def format_turn_prompt(instruction: str, turn: int, camera_prefix: str = "") -> str:
    """Wraps one raw instruction the way the official generator does (``pad_img_placehoder: True``).

    ``"Based on <IMG{turn}>, {instruction}. Output <IMG{turn+1}>: "`` where the instruction (after the optional
    camera prefix) is stripped of surrounding whitespace and then of leading/trailing periods.
    """
    if not isinstance(instruction, str):
        raise TypeError(f"`instruction` must be a str, got {type(instruction).__name__}.")
    text = (camera_prefix + instruction).strip().strip(".")
    return PROMPT_TEMPLATE.format(index=turn, instruction=text, next_index=turn + 1)


# =====================================================================================================
#                                   Text: valid tokens and turn tokens
# =====================================================================================================


def select_valid_tokens(embeds: torch.Tensor, masks: torch.Tensor) -> list[torch.Tensor]:
    """Keeps the masked-in tokens of each encoded prompt, in order.

    Args:
        embeds: ``(num_prompts, max_len, dim)`` text-encoder outputs (right padded).
        masks: ``(num_prompts, max_len)`` 1 for real tokens.

    Returns:
        One ``(n_i, dim)`` tensor per prompt.
    """
    if embeds.ndim != 3 or masks.shape != embeds.shape[:2]:
        raise ValueError(
            f"`embeds` must be (prompts, max_len, dim) and `masks` (prompts, max_len); got {tuple(embeds.shape)} "
            f"and {tuple(masks.shape)}."
        )
    return [e[m.bool()] for e, m in zip(embeds, masks)]


def insert_turn_tokens(
    segments: Sequence[torch.Tensor], turn_ids: Sequence[int] | torch.Tensor, turn_table: torch.Tensor
) -> torch.Tensor:
    """Builds one session's text: ``[E[t_0], seg_0, E[t_1], seg_1, ...]`` (official ``seq_concat`` fusion).

    Args:
        segments: per-prompt token embeddings ``(n_i, dim)``; every prompt must have at least one token.
        turn_ids: the turn index of each prompt (0 for the first prompt of the session).
        turn_table: ``(max_turns, dim)`` turn-embedding table.

    Returns:
        ``(sum_i (n_i + 1), dim)`` in the promoted dtype of table and tokens.
    """
    turn_ids = torch.as_tensor(turn_ids, dtype=torch.long).flatten()
    if len(segments) != len(turn_ids):
        raise ValueError(f"Got {len(segments)} text segments but {len(turn_ids)} turn ids; give one id per segment.")
    if len(segments) == 0:
        raise ValueError("A session needs at least one text segment (one instruction per context image).")
    max_turns = turn_table.shape[0]
    if int(turn_ids.max()) >= max_turns or int(turn_ids.min()) < 0:
        raise ValueError(
            f"Turn ids {turn_ids.tolist()} exceed the turn-embedding table ({max_turns} turns); "
            f"use at most {max_turns} turns per session."
        )
    parts = []
    for seg, turn in zip(segments, turn_ids.tolist()):
        if seg.ndim != 2 or seg.shape[0] == 0:
            raise ValueError(f"Text segment of turn {turn} is empty or not 2-D (shape {tuple(seg.shape)}).")
        if seg.shape[1] != turn_table.shape[1]:
            raise ValueError(
                f"Text segment width {seg.shape[1]} does not match the turn-embedding width {turn_table.shape[1]} "
                "(the transformer's `text_embed_dim`)."
            )
        dtype = torch.promote_types(seg.dtype, turn_table.dtype)
        parts += [turn_table[turn : turn + 1].to(dtype), seg.to(dtype)]
    return torch.cat(parts)


# =====================================================================================================
#                                     Video: condition and packing
# =====================================================================================================


def build_condition(context_latents: torch.Tensor, num_targets: int = 1) -> torch.Tensor:
    """Condition channels of a session: ``[latent, 1]`` for context frames, zeros for frames to generate.

    Args:
        context_latents: ``(N, h, w, C)`` channel-last latents of the given images (already scaled).
        num_targets: frames to generate, appended after the context.

    Returns:
        ``(N + num_targets, h, w, C + 1)``.
    """
    if context_latents.ndim != 4:
        raise ValueError(f"`context_latents` must be (frames, h, w, C); got {tuple(context_latents.shape)}.")
    n, h, w, c = context_latents.shape
    cond = context_latents.new_zeros(n + num_targets, h, w, c + 1)
    cond[:n, ..., :c] = context_latents
    cond[:n, ..., c] = 1.0
    return cond


def pack_frames(noisy: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """``concat([x_t, cond], -1)`` flattened over (frame, row, col): ``(F*h*w, 2C+1)``."""
    if noisy.shape[:3] != cond.shape[:3]:
        raise ValueError(f"Noisy latents {tuple(noisy.shape)} and condition {tuple(cond.shape)} differ in (F, h, w).")
    return torch.cat([noisy, cond.to(noisy.dtype)], dim=-1).flatten(0, 2)


def pack_sessions(
    videos: Sequence[torch.Tensor], texts: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Packs per-sample ``(F, h, w, ch)`` videos and ``(L, dim)`` texts into the flat native-aspect format.

    Returns:
        ``(video (sum F*h*w, ch), video_shapes (B, 3), text (sum L, dim), text_lengths (B,))``.
    """
    if len(videos) != len(texts):
        raise ValueError(f"Got {len(videos)} videos but {len(texts)} texts; give one text per sample.")
    for i, v in enumerate(videos):
        if v.ndim != 4:
            raise ValueError(f"Video {i} must be (frames, h, w, channels); got {tuple(v.shape)}.")
    device = videos[0].device
    video = torch.cat([v.flatten(0, 2) for v in videos])
    video_shapes = torch.tensor([list(v.shape[:3]) for v in videos], dtype=torch.long, device=device)
    text = torch.cat(list(texts))
    text_lengths = torch.tensor([t.shape[0] for t in texts], dtype=torch.long, device=device)
    return video, video_shapes, text, text_lengths


def unpack_video(packed: torch.Tensor, video_shapes: torch.Tensor) -> list[torch.Tensor]:
    """Inverse of the video packing: ``(sum F*h*w, C)`` -> list of ``(F, h, w, C)``."""
    sizes = video_shapes.prod(-1).tolist()
    return [p.view(*shape, -1) for p, shape in zip(packed.split(sizes), video_shapes.tolist())]


# =====================================================================================================
#                                   Positions and block-causal order
# =====================================================================================================


def default_frame_index(video_shapes: torch.Tensor) -> torch.Tensor:
    """``0..F_b-1`` for every sample, concatenated: the temporal index of each packed frame."""
    return torch.cat([torch.arange(int(f), device=video_shapes.device) for f in video_shapes[:, 0]])


def rope_position_ids(
    patch_shapes: torch.Tensor,
    text_lengths: torch.Tensor,
    frame_index: torch.Tensor,
    text_lengths_in_call: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """3-axis RoPE positions of the official ``mmrope3d`` layout.

    Text token ``j`` of a sample sits at ``(j, j, j)``; video token of frame ``f``, patch row ``y``, column ``x``
    at ``(L + f, y, x)`` with ``L`` that sample's whole text length (turn tokens included).

    Args:
        patch_shapes: ``(B, 3)`` ``(frames, h/p, w/p)`` per sample.
        text_lengths: ``(B,)`` total text length of each sample (also when its text is not in this call,
            e.g. with a cached context).
        frame_index: ``(sum F,)`` temporal index of each packed frame.
        text_lengths_in_call: ``(B,)`` text tokens present in this call (default ``text_lengths``; zeros when the
            text sits in a cached context). They take positions ``0..n_b-1``.

    Returns:
        ``(video_pos (N_vid, 3), text_pos (N_txt, 3))`` as float32.
    """
    device = patch_shapes.device
    frames_per_sample = patch_shapes[:, 0]
    frame_offset = torch.repeat_interleave(text_lengths.to(device), frames_per_sample)
    vid_pos = []
    for (f, h, w), start, stop in zip(patch_shapes.tolist(), *_frame_bounds(frames_per_sample)):
        t = (frame_offset[start:stop] + frame_index[start:stop])[:, None, None].expand(f, h, w)
        y = torch.arange(h, device=device)[None, :, None].expand(f, h, w)
        x = torch.arange(w, device=device)[None, None, :].expand(f, h, w)
        vid_pos.append(torch.stack([t, y, x], -1).reshape(-1, 3))
    if text_lengths_in_call is None:
        text_lengths_in_call = text_lengths
    text_positions = [torch.arange(int(n), device=device) for n in text_lengths_in_call]
    txt_pos = torch.cat(text_positions)[:, None].expand(-1, 3)
    return torch.cat(vid_pos).float(), txt_pos.float()


def _frame_bounds(frames_per_sample: torch.Tensor) -> tuple[list[int], list[int]]:
    stops = frames_per_sample.cumsum(0).tolist()
    return [s - int(f) for s, f in zip(stops, frames_per_sample.tolist())], stops


FRAME = "frame"


def sequence_order(items: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-causal order of one session given its items in session order.

    Args:
        items: ``FRAME`` for a frame (image or mask) or an int for a text segment of that many tokens, e.g.
            ``[FRAME, 7, FRAME, 5, FRAME]`` for ``I_0, T_0, I_1, T_1, I_2`` or, with chain-of-editing masks,
            ``[FRAME, 7, FRAME, FRAME, FRAME]`` for ``I_0, T_0, M_0^cur, M_1^next, I_1``.

    Returns:
        ``(frame_order (num_frames,), text_order (num_text_tokens,))``: the position of each item; a token sees
        the clean tokens of lower or equal order (block-causal layout), so nothing sees a later item.
    """
    frame_order, text_order = [], []
    for position, item in enumerate(items):
        if item == FRAME:
            frame_order.append(position)
        else:
            text_order += [position] * int(item)
    return torch.tensor(frame_order, dtype=torch.long), torch.tensor(text_order, dtype=torch.long)


def interleaved_order(num_frames: int, segment_lengths: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """`sequence_order` of the plain editing session ``I_0, T_0, I_1, T_1, ..., I_{num_frames-1}``.

    Image ``k+1`` sees images ``0..k`` and instructions ``0..k`` but no later instruction.
    """
    items: list = []
    for k in range(num_frames):
        items.append(FRAME)
        if k < len(segment_lengths):
            items.append(segment_lengths[k])
    items += list(segment_lengths[num_frames:])
    return sequence_order(items)


# =====================================================================================================
#                          Block-causal inputs: clean context frames and noisy targets
# =====================================================================================================


def clean_context_frames(latents: torch.Tensor) -> torch.Tensor:
    """Block-causal context frames at t = 0: ``[latent, latent, 1]`` per pixel, ``(N, h, w, 2C+1)``.

    At t = 0 the "noisy" channels hold the clean latent itself; the condition channels and mask are as in the
    official layout, so the same transformer input convention serves both attention layouts.
    """
    return torch.cat([latents, latents, torch.ones_like(latents[..., :1])], dim=-1)


def noisy_target_frames(noisy: torch.Tensor) -> torch.Tensor:
    """Frames being generated: ``[x_t, 0, 0]`` per pixel, ``(N, h, w, 2C+1)``."""
    return torch.cat([noisy, torch.zeros_like(noisy), torch.zeros_like(noisy[..., :1])], dim=-1)


# =====================================================================================================
#                                        A batch of sessions
# =====================================================================================================


@dataclass
class VincieSessionBatch:
    """Packed transformer inputs for a batch of sessions (see the module docstring for the layout).

    Only the first four fields are needed for the official full-attention model; the optional ones drive
    the block-causal layout (per-frame timesteps, order, multi-target noisy copies).
    """

    hidden_states: torch.Tensor
    video_shapes: torch.Tensor
    encoder_hidden_states: torch.Tensor
    text_lengths: torch.Tensor
    frame_timestep: Optional[torch.Tensor] = None
    frame_index: Optional[torch.Tensor] = None
    frame_order: Optional[torch.Tensor] = None
    text_order: Optional[torch.Tensor] = None
    frame_is_noisy: Optional[torch.Tensor] = None

    def to(self, device=None, dtype=None) -> "VincieSessionBatch":
        """Moves every tensor to ``device``; floating tensors also to ``dtype``."""

        def move(t):
            if t is None:
                return None
            return t.to(device=device, dtype=dtype if (dtype is not None and t.is_floating_point()) else None)

        return replace(self, **{f.name: move(getattr(self, f.name)) for f in fields(self)})

    def model_inputs(self) -> dict:
        """Keyword arguments for ``VincieTransformer.forward`` (unset optional fields left out)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
