"""Paired comparison of two ShapesBench runs on the same sessions.

Two pipelines benchmarked on the same held-out sessions with the same noise seeds succeed or fail on the same
items: a ground-truth turn, a chained session's turns 1..k, a drag, a composed scene, a story turn. Most items
agree, so the difference is read from the items where they disagree: the count that only A passes, the count that
only B passes, and the exact two-sided McNemar test (under no difference each discordant item is equally likely
to go either way). This separates two runs far better than comparing their two rates.
"""

from __future__ import annotations

import math
from typing import Any

from ..utils.cli import UsageError
from .shapes_bench import chained_passes
from .shapes_bench_modes import story_turn_success

__all__ = ["comparison_markdown", "compare_runs", "item_outcomes", "mcnemar_p"]

# what identifies an item of each protocol (the op of a turn or drag, a scene's object count, a story's pan)
_ITEM_FIELDS = ("op", "num_objects", "direction")


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar p-value of ``only_a`` against ``only_b`` discordant items: the chance, were the
    two equally good, of a split at least as uneven."""
    discordant = only_a + only_b
    if discordant == 0:
        return 1.0
    tail = sum(math.comb(discordant, i) for i in range(min(only_a, only_b) + 1)) / 2**discordant
    return min(1.0, 2 * tail)


def item_outcomes(name: str, records: list, num_turns: int) -> dict[str, list[bool]]:
    """Per-item success of one entry of ``results.json``'s ``turns``. A chained mode gives one row per turn ``k``
    (each session's turns 1..k all succeeded: the bench's cumulative success), a story its turns (the asked pan
    made and the unchanged pixels kept), the other protocols their turns or items."""
    if name.startswith("chained/"):
        passes = [chained_passes([turn["success"] for turn in session], num_turns) for session in records]
        return {f"{name} t{k + 1}": [session[k] for session in passes] for k in range(num_turns)}
    if name == "story":
        return {
            name: [
                story_turn_success(turn["camera_change"], turn["preserved"]) for session in records for turn in session
            ]
        }
    if name.startswith("ground_truth/"):
        return {name: [turn["success"] for session in records for turn in session]}
    return {name: [item["success"] for item in records]}


def _identities(records: list) -> list[list[tuple]]:
    """What each item is (op, object count or pan), session by session (a drag or a composed scene is a session of
    one item); a chained session's list stops at its first failure."""
    sessions = [[item] for item in records] if records and isinstance(records[0], dict) else records
    return [[tuple(item.get(field) for field in _ITEM_FIELDS) for item in session] for session in sessions]


def _check_same_items(name: str, a: list, b: list) -> None:
    if len(a) != len(b):
        raise UsageError(
            f"`{name}` holds {len(a)} sessions in one run and {len(b)} in the other: not the same sessions."
        )
    full = not name.startswith("chained/")  # chained sessions stop at different turns: compare the common turns
    for index, (items_a, items_b) in enumerate(zip(_identities(a), _identities(b))):
        common = min(len(items_a), len(items_b))
        if items_a[:common] != items_b[:common] or (full and len(items_a) != len(items_b)):
            raise UsageError(
                f"`{name}` session {index} differs between the two runs ({items_a} against {items_b}): they were not "
                "benchmarked on the same sessions (same --seed, --num_sessions, --num_turns and world)."
            )


def compare_runs(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per protocol entry (per turn for chained modes) that both ``results.json`` hold: items, both success
    rates, the items only A / only B passes and the exact McNemar p-value.

    Raises:
        UsageError: the runs were not made on the same sessions, or share no protocol.
    """
    for run in (a, b):
        if not isinstance(run.get("turns"), dict) or not isinstance(run.get("config"), dict):
            raise UsageError(
                "A results.json without `turns` and `config`: give the output of benchmarks/shapes_bench.py."
            )
    for key in ("num_sessions", "num_turns"):
        if a["config"].get(key) != b["config"].get(key):
            raise UsageError(
                f"The runs differ in --{key} ({a['config'].get(key)} against {b['config'].get(key)}): compare runs "
                "made on the same sessions."
            )
    if a.get("first_seeds") != b.get("first_seeds"):
        raise UsageError(
            f"The runs start from different session seeds ({a.get('first_seeds')} against {b.get('first_seeds')}): "
            "compare runs made with the same --seed."
        )
    rows = []
    for name in a["turns"]:
        if name not in b["turns"]:
            continue
        _check_same_items(name, a["turns"][name], b["turns"][name])
        outcomes_b = item_outcomes(name, b["turns"][name], b["config"]["num_turns"])
        for label, passed_a in item_outcomes(name, a["turns"][name], a["config"]["num_turns"]).items():
            passed_b = outcomes_b[label]
            only_a = sum(x and not y for x, y in zip(passed_a, passed_b))
            only_b = sum(y and not x for x, y in zip(passed_a, passed_b))
            rows.append(
                {
                    "protocol": label,
                    "items": len(passed_a),
                    "success_a": sum(passed_a) / len(passed_a) if passed_a else float("nan"),
                    "success_b": sum(passed_b) / len(passed_b) if passed_b else float("nan"),
                    "only_a": only_a,
                    "only_b": only_b,
                    "p": mcnemar_p(only_a, only_b),
                }
            )
    if not rows:
        raise UsageError(f"The runs share no protocol (one has {sorted(a['turns'])}, the other {sorted(b['turns'])}).")
    return rows


def comparison_markdown(rows: list[dict[str, Any]], label_a: str = "A", label_b: str = "B") -> str:
    """The rows of :func:`compare_runs` as a markdown table."""
    lines = [
        f"| protocol | items | {label_a} | {label_b} | only {label_a} | only {label_b} | p (exact McNemar) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['protocol']} | {row['items']} | {row['success_a']:.3f} | {row['success_b']:.3f} | "
            f"{row['only_a']} | {row['only_b']} | {row['p']:.2g} |"
        )
    return "\n".join(lines) + "\n"
