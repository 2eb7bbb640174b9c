"""Scoring a predicted edit of a shapes-world session against its exact ground truth (ShapesBench's check).

:func:`score_edit` says whether a predicted image follows one turn's instruction: the changed region is where the
truth changed (IoU), the right colour and shape are in the edited object's cell, and the rest is preserved.
:func:`score_composition` scores the composed scene of a composition session, :func:`score_camera_turn` a turn of
a story (camera pans only), and :func:`degenerate_output` flags an output that is near-black or one flat colour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from .world import _DIRECTIONS, BACKGROUNDS, COLOURS, SceneObject, ShapesSession, ShapesWorld, changed_pixels

__all__ = [
    "EDIT_TESTS",
    "NEAR_BLACK_BRIGHTNESS",
    "CameraTurnScore",
    "CompositionScore",
    "EditScore",
    "degenerate_output",
    "score_camera_turn",
    "score_composition",
    "score_edit",
]


# =====================================================================================================
# Scoring an edit (ShapesBench)
# =====================================================================================================

# The three tests an edit must pass, in the order EditScore.failed lists the ones it misses.
EDIT_TESTS: tuple[str, ...] = ("changed_region", "object", "preserved")


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
        failed: the tests of :data:`EDIT_TESTS` the prediction misses (``"changed_region"``: ``changed_iou``,
            ``"object"``: ``object_score``, ``"preserved"``: ``preserved`` below its threshold); empty on success.
    """

    op: str
    uses_history: bool
    changed_iou: float
    object_score: float
    preserved: float
    success: bool
    failed: tuple[str, ...]


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
    pred = _check_prediction(pred_rgb, target)
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
        object_score = _object_colour_iou(world, edit.after, session.states[turn + 1].camera, pred, target)
    elif edit.before is not None:
        footprint = session.source_masks[turn]
        object_score = float(matches[footprint].mean()) if footprint.any() else 1.0
    else:
        object_score = float(matches.mean())
    passed = (changed_iou >= iou_threshold, object_score >= iou_threshold, preserved >= preserve_threshold)
    failed = tuple(test for test, ok in zip(EDIT_TESTS, passed) if not ok)
    return EditScore(
        edit.op, edit.uses_history, float(changed_iou), float(object_score), preserved, not failed, failed
    )


def _object_colour_iou(
    world: ShapesWorld, obj: SceneObject, camera: tuple[int, int], pred: np.ndarray, target: np.ndarray
) -> float:
    """IoU, in the object's cell (slightly enlarged), of the pixels whose nearest palette colour is the object's
    colour in the prediction and in the truth: the right colour and shape at the right place."""
    background_colours = [colour for name in world.backgrounds for colour in BACKGROUNDS[name][:2]]
    palette = np.array([COLOURS[c] for c in world.colours] + background_colours, dtype=np.int32)  # (K, 3)
    colour_index = world.colours.index(obj.colour)
    window = _cell_window(world, obj, camera, target.shape[0])

    def is_object_colour(image: np.ndarray) -> np.ndarray:
        pixels = image[window].astype(np.int32)
        distances = ((pixels[..., None, :] - palette) ** 2).sum(-1)
        return distances.argmin(-1) == colour_index

    return _iou(is_object_colour(pred), is_object_colour(target))


def _cell_window(world: ShapesWorld, obj: SceneObject, camera: tuple[int, int], resolution: int) -> tuple:
    """Slices of the object's cell seen through the camera, enlarged by one pixel and clipped to the frame."""
    x0 = int(math.floor(obj.col * world.cell + camera[0])) - 1
    y0 = int(math.floor(obj.row * world.cell + camera[1])) - 1
    x1 = int(math.ceil((obj.col + 1) * world.cell + camera[0])) + 1
    y1 = int(math.ceil((obj.row + 1) * world.cell + camera[1])) + 1
    return slice(max(0, y0), min(resolution, y1)), slice(max(0, x0), min(resolution, x1))


def _check_prediction(pred_rgb: np.ndarray, target: np.ndarray) -> np.ndarray:
    pred = np.asarray(pred_rgb)
    if pred.dtype != np.uint8 or pred.shape != target.shape:
        raise ValueError(
            f"pred_rgb: expected a uint8 array of shape {target.shape}, got {pred.dtype} {pred.shape}; resize the "
            "prediction to the session resolution and convert with `np.asarray(image.convert('RGB'))`."
        )
    return pred


# =====================================================================================================
# Scoring a composed scene
# =====================================================================================================


@dataclass
class CompositionScore:
    """Success of a composed scene (the last frame of a composition session) against the truth.

    Attributes:
        num_objects: objects the scene composes.
        object_scores: per object, in the order they were introduced: the colour-and-shape IoU in its cell (as
            :class:`EditScore`'s ``object_score``).
        objects_found: fraction of the objects whose score reaches the IoU threshold.
        background: fraction of the pixels outside every true object within tolerance of the scene drawn on a
            background the session could have drawn (nothing else drawn), the best of those backgrounds.
        success: every object found and ``background >= preserve_threshold``.
    """

    num_objects: int
    object_scores: list[float]
    objects_found: float
    background: float
    success: bool


def score_composition(
    pred_rgb: np.ndarray,
    session: ShapesSession,
    world: ShapesWorld | None = None,
    tolerance: int = 32,
    iou_threshold: float = 0.5,
    preserve_threshold: float = 0.95,
) -> CompositionScore:
    """Scores a predicted composed scene against the last frame of a composition session (see
    :func:`~.shots.sample_composition_session`): every object at its cell with its colour and shape, and the
    rest of the frame a clean background.

    The compose instruction names no background: the session draws the composed scene's at random among the
    world's backgrounds other than the last reference shot's (a shot change is a cut). So any of those counts,
    and the frame is scored against the scene drawn on the one it matches best; requiring the drawn one would
    score a right answer as a coin toss.

    Args:
        pred_rgb: uint8 ``(H, W, 3)`` prediction at the session's resolution.
        session: the composition session (its last state is the composed scene).
        world: the world that sampled the session (default: ``session.world``).
        tolerance: per-channel tolerance (0-255) for "matches".
        iou_threshold: minimum colour-and-shape IoU of each object.
        preserve_threshold: minimum fraction of background pixels that match.
    """
    world = world or session.world
    if world is None:
        raise ValueError("world: the session carries no world; pass the ShapesWorld that sampled it.")
    if not session.edits or session.edits[-1].op != "compose":
        raise ValueError("session: not a composition session (its last transition must be a 'compose' shot).")
    target = session.frames[-1]
    pred = _check_prediction(pred_rgb, target)
    scene = session.states[-1]
    resolution = target.shape[0]
    object_scores = [_object_colour_iou(world, obj, scene.camera, pred, target) for obj in scene.objects]
    objects = np.zeros(target.shape[:2], dtype=bool)
    for obj in scene.objects:
        objects |= world.footprint(obj, scene.camera, resolution)
    last_shot = session.states[-2].background
    background = max(
        float(_close(pred, world.render(replace(scene, background=name), resolution), tolerance)[~objects].mean())
        for name in world.backgrounds
        if name != last_shot
    )
    found = [score >= iou_threshold for score in object_scores]
    return CompositionScore(
        num_objects=len(scene.objects),
        object_scores=[float(score) for score in object_scores],
        objects_found=float(np.mean(found)),
        background=background,
        success=bool(all(found) and background >= preserve_threshold),
    )


# =====================================================================================================
# Scoring a camera pan (story)
# =====================================================================================================


@dataclass
class CameraTurnScore:
    """One turn of a story (a camera pan), judged from the input the model was given.

    Attributes:
        direction: the asked pan (``"left"``, ``"right"``, ``"up"``, ``"down"``).
        input_offset: ``(dx, dy)`` in pan steps from the true current camera to the camera the input shows (the
            one whose rendering of the story's scene is closest to it); ``(0, 0)`` while a chain is on track.
        preserved: fraction of the pixels that the asked pan leaves unchanged (seen from the input's camera) that
            the prediction keeps, within tolerance: consistency across frames.
        closest: the candidate the prediction is closest to: a pan direction, or ``"none"`` (no pan).
        camera_change: whether the asked pan was made: the prediction is strictly closer to the scene seen from
            the input's camera moved one step in the asked direction than to it unmoved or moved any other way.
    """

    direction: str
    input_offset: tuple[int, int]
    preserved: float
    closest: str
    camera_change: bool


def score_camera_turn(
    pred_rgb: np.ndarray,
    session: ShapesSession,
    turn: int,
    world: ShapesWorld | None = None,
    source_rgb: np.ndarray | None = None,
    tolerance: int = 32,
) -> CameraTurnScore:
    """Scores a predicted frame for pan ``turn`` (``frames[turn] -> frames[turn + 1]``) of a story session.

    A story's scene never changes, only its camera, so every frame is the scene rendered from some camera. The
    input's camera is the whole number of pan steps from the true current camera (up to ``2 * turn`` steps on each
    axis, the most a chain of ``turn`` pans can drift) whose rendering is closest to the input; with the true
    input it is the true camera. The candidates are the scene seen from that camera unmoved (``"none"``) and moved
    one pan step in each of the four directions; with the true input the asked one is the true next frame. The
    distance to an image is the number of pixels differing from it by more than ``tolerance`` in some channel; the
    pan counts as made when the asked direction's candidate is strictly the closest.

    Args:
        pred_rgb: uint8 ``(H, W, 3)`` prediction at the session's resolution.
        session: the story session.
        turn: transition index in ``[0, num_turns)``; that transition must be a pan.
        world: the world that sampled the session (default: ``session.world``).
        source_rgb: the image the model edited (default: the true ``frames[turn]``; pass the model's previous
            output when turns are chained).
        tolerance: per-channel tolerance (0-255) for "matches".
    """
    world = world or session.world
    if world is None:
        raise ValueError("world: the session carries no world; pass the ShapesWorld that sampled it.")
    if not 0 <= turn < session.num_turns:
        raise ValueError(f"turn: must lie in [0, {session.num_turns}), got {turn}.")
    edit = session.edits[turn]
    if edit.op != "pan":
        raise ValueError(f"session: transition {turn} is {edit.op!r}, not a camera pan.")
    target = session.frames[turn + 1]
    pred = _check_prediction(pred_rgb, target)
    source = session.frames[turn] if source_rgb is None else np.asarray(source_rgb)
    if source.shape != target.shape:
        raise ValueError(f"source_rgb: expected shape {target.shape}, got {source.shape}.")
    state, resolution, step = session.states[turn], target.shape[0], world.pan_step

    def seen(offset: tuple[int, int]) -> np.ndarray:
        camera = (state.camera[0] + offset[0] * step, state.camera[1] + offset[1] * step)
        return world.render(replace(state, camera=camera), resolution)

    def distance(image: np.ndarray, offset: tuple[int, int]) -> int:
        return int(np.count_nonzero(~_close(image, seen(offset), tolerance)))

    reach = range(-2 * turn, 2 * turn + 1)
    # Nearest offsets first, so that a tie goes to the camera closest to the true one.
    offsets = sorted(((dx, dy) for dx in reach for dy in reach), key=lambda o: (abs(o[0]) + abs(o[1]), o))
    input_offset = min(offsets, key=lambda offset: distance(source, offset))
    # The content moves opposite to the camera: a pan with (d_row, d_col) moves the camera by (-d_col, -d_row).
    moves = {"none": (0, 0), **{name: (-d_col, -d_row) for name, (d_row, d_col) in _DIRECTIONS.items()}}
    candidates = {name: (input_offset[0] + dx, input_offset[1] + dy) for name, (dx, dy) in moves.items()}
    distances = {name: distance(pred, offset) for name, offset in candidates.items()}
    asked = edit.camera_motion.removeprefix("pan ")
    closest = min(distances, key=distances.get)
    others = [value for name, value in distances.items() if name != asked]
    expected = seen(candidates[asked])
    unchanged = ~changed_pixels(seen(input_offset), expected)
    preserved = float(_close(pred, expected, tolerance)[unchanged].mean()) if unchanged.any() else 1.0
    return CameraTurnScore(asked, input_offset, preserved, closest, bool(distances[asked] < min(others)))


# =====================================================================================================
# Degenerate outputs
# =====================================================================================================

# Mean brightness (0-255, over all pixels and channels) below which an output counts as near-black.
NEAR_BLACK_BRIGHTNESS = 10.0


def degenerate_output(image: np.ndarray) -> str | None:
    """``"near_black"`` when an output's mean brightness is below :data:`NEAR_BLACK_BRIGHTNESS`, ``"constant"``
    when every pixel has the same colour, else ``None``. ``image``: uint8 ``(H, W, 3)``."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image: expected a uint8 (H, W, 3) array, got {image.dtype} {image.shape}.")
    if image.mean() < NEAR_BLACK_BRIGHTNESS:
        return "near_black"
    if (image == image[:1, :1]).all():
        return "constant"
    return None
