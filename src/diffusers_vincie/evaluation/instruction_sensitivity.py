"""Instruction sensitivity: does an editor's output depend on the instruction, or only on the image and the noise?

Same source image, same noise seed, one word of the instruction swapped (a colour word, a shape word, or the op):
the fraction of pixels whose value changes by more than ``threshold`` levels (any channel), next to the same
fraction for the *same* instruction under another noise seed. A model that reads its instruction changes at
least the edited object (a few % of a 32x32 frame) when the colour word changes; a text-blind one changes
nothing, whatever the word, while another seed still changes its output. It is the earliest signal that a small
model starts to read the text (success on ShapesBench stays at 0 until this moves) and costs ~5 edits per session.

Sessions come from the synthetic world with seeds from :data:`SENSITIVITY_SEED` (20,000,000), disjoint from
training (``0 .. 999,999``) and from ShapesBench (10,000,000 + i).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch

SENSITIVITY_SEED = 20_000_000
SWAPS: tuple[str, ...] = ("colour", "shape", "op")


def swap_word(instruction: str, choices: Sequence[str]) -> str | None:
    """``instruction`` with its first word from ``choices`` replaced by the next choice not already in it
    (cyclically); ``None`` when it has no such word."""
    words = instruction.split()
    choices = list(choices)
    for position, word in enumerate(words):
        if word in choices:
            start = choices.index(word)
            for other in choices[start + 1 :] + choices[:start]:
                if other not in words:
                    words[position] = other
                    return " ".join(words)
            return None
    return None


def swap_op(instruction: str, colours: Sequence[str], shapes: Sequence[str]) -> str | None:
    """Another op on the instruction's object: ``"remove the <colour> <shape>"`` (``"make the <colour> <shape>
    bigger"`` when the op already is remove); ``None`` for an instruction without an object (a pan)."""
    words = instruction.split()
    colour = next((w for w in words if w in colours), None)
    shape = next((w for w in words if w in shapes), None)
    if colour is None or shape is None:
        return None
    if words[0] == "remove":
        return f"make the {colour} {shape} bigger"
    return f"remove the {colour} {shape}"


def changed_fraction(a: np.ndarray, b: np.ndarray, threshold: int = 32) -> float:
    """Fraction of pixels of two ``(H, W, 3)`` uint8 images differing by more than ``threshold`` in any channel."""
    if a.shape != b.shape:
        raise ValueError(f"Images differ in shape: {a.shape} vs {b.shape}.")
    return float((np.abs(a.astype(np.int16) - b.astype(np.int16)).max(-1) > threshold).mean())


def sensitivity_sessions(
    num_sessions: int = 20, seed: int = SENSITIVITY_SEED, num_turns: int = 1, **world_kwargs: Any
) -> list:
    """Held-out synthetic sessions (session ``i`` has seed ``seed + i``) of the world ``world_kwargs`` describes."""
    from ..data.shapes.world import ShapesWorld

    if num_sessions < 1:
        raise ValueError(f"`num_sessions` must be >= 1, got {num_sessions}.")
    world = ShapesWorld(**world_kwargs)
    return [world.sample_session(seed + i, num_turns=num_turns) for i in range(num_sessions)]


def _edit(pipe, image: np.ndarray, instruction: str, seed: int, sampling: dict) -> np.ndarray:
    generator = torch.Generator().manual_seed(seed)
    session = pipe.start_session(PIL.Image.fromarray(image), resolution=image.shape[0], generator=generator)
    return np.asarray(session.edit(instruction, generator=generator, **sampling).convert("RGB"))


def instruction_sensitivity(
    pipe,
    sessions: Sequence,
    colours: Sequence[str],
    shapes: Sequence[str],
    sampling: dict | None = None,
    threshold: int = 32,
    seed: int = 0,
) -> dict[str, Any]:
    """Mean changed-pixel fraction per swap (:data:`SWAPS`) and for a noise-seed swap, over the first turn of
    each session (source ``frames[0]``, instruction ``instructions[0]``).

    Args:
        pipe: a pixel-space ``VincieInContextPipeline`` (or anything with its ``start_session`` / ``edit``).
        sessions: synthetic sessions (:func:`sensitivity_sessions`).
        colours, shapes: the world's colour and shape words (what a swap draws from).
        sampling: ``edit`` keywords (default 10 steps, no CFG).
        threshold: per-channel change (0..255) that counts a pixel as changed.
        seed: noise seed of the reference edits (the noise swap uses ``seed + 1``).

    Returns:
        ``{"colour": f, "shape": f, "op": f, "noise": f, "counts": {swap: sessions it applied to}}`` with each
        ``f`` in [0, 1] (``nan`` when no session had that kind of word).
    """
    if not sessions:
        raise ValueError("`sessions` is empty; give at least one session (sensitivity_sessions()).")
    sampling = dict(sampling or {"num_inference_steps": 10, "guidance_scale": 1.0})
    fractions: dict[str, list[float]] = {name: [] for name in (*SWAPS, "noise")}
    for session in sessions:
        image, instruction = session.frames[0], session.instructions[0]
        reference = _edit(pipe, image, instruction, seed, sampling)
        fractions["noise"].append(
            changed_fraction(reference, _edit(pipe, image, instruction, seed + 1, sampling), threshold)
        )
        swapped = {
            "colour": swap_word(instruction, colours),
            "shape": swap_word(instruction, shapes),
            "op": swap_op(instruction, colours, shapes),
        }
        for name, other in swapped.items():
            if other is not None:
                fractions[name].append(
                    changed_fraction(reference, _edit(pipe, image, other, seed, sampling), threshold)
                )
    result: dict[str, Any] = {
        name: float(np.mean(values)) if values else float("nan") for name, values in fractions.items()
    }
    result["counts"] = {name: len(values) for name, values in fractions.items()}
    return result


__all__ = [
    "SENSITIVITY_SEED",
    "SWAPS",
    "changed_fraction",
    "instruction_sensitivity",
    "sensitivity_sessions",
    "swap_op",
    "swap_word",
]
