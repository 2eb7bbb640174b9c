"""Composition and story sessions of the shapes world: the kinds of clip a real video corpus holds beside edits.

* **Composition** (:func:`sample_composition_session`): shots that introduce objects one by one, each alone on
  its own background (a cut: the background changes), then a shot of a scene with all of them. The transitions
  are worded ``"show a big red circle"`` (a new reference shot) and ``"show the red circle at the top left and
  the blue square at the bottom right"`` (the composed scene, objects in the order they were introduced), so a
  model learns to compose the objects of earlier frames where it is told.
* **Story** (:func:`sample_story_session`): one scene filmed with camera moves only (``"pan the camera left"``),
  so a model learns to keep the content and make the asked camera change.

Both return a :class:`~.world.ShapesSession` of the world (frames, exact masks, states), so videos, sidecars and
the annotators treat them like any session. The regions of editing of a shot change are every object of each
frame, as for a pan. Neither changes :class:`~.world.ShapesWorld` or its default sessions.
"""

from __future__ import annotations

import random

import numpy as np

from .world import (
    _COL_WORDS,
    _ROW_WORDS,
    Edit,
    SceneObject,
    SceneState,
    ShapesSession,
    ShapesWorld,
    _StateView,
    changed_pixels,
)

__all__ = [
    "SHOT_OPS",
    "SHOT_WORDS",
    "compose_instruction",
    "introduce_instruction",
    "sample_composition_session",
    "sample_story_session",
    "shot_edit_masks",
]

SHOT_OPS: frozenset[str] = frozenset({"introduce", "compose"})
# Words of the shot instructions beyond the world's vocabulary (a tokenizer for composition data needs them).
SHOT_WORDS: tuple[str, ...] = ("and", "show")


def introduce_instruction(world: ShapesWorld, obj: SceneObject) -> str:
    """A new reference shot of ``obj`` alone: ``"show a big red circle"``."""
    return f"show {world._article(obj.size)} {obj.size} {obj.colour} {obj.shape}"


def compose_instruction(world: ShapesWorld, objects: list[SceneObject]) -> str:
    """The composed scene, objects in the order they were introduced."""
    parts = [f"the {o.name} at the {_ROW_WORDS[world.grid][o.row]} {_COL_WORDS[world.grid][o.col]}" for o in objects]
    return "show " + " and ".join(parts)


def shot_edit_masks(
    world: ShapesWorld, edit: Edit, before: SceneState, after: SceneState, resolution: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Regions of editing of any edit: every object of each frame for a shot change, the world's otherwise."""
    if edit.op not in SHOT_OPS:
        return world.edit_masks(edit, before, after, resolution)
    resolution = resolution or world.resolution
    masks = []
    for state in (before, after):
        mask = np.zeros((resolution, resolution), dtype=bool)
        for obj in state.objects:
            mask |= world.footprint(obj, state.camera, resolution)
        masks.append(mask)
    return masks[0], masks[1]


def _session(world: ShapesWorld, states: list[SceneState], edits: list[Edit], seed: int | None) -> ShapesSession:
    frames = [world.render(state) for state in states]
    masks = [shot_edit_masks(world, edit, states[t], states[t + 1]) for t, edit in enumerate(edits)]
    return ShapesSession(
        frames=frames,
        instructions=[edit.instruction for edit in edits],
        edits=edits,
        source_masks=[m[0] for m in masks],
        target_masks=[m[1] for m in masks],
        changed_masks=[changed_pixels(a, b) for a, b in zip(frames, frames[1:])],
        states=states,
        seed=seed,
        world=world,
    )


def sample_composition_session(world: ShapesWorld, seed: int, num_objects: int | None = None) -> ShapesSession:
    """Reference shots of ``num_objects`` objects (default 2 or 3), one at a time in the centre cell, each on
    another background than the shot before, then the scene with all of them (``num_objects`` transitions).

    Args:
        world: the world (needs >= 2 backgrounds, so that every shot change is a visible cut).
        seed: the same seed gives the same session.
        num_objects: objects to compose, 2 .. ``world.max_objects``.
    """
    if len(world.backgrounds) < 2:
        raise ValueError("world: composition shots need at least 2 backgrounds (each shot change is a cut).")
    rng = random.Random(seed)
    most = min(3, world.max_objects)
    count = num_objects if num_objects is not None else rng.randint(2, max(2, most))
    if not 2 <= count <= world.max_objects:
        raise ValueError(f"num_objects: must lie in 2..{world.max_objects} (max_objects), got {count}.")
    pairs = rng.sample([(c, s) for c in world.colours for s in world.shapes], count)
    cells = rng.sample([(r, c) for r in range(world.grid) for c in range(world.grid)], count)
    objects = [
        SceneObject(id=i, shape=s, colour=c, size=rng.choice(list(world.sizes)), row=r, col=col)
        for i, ((c, s), (r, col)) in enumerate(zip(pairs, cells))
    ]
    centre = world.grid // 2
    backgrounds: list[str] = []
    for _ in range(count + 1):  # consecutive shots differ in background
        backgrounds.append(rng.choice([b for b in world.backgrounds if not backgrounds or b != backgrounds[-1]]))
    shots = [SceneState(bg, (SceneObject(o.id, o.shape, o.colour, o.size, centre, centre),)) for bg, o in zip(backgrounds, objects)]  # fmt: skip
    states = [*shots, SceneState(backgrounds[-1], tuple(objects))]
    edits = [Edit("introduce", introduce_instruction(world, o), shots[k].objects[0], shots[k + 1].objects[0])
             for k, o in enumerate(objects[1:])]  # fmt: skip
    edits.append(Edit("compose", compose_instruction(world, objects), shots[-1].objects[0], None))
    return _session(world, states, edits, seed)


def sample_story_session(world: ShapesWorld, seed: int, num_turns: int = 5) -> ShapesSession:
    """One scene of the world filmed with ``num_turns`` camera pans (no object changes)."""
    if not isinstance(num_turns, int) or num_turns < 1:
        raise ValueError(f"num_turns: must be an int >= 1, got {num_turns!r}.")
    rng = random.Random(seed)
    states = [world.sample_scene(rng)]
    edits = []
    for _ in range(num_turns):
        direction = rng.choice(world._arguments("pan", _StateView(states[-1])))
        state, edit = world._apply_pan(states[-1], direction, rng)
        states.append(state)
        edits.append(edit)
    return _session(world, states, edits, seed)
