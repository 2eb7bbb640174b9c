"""Session bench: an offline, exactly scored multi-turn benchmark on the synthetic shapes world (no VLM).

The sessions are drawn from :class:`~diffusers_vincie.data.shapes.world.SyntheticWorld` (add, remove, move,
recolour, resize, and the history edits "bring back ..." and "make ... the colour it was before"), the editor is
run with :func:`~diffusers_vincie.evaluation.generate.generate_outputs` (same resumable naming as MSE-Bench),
and every turn is scored with :func:`~diffusers_vincie.data.shapes.score.score_edit` against the exact ground
truth, with the model's previous output as the edited source (turns are chained). The MSE-Bench protocol is
kept: a turn succeeds when ``score_edit`` says so (changed region where the instruction says, the right object
there, the rest preserved), a session stops at its first failure, and the same report is written with

- ``prompt_following = 10 * min(changed_iou, object_score)`` (did the right region change into the right thing),
- ``consistency = 10 * preserved`` (fraction of the unchanged pixels kept),

so the table reads like the VLM one. ``session_bench_turns.csv`` holds every turn's raw scores.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from .generate import Editor, generate_outputs
from .judge import SessionJudgement, TurnVerdict
from .report import summarize, write_report
from .sessions import EditSession, output_path

__all__ = ["ExactVerdict", "IdentityEditor", "build_bench_sessions", "run_session_bench", "score_bench"]


@dataclass
class ExactVerdict(TurnVerdict):
    """A verdict whose success is decided by the exact scorer, not by a score threshold."""

    passed: bool = False
    op: str = ""

    def success(self, threshold: float = 0.0) -> bool:
        return self.passed


class IdentityEditor:
    """Baseline that returns the last image unchanged (the floor of the bench)."""

    def __call__(self, images: list[PIL.Image.Image], instructions: list[str], seed: int) -> PIL.Image.Image:
        return images[-1].copy()


def build_bench_sessions(num_sessions: int, num_turns: int = 5, seed: int = 0, image_size: int = 256,
                         **world_kwargs: Any) -> list[Any]:
    """Draw ``num_sessions`` synthetic sessions; session ``i`` uses seed ``seed + i`` (deterministic).

    Args:
        num_sessions: Number of sessions.
        num_turns: Edits per session.
        seed: Seed of the first session.
        image_size: Side of the square frames (use the editor's working resolution).
        world_kwargs: Other :class:`SyntheticWorld` arguments (grid, colours, op_weights, ...).
    """
    from diffusers_vincie.data.shapes.world import SyntheticWorld

    if num_sessions < 1:
        raise ValueError(f"`num_sessions` must be >= 1, got {num_sessions}.")
    world = SyntheticWorld(resolution=image_size, **world_kwargs)
    return [world.sample_session(seed + i, num_turns=num_turns) for i in range(num_sessions)]


def _as_edit_session(index: int, synthetic: Any) -> EditSession:
    return EditSession(index=str(index), source=PIL.Image.fromarray(synthetic.frames[0]),
                       instructions=list(synthetic.instructions), operations=synthetic.ops)


def _load_output(path: Path, size: int) -> np.ndarray:
    with PIL.Image.open(path) as stored:
        image = stored.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), PIL.Image.BICUBIC)
    return np.asarray(image)


def score_bench(synthetic_sessions: list[Any], outputs_dir: str | os.PathLike) -> tuple[list[SessionJudgement], list[dict]]:
    """Score the outputs of every session turn by turn, stopping each session at its first failed turn.

    Returns:
        The judgements (for :func:`summarize`) and one row of raw scores per scored turn.
    """
    from diffusers_vincie.data.shapes.score import score_edit

    judgements, rows = [], []
    for index, synthetic in enumerate(synthetic_sessions):
        size = synthetic.frames[0].shape[0]
        source = synthetic.frames[0]
        verdicts: list[TurnVerdict] = []
        for turn in range(synthetic.num_turns):
            prediction = _load_output(output_path(outputs_dir, str(index), turn, index), size)
            score = score_edit(prediction, synthetic, turn, source_rgb=source)
            verdicts.append(ExactVerdict(prompt_following=10 * min(score.changed_iou, score.object_score),
                                         consistency=10 * score.preserved, passed=score.success, op=score.op))
            rows.append({"session": index, "turn": turn + 1, "op": score.op, "changed_iou": score.changed_iou,
                         "object_score": score.object_score, "preserved": score.preserved, "success": score.success})
            if not score.success:
                break
            source = prediction
        judgements.append(SessionJudgement(str(index), verdicts))
    return judgements, rows


def run_session_bench(editor: Editor, report_dir: str | os.PathLike, num_sessions: int = 50, num_turns: int = 5,
                      seed: int = 0, image_size: int = 256, title: str | None = None,
                      **world_kwargs: Any) -> dict[str, Path]:
    """Generate (resumable) and score the session bench, and write the MSE-Bench-style report.

    Args:
        editor: The editor under test (see :class:`~diffusers_vincie.evaluation.generate.Editor`).
        report_dir: Folder of ``outputs/`` and of the report files ``session_bench.*``.
        num_sessions: Number of sessions.
        num_turns: Edits per session.
        seed: Seed of the first session.
        image_size: Side of the frames.
        title: Title of the report.
        world_kwargs: Other :class:`SyntheticWorld` arguments.

    Returns:
        The written report paths (``csv``, ``markdown``, ``json``, ``plot``, ``turns``).
    """
    report_dir = Path(report_dir)
    synthetic_sessions = build_bench_sessions(num_sessions, num_turns, seed, image_size, **world_kwargs)
    sessions = [_as_edit_session(i, s) for i, s in enumerate(synthetic_sessions)]
    generate_outputs(editor, sessions, report_dir / "outputs", seed_offset=0)
    judgements, rows = score_bench(synthetic_sessions, report_dir / "outputs")
    summary = summarize(judgements, num_turns)
    metadata = {"judge": "exact (score_edit)", "sessions": num_sessions, "turns": num_turns, "seed": seed,
                "image_size": image_size}
    paths = write_report(summary, report_dir, name="session_bench", title=title or "Session bench", metadata=metadata)
    paths["turns"] = report_dir / "session_bench_turns.csv"
    with open(paths["turns"], "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return paths
