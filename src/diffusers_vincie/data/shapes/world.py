"""The shapes world: scenes, edit ops and exactly known editing sessions ("VINCIE-Shapes").

A scene is a background plus a few objects (circle / square / triangle, a size, a colour from a small palette)
placed one per cell of a ``grid x grid`` lattice, seen through a camera that can pan by a few pixels. A session
starts from a random scene and applies ``num_turns`` edits, each with a templated instruction over a small fixed
vocabulary: add, remove, move (one cell), recolour, resize, camera pan, and two edits that need the history of
the session, not only the last frame: "bring back the red circle" (restores a removed object where it was) and
"make the blue square the colour it was before" (undoes a recolour).

Because every pixel is rendered from the scene state with hard edges (a pixel is inside a shape when its centre
is), everything is exact: the frames, the region of editing (RoE) of each transition in its source and target
frame (the pixels of the edited object before and after), the changed-pixel mask, and the object attributes
that :func:`~diffusers_vincie.data.shapes.score.score_edit` checks a model's output against.

Uses:
- training on the fly: :meth:`ShapesWorld.sample_session` (about 0.3-0.5 ms per 32x32 six-frame session on
  the project's 2-core CPU);
- real videos with ground truth for the video -> sessions build pipeline: :mod:`.video` writes an mp4 of a
  session (smooth motion between held key states) plus a JSON sidecar;
- benchmarks: :mod:`.score` (changed-region IoU, right colour and shape, preservation of the rest).

This module needs only numpy (no ``datasets``, no ``av``), so training on the fly and demos run without the
``data`` extra.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np

from ..schema import STATIC_CAMERA, SessionRecord

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "OP_KINDS",
    "HISTORY_OPS",
    "SHAPES",
    "Edit",
    "SceneObject",
    "SceneState",
    "ShapesSession",
    "ShapesWorld",
]

# =====================================================================================================
# Vocabulary of the world
# =====================================================================================================

# Named colours of objects. Chosen far apart in RGB and far from every background colour, so that each pixel
# classifies exactly into the palette.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 230),
    "yellow": (245, 215, 20),
    "purple": (150, 40, 200),
    "orange": (250, 130, 10),
    "cyan": (20, 210, 220),
    "pink": (250, 120, 190),
}

_COLOUR_ARRAYS = {name: np.array(rgb, dtype=np.uint8) for name, rgb in COLOURS.items()}

# Backgrounds: (top-or-left colour, bottom-or-right colour, split direction). Plain backgrounds use one colour.
BACKGROUNDS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int], str]] = {
    "light": ((205, 205, 205), (205, 205, 205), "none"),
    "dark": ((55, 55, 60), (55, 55, 60), "none"),
    "two_tone": ((190, 185, 160), (110, 110, 120), "horizontal"),
    "split": ((150, 150, 150), (225, 225, 220), "vertical"),
}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

# Op kinds, in the order used by configuration dicts. The history ops need an earlier turn of the session.
OP_KINDS: tuple[str, ...] = ("add", "remove", "move", "recolour", "resize", "bring_back", "revert_colour", "pan")
HISTORY_OPS: frozenset[str] = frozenset({"bring_back", "revert_colour"})

_DEFAULT_OP_WEIGHTS = {
    "add": 1.0,
    "remove": 1.0,
    "move": 1.0,
    "recolour": 1.0,
    "resize": 1.0,
    "bring_back": 2.0,
    "revert_colour": 2.0,
    "pan": 0.0,
}

# (d_row, d_col) of a one-cell move; for a pan, the direction the camera moves (the content moves opposite).
_DIRECTIONS: dict[str, tuple[int, int]] = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
_ROW_WORDS = {2: ("top", "bottom"), 3: ("top", "middle", "bottom")}
_COL_WORDS = {2: ("left", "right"), 3: ("left", "center", "right")}

# Shape geometry, in units of the object radius (see _rasterize).
_SQUARE_HALF_SIDE = 0.85
_TRIANGLE_BASE = 0.8  # base line at cy + 0.8 r, apex at cy - r, half base width r


# =====================================================================================================
# Scene state
# =====================================================================================================


@dataclass(frozen=True)
class SceneObject:
    """One object of a scene. ``previous_colours`` is the stack of colours it had before each recolour."""

    id: int
    shape: str
    colour: str
    size: str
    row: int
    col: int
    previous_colours: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """How instructions refer to the object: ``"<colour> <shape>"`` (unique within a scene)."""
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class SceneState:
    """A full scene: background, objects (at most one per cell), camera offset in world pixels, and the objects
    removed earlier in the session (most recent last), which "bring back" can restore."""

    background: str
    objects: tuple[SceneObject, ...]
    camera: tuple[int, int] = (0, 0)  # (dx, dy) added to every position, in pixels of the world resolution
    removed: tuple[SceneObject, ...] = ()

    def find(self, colour: str, shape: str) -> SceneObject | None:
        for obj in self.objects:
            if obj.colour == colour and obj.shape == shape:
                return obj
        return None

    def occupied(self) -> set[tuple[int, int]]:
        return {(obj.row, obj.col) for obj in self.objects}


class _StateView:
    """Lookups of a state that op sampling needs several times: occupied cells, present (colour, shape) pairs,
    objects per shape."""

    __slots__ = ("state", "occupied", "present", "shape_counts")

    def __init__(self, state: SceneState) -> None:
        self.state = state
        self.occupied = {(obj.row, obj.col) for obj in state.objects}
        self.present = {(obj.colour, obj.shape) for obj in state.objects}
        self.shape_counts: dict[str, int] = {}
        for obj in state.objects:
            self.shape_counts[obj.shape] = self.shape_counts.get(obj.shape, 0) + 1


@dataclass(frozen=True)
class Edit:
    """One transition: its op kind, instruction, the edited object before and after (``None`` when absent;
    both ``None`` for a camera pan) and the camera motion."""

    op: str
    instruction: str
    before: SceneObject | None
    after: SceneObject | None
    camera_motion: str = STATIC_CAMERA

    @property
    def uses_history(self) -> bool:
        """True when the instruction can only be followed with earlier turns of the session."""
        return self.op in HISTORY_OPS


# =====================================================================================================
# Session
# =====================================================================================================


@dataclass
class ShapesSession:
    """A sampled session with exact ground truth (``T`` = ``num_turns``, frames are ``T + 1``).

    Attributes:
        frames: ``T + 1`` uint8 arrays ``(H, W, 3)``.
        instructions: ``T`` strings; ``instructions[t]`` turns ``frames[t]`` into ``frames[t + 1]``.
        edits: ``T`` :class:`Edit` (op kind, object before/after, camera motion).
        source_masks: ``T`` bool ``(H, W)``: the edited object's pixels in ``frames[t]`` (empty for "add" ops;
            every object's pixels for a camera pan).
        target_masks: ``T`` bool ``(H, W)``: the edited object's pixels in ``frames[t + 1]`` (empty for
            "remove").
        changed_masks: ``T`` bool ``(H, W)``: pixels where ``frames[t]`` and ``frames[t + 1]`` differ.
        states: ``T + 1`` :class:`SceneState`, to re-render at any resolution.
        seed: the integer seed the session was drawn with (``None`` when drawn from a caller's generator).
        world: the world that drew the session (palette and geometry for :func:`score_edit`).
    """

    frames: list[np.ndarray]
    instructions: list[str]
    edits: list[Edit]
    source_masks: list[np.ndarray]
    target_masks: list[np.ndarray]
    changed_masks: list[np.ndarray]
    states: list[SceneState]
    seed: int | None = None
    world: "ShapesWorld | None" = field(default=None, repr=False)

    @property
    def num_turns(self) -> int:
        return len(self.instructions)

    @property
    def ops(self) -> list[str]:
        return [edit.op for edit in self.edits]

    @property
    def camera_motion(self) -> list[str]:
        return [edit.camera_motion for edit in self.edits]

    def to_record(self, session_id: str | None = None, video_id: str | None = None) -> SessionRecord:
        """Returns the session as a :class:`~diffusers_vincie.data.schema.SessionRecord` (ground-truth annotator).

        Args:
            session_id: defaults to ``"<video_id>/0"``.
            video_id: defaults to ``"synthetic-<seed>"``; required when the session was drawn from a generator
                (no seed), so that ids stay unique.
        """
        if video_id is None:
            if self.seed is None:
                raise ValueError("video_id: this session was drawn from a generator (no seed); pass a unique id.")
            video_id = f"synthetic-{self.seed}"
        return SessionRecord(
            session_id=session_id or f"{video_id}/0",
            video_id=video_id,
            frames=self.frames,
            instructions=self.instructions,
            source_masks=self.source_masks,
            target_masks=self.target_masks,
            camera_motion=self.camera_motion,
            annotator={"name": "ground_truth", "world": "synthetic-shapes", "ops": self.ops, "seed": self.seed},
        )


# =====================================================================================================
# Rasterization
# =====================================================================================================


def _rasterize(shape: str, cx: float, cy: float, radius: float, height: int, width: int) -> np.ndarray:
    """Bool ``(height, width)`` mask of the pixels whose centre lies inside the shape (centre and radius in px)."""
    mask = np.zeros((height, width), dtype=bool)
    if radius <= 0:
        return mask
    # Only the bounding box is evaluated; it is clipped to the frame.
    y0, y1 = max(0, int(math.floor(cy - radius))), min(height, int(math.ceil(cy + radius)) + 1)
    x0, x1 = max(0, int(math.floor(cx - radius))), min(width, int(math.ceil(cx + radius)) + 1)
    if y0 >= y1 or x0 >= x1:
        return mask
    ys = np.arange(y0, y1, dtype=np.float64)[:, None] + 0.5 - cy  # (h, 1), relative to the centre
    xs = np.arange(x0, x1, dtype=np.float64)[None, :] + 0.5 - cx  # (1, w)
    if shape == "circle":
        inside = xs * xs + ys * ys <= radius * radius
    elif shape == "square":
        half = _SQUARE_HALF_SIDE * radius
        inside = (np.abs(xs) <= half) & (np.abs(ys) <= half)
    elif shape == "triangle":
        # Apex at (0, -r), base from (-r, b) to (r, b): |x| <= r * (y + r) / (b + r) for -r <= y <= b.
        base = _TRIANGLE_BASE * radius
        inside = (ys >= -radius) & (ys <= base) & (np.abs(xs) <= radius * (ys + radius) / (base + radius))
    else:
        raise ValueError(f"shape: unknown shape {shape!r}; expected one of {SHAPES}.")
    mask[y0:y1, x0:x1] = inside
    return mask


def changed_pixels(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bool ``(H, W)``: pixels where two ``(H, W, 3)`` images differ (OR of channels; faster than ``any(-1)``)."""
    differs = a != b
    return differs[..., 0] | differs[..., 1] | differs[..., 2]


def _background(name: str, camera: tuple[float, float], height: int, width: int, scale: float) -> np.ndarray:
    """uint8 ``(height, width, 3)`` background; a two-tone split line moves with the camera."""
    first, second, split = BACKGROUNDS[name]
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = first
    if split == "horizontal":
        line = int(round(height / 2 + camera[1] * scale))
        image[max(0, line) :] = second
    elif split == "vertical":
        line = int(round(width / 2 + camera[0] * scale))
        image[:, max(0, line) :] = second
    return image


# =====================================================================================================
# The world
# =====================================================================================================


class ShapesWorld:
    """Samples editing sessions of simple shapes with exact ground truth.

    Args:
        resolution: side of the square frames in pixels (the world resolution).
        grid: cells per side (2 or 3); objects sit one per cell.
        shapes: shape names, a subset of :data:`SHAPES`.
        colours: colour names, a subset of :data:`COLOURS` (at least 2).
        sizes: size name -> radius as a fraction of the cell side (< 0.5 so objects stay in their cell),
            from smallest to largest.
        backgrounds: background names, a subset of :data:`BACKGROUNDS`.
        min_objects: fewest objects in a scene (also the floor for "remove").
        max_objects: most objects in a scene.
        op_weights: relative frequency of each op kind of :data:`OP_KINDS` (missing kinds keep their default;
            ``"pan"`` is 0 by default: set it > 0 to get camera pans). An op is drawn among those valid in the
            current state, so history ops appear only when the history allows them.
        pan_step: camera move of one pan, in pixels (default: a fifth of a cell).
        max_pan_steps: the camera stays within this many steps of its start on each axis.
    """

    def __init__(
        self,
        resolution: int = 32,
        grid: int = 3,
        shapes: Sequence[str] = SHAPES,
        colours: Sequence[str] = ("red", "green", "blue", "yellow", "purple"),
        sizes: dict[str, float] | None = None,
        backgrounds: Sequence[str] = ("light", "dark", "two_tone"),
        min_objects: int = 1,
        max_objects: int = 4,
        op_weights: dict[str, float] | None = None,
        pan_step: int | None = None,
        max_pan_steps: int = 2,
    ) -> None:
        if not isinstance(resolution, int) or resolution < 8:
            raise ValueError(f"resolution: must be an int >= 8, got {resolution!r}.")
        if grid not in _ROW_WORDS:
            raise ValueError(
                f"grid: must be one of {sorted(_ROW_WORDS)} (positions are named in words), got {grid!r}."
            )
        self._check_subset("shapes", shapes, SHAPES)
        self._check_subset("colours", colours, COLOURS)
        self._check_subset("backgrounds", backgrounds, BACKGROUNDS)
        if len(colours) < 2:
            raise ValueError("colours: need at least 2 colours so that recolour is possible.")
        sizes = dict(sizes) if sizes is not None else {"small": 0.28, "big": 0.44}
        if not sizes or any(not 0 < fraction < 0.5 for fraction in sizes.values()):
            raise ValueError(
                f"sizes: radius fractions must lie in (0, 0.5) so objects stay in their cell, got {sizes}."
            )
        if list(sizes.values()) != sorted(sizes.values()):
            raise ValueError(f"sizes: list sizes from smallest to largest, got {sizes}.")
        capacity = min(grid * grid, len(shapes) * len(colours))
        if not 0 <= min_objects <= max_objects <= capacity or max_objects < 1:
            raise ValueError(
                f"min_objects/max_objects: need 0 <= min_objects <= max_objects <= {capacity} (cells and unique "
                f"colour-shape pairs) and max_objects >= 1, got {min_objects}/{max_objects}."
            )
        weights = dict(_DEFAULT_OP_WEIGHTS)
        for op, weight in (op_weights or {}).items():
            if op not in weights:
                raise ValueError(f"op_weights: unknown op {op!r}; expected keys from {OP_KINDS}.")
            if not weight >= 0:
                raise ValueError(f"op_weights: weight of {op!r} must be >= 0, got {weight}.")
            weights[op] = float(weight)
        if not any(weights[op] > 0 for op in ("add", "remove", "move", "recolour", "resize", "pan")):
            raise ValueError("op_weights: at least one op that needs no history must have a positive weight.")

        self.resolution = resolution
        self.grid = grid
        self.shapes = tuple(shapes)
        self.colours = tuple(colours)
        self.sizes = sizes
        self.backgrounds = tuple(backgrounds)
        self.min_objects = min_objects
        self.max_objects = max_objects
        self.op_weights = weights
        self.cell = resolution / grid
        self.pan_step = pan_step if pan_step is not None else max(1, round(self.cell / 5))
        self.max_pan_steps = max_pan_steps
        self._size_names = tuple(sizes)
        # Caches of the world resolution: object footprint per (shape, size, row, col, camera); background per
        # (name, camera). A session then renders with a copy and a few boolean assignments.
        self._footprints: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        self._backgrounds: dict[tuple, np.ndarray] = {}

    @staticmethod
    def _check_subset(name: str, values: Sequence[str], allowed: Any) -> None:
        unknown = [value for value in values if value not in allowed]
        if unknown or not values or len(set(values)) != len(values):
            raise ValueError(f"{name}: expected distinct values from {list(allowed)}, got {list(values)}.")

    # -------------------------------------------------------------------------------------------------
    # Configuration and vocabulary
    # -------------------------------------------------------------------------------------------------

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments; ``ShapesWorld(**world.config)`` rebuilds the same world."""
        return {
            "resolution": self.resolution,
            "grid": self.grid,
            "shapes": list(self.shapes),
            "colours": list(self.colours),
            "sizes": dict(self.sizes),
            "backgrounds": list(self.backgrounds),
            "min_objects": self.min_objects,
            "max_objects": self.max_objects,
            "op_weights": dict(self.op_weights),
            "pan_step": self.pan_step,
            "max_pan_steps": self.max_pan_steps,
        }

    @property
    def vocabulary(self) -> list[str]:
        """Every word an instruction of this world can contain, sorted (e.g. to train a tokenizer)."""
        words = set("add a at the remove move change to make bring back colour it was before pan camera".split())
        words.update(self._article(size) for size in self.sizes)
        words.update(self.shapes, self.colours, _DIRECTIONS, _ROW_WORDS[self.grid], _COL_WORDS[self.grid])
        if len(self.sizes) > 1:
            words.update(("bigger", "smaller"))
        words.update(self.sizes)
        return sorted(words)

    def example_instructions(self) -> list[str]:
        """One instruction of each template, e.g. as tokenizer training text beside :attr:`vocabulary`."""
        c, c2, s, z = self.colours[0], self.colours[1], self.shapes[0], self._size_names[-1]
        return [
            f"add {self._article(z)} {z} {c} {s} at the {_ROW_WORDS[self.grid][0]} {_COL_WORDS[self.grid][0]}",
            f"remove the {c} {s}",
            f"move the {c} {s} left",
            f"change the {c} {s} to {c2}",
            f"make the {c} {s} bigger",
            f"bring back the {c} {s}",
            f"make the {c} {s} the colour it was before",
            "pan the camera left",
        ]

    @staticmethod
    def _article(word: str) -> str:
        return "an" if word[0] in "aeiou" else "a"

    # -------------------------------------------------------------------------------------------------
    # Geometry and rendering
    # -------------------------------------------------------------------------------------------------

    def _centre(self, row: int, col: int, camera: tuple[float, float]) -> tuple[float, float]:
        """Centre ``(x, y)`` of a cell in world pixels, seen through the camera. Snapped to whole pixels so that
        shapes are symmetric at the world resolution."""
        return round((col + 0.5) * self.cell) + camera[0], round((row + 0.5) * self.cell) + camera[1]

    def footprint(self, obj: SceneObject, camera: tuple[int, int], resolution: int | None = None) -> np.ndarray:
        """Bool ``(R, R)`` mask of the object's pixels at ``resolution`` (default: the world resolution)."""
        return self._footprint_and_indices(obj, camera, resolution or self.resolution)[0]

    def _footprint_and_indices(
        self, obj: SceneObject, camera: tuple[int, int], resolution: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The footprint and its flat pixel indices (integer indexing paints faster than a bool mask)."""
        key = (obj.shape, obj.size, obj.row, obj.col, camera, resolution)
        cached = self._footprints.get(key)
        if cached is None:
            scale = resolution / self.resolution
            cx, cy = self._centre(obj.row, obj.col, camera)
            radius = self.sizes[obj.size] * self.cell
            mask = _rasterize(obj.shape, cx * scale, cy * scale, radius * scale, resolution, resolution)
            mask.setflags(write=False)
            cached = self._footprints[key] = (mask, np.flatnonzero(mask))
        return cached

    def _background_image(self, name: str, camera: tuple[int, int], resolution: int) -> np.ndarray:
        key = (name, camera, resolution)
        image = self._backgrounds.get(key)
        if image is None:
            image = _background(name, camera, resolution, resolution, resolution / self.resolution)
            image.setflags(write=False)
            self._backgrounds[key] = image
        return image

    def render(self, state: SceneState, resolution: int | None = None) -> np.ndarray:
        """Renders a scene as a uint8 ``(R, R, 3)`` array at ``resolution`` (default: the world resolution)."""
        resolution = resolution or self.resolution
        image = self._background_image(state.background, state.camera, resolution).copy()
        pixels = image.reshape(-1, 3)  # (R * R, 3) view
        for obj in state.objects:
            pixels[self._footprint_and_indices(obj, state.camera, resolution)[1]] = _COLOUR_ARRAYS[obj.colour]
        return image

    def edit_masks(
        self, edit: Edit, before: SceneState, after: SceneState, resolution: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """RoE of a transition in its source and target frame (see :class:`ShapesSession`)."""
        resolution = resolution or self.resolution
        empty = np.zeros((resolution, resolution), dtype=bool)
        if edit.op == "pan":
            source, target = empty.copy(), empty.copy()
            for obj in before.objects:
                source |= self.footprint(obj, before.camera, resolution)
            for obj in after.objects:
                target |= self.footprint(obj, after.camera, resolution)
            return source, target
        source = self.footprint(edit.before, before.camera, resolution).copy() if edit.before else empty.copy()
        target = self.footprint(edit.after, after.camera, resolution).copy() if edit.after else empty
        return source, target

    # -------------------------------------------------------------------------------------------------
    # Sampling
    # -------------------------------------------------------------------------------------------------

    @staticmethod
    def _python_rng(rng_or_seed: int | np.random.Generator | random.Random) -> tuple[random.Random, int | None]:
        """A fast Python RNG (per-call overhead matters more than quality here) and the seed, when known."""
        if isinstance(rng_or_seed, random.Random):
            return rng_or_seed, None
        if isinstance(rng_or_seed, np.random.Generator):
            return random.Random(int(rng_or_seed.integers(0, 2**63))), None
        if isinstance(rng_or_seed, (int, np.integer)) and not isinstance(rng_or_seed, bool):
            return random.Random(int(rng_or_seed)), int(rng_or_seed)
        raise TypeError(
            f"rng_or_seed: expected an int seed, a numpy Generator or a random.Random, got {type(rng_or_seed)}."
        )

    def sample_scene(self, rng: random.Random) -> SceneState:
        """A random initial scene: background, ``min_objects..max_objects`` objects, unique (colour, shape)."""
        count = rng.randint(max(1, self.min_objects), self.max_objects)
        cells = rng.sample(range(self.grid * self.grid), count)
        pairs = rng.sample([(c, s) for c in self.colours for s in self.shapes], count)
        objects = tuple(
            SceneObject(
                id=i, shape=s, colour=c, size=rng.choice(self._size_names), row=cell // self.grid, col=cell % self.grid
            )
            for i, (cell, (c, s)) in enumerate(zip(cells, pairs))
        )
        return SceneState(background=rng.choice(self.backgrounds), objects=objects)

    def sample_session(
        self, rng_or_seed: int | np.random.Generator | random.Random, num_turns: int = 5
    ) -> ShapesSession:
        """Samples a session of ``num_turns`` edits (``num_turns + 1`` frames), deterministic by seed.

        Args:
            rng_or_seed: an int seed (the same seed gives the same session), a ``numpy.random.Generator`` or a
                ``random.Random`` (both advanced).
            num_turns: number of edits, >= 1.
        """
        if not isinstance(num_turns, int) or num_turns < 1:
            raise ValueError(f"num_turns: must be an int >= 1, got {num_turns!r}.")
        rng, seed = self._python_rng(rng_or_seed)
        states = [self.sample_scene(rng)]
        edits: list[Edit] = []
        for _ in range(num_turns):
            state, edit = self._sample_edit(states[-1], rng)
            states.append(state)
            edits.append(edit)
        frames = [self.render(state) for state in states]
        source_masks, target_masks, changed_masks = [], [], []
        for t, edit in enumerate(edits):
            source, target = self.edit_masks(edit, states[t], states[t + 1])
            source_masks.append(source)
            target_masks.append(target)
            changed_masks.append(changed_pixels(frames[t], frames[t + 1]))
        return ShapesSession(
            frames=frames,
            instructions=[edit.instruction for edit in edits],
            edits=edits,
            source_masks=source_masks,
            target_masks=target_masks,
            changed_masks=changed_masks,
            states=states,
            seed=seed,
            world=self,
        )

    def sample_batch(
        self, rng_or_seed: int | np.random.Generator | random.Random, batch_size: int, num_turns: int = 5
    ) -> dict[str, Any]:
        """Samples ``batch_size`` sessions stacked into arrays (for training on the fly).

        Args:
            rng_or_seed: as in :meth:`sample_session`; an int seed gives the same batch every time.
            batch_size: number of sessions ``B``.
            num_turns: edits per session ``T``.

        Returns:
            A dict with ``frames`` uint8 ``(B, T + 1, H, W, 3)``; ``source_masks``, ``target_masks``,
            ``changed_masks`` bool ``(B, T, H, W)``; ``uses_history`` bool ``(B, T)``; ``instructions`` and
            ``ops``: ``B`` lists of ``T`` strings; ``sessions``: the :class:`ShapesSession` objects.
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: must be an int >= 1, got {batch_size!r}.")
        rng, _ = self._python_rng(rng_or_seed)
        sessions = [self.sample_session(rng, num_turns) for _ in range(batch_size)]
        return {
            "frames": np.stack([np.stack(s.frames) for s in sessions]),
            "source_masks": np.stack([np.stack(s.source_masks) for s in sessions]),
            "target_masks": np.stack([np.stack(s.target_masks) for s in sessions]),
            "changed_masks": np.stack([np.stack(s.changed_masks) for s in sessions]),
            "uses_history": np.array([[edit.uses_history for edit in s.edits] for s in sessions], dtype=bool),
            "instructions": [s.instructions for s in sessions],
            "ops": [s.ops for s in sessions],
            "sessions": sessions,
        }

    def _sample_edit(self, state: SceneState, rng: random.Random) -> tuple[SceneState, Edit]:
        """Draws one op (weighted) among those possible in ``state``, then one of its arguments, and applies it."""
        view = _StateView(state)
        ops = [op for op in OP_KINDS if self.op_weights[op] > 0 and self._is_possible(op, view)]
        if not ops:
            raise RuntimeError(
                f"op_weights: no op with a positive weight is possible in this state ({len(state.objects)} objects, "
                f"camera {state.camera}); give add/remove/move/recolour/resize positive weights."
            )
        op = rng.choices(ops, weights=[self.op_weights[op] for op in ops])[0]
        return getattr(self, f"_apply_{op}")(state, rng.choice(self._arguments(op, view)), rng)

    def _is_possible(self, op: str, view: "_StateView") -> bool:
        """Whether ``op`` has at least one valid argument; closed forms where listing would cost more."""
        count = len(view.state.objects)
        if op == "add":  # max_objects <= cells and <= colour-shape pairs, so a free cell and a free pair exist
            return count < self.max_objects
        if op == "remove":
            return count > self.min_objects
        if op == "resize":
            return count > 0 and len(self._size_names) > 1
        if op == "recolour":  # some object's shape still has an unused colour
            return any(view.shape_counts[obj.shape] < len(self.colours) for obj in view.state.objects)
        return bool(self._arguments(op, view))

    def _arguments(self, op: str, view: "_StateView") -> list:
        """The valid arguments of ``op`` in the viewed state (see the ``_apply_<op>`` methods)."""
        state, occupied, present = view.state, view.occupied, view.present
        if op == "add":
            # One argument holding both choices; _apply_add draws the pair and the cell independently.
            free_cells = [(r, c) for r in range(self.grid) for c in range(self.grid) if (r, c) not in occupied]
            absent = [(c, s) for c in self.colours for s in self.shapes if (c, s) not in present]
            return [(absent, free_cells)]
        if op == "remove":
            return list(state.objects)
        if op == "move":
            return [
                (obj, direction)
                for obj in state.objects
                for direction, (d_row, d_col) in _DIRECTIONS.items()
                if 0 <= obj.row + d_row < self.grid
                and 0 <= obj.col + d_col < self.grid
                and (obj.row + d_row, obj.col + d_col) not in occupied
            ]
        if op == "recolour":
            return [
                (obj, colour)
                for obj in state.objects
                for colour in self.colours
                if colour != obj.colour and (colour, obj.shape) not in present
            ]
        if op == "resize":
            largest = self._size_names[-1]
            return [(obj, "smaller" if obj.size == largest else "bigger") for obj in state.objects]
        if op == "revert_colour":
            return [
                obj
                for obj in state.objects
                if obj.previous_colours and (obj.previous_colours[-1], obj.shape) not in present
            ]
        if op == "bring_back":
            # The most recently removed object of each (colour, shape), when its pair is absent, its cell free and
            # the scene has room.
            if len(state.objects) >= self.max_objects:
                return []
            candidates, seen = [], set()
            for obj in reversed(state.removed):
                pair = (obj.colour, obj.shape)
                if pair not in seen and pair not in present and (obj.row, obj.col) not in occupied:
                    candidates.append(obj)
                seen.add(pair)
            return candidates
        if op == "pan":
            limit = self.max_pan_steps * self.pan_step
            return [
                direction
                for direction, (d_row, d_col) in _DIRECTIONS.items()
                # The content moves opposite to the camera.
                if max(abs(state.camera[0] - d_col * self.pan_step), abs(state.camera[1] - d_row * self.pan_step))
                <= limit
            ]
        raise ValueError(f"op: unknown op {op!r}; expected one of {OP_KINDS}.")

    # One method per op: (state, argument, rng) -> (new state, edit).

    def _replace_object(self, state: SceneState, old: SceneObject, new: SceneObject) -> SceneState:
        return replace(state, objects=tuple(new if obj.id == old.id else obj for obj in state.objects))

    def _apply_add(self, state: SceneState, argument: Any, rng: random.Random) -> tuple[SceneState, Edit]:
        absent, free_cells = argument
        (colour, shape), (row, col) = rng.choice(absent), rng.choice(free_cells)
        size = rng.choice(self._size_names)
        new_id = 1 + max([obj.id for obj in state.objects + state.removed], default=-1)
        obj = SceneObject(id=new_id, shape=shape, colour=colour, size=size, row=row, col=col)
        where = f"{_ROW_WORDS[self.grid][row]} {_COL_WORDS[self.grid][col]}"
        instruction = f"add {self._article(size)} {size} {colour} {shape} at the {where}"
        return replace(state, objects=state.objects + (obj,)), Edit("add", instruction, None, obj)

    def _apply_remove(self, state: SceneState, obj: SceneObject, rng: random.Random) -> tuple[SceneState, Edit]:
        objects = tuple(other for other in state.objects if other.id != obj.id)
        new_state = replace(state, objects=objects, removed=state.removed + (obj,))
        return new_state, Edit("remove", f"remove the {obj.name}", obj, None)

    def _apply_move(self, state: SceneState, argument: Any, rng: random.Random) -> tuple[SceneState, Edit]:
        obj, direction = argument
        d_row, d_col = _DIRECTIONS[direction]
        moved = replace(obj, row=obj.row + d_row, col=obj.col + d_col)
        return self._replace_object(state, obj, moved), Edit("move", f"move the {obj.name} {direction}", obj, moved)

    def _apply_recolour(self, state: SceneState, argument: Any, rng: random.Random) -> tuple[SceneState, Edit]:
        obj, colour = argument
        recoloured = replace(obj, colour=colour, previous_colours=obj.previous_colours + (obj.colour,))
        edit = Edit("recolour", f"change the {obj.name} to {colour}", obj, recoloured)
        return self._replace_object(state, obj, recoloured), edit

    def _apply_resize(self, state: SceneState, argument: Any, rng: random.Random) -> tuple[SceneState, Edit]:
        obj, direction = argument
        index = self._size_names.index(obj.size) + (1 if direction == "bigger" else -1)
        resized = replace(obj, size=self._size_names[index])
        edit = Edit("resize", f"make the {obj.name} {direction}", obj, resized)
        return self._replace_object(state, obj, resized), edit

    def _apply_bring_back(self, state: SceneState, obj: SceneObject, rng: random.Random) -> tuple[SceneState, Edit]:
        removed = tuple(other for other in state.removed if other.id != obj.id)
        new_state = replace(state, objects=state.objects + (obj,), removed=removed)
        return new_state, Edit("bring_back", f"bring back the {obj.name}", None, obj)

    def _apply_revert_colour(self, state: SceneState, obj: SceneObject, rng: random.Random) -> tuple[SceneState, Edit]:
        reverted = replace(obj, colour=obj.previous_colours[-1], previous_colours=obj.previous_colours[:-1])
        edit = Edit("revert_colour", f"make the {obj.name} the colour it was before", obj, reverted)
        return self._replace_object(state, obj, reverted), edit

    def _apply_pan(self, state: SceneState, direction: str, rng: random.Random) -> tuple[SceneState, Edit]:
        d_row, d_col = _DIRECTIONS[direction]
        camera = (state.camera[0] - d_col * self.pan_step, state.camera[1] - d_row * self.pan_step)
        edit = Edit("pan", f"pan the camera {direction}", None, None, camera_motion=f"pan {direction}")
        return replace(state, camera=camera), edit

    # -------------------------------------------------------------------------------------------------
    # Frames between key states (video)
    # -------------------------------------------------------------------------------------------------

    def render_between(self, before: SceneState, after: SceneState, t: float, resolution: int) -> np.ndarray:
        """A frame between two key states (``0 < t < 1``): positions, sizes and camera interpolate, appearing
        objects grow from nothing, disappearing ones shrink, colours switch at half time."""
        scale = resolution / self.resolution
        camera = tuple((1 - t) * a + t * b for a, b in zip(before.camera, after.camera))
        image = _background(before.background, camera, resolution, resolution, scale)
        objects_before = {obj.id: obj for obj in before.objects}
        objects_after = {obj.id: obj for obj in after.objects}
        for obj_id in sorted(objects_before.keys() | objects_after.keys()):
            a, b = objects_before.get(obj_id), objects_after.get(obj_id)
            radius_a = self.sizes[a.size] * self.cell if a else 0.0
            radius_b = self.sizes[b.size] * self.cell if b else 0.0
            a, b = a or b, b or a
            (ax, ay), (bx, by) = self._centre(a.row, a.col, camera), self._centre(b.row, b.col, camera)
            cx, cy = (1 - t) * ax + t * bx, (1 - t) * ay + t * by
            radius = (1 - t) * radius_a + t * radius_b
            colour = a.colour if t < 0.5 else b.colour
            mask = _rasterize(a.shape, cx * scale, cy * scale, radius * scale, resolution, resolution)
            image[mask] = COLOURS[colour]
        return image
