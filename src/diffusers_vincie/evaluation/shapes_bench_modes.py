"""ShapesBench protocols of the other editing modes: drag, composition from reference images, and story.

Each is exact and seeded like the chained and ground-truth-context protocols of :mod:`.shapes_bench`, with its
own sessions in the bench's held-out seed range (the recipes train on world seeds below 8,000,000 or on videos
whose hashed seeds miss 10,000,000-50,000,000; the chained and ground-truth sessions start at 10,000,000) at
distinct offsets, so that no two protocols share a session:

* **drag** (:func:`run_drag`, sessions from :data:`DRAG_SEED` = 11,000,000): first-turn move edits. Session ``i``
  is ``world.sample_session(DRAG_SEED + i, num_turns=1)``; the seeds whose edit is not a "move" are skipped. Each
  move is edited with ``VincieEditingSession.drag``: the true current-frame mask of the moved object and the true
  offset (the move of the object's centroid, in pixels), so the next-frame mask is the current one translated.
  The same edits are also made with the instruction alone (``instruction_success``, the baseline). Scored by
  :func:`~diffusers_vincie.data.shapes.score.score_edit` against the exact next frame.
* **composition** (:func:`run_composition`, sessions from :data:`COMPOSITION_SEED` = 12,000,000): session ``i``
  is ``sample_composition_session(world, COMPOSITION_SEED + i, num_objects)``: reference shots of 2 or 3 objects
  (each alone, worded ``"show a big red circle"``), then the scene with all of them (``"show the red circle at
  the top left and the blue square at the bottom right"``). The model gets the reference frames and their
  instructions as the session's context and is asked for the composed scene; scored by
  :func:`~diffusers_vincie.data.shapes.score.score_composition` (every object at its cell with its colour and
  shape, the rest a clean background of those the session could have drawn: the instruction names none).
* **story** (:func:`run_story`, sessions from :data:`STORY_SEED` = 13,000,000): session ``i`` is
  ``sample_story_session(world, STORY_SEED + i, num_turns)``, a scene filmed with camera pans only (``"pan the
  camera left"``). Chained over every turn (each output is the next turn's input, one editing session per story,
  no stop at a failure); each turn is scored by :func:`~diffusers_vincie.data.shapes.score.score_camera_turn`
  from the input the model was given: a story's scene never changes, so the input's camera is the one (in whole
  pan steps) whose rendering of the scene is closest to it (the true camera while the chain is on track). The
  asked pan is made when the output is strictly closer to the scene seen from that camera moved one step in the
  asked direction than to it unmoved or moved any other way (with the true input: the true next frame against
  no pan and the other three pans); consistency is the fraction of the pixels that pan leaves unchanged that the
  output keeps. A model that keeps its input unchanged keeps every pixel and never makes the asked change.

Every protocol, these and the chained and ground-truth ones, counts its degenerate outputs (mean brightness below
10/255 or one flat colour, :class:`~.shapes_bench.DegenerateOutputs`). Session ``i`` of every protocol draws its
noise from seed ``i``.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
import PIL.Image
import torch
from tqdm.auto import tqdm

from ..data.shapes.score import (
    NEAR_BLACK_BRIGHTNESS,
    CameraTurnScore,
    CompositionScore,
    EditScore,
    score_camera_turn,
    score_composition,
    score_edit,
)
from ..data.shapes.shots import sample_composition_session, sample_story_session
from ..data.shapes.world import ShapesSession, ShapesWorld
from .shapes_bench import DegenerateOutputs, ground_truth_edit

__all__ = [
    "COMPOSITION_SEED",
    "DRAG_SEED",
    "MODE_PROTOCOLS",
    "STORY_KEEP_THRESHOLD",
    "STORY_SEED",
    "build_composition_sessions",
    "build_drag_sessions",
    "build_story_sessions",
    "drag_offset",
    "modes_markdown",
    "run_composition",
    "run_drag",
    "run_story",
    "story_turn_success",
    "summarize_modes",
]

MODE_PROTOCOLS = ("drag", "composition", "story")
DRAG_SEED = 11_000_000
COMPOSITION_SEED = 12_000_000
STORY_SEED = 13_000_000
# A story turn succeeds when the asked pan is made and at least this fraction of the unchanged pixels is kept.
STORY_KEEP_THRESHOLD = 0.95
# A world whose moves are this rare (below 1 in 200 first edits) cannot give the drag protocol its edits.
_MAX_DRAWS_PER_MOVE = 200


def _rgb(image: PIL.Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def _check_count(num_sessions: int) -> None:
    if not isinstance(num_sessions, int) or num_sessions < 1:
        raise ValueError(f"`num_sessions` must be an int >= 1, got {num_sessions!r}.")


# =====================================================================================================
#                                                 Drag
# =====================================================================================================


def build_drag_sessions(
    num_sessions: int, seed: int = DRAG_SEED, image_size: int = 32, **world_kwargs: Any
) -> list[ShapesSession]:
    """The first ``num_sessions`` one-turn sessions from seed ``seed`` on whose edit is a "move" (deterministic).

    Args:
        num_sessions: Number of move edits.
        seed: Seed of the first session drawn.
        image_size: Side of the square frames.
        world_kwargs: Other :class:`ShapesWorld` arguments (grid, colours, op_weights, ...).
    """
    _check_count(num_sessions)
    world = ShapesWorld(resolution=image_size, **world_kwargs)
    sessions: list[ShapesSession] = []
    for offset in range(_MAX_DRAWS_PER_MOVE * num_sessions):
        session = world.sample_session(seed + offset, num_turns=1)
        if session.edits[0].op == "move":
            sessions.append(session)
            if len(sessions) == num_sessions:
                return sessions
    raise ValueError(
        f"world_kwargs: found {len(sessions)} move edits in {_MAX_DRAWS_PER_MOVE * num_sessions} sessions; give "
        "'move' a larger op weight."
    )


def drag_offset(session: ShapesSession, turn: int = 0) -> tuple[float, float]:
    """The true ``(dx, dy)`` in pixels of move ``turn``: the shift of the object's centroid between its masks."""
    if session.edits[turn].op != "move":
        raise ValueError(f"session: transition {turn} is {session.edits[turn].op!r}, not a move.")
    (y0, x0), (y1, x1) = (
        np.argwhere(mask).mean(axis=0) for mask in (session.source_masks[turn], session.target_masks[turn])
    )
    return float(x1 - x0), float(y1 - y0)


def run_drag(
    pipe, sessions: list[ShapesSession], sampling: dict, degenerate: DegenerateOutputs | None = None
) -> dict[str, list[EditScore]]:
    """Each session's first-turn move made by drag (true current mask and offset) and by the instruction alone;
    the scores of both (``"drag"``, ``"instruction"``). Drag outputs are counted by ``degenerate`` when given."""
    results: dict[str, list[EditScore]] = {"drag": [], "instruction": []}
    for index, session in enumerate(tqdm(sessions, desc="drag", leave=False)):
        generator = torch.Generator().manual_seed(index)
        size = session.frames[0].shape[0]
        editing = pipe.start_session(PIL.Image.fromarray(session.frames[0]), resolution=size, generator=generator)
        output = _rgb(
            editing.drag(
                session.instructions[0],
                translate=drag_offset(session),
                current_mask=session.source_masks[0],
                generator=generator,
                **sampling,
            )
        )
        if degenerate is not None:
            degenerate.check(output)
        results["drag"].append(score_edit(output, session, 0))
        plain = ground_truth_edit(pipe, session, 0, "full", sampling, seed=index)
        results["instruction"].append(score_edit(plain, session, 0))
    return results


# =====================================================================================================
#                                             Composition
# =====================================================================================================


def build_composition_sessions(
    num_sessions: int,
    seed: int = COMPOSITION_SEED,
    num_objects: int | None = None,
    image_size: int = 32,
    **world_kwargs: Any,
) -> list[ShapesSession]:
    """Composition sessions; session ``i`` is ``sample_composition_session(world, seed + i, num_objects)``.

    Args:
        num_sessions: Number of sessions.
        seed: Seed of the first session.
        num_objects: Objects (= reference images) per session, 2 .. the world's ``max_objects`` (the bench uses 2
            or 3); ``None`` lets each session draw 2 or 3.
        image_size: Side of the square frames.
        world_kwargs: Other :class:`ShapesWorld` arguments.
    """
    _check_count(num_sessions)
    world = ShapesWorld(resolution=image_size, **world_kwargs)
    return [sample_composition_session(world, seed + i, num_objects) for i in range(num_sessions)]


def run_composition(
    pipe, sessions: list[ShapesSession], sampling: dict, degenerate: DegenerateOutputs | None = None
) -> list[CompositionScore]:
    """The composed scene of each session, asked after its reference frames and their instructions, scored."""
    scores = []
    for index, session in enumerate(tqdm(sessions, desc="composition", leave=False)):
        output = ground_truth_edit(pipe, session, session.num_turns - 1, "full", sampling, seed=index)
        if degenerate is not None:
            degenerate.check(output)
        scores.append(score_composition(output, session))
    return scores


# =====================================================================================================
#                                                Story
# =====================================================================================================


def build_story_sessions(
    num_sessions: int, num_turns: int = 5, seed: int = STORY_SEED, image_size: int = 32, **world_kwargs: Any
) -> list[ShapesSession]:
    """Story sessions; session ``i`` is ``sample_story_session(world, seed + i, num_turns)`` (pans only)."""
    _check_count(num_sessions)
    world = ShapesWorld(resolution=image_size, **world_kwargs)
    return [sample_story_session(world, seed + i, num_turns) for i in range(num_sessions)]


def run_story(
    pipe, sessions: list[ShapesSession], sampling: dict, degenerate: DegenerateOutputs | None = None
) -> list[list[CameraTurnScore]]:
    """Every turn of each story, chained in one editing session (no stop at a failure), scored per turn."""
    results = []
    for index, session in enumerate(tqdm(sessions, desc="story", leave=False)):
        generator = torch.Generator().manual_seed(index)
        size = session.frames[0].shape[0]
        editing = pipe.start_session(PIL.Image.fromarray(session.frames[0]), resolution=size, generator=generator)
        source, scores = session.frames[0], []
        for turn, instruction in enumerate(session.instructions):
            output = _rgb(editing.edit(instruction, generator=generator, **sampling))
            if degenerate is not None:
                degenerate.check(output)
            scores.append(score_camera_turn(output, session, turn, source_rgb=source))
            source = output
        results.append(scores)
    return results


# =====================================================================================================
#                                           Summary and report
# =====================================================================================================


def _mean(values) -> float:
    values = list(values)
    return float(np.mean(values)) if values else float("nan")


def story_turn_success(camera_change: bool, preserved: float) -> bool:
    """A story turn succeeds when the asked pan was made and at least ``STORY_KEEP_THRESHOLD`` of the pixels it
    leaves unchanged were kept."""
    return bool(camera_change) and preserved >= STORY_KEEP_THRESHOLD


def summarize_modes(
    drag: dict[str, list[EditScore]] | None = None,
    composition: list[CompositionScore] | None = None,
    story: list[list[CameraTurnScore]] | None = None,
) -> dict[str, Any]:
    """The numbers of the protocols that ran (JSON-able), with every turn's scores under ``"turns"``."""
    summary: dict[str, Any] = {"turns": {}}
    if drag is not None:
        summary["drag"] = {
            "success": _mean(s.success for s in drag["drag"]),
            "n": len(drag["drag"]),
            "instruction_success": _mean(s.success for s in drag["instruction"]),
            **{
                f"mean_{name}": _mean(getattr(s, name) for s in drag["drag"])
                for name in ("changed_iou", "object_score", "preserved")
            },
        }
        summary["turns"].update({f"drag/{name}": [asdict(s) for s in scores] for name, scores in drag.items()})
    if composition is not None:
        counts = sorted({s.num_objects for s in composition})
        summary["composition"] = {
            "success": _mean(s.success for s in composition),
            "n": len(composition),
            "mean_objects_found": _mean(s.objects_found for s in composition),
            "mean_background": _mean(s.background for s in composition),
            "per_num_objects": {
                str(count): {
                    "success": _mean(s.success for s in composition if s.num_objects == count),
                    "n": sum(s.num_objects == count for s in composition),
                }
                for count in counts
            },
        }
        summary["turns"]["composition"] = [asdict(s) for s in composition]
    if story is not None:
        flat = [s for scores in story for s in scores]
        turns = max((len(scores) for scores in story), default=0)
        summary["story"] = {
            "camera_change": _mean(s.camera_change for s in flat),
            "preserved": _mean(s.preserved for s in flat),
            "success": _mean(story_turn_success(s.camera_change, s.preserved) for s in flat),
            "input_on_track": _mean(tuple(s.input_offset) == (0, 0) for s in flat),
            "n_turns": len(flat),
            "n_sessions": len(story),
            "per_turn_camera_change": [
                _mean(scores[k].camera_change for scores in story if len(scores) > k) for k in range(turns)
            ],
            "per_turn_preserved": [
                _mean(scores[k].preserved for scores in story if len(scores) > k) for k in range(turns)
            ],
            "closest": {name: sum(s.closest == name for s in flat) for name in sorted({s.closest for s in flat})},
        }
        summary["turns"]["story"] = [[asdict(s) for s in scores] for scores in story]
    return summary


def modes_markdown(summary: dict[str, Any]) -> str:
    """The tables of the drag, composition and story protocols and of the degenerate outputs (those present)."""
    lines: list[str] = []
    if "drag" in summary:
        row = summary["drag"]
        lines += [
            f"Drag on first-turn move edits (true current mask and offset), {row['n']} edits:",
            "",
            "| drag success | instruction-only success | changed-region IoU | object score | preserved |",
            "|---|---|---|---|---|",
            f"| {row['success']:.3f} | {row['instruction_success']:.3f} | {row['mean_changed_iou']:.3f} | "
            f"{row['mean_object_score']:.3f} | {row['mean_preserved']:.3f} |",
            "",
        ]
    if "composition" in summary:
        row = summary["composition"]
        per_count = ", ".join(
            f"{count} objects {value['success']:.3f} (n={value['n']})"
            for count, value in row["per_num_objects"].items()
        )
        lines += [
            f"Composition from the reference frames, {row['n']} sessions ({per_count}):",
            "",
            "| success | objects found | background kept |",
            "|---|---|---|",
            f"| {row['success']:.3f} | {row['mean_objects_found']:.3f} | {row['mean_background']:.3f} |",
            "",
        ]
    if "story" in summary:
        row = summary["story"]
        turns = len(row["per_turn_camera_change"])
        lines += [
            f"Story (camera pans, chained, every turn), {row['n_sessions']} sessions, {row['n_turns']} turns:",
            "",
            "| | " + " | ".join(f"turn {k + 1}" for k in range(turns)) + " | all turns |",
            "|---|" + "---|" * (turns + 1),
            "| asked camera change made | "
            + " | ".join(f"{v:.3f}" for v in row["per_turn_camera_change"])
            + f" | {row['camera_change']:.3f} |",
            "| unchanged pixels kept | "
            + " | ".join(f"{v:.3f}" for v in row["per_turn_preserved"])
            + f" | {row['preserved']:.3f} |",
            "",
            f"Both (change made and >= {STORY_KEEP_THRESHOLD} kept): {row['success']:.3f}; input on track (the true "
            f"camera): {row['input_on_track']:.3f}; closest candidate: "
            + ", ".join(f"{name} {count}" for name, count in row["closest"].items())
            + ".",
            "",
        ]
    if summary.get("degenerate_outputs"):
        lines += [
            f"Degenerate outputs (mean brightness < {NEAR_BLACK_BRIGHTNESS:g}/255, or one flat colour):",
            "",
            "| protocol | outputs | near-black | constant |",
            "|---|---|---|---|",
        ]
        for name, counts in summary["degenerate_outputs"].items():
            lines.append(f"| {name} | {counts['outputs']} | {counts['near_black']} | {counts['constant']} |")
        lines.append("")
    return "\n".join(lines)
