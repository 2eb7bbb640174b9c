"""Training sequences: which frames of a session a training example holds, and the transformer inputs it becomes.

A session of ``n`` edits is ``I_0, T_0, I_1, ..., T_{n-1}, I_n``; with the region-of-editing (RoE) masks of the
paper's chain of editing it is ``I_0, T_0, Mc_0, Mn_0, I_1, T_1, Mc_1, Mn_1, I_2, ...`` where ``Mc_k`` is the RoE
of edit ``k`` in its source frame ``I_k`` and ``Mn_k`` the RoE in its target frame ``I_{k+1}``. The three proxy
tasks are the three kinds of frame a model can be asked to generate: ``next_image`` (``I_{k+1}``),
``current_mask`` (``Mc_k``) and ``next_mask`` (``Mn_k``).

Two steps, both deterministic given a generator:

1. :func:`plan_sequence` (cheap, no tensors; runs in data-loader workers): draws a window of turns, whether the
   masks are in (probability 0.8), the per-turn context dropout and the target frame(s) -> :class:`SequencePlan`.
2. :func:`assemble_full_attention` / :func:`assemble_block_causal`: turn a plan plus encoded frames and text into
   one sample's transformer inputs, the velocity target and per-frame loss weights (:class:`SampleTensors`);
   :func:`collate_samples` packs a list of them into a :class:`~diffusers_vincie.sequence.VincieSessionBatch`.

Formulations (they match the inference of ``VincieInContextPipeline``):

* ``full`` (the released checkpoints' conditioning): the sequence ends with the single target; every frame is noised
  with the same ``t``; the condition is ``build_condition(context)`` (target zeros); loss on the target only.
* ``block_causal`` (the paper's multi-target pretraining): every clean frame is context at ``t = 0``, every target
  has a noisy copy with its own ``t`` and the order / RoPE index of the frame it denoises; the block-causal mask
  lets a target see only clean context of lower order, so all targets of a session train in one forward.

Items, orders, frame RoPE indices, texts and positions come from :mod:`diffusers_vincie.sequence`, the module the
pipeline builds its inputs with (``frame_index`` "compact" or "slots", see there). With masks in training, only
slots tell the model *which kind* of frame to generate: in compact mode "``I_0, T_0``, generate index 1" is the
next image when the masks are out and the current mask when they are in, so mask tasks blur the next-image task
(see docs/training.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from ..sequence import (
    CURRENT_MASK,
    FRAME_INDEX_MODES,
    IMAGE,
    NEXT_MASK,
    Frame,
    Item,
    PackedText,
    VincieSessionBatch,
    block_causal_layout,
    build_condition,
    clean_context_frames,
    noisy_target_frames,
    pack_frames,
    pack_texts,
    session_items,
    session_text,
    unconditional_items,
)
from .flow import add_noise, flow_velocity

TASKS: tuple[str, ...] = ("next_image", "current_mask", "next_mask")
LAYOUTS: tuple[str, ...] = ("full", "block_causal")

# A task name is the kind of the frame it generates.
_TASK_OF_KIND = {IMAGE: "next_image", CURRENT_MASK: "current_mask", NEXT_MASK: "next_mask"}


def frame_task(frame: Frame) -> str:
    """The proxy task of generating ``frame``."""
    return _TASK_OF_KIND[frame.kind]


# =====================================================================================================
#                                         Configuration
# =====================================================================================================


@dataclass
class SequenceConfig:
    """How training sequences are drawn from sessions.

    Args:
        layout: ``"full"`` (single target, official conditioning) or ``"block_causal"`` (multi-target).
        min_turns: fewest edits in a sequence (>= 1).
        max_turns: most edits in a sequence (capped by the session's length).
        mask_probability: probability that a sequence holds the RoE masks (chain of editing).
        drop_current_frame: per-turn probability that the source frame ``I_k`` is left out of the context
            (``I_0`` and, in the full layout, the source frame of the target's edit are always kept).
        drop_current_mask: per-turn probability that ``Mc_k`` is left out of the context.
        drop_next_mask: per-turn probability that ``Mn_k`` is left out of the context.
        task_weights: weight of each proxy task of :data:`TASKS`: the full layout draws the target's task with
            these probabilities (mask tasks only when the masks are in); the block-causal layout trains every
            frame of a task with weight > 0 and scales its loss by the weight.
        frame_index: ``"compact"`` or ``"slots"`` (see the module docstring); default ``"compact"`` for the full
            layout (official) and ``"slots"`` for the block-causal one (mask-aware).

    The training script derives its flags from these fields (``help`` metadata, types and defaults).
    """

    layout: str = field(
        default="full",
        metadata={
            "help": "'full' = released checkpoints' conditioning; 'block_causal' = multi-target pretraining.",
            "choices": LAYOUTS,
            "flag": "attention_layout",
        },
    )
    min_turns: int = field(default=1, metadata={"help": "Fewest edits in a sequence."})
    max_turns: int = field(default=4, metadata={"help": "Most edits in a sequence."})
    mask_probability: float = field(default=0.8, metadata={"help": "P(RoE masks are in a sequence)."})
    drop_current_frame: float = field(default=0.2, metadata={"help": "Per-turn context dropout of I_k."})
    drop_current_mask: float = field(default=0.7, metadata={"help": "Per-turn context dropout of Mc_k."})
    drop_next_mask: float = field(default=0.7, metadata={"help": "Per-turn context dropout of Mn_k."})
    task_weights: dict[str, float] = field(
        default_factory=lambda: {task: 1.0 for task in TASKS},
        metadata={"help": f"Weights of the proxy tasks {','.join(TASKS)}, comma-separated (0 disables a task)."},
    )
    frame_index: Optional[str] = field(
        default=None,
        metadata={
            "help": "Frame RoPE index: 'compact' (official) or 'slots' (3k+kind); default compact for full, slots for "
            "block_causal.",
            "choices": FRAME_INDEX_MODES,
        },
    )

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"`layout` must be one of {LAYOUTS}, got {self.layout!r}.")
        if self.frame_index is None:
            self.frame_index = "compact" if self.layout == "full" else "slots"
        if self.frame_index not in FRAME_INDEX_MODES:
            raise ValueError(f"`frame_index` must be one of {FRAME_INDEX_MODES}, got {self.frame_index!r}.")
        if not 1 <= self.min_turns <= self.max_turns:
            raise ValueError(f"Need 1 <= min_turns <= max_turns, got {self.min_turns} and {self.max_turns}.")
        for name in ("mask_probability", "drop_current_frame", "drop_current_mask", "drop_next_mask"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"`{name}` is a probability and must lie in [0, 1], got {value}.")
        unknown = set(self.task_weights) - set(TASKS)
        if unknown:
            raise ValueError(f"`task_weights` has unknown tasks {sorted(unknown)}; the tasks are {TASKS}.")
        self.task_weights = {task: float(self.task_weights.get(task, 0.0)) for task in TASKS}
        if any(w < 0 for w in self.task_weights.values()) or self.task_weights["next_image"] <= 0:
            raise ValueError(
                f"`task_weights` must be >= 0 with a positive 'next_image' weight (every sequence can predict the "
                f"next image), got {self.task_weights}."
            )


# =====================================================================================================
#                                            Plans
# =====================================================================================================


@dataclass
class SequencePlan:
    """What one training example holds (see :func:`plan_sequence`).

    Attributes:
        start: session index of the sequence's first frame ``I_0``.
        num_turns: edits in the window (frames ``start .. start + num_turns`` of the session).
        with_masks: whether the RoE masks are part of the sequence.
        items: the window's items in order (`diffusers_vincie.sequence.session_items`; turns relative to
            ``start``); an item's order is its position here.
        context: clean frames given to the model, in order.
        targets: frames to generate, in order.
        layout: the formulation the plan is for.
    """

    start: int
    num_turns: int
    with_masks: bool
    items: list[Item]
    context: list[Frame]
    targets: list[Frame]
    layout: str

    @property
    def num_prompts(self) -> int:
        """Instructions in the sequence (``T_0 .. T_{num_turns-1}``)."""
        return self.num_turns

    @property
    def frames(self) -> list[Frame]:
        """Every distinct frame of the sequence (context and targets) in order."""
        wanted = set(self.context) | set(self.targets)
        return [item for item in self.items if item in wanted]

    def order(self, item: Item) -> int:
        return self.items.index(item)


def plan_sequence(
    num_session_turns: int,
    has_masks: bool,
    config: SequenceConfig,
    generator: np.random.Generator,
    num_turns: int | None = None,
    with_masks: bool | None = None,
) -> SequencePlan:
    """Draws one training sequence from a session (window, masks, context dropout, targets).

    Args:
        num_session_turns: edits in the session (frames - 1).
        has_masks: whether the session has RoE masks (otherwise the masks are never in).
        config: the sequence configuration.
        generator: numpy generator; the same state gives the same plan (resumable data order).
        num_turns: edits of the window, drawn by the caller (e.g. one value per batch so that the samples of a
            batch have similar lengths); capped by the session. Default: uniform in ``[min_turns, max_turns]``.
        with_masks: whether the masks are in, drawn by the caller (likewise per batch); ignored for sessions
            without masks. Default: drawn with ``config.mask_probability``.
    """
    if num_session_turns < 1:
        raise ValueError(f"A session needs at least one edit (two frames), got {num_session_turns} edits.")
    max_turns = min(config.max_turns, num_session_turns)
    min_turns = min(config.min_turns, max_turns)
    drawn = int(generator.integers(min_turns, max_turns + 1))
    num_turns = drawn if num_turns is None else max(1, min(int(num_turns), num_session_turns))
    start = int(generator.integers(0, num_session_turns - num_turns + 1))
    masks_drawn = bool(generator.random() < config.mask_probability)
    with_masks = has_masks and (masks_drawn if with_masks is None else bool(with_masks))
    items = session_items(num_turns, with_masks)
    frames = [item for item in items if isinstance(item, Frame)]
    order = {item: i for i, item in enumerate(items)}

    # Targets.
    if config.layout == "full":
        tasks = [t for t in TASKS if config.task_weights[t] > 0 and (with_masks or t == "next_image")]
        weights = np.array([config.task_weights[t] for t in tasks])
        task = tasks[int(generator.choice(len(tasks), p=weights / weights.sum()))]
        last = num_turns - 1
        target = next(
            f for f in frames if frame_task(f) == task and f.turn == (last + 1 if task == "next_image" else last)
        )
        targets = [target]
        protected = {next(f for f in frames if f.kind == IMAGE and f.turn == last)}
    else:
        targets = [
            f for f in frames if config.task_weights[frame_task(f)] > 0 and not (f.kind == IMAGE and f.turn == 0)
        ]
        protected = set()
    protected.add(frames[0])  # I_0: every target keeps some image context

    # Context: every frame before the last target, minus per-turn dropout.
    drop_probability = {
        IMAGE: config.drop_current_frame,
        CURRENT_MASK: config.drop_current_mask,
        NEXT_MASK: config.drop_next_mask,
    }
    last_order = max(order[t] for t in targets)
    context = []
    for frame in frames:
        if order[frame] >= last_order:
            continue
        dropped = bool(generator.random() < drop_probability[frame.kind])
        if frame in protected or not dropped:
            context.append(frame)
    if config.layout == "full":
        context = [f for f in context if f not in targets]
    return SequencePlan(
        start=start,
        num_turns=num_turns,
        with_masks=with_masks,
        items=items,
        context=context,
        targets=targets,
        layout=config.layout,
    )


# =====================================================================================================
#                                  Tensors of one sample
# =====================================================================================================


@dataclass
class SampleTensors:
    """One sample's transformer inputs, regression target and loss weights (``F`` frames, ``L`` text tokens).

    Attributes:
        video: ``(F, h, w, 2C+1)`` packed ``[x, condition, mask]`` per latent pixel.
        timestep: scalar on the 0..1000 scale for the text (and for every frame in the full layout).
        frame_timestep: ``(F,)`` per-frame timesteps on the 0..1000 scale.
        frame_index: ``(F,)`` RoPE temporal index.
        frame_order: ``(F,)`` block-causal order.
        frame_is_noisy: ``(F,)`` bool.
        text: the sample's text (`diffusers_vincie.sequence.session_text`: its instructions, or the unconditional
            text for CFG dropout).
        text_order: ``(L,)`` block-causal order of each text token (turn token included).
        velocity: ``(F, h, w, C)`` regression target (``noise - x0``; zeros where the weight is 0).
        loss_weight: ``(F,)`` loss weight of each frame (0 for context).
    """

    video: torch.Tensor
    timestep: torch.Tensor
    frame_timestep: torch.Tensor
    frame_index: torch.Tensor
    frame_order: torch.Tensor
    frame_is_noisy: torch.Tensor
    text: PackedText
    text_order: torch.Tensor
    velocity: torch.Tensor
    loss_weight: torch.Tensor


def sequence_text(plan: SequencePlan, segments: Sequence[torch.Tensor]) -> tuple[list[Item], PackedText]:
    """The items and text a sample is trained on: its instructions, or, given a single segment for a
    multi-instruction plan, the unconditional branch (CFG dropout, `unconditional_items`), as the pipeline's
    negative pass sees it."""
    if len(segments) == plan.num_prompts:
        return plan.items, session_text(segments, list(range(plan.num_prompts)))
    if len(segments) == 1:
        return unconditional_items(plan.items), session_text(segments, [0])
    raise ValueError(
        f"The plan has {plan.num_prompts} instructions but {len(segments)} text segments were given (give one per "
        "instruction, or one unconditional segment)."
    )


def _stack(latents: dict[Frame, torch.Tensor], frames: Sequence[Frame]) -> torch.Tensor:
    missing = [f for f in frames if f not in latents]
    if missing:
        raise KeyError(f"No encoded latent for frames {missing}; encode every frame of `plan.frames`.")
    return torch.stack([latents[f] for f in frames])


def assemble_full_attention(
    plan: SequencePlan,
    latents: dict[Frame, torch.Tensor],
    segments: Sequence[torch.Tensor],
    t: torch.Tensor,
    noise: torch.Tensor,
    task_weights: dict[str, float],
    frame_index_mode: str = "compact",
) -> SampleTensors:
    """Official full-attention example: every frame noised with one ``t``; target last; loss on the target.

    Args:
        plan: a ``"full"`` plan.
        latents: ``(h, w, C)`` clean latent of every frame of ``plan.frames``.
        segments: per-instruction text embeddings ``(n_i, dim)``.
        t: scalar time in [0, 1] (noise at ``t = 1``).
        noise: ``(F, h, w, C)`` Gaussian noise, one slice per frame of ``plan.frames``.
        task_weights: loss weight of each task.
        frame_index_mode: ``"compact"`` or ``"slots"``.
    """
    frames = plan.frames
    x0 = _stack(latents, frames)  # (F, h, w, C)
    num_targets = len(plan.targets)
    if frames[-num_targets:] != plan.targets or len(plan.context) + num_targets != len(frames):
        raise ValueError("A full-attention plan must be its context followed by its target(s).")
    items, text = sequence_text(plan, segments)
    layout = block_causal_layout(items, text.segment_lengths, plan.context, plan.targets, frame_index_mode)
    x_t = add_noise(x0, noise, t)
    cond = build_condition(x0[: len(plan.context)], num_targets=num_targets)
    n = len(frames)
    weight = torch.zeros(n)
    for i, f in enumerate(frames[-num_targets:], start=n - num_targets):
        weight[i] = task_weights[frame_task(f)]
    timestep = (t * 1000.0).reshape(())
    return SampleTensors(
        video=pack_frames(x_t, cond).view(n, *x0.shape[1:3], -1),
        timestep=timestep,
        frame_timestep=timestep.expand(n).clone(),
        frame_index=torch.cat([layout.context_index, layout.target_index]),
        frame_order=torch.cat([layout.context_order, layout.target_order]),
        frame_is_noisy=torch.zeros(n, dtype=torch.bool),
        text=text,
        text_order=layout.text_order,
        velocity=flow_velocity(x0, noise) * (weight > 0).view(-1, 1, 1, 1),
        loss_weight=weight,
    )


def assemble_block_causal(
    plan: SequencePlan,
    latents: dict[Frame, torch.Tensor],
    segments: Sequence[torch.Tensor],
    t: torch.Tensor,
    noise: torch.Tensor,
    task_weights: dict[str, float],
    frame_index_mode: str = "slots",
) -> SampleTensors:
    """Multi-target block-causal example: clean context at ``t = 0`` followed by one noisy copy per target.

    Args:
        plan: a ``"block_causal"`` plan.
        latents: ``(h, w, C)`` clean latent of every frame of ``plan.frames``.
        segments: per-instruction text embeddings ``(n_i, dim)``.
        t: ``(num_targets,)`` time of each target in [0, 1].
        noise: ``(num_targets, h, w, C)`` Gaussian noise of each target.
        task_weights: loss weight of each task.
        frame_index_mode: ``"compact"`` or ``"slots"``.
    """
    items, text = sequence_text(plan, segments)
    layout = block_causal_layout(items, text.segment_lengths, plan.context, plan.targets, frame_index_mode)
    clean = _stack(latents, plan.context) if plan.context else None
    x0 = _stack(latents, plan.targets)  # (T, h, w, C)
    t = t.reshape(-1)
    if t.shape[0] != len(plan.targets) or noise.shape != x0.shape:
        raise ValueError(
            f"Need one time and one noise slice per target ({len(plan.targets)}); got t {tuple(t.shape)} and noise "
            f"{tuple(noise.shape)} for targets {tuple(x0.shape)}."
        )
    noisy = noisy_target_frames(add_noise(x0, noise, t))
    video = noisy if clean is None else torch.cat([clean_context_frames(clean), noisy])
    num_context = len(plan.context)
    weight = torch.tensor([0.0] * num_context + [task_weights[frame_task(f)] for f in plan.targets])
    velocity = flow_velocity(x0, noise)
    if clean is not None:
        velocity = torch.cat([torch.zeros_like(clean), velocity])
    return SampleTensors(
        video=video,
        timestep=torch.zeros(()),
        frame_timestep=torch.cat([torch.zeros(num_context), t.float() * 1000.0]),
        frame_index=torch.cat([layout.context_index, layout.target_index]),
        frame_order=torch.cat([layout.context_order, layout.target_order]),
        frame_is_noisy=torch.tensor([False] * num_context + [True] * len(plan.targets)),
        text=text,
        text_order=layout.text_order,
        velocity=velocity,
        loss_weight=weight,
    )


@dataclass
class TrainingBatch:
    """A packed batch: model inputs, velocity targets and per-frame loss weights."""

    inputs: VincieSessionBatch
    timestep: torch.Tensor  # (B,)
    velocity: torch.Tensor  # (sum F*h*w, C)
    loss_weight: torch.Tensor  # (sum F,)
    pixels_per_frame: torch.Tensor  # (sum F,) latent pixels of each frame

    def to(self, device) -> "TrainingBatch":
        return TrainingBatch(
            inputs=self.inputs.to(device),
            timestep=self.timestep.to(device),
            velocity=self.velocity.to(device),
            loss_weight=self.loss_weight.to(device),
            pixels_per_frame=self.pixels_per_frame.to(device),
        )


def collate_samples(samples: Sequence[SampleTensors]) -> TrainingBatch:
    """Packs samples (each with its own frame count, size and text length) into one batch without padding."""
    if not samples:
        raise ValueError("`samples` is empty; a batch needs at least one sample.")
    video = torch.cat([s.video.flatten(0, 2) for s in samples])
    video_shapes = torch.tensor([list(s.video.shape[:3]) for s in samples], dtype=torch.long)
    text, text_turn_ids, text_lengths = pack_texts([s.text for s in samples])
    pixels = torch.cat([torch.full((s.video.shape[0],), s.video.shape[1] * s.video.shape[2]) for s in samples])
    inputs = VincieSessionBatch(
        hidden_states=video,
        video_shapes=video_shapes,
        encoder_hidden_states=text,
        text_lengths=text_lengths,
        text_turn_ids=text_turn_ids,
        frame_timestep=torch.cat([s.frame_timestep for s in samples]),
        frame_index=torch.cat([s.frame_index for s in samples]),
        frame_order=torch.cat([s.frame_order for s in samples]),
        text_order=torch.cat([s.text_order for s in samples]),
        frame_is_noisy=torch.cat([s.frame_is_noisy for s in samples]),
    )
    return TrainingBatch(
        inputs=inputs,
        timestep=torch.stack([s.timestep for s in samples]),
        velocity=torch.cat([s.velocity.flatten(0, 2) for s in samples]),
        loss_weight=torch.cat([s.loss_weight for s in samples]),
        pixels_per_frame=pixels,
    )


__all__ = [
    "FRAME_INDEX_MODES",
    "LAYOUTS",
    "TASKS",
    "SampleTensors",
    "SequenceConfig",
    "SequencePlan",
    "TrainingBatch",
    "assemble_block_causal",
    "assemble_full_attention",
    "collate_samples",
    "frame_task",
    "plan_sequence",
    "sequence_text",
]
