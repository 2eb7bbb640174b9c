"""The session sequence: one vocabulary and the pure functions that turn a session into VincieTransformer inputs.

A VINCIE session is an interleaved sequence of frames and instructions. With the region-of-editing (RoE) masks of
the paper's chain of editing, edit ``k`` (instruction ``T_k`` turning image ``I_k`` into ``I_{k+1}``) reads::

    I_0, T_0, [Mc_0, Mn_0,] I_1, T_1, [Mc_1, Mn_1,] I_2, ...

where ``Mc_k`` is the RoE of edit ``k`` in its source frame and ``Mn_k`` the RoE in its target frame. Every part of
the package names these items with the same two types, :class:`Frame` ``(kind, turn)`` and :class:`Text`
``(turn)``; an item's *order* is its position in the session's item list (:func:`session_items`). Training,
validation, parity and the pipeline build the model's inputs with the functions of this module:

* :func:`frame_index`: the temporal RoPE index of a frame ("compact" = official, "slots" = mask-aware);
* :func:`sequence_order`: the block-causal order of every frame and text token;
* :func:`block_causal_layout`: the orders and RoPE indices of a block-causal sequence's context and targets;
* :func:`session_text`: one session's text with a placeholder row per turn token (the model looks the turn
  embedding up inside ``forward()``);
* :func:`build_condition` / :func:`clean_context_frames` / :func:`noisy_target_frames` / :func:`pack_sessions`:
  the video channels and the packed native-aspect format.

Positions. Text token ``j`` of a sample sits at RoPE position ``(j, j, j)``. A frame sits at time ``L + index``
where ``L`` counts the text tokens *that precede the frame* (block-causal layout: a frame's position depends only
on what precedes it, so training and cached inference agree) or the sample's whole text (official full layout,
where all text precedes all frames). The transformer applies this rule from the orders given here.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Optional, Sequence, Union

import torch

# =====================================================================================================
#                                          Vocabulary
# =====================================================================================================

IMAGE, CURRENT_MASK, NEXT_MASK = "image", "current_mask", "next_mask"
FRAME_KINDS: tuple[str, ...] = (IMAGE, CURRENT_MASK, NEXT_MASK)
FRAME_INDEX_MODES: tuple[str, ...] = ("compact", "slots")
_SLOT_OFFSET = {IMAGE: 0, CURRENT_MASK: 1, NEXT_MASK: 2}


@dataclass(frozen=True)
class Frame:
    """A frame of a session: image ``I_turn`` or an RoE mask of edit ``turn`` (``Mc_turn`` / ``Mn_turn``)."""

    kind: str = IMAGE
    turn: int = 0

    def __post_init__(self) -> None:
        if self.kind not in FRAME_KINDS:
            raise ValueError(f"Frame `kind` must be one of {FRAME_KINDS}; got {self.kind!r}.")


@dataclass(frozen=True)
class Text:
    """Instruction ``T_turn``; ``turn`` is also its row of the model's turn-embedding table."""

    turn: int


Item = Union[Frame, Text]


def session_items(num_turns: int, with_masks: bool = False) -> list[Item]:
    """``I_0, T_0, [Mc_0, Mn_0,] I_1, ..., T_{n-1}, [Mc_{n-1}, Mn_{n-1},] I_n`` for ``n = num_turns`` edits."""
    items: list[Item] = []
    for k in range(num_turns):
        items += [Frame(IMAGE, k), Text(k)]
        if with_masks:
            items += [Frame(CURRENT_MASK, k), Frame(NEXT_MASK, k)]
    items.append(Frame(IMAGE, num_turns))
    return items


def unconditional_items(items: Sequence[Item]) -> list[Item]:
    """The CFG negative branch of a sequence: its frames, with one unconditional text in place of ``T_0`` and
    no other instruction (the pipeline's negative pass and the training script's text dropout alike)."""
    out: list[Item] = []
    for item in items:
        if isinstance(item, Text):
            if not any(isinstance(x, Text) for x in out):
                out.append(Text(0))
        else:
            out.append(item)
    return out


def frame_index(frame: Frame, frames_before: int, mode: str) -> int:
    """Temporal RoPE index of ``frame``.

    ``"compact"`` (official): the number of frames that precede it in the sequence the model sees.
    ``"slots"``: the fixed slot ``3 * turn + {0: image, 1: current mask, 2: next mask}``, so a model trained with
    masks knows which kind of frame it is generating.
    """
    if mode not in FRAME_INDEX_MODES:
        raise ValueError(f"`frame_index` mode must be one of {FRAME_INDEX_MODES}; got {mode!r}.")
    return frames_before if mode == "compact" else 3 * frame.turn + _SLOT_OFFSET[frame.kind]


def frame_indices(frames: Sequence[Frame], mode: str) -> torch.Tensor:
    """:func:`frame_index` of each frame of a sequence seen in this order: ``(len(frames),)`` long."""
    return torch.tensor([frame_index(f, i, mode) for i, f in enumerate(frames)], dtype=torch.long)


def sequence_order(items: Sequence[Item], text_lengths: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-causal order of one sequence: each item's position in ``items``.

    Args:
        items: the items the model sees, in session order.
        text_lengths: tokens of each :class:`Text` item (its turn token included), in order.

    Returns:
        ``(frame_order (num_frames,), text_order (sum text_lengths,))``; a token sees the clean tokens of lower or
        equal order, so nothing sees a later item.
    """
    texts = [i for i, item in enumerate(items) if isinstance(item, Text)]
    if len(texts) != len(text_lengths):
        raise ValueError(f"{len(texts)} text items but {len(text_lengths)} text lengths; give one per text item.")
    frame_order = [i for i, item in enumerate(items) if isinstance(item, Frame)]
    text_order = [order for order, n in zip(texts, text_lengths) for _ in range(int(n))]
    return torch.tensor(frame_order, dtype=torch.long), torch.tensor(text_order, dtype=torch.long)


# =====================================================================================================
#                                             Text
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


def select_valid_tokens(embeds: torch.Tensor, masks: torch.Tensor) -> list[torch.Tensor]:
    """Keeps the masked-in tokens of each encoded prompt, in order: ``(prompts, max_len, dim)`` -> ``[(n_i, dim)]``."""
    if embeds.ndim != 3 or masks.shape != embeds.shape[:2]:
        raise ValueError(
            f"`embeds` must be (prompts, max_len, dim) and `masks` (prompts, max_len); got {tuple(embeds.shape)} "
            f"and {tuple(masks.shape)}."
        )
    return [e[m.bool()] for e, m in zip(embeds, masks)]


@dataclass
class PackedText:
    """One sequence's text as model inputs.

    Attributes:
        states: ``(L, text_dim)`` token embeddings, one placeholder row before each segment for its turn token.
        turn_ids: ``(L,)`` long: the turn of each turn-token row, -1 for instruction tokens (``None``: the turn
            embeddings are already fused into ``states``, as in the official fixtures).
        segment_lengths: tokens of each segment, turn token included (the text items' lengths).
    """

    states: torch.Tensor
    turn_ids: Optional[torch.Tensor]
    segment_lengths: list[int]

    def __len__(self) -> int:
        return int(self.states.shape[0])


def session_text(segments: Sequence[torch.Tensor], turns: Sequence[int]) -> PackedText:
    """One sample's text ``[E[t_0], seg_0, E[t_1], seg_1, ...]`` (official ``seq_concat`` fusion) as model inputs.

    The turn-embedding rows ``E[t]`` are the model's weights, so they are looked up inside its ``forward()``:
    here each gets a zero placeholder row and its turn id in ``turn_ids`` (-1 for instruction tokens).

    Args:
        segments: per-instruction token embeddings ``(n_i, dim)``, each with at least one token.
        turns: the turn of each instruction.
    """
    if len(segments) != len(turns):
        raise ValueError(f"Got {len(segments)} text segments but {len(turns)} turn ids; give one id per segment.")
    if len(segments) == 0:
        raise ValueError("A session needs at least one text segment (one instruction per context image).")
    rows, ids = [], []
    for seg, turn in zip(segments, turns):
        if seg.ndim != 2 or seg.shape[0] == 0:
            raise ValueError(f"Text segment of turn {turn} is empty or not 2-D (shape {tuple(seg.shape)}).")
        if int(turn) < 0:
            raise ValueError(f"Turn ids must be >= 0; got {turn}.")
        rows += [seg.new_zeros(1, seg.shape[1]), seg]
        ids += [int(turn)] + [-1] * seg.shape[0]
    turn_ids = torch.tensor(ids, dtype=torch.long, device=segments[0].device)
    return PackedText(torch.cat(rows), turn_ids, [int(seg.shape[0]) + 1 for seg in segments])


def pack_texts(texts: Sequence[PackedText]) -> tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """``(encoder_hidden_states, text_turn_ids, text_lengths)`` of a batch of sequences' texts."""
    states = torch.cat([t.states for t in texts])
    fused = [t.turn_ids is None for t in texts]
    if any(fused) and not all(fused):
        raise ValueError("Pack texts either all with turn ids or all fused.")
    turn_ids = None if all(fused) else torch.cat([t.turn_ids for t in texts])
    lengths = torch.tensor([len(t) for t in texts], dtype=torch.long, device=states.device)
    return states, turn_ids, lengths


# =====================================================================================================
#                                    Block-causal layout
# =====================================================================================================


@dataclass
class BlockCausalLayout:
    """Orders and RoPE indices of one block-causal sequence: clean context frames, then noisy targets.

    Attributes:
        context_order, context_index: ``(C,)`` block-causal order and temporal RoPE index of the clean frames.
        target_order, target_index: ``(T,)`` the same for the frames being generated.
        text_order: ``(L,)`` order of every text token.
    """

    context_order: torch.Tensor
    context_index: torch.Tensor
    target_order: torch.Tensor
    target_index: torch.Tensor
    text_order: torch.Tensor


def block_causal_layout(
    items: Sequence[Item],
    segment_lengths: Sequence[int],
    context: Sequence[Frame],
    targets: Sequence[Frame],
    frame_index_mode: str,
) -> BlockCausalLayout:
    """The one rule, for training and inference alike, that places a block-causal sequence.

    Args:
        items: the sequence's items in order (every frame of ``context`` and ``targets`` and its texts).
        segment_lengths: tokens of each :class:`Text` of ``items`` (turn token included).
        context: the clean frames the model sees, in order (training may drop some).
        targets: the frames to generate (each target sees the clean frames of lower order).
        frame_index_mode: ``"compact"`` or ``"slots"`` (:func:`frame_index`).
    """
    order = {item: i for i, item in enumerate(items)}
    missing = [f for f in [*context, *targets] if f not in order]
    if missing:
        raise ValueError(f"Frames {missing} are not items of the sequence.")
    _, text_order = sequence_order(items, segment_lengths)
    context_orders = [order[f] for f in context]

    def index(frame: Frame) -> int:
        return frame_index(frame, sum(o < order[frame] for o in context_orders), frame_index_mode)

    def tensor(values) -> torch.Tensor:
        return torch.tensor(list(values), dtype=torch.long)

    return BlockCausalLayout(
        context_order=tensor(context_orders),
        context_index=tensor(index(f) for f in context),
        target_order=tensor(order[f] for f in targets),
        target_index=tensor(index(f) for f in targets),
        text_order=text_order,
    )


# =====================================================================================================
#                                     Video: condition and packing
# =====================================================================================================


def build_condition(context_latents: torch.Tensor, num_targets: int = 1) -> torch.Tensor:
    """Condition channels of the full layout: ``[latent, 1]`` for context frames, zeros for frames to generate.

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


def clean_context_frames(latents: torch.Tensor) -> torch.Tensor:
    """Block-causal context frames at t = 0: ``[latent, latent, 1]`` per pixel, ``(N, h, w, 2C+1)``.

    At t = 0 the "noisy" channels hold the clean latent itself; the condition channels and mask are as in the
    official layout, so one transformer input convention serves both attention layouts.
    """
    return torch.cat([latents, latents, torch.ones_like(latents[..., :1])], dim=-1)


def noisy_target_frames(noisy: torch.Tensor) -> torch.Tensor:
    """Frames being generated in the block-causal layout: ``[x_t, 0, 0]`` per pixel, ``(N, h, w, 2C+1)``."""
    return torch.cat([noisy, torch.zeros_like(noisy), torch.zeros_like(noisy[..., :1])], dim=-1)


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
#                                        A batch of sequences
# =====================================================================================================


@dataclass
class VincieSessionBatch:
    """Packed transformer inputs for a batch of sequences (keyword arguments of ``VincieTransformer.forward``).

    Only the first four fields are needed for the official full-attention model with fused text; the optional
    ones carry the turn ids of :func:`session_text` and drive the block-causal layout (per-frame timesteps,
    order, multi-target noisy copies).
    """

    hidden_states: torch.Tensor
    video_shapes: torch.Tensor
    encoder_hidden_states: torch.Tensor
    text_lengths: torch.Tensor
    text_turn_ids: Optional[torch.Tensor] = None
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
