"""MSE-Bench aggregation and reports (CSV like the official script, Markdown, per-turn success plot).

Aggregation (official): with ``N`` sessions, for every turn ``K`` the success rate is the number of sessions
whose turn ``K`` was judged successful divided by ``N``; because judging stops at the first failure this is the
fraction of sessions whose turns ``1..K`` all succeeded. The mean prompt-following, consistency and overall
``sqrt(pf * c)`` are also sums over judged turns divided by ``N``: unjudged turns count as 0.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..utils.io import atomic_path, atomic_write, write_text_atomic
from .judge import DEFAULT_SUCCESS_THRESHOLD, SessionJudgement

__all__ = ["TurnSummary", "summarize", "write_report"]

CSV_HEADER = ["Turn", "Success Rate", "Prompt Following", "Consistency", "Overall"]


@dataclass
class TurnSummary:
    """Aggregate of one turn over all sessions (means divide by all sessions, unjudged turns count 0)."""

    turn: int
    success_rate: float
    prompt_following: float
    consistency: float
    overall: float
    num_judged: int


def summarize(
    judgements: Sequence[SessionJudgement], num_turns: int, threshold: float = DEFAULT_SUCCESS_THRESHOLD
) -> list[TurnSummary]:
    """Per-turn aggregate of the official protocol.

    Args:
        judgements: One entry per session (all sessions of the benchmark, so ``N = len(judgements)``).
        num_turns: Number of turns to report.
        threshold: Success threshold (strict); verdicts after a session's first failure are ignored.
    """
    if not judgements:
        raise ValueError("`judgements` is empty: nothing to summarize.")
    if num_turns < 1:
        raise ValueError(f"`num_turns` must be >= 1, got {num_turns}.")
    totals = [{"success": 0, "pf": 0.0, "c": 0.0, "overall": 0.0, "judged": 0} for _ in range(num_turns)]
    for judgement in judgements:
        for turn, verdict in enumerate(judgement.verdicts[:num_turns]):
            total = totals[turn]
            total["judged"] += 1
            total["pf"] += verdict.prompt_following
            total["c"] += verdict.consistency
            total["overall"] += math.sqrt(verdict.prompt_following * verdict.consistency)
            if not verdict.success(threshold):
                break  # the protocol stops at the first failed turn
            total["success"] += 1
    count = len(judgements)
    return [
        TurnSummary(
            turn=turn + 1,
            success_rate=total["success"] / count,
            prompt_following=total["pf"] / count,
            consistency=total["c"] / count,
            overall=total["overall"] / count,
            num_judged=int(total["judged"]),
        )
        for turn, total in enumerate(totals)
    ]


def write_report(
    summary: Sequence[TurnSummary],
    output_dir: str | os.PathLike,
    name: str = "mse_bench",
    title: str = "MSE-Bench",
    metadata: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``{name}.csv`` (official columns), ``{name}.md``, ``{name}.json`` and ``{name}_success.png``.

    Args:
        summary: Output of :func:`summarize`.
        output_dir: Folder of the report files (created).
        name: File stem.
        title: Title of the Markdown table and of the plot (e.g. the model name).
        metadata: Settings recorded in the JSON and Markdown (judge model, threshold, sessions...).

    Returns:
        The written paths by kind (``csv``, ``markdown``, ``json``, ``plot``).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    metadata = dict(metadata or {})
    paths = {
        kind: output_dir / f"{name}{suffix}"
        for kind, suffix in [("csv", ".csv"), ("markdown", ".md"), ("json", ".json"), ("plot", "_success.png")]
    }

    with atomic_write(paths["csv"], newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(CSV_HEADER)
        for row in summary:
            writer.writerow(
                [f"turn{row.turn}"]
                + [f"{value:.4f}" for value in (row.success_rate, row.prompt_following, row.consistency, row.overall)]
            )

    lines = [f"## {title}", ""]
    lines += [f"- {key}: {value}" for key, value in metadata.items()]
    lines += [
        "",
        "| Turn | Success rate | Prompt following | Consistency | Overall | Judged |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {row.turn} | {100 * row.success_rate:.1f}% | {row.prompt_following:.3f} | "
        f"{row.consistency:.3f} | {row.overall:.3f} | {row.num_judged} |"
        for row in summary
    ]
    write_text_atomic(paths["markdown"], "\n".join(lines) + "\n")

    write_text_atomic(
        paths["json"], json.dumps({"metadata": metadata, "turns": [asdict(row) for row in summary]}, indent=2)
    )
    _plot_success(summary, paths["plot"], title)
    return paths


def _plot_success(summary: Sequence[TurnSummary], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    turns = [row.turn for row in summary]
    figure, axis = plt.subplots(figsize=(4.5, 3.2), dpi=120)
    axis.plot(turns, [100 * row.success_rate for row in summary], marker="o")
    axis.set_xticks(turns)
    axis.set_ylim(0, 100)
    axis.set_xlabel("turn")
    axis.set_ylabel("success rate (%)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary)
    plt.close(figure)
