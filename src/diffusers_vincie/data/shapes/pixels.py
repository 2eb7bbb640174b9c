"""Reading the shapes world from pixels alone: a frame -> its scene, two frames -> the edit in the world's words.

This is the stand-in for a vision-language annotator on videos of :class:`~.world.ShapesWorld`. It knows the
world's *language and geometry* (palette, shapes, sizes, grid, backgrounds, camera step: ``world.config``) but
never its log of edits:

1. :meth:`PixelSceneReader.read` classifies every pixel against the world's palette and background colours,
   splits each colour into connected components, and explains each component as one object (shape and size by
   simple geometry, cell from its centre) seen through a camera offset that all objects share (a camera pan
   moves everything; the offset is voted by the objects and snapped to the world's camera step; when an object
   is cut by the frame's edge the neighbouring offsets are compared too, and equally good reads are settled by
   the clip's previous frame). The scene is then rendered back and compared with the frame: a frame it does not
   explain (a frame inside an animation, a colour outside the palette, heavy compression damage) is refused.
2. :func:`describe_transition` compares two read scenes: a camera-only change is a pan; otherwise exactly one
   object must have appeared, disappeared, moved one cell, changed colour or changed size. A :class:`SceneTrack`
   follows a clip's objects across transitions, so that an object that comes back where it was removed is
   "brought back", and a colour change that undoes the last one is "the colour it was before", as the world
   says them. The regions of editing are the objects' footprints in each frame (all objects for a pan), as the
   world defines them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import PIL.Image

from .shots import compose_instruction, introduce_instruction
from .world import _COL_WORDS, _DIRECTIONS, _ROW_WORDS, BACKGROUNDS, COLOURS, SceneObject, ShapesWorld

__all__ = ["PixelSceneReader", "ReadScene", "SceneTrack", "TransitionReading", "UnreadableTransition"]

# A pixel counts as a palette or background colour when its nearest reference colour is closer than this
# (Euclidean RGB); farther pixels (blended edges, compression ringing) are left unassigned.
COLOUR_TOLERANCE = 70.0
# A rendered pixel "explains" a frame pixel when every channel is within this.
EXPLAINED_TOLERANCE = 48
# Share of the frame (away from object edges) the read scene may leave unexplained.
MAX_UNEXPLAINED = 0.01
# Reads whose unexplained shares differ by less than this explain the frame equally well.
TIE_MARGIN = 0.002
# Components smaller than this share of the smallest object's area are noise.
MIN_COMPONENT_SHARE = 0.25


class UnreadableTransition(Exception):
    """The frames cannot be described in the world's language; ``reason`` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ReadScene:
    """What one frame shows: background, camera offset (world pixels) and objects (ids are arbitrary)."""

    background: str
    camera: tuple[int, int]
    objects: tuple[SceneObject, ...]

    def find(self, colour: str, shape: str) -> SceneObject | None:
        return next((o for o in self.objects if o.colour == colour and o.shape == shape), None)


@dataclass
class TransitionReading:
    """One described transition: op, instruction in the world's words, camera motion and regions of editing."""

    op: str
    instruction: str
    camera_motion: str
    source_mask: np.ndarray
    target_mask: np.ndarray
    source_objects: list[str] = field(default_factory=list)
    target_objects: list[str] = field(default_factory=list)


def _label_components(classes: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components of the pixels of equal class ``>= 0``: ``(labels, count)``, labels 1..count in the
    raster order of each component's first pixel.

    Works on runs (maximal stretches of one class along a row): runs of one class that touch vertically are
    merged by union-find, each set hooked under its smallest run, so a component's root is its first run.
    """
    height, width = classes.shape
    flat = classes.ravel()
    inside = flat >= 0
    continues = np.zeros(height * width, dtype=bool)  # same class as the pixel on its left
    continues.reshape(height, width)[:, 1:] = classes[:, 1:] == classes[:, :-1]
    starts = inside & ~continues
    runs = int(starts.sum())
    if runs == 0:
        return np.zeros((height, width), dtype=np.int64), 0
    run_of_pixel = np.cumsum(starts) - 1  # meaningful on inside pixels only
    joins = inside[width:] & (flat[width:] == flat[:-width])  # pixel (y + 1, x) joins (y, x)
    upper, lower = run_of_pixel[:-width][joins], run_of_pixel[width:][joins]
    parent = np.arange(runs)
    while True:
        a, b = parent[upper], parent[lower]  # roots: parent is fully compressed here
        apart = a != b
        if not apart.any():
            break
        a, b = a[apart], b[apart]
        np.minimum.at(parent, np.maximum(a, b), np.minimum(a, b))  # hook the larger root under the smaller
        while True:  # pointer jumping until every run points at its root
            grand = parent[parent]
            if (grand == parent).all():
                break
            parent = grand
    is_root = parent == np.arange(runs)
    label_of_root = np.cumsum(is_root)  # roots numbered 1.. in run order
    labels = np.where(inside, label_of_root[parent][run_of_pixel], 0).reshape(height, width)
    return labels, int(label_of_root[-1])


def _argmin_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(min, argmin)`` over the first axis of a ``(K, N)`` array, the first row winning ties (as
    ``argmin(0)``, whose axis-0 loop is far slower on few long rows)."""
    best = rows[0].copy()
    index = np.zeros(rows.shape[1], dtype=np.int64)
    for k in range(1, len(rows)):
        index[rows[k] < best] = k
        np.minimum(best, rows[k], out=best)
    return best, index


def _shared_objects(scene: ReadScene, previous: ReadScene | None) -> int:
    """Objects of ``scene`` that ``previous`` showed with the same colour, shape and size."""
    if previous is None:
        return 0
    seen = {(o.colour, o.shape, o.size) for o in previous.objects}
    return sum((o.colour, o.shape, o.size) in seen for o in scene.objects)


def _packed(rgb):
    """An RGB colour (or ``(3, ...)`` array of them) as one integer."""
    return (rgb[0] << 16) | (rgb[1] << 8) | rgb[2]


def _edge_band(ids: np.ndarray) -> np.ndarray:
    """Pixels within one pixel of a colour edge of a rendered image, given as colour ids ``(H, W)`` (where
    compression may blur colours)."""
    edge = np.zeros(ids.shape, dtype=bool)
    horizontal = ids[:, 1:] != ids[:, :-1]
    vertical = ids[1:] != ids[:-1]
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    edge[1:] |= vertical
    edge[:-1] |= vertical
    band = edge.copy()
    band[1:] |= edge[:-1]
    band[:-1] |= edge[1:]
    band[:, 1:] |= edge[:, :-1]
    band[:, :-1] |= edge[:, 1:]
    return band


@dataclass(frozen=True)
class _Colours:
    """Pixels as their distinct colours: ``rgb`` ``(distinct, 3)`` int16 and ``inverse``, the index of each
    pixel's colour (flat, in the pixels' order)."""

    rgb: np.ndarray
    inverse: np.ndarray

    @classmethod
    def of(cls, pixels: np.ndarray) -> "_Colours":
        packed = _packed(np.ascontiguousarray(pixels.reshape(-1, 3).T).astype(np.uint32))
        ordered = np.sort(packed)
        distinct = ordered[np.concatenate(([True], ordered[1:] != ordered[:-1]))]
        return cls(
            np.stack([(distinct >> shift) & 255 for shift in (16, 8, 0)], axis=1).astype(np.int16),
            _index_of(packed, distinct),
        )


def _index_of(values: np.ndarray, distinct: np.ndarray) -> np.ndarray:
    """The index in ``distinct`` (sorted, unique uint32) of each of ``values`` (all among them): through a
    multiplicative hash table when one without collisions is found (two vector operations), else by binary
    search."""
    for bits in range(int(len(distinct)).bit_length() + 9, 23):  # sparse enough that collisions are rare
        shift = np.uint32(32 - bits)
        slots = (distinct * _HASH_MULTIPLIER) >> shift
        ordered = np.sort(slots)
        if (ordered[1:] != ordered[:-1]).all():
            table = np.empty(1 << bits, dtype=np.int32)  # only the slots of ``distinct`` are ever read
            table[slots] = np.arange(len(distinct))
            return table.take((values * _HASH_MULTIPLIER) >> shift)
    return np.searchsorted(distinct, values)


_HASH_MULTIPLIER = np.uint32(2654435761)  # Knuth's: 2**32 / golden ratio, odd


@dataclass(frozen=True)
class _FramePixels:
    """What the pixels of one frame (read at ``resolution``) say, for the scene fit: the evidence for each
    world colour (``(colours, distinct colours)``) and each pixel's distinct colour (``colour_of_pixel``,
    flat), the background, the components that can be objects, and which rendered colour would leave which
    pixel unexplained (``mismatch[mismatch_rows + palette id]``)."""

    resolution: int
    scale: float
    evidence: np.ndarray
    colour_of_pixel: np.ndarray
    background: str
    components: list
    mismatch: np.ndarray
    mismatch_rows: np.ndarray


@dataclass(frozen=True)
class _Component:
    """One connected component of a world colour: its pixels as a mask, their count, centroid and bounding box
    (pixels; the box's sides inclusive)."""

    colour: str
    mask: np.ndarray
    area: int
    mean_x: float
    mean_y: float
    box: tuple[int, int, int, int]  # x0, x1, y0, y1

    @property
    def touches_edge(self) -> bool:
        last = self.mask.shape[0] - 1
        return self.box[0] == 0 or self.box[2] == 0 or self.box[1] == last or self.box[3] == last


@dataclass(frozen=True)
class _Candidates:
    """Objects to score against a frame at once: their footprints' flat indices, concatenated, with the
    start and length of each (one gather and one segmented sum score them all)."""

    placements: tuple  # per candidate: (shape, size, row, col, camera)
    indices: np.ndarray
    starts: np.ndarray  # of each footprint in ``indices``, then of a spare index closing the last one
    lengths: np.ndarray
    empty: np.ndarray  # candidates whose footprint has no pixel in the frame

    @classmethod
    def of(cls, world: ShapesWorld, placements: list, resolution: int) -> "_Candidates":
        footprints = [
            world._footprint_and_indices(SceneObject(0, shape, "", size, row, col), camera, resolution)[1]
            for shape, size, row, col, camera in placements
        ]
        lengths = np.array([len(f) for f in footprints], dtype=np.int64)
        indices = np.concatenate([*footprints, np.zeros(1, dtype=np.int64)])
        starts = np.concatenate(([0], np.cumsum(lengths)))
        return cls(tuple(placements), indices, starts, lengths, (lengths == 0).nonzero()[0])

    def sums(self, values: np.ndarray, lookup: np.ndarray | None = None, dtype=None) -> np.ndarray:
        """Sum over each candidate's footprint of ``values`` per pixel (flat), or of ``values[lookup]`` when
        ``lookup`` gives each pixel's index into ``values``."""
        gathered = values[self.indices] if lookup is None else values[lookup[self.indices]]
        totals = np.add.reduceat(gathered, self.starts, dtype=dtype)[:-1]
        if len(self.empty):
            totals[self.empty] = 0  # reduceat gives an empty segment its first element
        return totals


class PixelSceneReader:
    """Reads frames of a :class:`ShapesWorld` video (any square resolution) into :class:`ReadScene`.

    Args:
        world: the world whose language and geometry the frames follow (its config, not its log).
    """

    # Cached candidate sets kept at most (a few kB each; a video's objects reuse a handful).
    MAX_CACHED_CANDIDATES = 4096
    # Frames whose pixel stage :meth:`read_many` runs at once (a clip's sampled frames, usually).
    BATCH_FRAMES = 32

    def __init__(self, world: ShapesWorld):
        self.world = world
        self.colours = list(world.colours)
        self.background_colours = sorted({rgb for name in world.backgrounds for rgb in BACKGROUNDS[name][:2]})
        self.references = np.array([COLOURS[c] for c in self.colours] + self.background_colours, dtype=np.float32)
        self.reference_norms = (self.references**2).sum(-1)
        limit = world.max_pan_steps * world.pan_step
        self.camera_values = list(range(-limit, limit + 1, world.pan_step))
        self.all_cameras = [(x, y) for y in self.camera_values for x in self.camera_values]
        self.smallest_radius = min(world.sizes.values()) * world.cell
        # (background colours, backgrounds): which colours each of the world's backgrounds shows
        self._background_members = np.array(
            [[rgb in BACKGROUNDS[name][:2] for name in world.backgrounds] for rgb in self.background_colours],
            dtype=int,
        )
        # footprints scored together, by what they depend on: a component's bounding box (one-object fits) or
        # the camera and the cells near a component (the scene's matched filter)
        self._candidates: dict[tuple, _Candidates] = {}
        self._cell_centres: dict[tuple[int, int], tuple[list[float], list[float]]] = {}
        self._positions_cache = np.arange(0)
        # one id per distinct RGB colour of the world: a rendered scene has edges where its ids change
        self._palette = np.array(sorted({_packed(rgb) for rgb in (*COLOURS.values(), *self.background_colours)}))
        self._palette_rgb = np.stack([(self._palette >> shift) & 255 for shift in (16, 8, 0)], axis=1).astype(np.int16)
        self._object_ids = {name: int(np.searchsorted(self._palette, _packed(COLOURS[name]))) for name in COLOURS}
        self._background_ids: dict[tuple, np.ndarray] = {}

    # -------------------------------------------------------------------------------------------- pixels

    def read(self, frame: np.ndarray | PIL.Image.Image, previous: ReadScene | None = None) -> ReadScene:
        """The scene a frame shows (an RGB array or image; frames larger than twice the world resolution are
        read at that size);
        ``previous``, the scene of the clip's frame before, settles reads the pixels leave open.

        Raises:
            UnreadableTransition: when no scene of the world renders to this frame.
        """
        pixels = self._analyse([frame])[0]
        if isinstance(pixels, UnreadableTransition):
            raise pixels
        return self._fit_scene(pixels, previous)

    def read_many(
        self, frames: list[np.ndarray | PIL.Image.Image], previous: list[int | None]
    ) -> list[ReadScene | UnreadableTransition]:
        """Reads frames in order, each as :meth:`read` does, with the scene read from ``frames[previous[i]]``
        (an earlier frame, or ``None``) settling frame ``i``'s open reads. The pixel work of frames of one size
        is done for all of them at once. Returns each frame's scene, or the :class:`UnreadableTransition` that
        says why it has none."""
        if len(previous) != len(frames) or any(p is not None and not 0 <= p < i for i, p in enumerate(previous)):
            raise ValueError("previous: one index of an earlier frame (or None) per frame.")
        results: list[ReadScene | UnreadableTransition] = []
        for start in range(0, len(frames), self.BATCH_FRAMES):
            for pixels in self._analyse(frames[start : start + self.BATCH_FRAMES]):
                prior = results[previous[len(results)]] if previous[len(results)] is not None else None
                try:
                    if isinstance(pixels, UnreadableTransition):
                        raise pixels
                    results.append(self._fit_scene(pixels, prior if isinstance(prior, ReadScene) else None))
                except UnreadableTransition as error:
                    results.append(error)
        return results

    def _analyse(self, frames: list) -> list["_FramePixels | UnreadableTransition"]:
        """The pixel stage of each frame, frames of one size together."""
        analysed: list = [None] * len(frames)
        sizes: dict[int, list[tuple[int, np.ndarray]]] = {}
        for index, frame in enumerate(frames):
            image = frame if isinstance(frame, PIL.Image.Image) and frame.mode == "RGB" else None
            shape = (image.height, image.width, 3) if image is not None else np.shape(frame)
            if len(shape) != 3 or shape[0] != shape[1] or shape[2] != 3:
                analysed[index] = UnreadableTransition(f"frames must be square RGB, got shape {shape}")
                continue
            resolution = min(shape[0], 2 * self.world.resolution)
            if resolution != shape[0]:  # box averaging also evens out compression noise
                image = image or PIL.Image.fromarray(np.asarray(frame))
                if shape[0] % resolution == 0:  # whole blocks: their rounded mean, in one pass
                    image = image.reduce(shape[0] // resolution)
                else:
                    image = image.resize((resolution, resolution), PIL.Image.BOX)
            sizes.setdefault(resolution, []).append((index, np.asarray(image if image is not None else frame)))
        for members in sizes.values():
            stack = np.stack([frame for _, frame in members])
            for (index, _), pixels in zip(members, self._analyse_stack(stack)):
                analysed[index] = pixels
        return analysed

    def _analyse_stack(self, stack: np.ndarray) -> list[_FramePixels]:
        """Classifies the pixels of ``(frames, R, R, 3)`` against the world's colours (each distinct colour
        once) and splits each world colour into connected components, frame by frame."""
        count, resolution = stack.shape[0], stack.shape[1]
        area = resolution * resolution
        scale = resolution / self.world.resolution
        min_area = MIN_COMPONENT_SHARE * np.pi * (self.smallest_radius * scale) ** 2 * 0.5
        colours = _Colours.of(stack)
        distinct = len(colours.rgb)
        classes, evidence, background_index = self._classify(colours.rgb)
        # per frame, the pixels nearest to each background colour: the background whose colours gather the most
        is_background = background_index >= 0
        per_frame = np.bincount(
            (np.arange(count)[:, None] * distinct + colours.inverse.reshape(count, area)).ravel(),
            minlength=count * distinct,
        ).reshape(count, distinct)
        background_pixels = per_frame[:, is_background] @ (
            background_index[is_background, None] == np.arange(len(self.background_colours))
        )
        # the backgrounds' colour sets are disjoint; the first of equally supported backgrounds wins
        backgrounds = (background_pixels @ self._background_members).argmax(1)
        # components, all frames at once: one separating row of background under each frame
        layers = np.full((count, resolution + 1, resolution), -1, dtype=classes.dtype)
        layers[:, :resolution] = classes[colours.inverse].reshape(count, resolution, resolution)
        labels, _ = _label_components(layers.reshape(-1, resolution))
        areas = np.bincount(labels.ravel())
        objects = (areas[1:] >= min_area).nonzero()[0] + 1
        last_labels = np.maximum.accumulate(labels.reshape(count, -1).max(1))  # labels run in frame order
        labels = labels.reshape(count, resolution + 1, resolution)[:, :resolution]
        frame_objects = np.split(objects, np.searchsorted(objects, last_labels, side="right")[:-1])
        # which frame colour a rendered world colour would leave unexplained (per channel, over the tolerance)
        apart = np.abs(colours.rgb[:, None, :] - self._palette_rgb[None]) > EXPLAINED_TOLERANCE
        mismatch = (apart[..., 0] | apart[..., 1] | apart[..., 2]).ravel()
        mismatch_rows = colours.inverse * len(self._palette)
        return [
            _FramePixels(
                resolution,
                scale,
                evidence,
                colours.inverse[k * area : (k + 1) * area],
                self.world.backgrounds[backgrounds[k]],
                [
                    self._component(labels[k], layers[k], label, int(areas[label]))
                    for label in frame_objects[k].tolist()
                ],
                mismatch,
                mismatch_rows[k * area : (k + 1) * area],
            )
            for k in range(count)
        ]

    def _classify(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per colour (``(N, 3)``): the index of its world colour (``-1`` for a background colour or none); the
        evidence for each world colour (``(colours, N)``: how much nearer the colour is to it than to any
        background colour, clipped to +-100; blended edge pixels sit near 0); the index of its background
        colour (``-1`` for a world colour or none)."""
        pixels = rgb.T.astype(np.float32)  # (3, N)
        # squared distances to every reference colour: whole numbers below 2**24, so exact in float32
        squared = self.references @ pixels
        squared *= -2
        squared += (pixels * pixels).sum(0)
        squared += self.reference_norms[:, None]
        distances = np.sqrt(squared, out=squared)  # (references, N)
        colours = len(self.colours)
        nearest_colour, colour_index = _argmin_rows(distances[:colours])
        nearest_background, background_index = _argmin_rows(distances[colours:])
        is_colour = nearest_colour <= nearest_background  # a tie goes to the world colour, listed first
        classes = np.where(is_colour & (nearest_colour < COLOUR_TOLERANCE), colour_index, -1)
        backgrounds = np.where(~is_colour & (nearest_background < COLOUR_TOLERANCE), background_index, -1)
        evidence = np.clip(nearest_background - distances[:colours], -100, 100)
        return classes, evidence, backgrounds

    def _fit_scene(self, pixels: _FramePixels, previous: ReadScene | None) -> ReadScene:
        """The scene of the world that renders to the frame (see :meth:`read`)."""
        components = pixels.components
        fits = [self._fit_component(component, pixels.scale, pixels.resolution) for component in components]
        votes = {}
        for fit in fits:
            if fit is not None:
                votes[fit[1]] = votes.get(fit[1], 0.0) + fit[2]
        cameras = sorted(votes, key=lambda c: -votes[c]) + self.all_cameras
        cut = any(component.touches_edge for component in components)
        best = None
        for camera in dict.fromkeys(cameras):  # the voted offsets first, then every offset the camera can take
            scene = self._scene_at(camera, pixels)
            if scene is not None:
                # only a read with an object cut by the frame's edge compares exact shares with other reads
                unexplained = self._unexplained(scene, pixels, enough=None if cut else MAX_UNEXPLAINED)
                if best is None or unexplained < best[0]:
                    best = (unexplained, scene)
                if unexplained <= MAX_UNEXPLAINED:
                    if not cut:
                        return scene
                    # an object cut by the frame's edge can mislead the vote by a camera step, and a big object
                    # cut off can look like a smaller one: the best of the neighbouring offsets wins, and among
                    # equally good reads the one whose objects the previous frame showed
                    found = [(unexplained, scene), *self._neighbours(camera, pixels)]
                    lowest = min(share for share, _ in found)
                    ties = [(share, read) for share, read in found if share <= lowest + TIE_MARGIN]
                    return min(ties, key=lambda item: (-_shared_objects(item[1], previous), item[0]))[1]
        share = 1.0 if best is None else best[0]
        raise UnreadableTransition(
            f"the frame is not a still scene of the world ({share:.1%} of its pixels unexplained: an animation, "
            "an unknown colour or compression damage)"
        )

    def _component(self, labels: np.ndarray, classes: np.ndarray, label: int, area: int) -> _Component:
        """Component ``label`` of a frame's component ``labels``; ``classes`` holds each pixel's world colour."""
        height, width = labels.shape
        mask = labels == label
        per_column, per_row = mask.sum(0), mask.sum(1)
        rows, cols = per_row.nonzero()[0], per_column.nonzero()[0]
        positions = self._positions(max(height, width))
        return _Component(
            self.colours[int(classes[rows[0], mask[rows[0]].argmax()])],
            mask,
            area,
            # centroid from whole-number coordinate sums (exact)
            int(per_column @ positions[:width]) / area,
            int(per_row @ positions[:height]) / area,
            (int(cols[0]), int(cols[-1]), int(rows[0]), int(rows[-1])),
        )

    def _positions(self, side: int) -> np.ndarray:
        if len(self._positions_cache) < side:
            self._positions_cache = np.arange(side)
        return self._positions_cache

    def _neighbours(self, camera: tuple[int, int], pixels: _FramePixels) -> list:
        """``(unexplained, scene)`` at each camera offset one step from ``camera``."""
        found = []
        for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            other = (camera[0] + dx * self.world.pan_step, camera[1] + dy * self.world.pan_step)
            if other[0] in self.camera_values and other[1] in self.camera_values:
                scene = self._scene_at(other, pixels)
                if scene is not None:
                    found.append((self._unexplained(scene, pixels), scene))
        return found

    def _cached_candidates(self, key: tuple, placements) -> _Candidates:
        candidates = self._candidates.get(key)
        if candidates is None:
            if len(self._candidates) >= self.MAX_CACHED_CANDIDATES:
                self._candidates.clear()
            candidates = self._candidates[key] = _Candidates.of(self.world, placements(), key[-1])
        return candidates

    def _fit_component(self, component: _Component, scale: float, resolution: int):
        """Best ``(object, camera, IoU)`` for one component alone (its own camera estimate), or ``None``."""
        x0, x1, y0, y1 = component.box
        box = (x0 + x1 + 1, y0 + y1 + 1)  # twice the bounding box's centre
        world = self.world

        def placements() -> list:
            found = []
            box_x, box_y = box[0] / 2 / scale, box[1] / 2 / scale
            for shape in world.shapes:
                for size, fraction in world.sizes.items():
                    radius = fraction * world.cell
                    # bounding-box centre -> shape centre (a triangle's box is 0.1 r above its centre)
                    cx = box_x
                    cy = box_y + (0.1 * radius if shape == "triangle" else 0.0)
                    col, row = int(cx // world.cell), int(cy // world.cell)
                    if not (0 <= row < world.grid and 0 <= col < world.grid):
                        continue
                    centre_x, centre_y = world._centre(row, col, (0, 0))
                    found.append((shape, size, row, col, (self._snap(cx - centre_x), self._snap(cy - centre_y))))
            return found

        candidates = self._cached_candidates(("fit", box, resolution), placements)
        if not candidates.placements:
            return None
        inter = candidates.sums(component.mask.ravel(), dtype=np.int64)
        iou = inter / (component.area + candidates.lengths - inter)
        best = int(iou.argmax())  # the first of equals, in shape then size order
        shape, size, row, col, camera = candidates.placements[best]
        obj = SceneObject(id=0, shape=shape, colour=component.colour, size=size, row=row, col=col)
        return obj, camera, float(iou[best])

    def _snap(self, offset: float) -> int:
        return min(self.camera_values, key=lambda value: abs(value - offset))

    def _scene_at(self, camera: tuple[int, int], pixels: _FramePixels) -> ReadScene | None:
        """The objects of the components seen through ``camera``: for each, the shape, size and nearby cell whose
        footprint gathers the most evidence for its colour (a matched filter, robust to blurred edges)."""
        world, scale, resolution = self.world, pixels.scale, pixels.resolution
        centres = self._cell_centres.get(camera)
        if centres is None:  # a cell's centre x depends on its column only, y on its row only
            centres = self._cell_centres[camera] = (
                [world._centre(0, col, camera)[0] for col in range(world.grid)],
                [world._centre(row, 0, camera)[1] for row in range(world.grid)],
            )
        reach = 0.75 * world.cell
        objects, taken = [], set()
        for component in pixels.components:
            mean_x, mean_y = component.mean_x / scale, component.mean_y / scale
            cols = [col for col, x in enumerate(centres[0]) if abs(x - mean_x) <= reach]
            cells = tuple((row, col) for row, y in enumerate(centres[1]) if abs(y - mean_y) <= reach for col in cols)
            candidates = self._cached_candidates(
                ("scene", camera, cells, resolution),
                lambda: [
                    (shape, size, row, col, camera)
                    for shape in world.shapes
                    for size in world.sizes
                    for row, col in cells
                ],
            )
            if not candidates.placements:
                return None
            scores = candidates.sums(pixels.evidence[self.colours.index(component.colour)], pixels.colour_of_pixel)
            shape, size, row, col, _ = candidates.placements[int(scores.argmax())]  # the first of equals
            if (row, col) in taken:
                return None
            taken.add((row, col))
            objects.append(
                SceneObject(id=len(objects), shape=shape, colour=component.colour, size=size, row=row, col=col)
            )
        return ReadScene(pixels.background, camera, tuple(objects))

    def _unexplained(self, scene: ReadScene, pixels: _FramePixels, enough: float | None = None) -> float:
        """Share of the frame, away from the rendered edges, that the rendered scene does not match; with
        ``enough``, the share counting the edges too (more) when that is already at most ``enough``."""
        ids = self._colour_ids(scene, pixels.resolution)
        wrong = pixels.mismatch[pixels.mismatch_rows + ids.ravel()].reshape(ids.shape)
        if enough is not None and (upper := np.count_nonzero(wrong) / wrong.size) <= enough:
            return upper
        wrong &= ~_edge_band(ids)
        return np.count_nonzero(wrong) / wrong.size

    def _colour_ids(self, scene: ReadScene, resolution: int) -> np.ndarray:
        """The scene rendered as ``(R, R)`` uint8 ids, one per distinct colour (where its image has edges)."""
        key = (scene.background, scene.camera, resolution)
        ids = self._background_ids.get(key)
        if ids is None:
            image = self.world._background_image(scene.background, scene.camera, resolution)
            ids = np.searchsorted(self._palette, _packed(image.astype(np.int64).transpose(2, 0, 1))).astype(np.uint8)
            self._background_ids[key] = ids
        ids = ids.copy()
        flat = ids.reshape(-1)
        for obj in scene.objects:
            flat[self.world._footprint_and_indices(obj, scene.camera, resolution)[1]] = self._object_ids[obj.colour]
        return ids


# =====================================================================================================
# Transitions
# =====================================================================================================


def _where(world: ShapesWorld, obj: SceneObject) -> str:
    return f"{_ROW_WORDS[world.grid][obj.row]} {_COL_WORDS[world.grid][obj.col]}"


def _footprints(world: ShapesWorld, scene: ReadScene, resolution: int) -> np.ndarray:
    mask = np.zeros((resolution, resolution), dtype=bool)
    for obj in scene.objects:
        mask |= world.footprint(obj, scene.camera, resolution)
    return mask


@dataclass
class SceneTrack:
    """What a clip showed so far, in the world's own terms: the objects with the colours they had before each
    recolour, and the objects removed (most recent last). Fed one transition at a time, in clip order."""

    objects: tuple[SceneObject, ...] = ()
    removed: tuple[SceneObject, ...] = ()
    references: tuple[SceneObject, ...] = ()  # objects introduced alone by the shots since the last composition

    def sync(self, scene: ReadScene) -> None:
        """Adopts a scene read without a known transition: objects keep their history when still present."""
        known = {(o.colour, o.shape): o for o in self.objects}
        history = {key: o.previous_colours for key, o in known.items()}
        self.objects = tuple(
            replace(o, previous_colours=history[(o.colour, o.shape)])
            if history.get((o.colour, o.shape), o.previous_colours) != o.previous_colours
            else o
            for o in scene.objects
        )


def describe_transition(
    world: ShapesWorld, before: ReadScene, after: ReadScene, resolution: int, track: SceneTrack | None = None
) -> TransitionReading:
    """The one edit that turns ``before`` into ``after``, worded as the world words it; updates ``track``.

    Raises:
        UnreadableTransition: when nothing changed, or more than one edit (or an edit the world cannot make)
            happened.
    """
    track = track if track is not None else SceneTrack()
    track.sync(before)
    empty = np.zeros((resolution, resolution), dtype=bool)
    same_objects = {(o.colour, o.shape, o.size, o.row, o.col) for o in before.objects} == {
        (o.colour, o.shape, o.size, o.row, o.col) for o in after.objects
    }
    if before.background != after.background:  # a cut: a new reference shot, or the composed scene
        return _describe_cut(world, before, after, resolution, track)
    if before.camera != after.camera:
        dx, dy = after.camera[0] - before.camera[0], after.camera[1] - before.camera[1]
        # the content moves opposite to the camera
        direction = next(
            (
                d
                for d, (d_row, d_col) in _DIRECTIONS.items()
                if (dx, dy) == (-d_col * world.pan_step, -d_row * world.pan_step)
            ),
            None,
        )
        if not same_objects or direction is None or before.background != after.background:
            raise UnreadableTransition(
                f"the camera moved by ({dx}, {dy}) world pixels"
                + ("" if same_objects else " and the objects changed")
                + ": not one camera step with nothing else changing"
            )
        track.sync(after)
        return TransitionReading(
            "pan",
            f"pan the camera {direction}",
            f"pan {direction}",
            _footprints(world, before, resolution),
            _footprints(world, after, resolution),
        )
    if same_objects:
        raise UnreadableTransition("no visible change between the frames")

    def key(o: SceneObject) -> tuple:
        return (o.colour, o.shape, o.size, o.row, o.col)

    old = {key(o): o for o in track.objects}
    new = {key(o): o for o in after.objects}
    gone = [old[k] for k in old.keys() - new.keys()]
    came = [new[k] for k in new.keys() - old.keys()]
    camera = before.camera

    def footprint(obj: SceneObject) -> np.ndarray:
        return world.footprint(obj, camera, resolution).copy()

    def finish(op: str, instruction: str, source: SceneObject | None, target: SceneObject | None) -> TransitionReading:
        return TransitionReading(
            op,
            instruction,
            "static",
            footprint(source) if source else empty.copy(),
            footprint(target) if target else empty.copy(),
            [source.name] if source else [],
            [target.name] if target else [],
        )

    if len(gone) == 1 and not came:
        obj = gone[0]
        track.objects = tuple(o for o in track.objects if o is not obj)
        track.removed = track.removed + (obj,)
        return finish("remove", f"remove the {obj.name}", obj, None)
    if len(came) == 1 and not gone:
        obj = came[0]
        pair = (obj.colour, obj.shape)
        latest = next((o for o in reversed(track.removed) if (o.colour, o.shape) == pair), None)
        if latest is not None and (latest.size, latest.row, latest.col) == (obj.size, obj.row, obj.col):
            track.removed = tuple(o for o in track.removed if o is not latest)
            track.objects = track.objects + (latest,)
            return finish("bring_back", f"bring back the {obj.name}", None, obj)
        track.objects = track.objects + (obj,)
        instruction = f"add {world._article(obj.size)} {obj.size} {obj.name} at the {_where(world, obj)}"
        return finish("add", instruction, None, obj)
    if len(came) == 1 and len(gone) == 1:
        a, b = gone[0], came[0]
        changed = [name for name in ("colour", "shape", "size") if getattr(a, name) != getattr(b, name)]
        moved = (b.row - a.row, b.col - a.col)
        if a.shape == b.shape and a.colour == b.colour and a.size == b.size:
            direction = next((d for d, step in _DIRECTIONS.items() if step == moved), None)
            if direction is not None:
                track.objects = tuple(replace(o, row=b.row, col=b.col) if o is a else o for o in track.objects)
                return finish("move", f"move the {a.name} {direction}", a, b)
        elif moved == (0, 0) and changed == ["colour"]:
            if a.previous_colours and a.previous_colours[-1] == b.colour:
                updated = replace(a, colour=b.colour, previous_colours=a.previous_colours[:-1])
                op, instruction = "revert_colour", f"make the {a.name} the colour it was before"
            else:
                updated = replace(a, colour=b.colour, previous_colours=a.previous_colours + (a.colour,))
                op, instruction = "recolour", f"change the {a.name} to {b.colour}"
            track.objects = tuple(updated if o is a else o for o in track.objects)
            return finish(op, instruction, a, b)
        elif moved == (0, 0) and changed == ["size"]:
            sizes = list(world.sizes)
            step = sizes.index(b.size) - sizes.index(a.size)
            if abs(step) == 1:
                track.objects = tuple(replace(o, size=b.size) if o is a else o for o in track.objects)
                return finish("resize", f"make the {a.name} {'bigger' if step > 0 else 'smaller'}", a, b)
    summary = ", ".join([f"-{o.colour} {o.shape}" for o in gone] + [f"+{o.colour} {o.shape}" for o in came])
    raise UnreadableTransition(f"not one edit of the world ({summary})")


def _describe_cut(
    world: ShapesWorld, before: ReadScene, after: ReadScene, resolution: int, track: SceneTrack
) -> TransitionReading:
    """A change of shot (the background changed): one object alone introduces it; a scene whose objects are all
    the objects introduced since the last composition composes them."""
    if not track.references and len(before.objects) == 1:
        track.references = before.objects
    masks = (_footprints(world, before, resolution), _footprints(world, after, resolution))
    if len(after.objects) == 1:
        obj = after.objects[0]
        track.references = track.references + (obj,)
        track.sync(after)
        return TransitionReading("introduce", introduce_instruction(world, obj), "static", *masks, [], [obj.name])
    order = {(o.colour, o.shape, o.size): k for k, o in enumerate(track.references)}
    keys = [(o.colour, o.shape, o.size) for o in after.objects]
    if len(after.objects) < 2 or any(k not in order for k in keys) or len(set(keys)) != len(keys):
        raise UnreadableTransition(
            f"the shot changed ({before.background} -> {after.background} background) to a scene that is not the "
            "objects introduced before it"
        )
    objects = sorted(after.objects, key=lambda o: order[(o.colour, o.shape, o.size)])
    track.references = ()
    track.sync(after)
    return TransitionReading(
        "compose", compose_instruction(world, objects), "static", *masks, [], [o.name for o in objects]
    )
