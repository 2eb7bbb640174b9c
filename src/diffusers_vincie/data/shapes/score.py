"""Scoring a predicted edit of a shapes-world session against its exact ground truth (ShapesBench's check).

:func:`score_edit` says whether a predicted image follows one turn's instruction: the changed region is where the
truth changed (IoU), the right colour and shape are in the edited object's cell, and the rest is preserved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .world import BACKGROUNDS, COLOURS, SceneObject, ShapesSession, ShapesWorld

__all__ = ["EditScore", "score_edit"]


# =====================================================================================================
# Scoring an edit (ShapesBench)
# =====================================================================================================


@dataclass
class EditScore:
    """Success of one predicted turn against the ground truth.

    Attributes:
        op: the op kind of the turn.
        uses_history: whether the instruction needs earlier turns (``"bring_back"``, ``"revert_colour"``).
        changed_iou: IoU of the predicted changed region (pixels differing from the source by more than the
            tolerance) with the true changed region (1 when both are empty).
        object_score: for ops that leave an object: IoU, in the object's cell, of the pixels whose nearest palette
            colour is the object's colour in the prediction and in the truth (right colour and shape there); for
            "remove": fraction of the removed object's pixels that match the true target; for a pan: fraction of
            all pixels that match the true target.
        preserved: fraction of the pixels outside the true changed region within tolerance of the truth.
        success: ``changed_iou >= iou_threshold and object_score >= iou_threshold and preserved >=
            preserve_threshold``.
    """

    op: str
    uses_history: bool
    changed_iou: float
    object_score: float
    preserved: float
    success: bool


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def _close(a: np.ndarray, b: np.ndarray, tolerance: int) -> np.ndarray:
    """Bool ``(H, W)``: every channel within ``tolerance``."""
    return (np.abs(a.astype(np.int16) - b.astype(np.int16)) <= tolerance).all(axis=-1)


def score_edit(
    pred_rgb: np.ndarray,
    session: ShapesSession,
    turn: int,
    world: ShapesWorld | None = None,
    source_rgb: np.ndarray | None = None,
    tolerance: int = 32,
    iou_threshold: float = 0.5,
    preserve_threshold: float = 0.95,
) -> EditScore:
    """Scores a predicted image for transition ``turn`` (``frames[turn] -> frames[turn + 1]``) of a session.

    Args:
        pred_rgb: uint8 ``(H, W, 3)`` prediction at the session's resolution.
        session: the ground-truth session.
        turn: transition index in ``[0, num_turns)``.
        world: the world that sampled the session (default: ``session.world``).
        source_rgb: the image the model edited (default: the true ``frames[turn]``; pass the model's previous
            output when turns are chained).
        tolerance: per-channel tolerance (0-255) for "unchanged" and "matches".
        iou_threshold: minimum changed-region IoU and object score for success.
        preserve_threshold: minimum preserved fraction for success.
    """
    world = world or session.world
    if world is None:
        raise ValueError("world: the session carries no world; pass the ShapesWorld that sampled it.")
    if not 0 <= turn < session.num_turns:
        raise ValueError(f"turn: must lie in [0, {session.num_turns}), got {turn}.")
    target = session.frames[turn + 1]
    source = session.frames[turn] if source_rgb is None else np.asarray(source_rgb)
    pred = np.asarray(pred_rgb)
    if pred.dtype != np.uint8 or pred.shape != target.shape:
        raise ValueError(
            f"pred_rgb: expected a uint8 array of shape {target.shape}, got {pred.dtype} {pred.shape}; resize the "
            "prediction to the session resolution and convert with `np.asarray(image.convert('RGB'))`."
        )
    if source.shape != target.shape:
        raise ValueError(f"source_rgb: expected shape {target.shape}, got {source.shape}.")

    true_changed = session.changed_masks[turn]
    pred_changed = ~_close(pred, source, tolerance)
    changed_iou = _iou(pred_changed, true_changed)
    preserved_region = ~true_changed
    matches = _close(pred, target, tolerance)
    preserved = float(matches[preserved_region].mean()) if preserved_region.any() else 1.0

    edit = session.edits[turn]
    if edit.after is not None:
        # Nearest palette colour of each pixel, compared in the cell of the object (slightly enlarged).
        background_colours = [colour for name in world.backgrounds for colour in BACKGROUNDS[name][:2]]
        palette = np.array([COLOURS[c] for c in world.colours] + background_colours, dtype=np.int32)  # (K, 3)
        colour_index = world.colours.index(edit.after.colour)
        window = _cell_window(world, edit.after, session.states[turn + 1].camera, target.shape[0])

        def is_object_colour(image: np.ndarray) -> np.ndarray:
            pixels = image[window].astype(np.int32)
            distances = ((pixels[..., None, :] - palette) ** 2).sum(-1)
            return distances.argmin(-1) == colour_index

        object_score = _iou(is_object_colour(pred), is_object_colour(target))
    elif edit.before is not None:
        footprint = session.source_masks[turn]
        object_score = float(matches[footprint].mean()) if footprint.any() else 1.0
    else:
        object_score = float(matches.mean())
    success = changed_iou >= iou_threshold and object_score >= iou_threshold and preserved >= preserve_threshold
    return EditScore(edit.op, edit.uses_history, float(changed_iou), float(object_score), preserved, bool(success))


def _cell_window(world: ShapesWorld, obj: SceneObject, camera: tuple[int, int], resolution: int) -> tuple:
    """Slices of the object's cell seen through the camera, enlarged by one pixel and clipped to the frame."""
    x0 = int(math.floor(obj.col * world.cell + camera[0])) - 1
    y0 = int(math.floor(obj.row * world.cell + camera[1])) - 1
    x1 = int(math.ceil((obj.col + 1) * world.cell + camera[0])) + 1
    y1 = int(math.ceil((obj.row + 1) * world.cell + camera[1])) + 1
    return slice(max(0, y0), min(resolution, y1)), slice(max(0, x0), min(resolution, x1))
