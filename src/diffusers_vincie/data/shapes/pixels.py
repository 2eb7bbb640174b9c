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
from .world import _COL_WORDS, _DIRECTIONS, _ROW_WORDS, BACKGROUNDS, COLOURS, SceneObject, SceneState, ShapesWorld

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
    """4-connected components of the pixels of equal class ``>= 0``: ``(labels, count)``, labels 1..count."""
    height, width = classes.shape
    inside = classes >= 0
    big = height * width + 1
    labels = np.where(inside, np.arange(1, height * width + 1).reshape(height, width), big)
    same_down = inside[1:] & (classes[1:] == classes[:-1])  # pixel (y + 1, x) joins (y, x)
    same_right = inside[:, 1:] & (classes[:, 1:] == classes[:, :-1])
    while True:  # propagate the smallest label across equal-class neighbours until nothing changes
        smallest = labels.copy()
        np.minimum(smallest[1:], np.where(same_down, labels[:-1], big), out=smallest[1:])
        np.minimum(smallest[:-1], np.where(same_down, labels[1:], big), out=smallest[:-1])
        np.minimum(smallest[:, 1:], np.where(same_right, labels[:, :-1], big), out=smallest[:, 1:])
        np.minimum(smallest[:, :-1], np.where(same_right, labels[:, 1:], big), out=smallest[:, :-1])
        # pointer jumping: a label is the index (+1) of a pixel of the same component; take that pixel's label
        flat = smallest.ravel()
        for _ in range(4):
            flat[inside.ravel()] = flat[flat[inside.ravel()] - 1]
        if np.array_equal(smallest, labels):
            break
        labels = smallest
    values, inverse = np.unique(labels, return_inverse=True)
    relabelled = np.where(inside, inverse.reshape(height, width) + 1, 0)
    return relabelled, int((values != big).sum())


def _shared_objects(scene: ReadScene, previous: ReadScene | None) -> int:
    """Objects of ``scene`` that ``previous`` showed with the same colour, shape and size."""
    if previous is None:
        return 0
    seen = {(o.colour, o.shape, o.size) for o in previous.objects}
    return sum((o.colour, o.shape, o.size) in seen for o in scene.objects)


def _touches_edge(mask: np.ndarray) -> bool:
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def _edge_band(image: np.ndarray) -> np.ndarray:
    """Pixels within one pixel of a colour edge of a rendered image (where compression may blur colours)."""
    edge = np.zeros(image.shape[:2], dtype=bool)
    horizontal = (image[:, 1:] != image[:, :-1]).any(-1)
    vertical = (image[1:] != image[:-1]).any(-1)
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


class PixelSceneReader:
    """Reads frames of a :class:`ShapesWorld` video (any square resolution) into :class:`ReadScene`.

    Args:
        world: the world whose language and geometry the frames follow (its config, not its log).
    """

    def __init__(self, world: ShapesWorld):
        self.world = world
        self.colours = list(world.colours)
        self.background_colours = sorted({rgb for name in world.backgrounds for rgb in BACKGROUNDS[name][:2]})
        self.references = np.array([COLOURS[c] for c in self.colours] + self.background_colours, dtype=np.float32)
        self.reference_norms = (self.references**2).sum(-1)
        limit = world.max_pan_steps * world.pan_step
        self.camera_values = list(range(-limit, limit + 1, world.pan_step))
        self.smallest_radius = min(world.sizes.values()) * world.cell

    # -------------------------------------------------------------------------------------------- pixels

    def classify(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
        """Per pixel: the index of its world colour (``(H, W)`` int, ``-1`` for background or unassigned), and
        the evidence for each world colour (``(H * W, colours)``: how much nearer the pixel is to that colour
        than to any background colour, clipped to +-100; blended edge pixels sit near 0); and the frame's
        background."""
        pixels = frame.reshape(-1, 3).astype(np.float32)
        squared = (pixels**2).sum(-1, keepdims=True) - 2 * pixels @ self.references.T + self.reference_norms
        distances = np.sqrt(np.maximum(squared, 0.0))  # (H*W, references)
        nearest = distances.argmin(-1)
        close = distances[np.arange(len(nearest)), nearest] < COLOUR_TOLERANCE
        labels = np.where(close & (nearest < len(self.colours)), nearest, -1)
        colours = len(self.colours)
        evidence = np.clip(distances[:, colours:].min(-1, keepdims=True) - distances[:, :colours], -100, 100)
        # the background whose colours the most background pixels are nearest to (the sets are disjoint)
        counts = np.bincount(nearest[close & (nearest >= colours)] - colours, minlength=len(self.background_colours))
        background = max(
            self.world.backgrounds,
            key=lambda name: sum(counts[self.background_colours.index(rgb)] for rgb in set(BACKGROUNDS[name][:2])),
        )
        return labels.reshape(frame.shape[:2]), evidence, background

    def read(self, frame: np.ndarray, previous: ReadScene | None = None) -> ReadScene:
        """The scene a frame shows (frames larger than twice the world resolution are read at that size);
        ``previous``, the scene of the clip's frame before, settles reads the pixels leave open.

        Raises:
            UnreadableTransition: when no scene of the world renders to this frame.
        """
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[0] != frame.shape[1] or frame.shape[2] != 3:
            raise UnreadableTransition(f"frames must be square RGB, got shape {frame.shape}")
        resolution = min(frame.shape[0], 2 * self.world.resolution)
        if resolution != frame.shape[0]:  # box averaging also evens out compression noise
            frame = np.asarray(PIL.Image.fromarray(frame).resize((resolution, resolution), PIL.Image.BOX))
        scale = resolution / self.world.resolution
        min_area = MIN_COMPONENT_SHARE * np.pi * (self.smallest_radius * scale) ** 2 * 0.5
        classes, evidence, background = self.classify(frame)
        labels, count = _label_components(classes)
        components = []  # (colour, mask)
        for k in range(1, count + 1):
            mask = labels == k
            if mask.sum() >= min_area:
                components.append((self.colours[int(classes[mask][0])], mask))
        fits = [self._fit_component(colour, mask, scale, resolution) for colour, mask in components]
        votes = {}
        for fit in fits:
            if fit is not None:
                votes[fit[1]] = votes.get(fit[1], 0.0) + fit[2]
        cameras = sorted(votes, key=lambda c: -votes[c]) + [
            (x, y) for y in self.camera_values for x in self.camera_values
        ]
        best = None
        for camera in dict.fromkeys(cameras):  # the voted offsets first, then every offset the camera can take
            scene = self._scene_at(camera, components, evidence, background, scale, resolution)
            if scene is not None:
                unexplained = self._unexplained(scene, frame)
                if best is None or unexplained < best[0]:
                    best = (unexplained, scene)
                if unexplained <= MAX_UNEXPLAINED:
                    if not any(_touches_edge(mask) for _, mask in components):
                        return scene
                    # an object cut by the frame's edge can mislead the vote by a camera step, and a big object
                    # cut off can look like a smaller one: the best of the neighbouring offsets wins, and among
                    # equally good reads the one whose objects the previous frame showed
                    found = [
                        (unexplained, scene),
                        *self._neighbours(camera, components, evidence, background, frame, scale, resolution),
                    ]
                    lowest = min(share for share, _ in found)
                    ties = [(share, read) for share, read in found if share <= lowest + TIE_MARGIN]
                    return min(ties, key=lambda item: (-_shared_objects(item[1], previous), item[0]))[1]
        share = 1.0 if best is None else best[0]
        raise UnreadableTransition(
            f"the frame is not a still scene of the world ({share:.1%} of its pixels unexplained: an animation, "
            "an unknown colour or compression damage)"
        )

    def _neighbours(self, camera, components, evidence, background, frame, scale, resolution) -> list:
        """``(unexplained, scene)`` at each camera offset one step from ``camera``."""
        found = []
        for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            other = (camera[0] + dx * self.world.pan_step, camera[1] + dy * self.world.pan_step)
            if other[0] in self.camera_values and other[1] in self.camera_values:
                scene = self._scene_at(other, components, evidence, background, scale, resolution)
                if scene is not None:
                    found.append((self._unexplained(scene, frame), scene))
        return found

    def _fit_component(self, colour: str, mask: np.ndarray, scale: float, resolution: int):
        """Best ``(object, camera, IoU)`` for one component alone (its own camera estimate), or ``None``."""
        ys, xs = np.nonzero(mask)
        box_x, box_y = (xs.min() + xs.max() + 1) / 2 / scale, (ys.min() + ys.max() + 1) / 2 / scale
        world = self.world
        best = None
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
                camera = (self._snap(cx - centre_x), self._snap(cy - centre_y))
                obj = SceneObject(id=0, shape=shape, colour=colour, size=size, row=row, col=col)
                indices = world._footprint_and_indices(obj, camera, resolution)[1]
                inter = np.count_nonzero(mask.ravel()[indices])
                iou = inter / (len(xs) + len(indices) - inter)
                if best is None or iou > best[2]:
                    best = (obj, camera, float(iou))
        return best

    def _snap(self, offset: float) -> int:
        return min(self.camera_values, key=lambda value: abs(value - offset))

    def _scene_at(self, camera, components, evidence, background, scale, resolution) -> ReadScene | None:
        """The objects of the components seen through ``camera``: for each, the shape, size and nearby cell whose
        footprint gathers the most evidence for its colour (a matched filter, robust to blurred edges)."""
        world = self.world
        objects, taken = [], set()
        for colour, mask in components:
            ys, xs = np.nonzero(mask)
            mean_x, mean_y, reach = xs.mean() / scale, ys.mean() / scale, 0.75 * world.cell
            cells = [
                (row, col)
                for row in range(world.grid)
                for col in range(world.grid)
                if abs(world._centre(row, col, camera)[0] - mean_x) <= reach
                and abs(world._centre(row, col, camera)[1] - mean_y) <= reach
            ]
            best = None
            colour_evidence = evidence[:, self.colours.index(colour)]
            for shape in world.shapes:
                for size in world.sizes:
                    for row, col in cells:
                        obj = SceneObject(id=len(objects), shape=shape, colour=colour, size=size, row=row, col=col)
                        indices = world._footprint_and_indices(obj, camera, resolution)[1]
                        score = float(colour_evidence[indices].sum())
                        if best is None or score > best[1]:
                            best = (obj, score)
            if best is None or (best[0].row, best[0].col) in taken:
                return None
            taken.add((best[0].row, best[0].col))
            objects.append(best[0])
        return ReadScene(background, camera, tuple(objects))

    def _unexplained(self, scene: ReadScene, frame: np.ndarray) -> float:
        """Share of the frame, away from the rendered edges, that the rendered scene does not match."""
        rendered = self.world.render(SceneState(scene.background, scene.objects, scene.camera), frame.shape[0])
        wrong = (np.abs(rendered.astype(np.int16) - frame) > EXPLAINED_TOLERANCE).any(-1)
        return float((wrong & ~_edge_band(rendered)).mean())


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
        self.objects = tuple(
            replace(o, previous_colours=known[(o.colour, o.shape)].previous_colours)
            if (o.colour, o.shape) in known
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
