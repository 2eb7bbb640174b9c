"""benchmarks/compare_bench.py: two ShapesBench runs on the same sessions compared item by item."""

from __future__ import annotations

import json

import pytest
from conftest import REPO, load_script, one_line_exit_2

from diffusers_vincie.evaluation.bench_compare import compare_runs, comparison_markdown, mcnemar_p
from diffusers_vincie.utils.cli import UsageError

compare_bench = load_script(REPO / "benchmarks" / "compare_bench.py", "compare_bench")

SEEDS = {"chained_and_ground_truth": 10_000_000, "drag": 11_000_000, "composition": 12_000_000, "story": 13_000_000}


def _turn(op: str, success: bool) -> dict:
    return {
        "op": op,
        "uses_history": False,
        "changed_iou": 0.5,
        "object_score": 0.5,
        "preserved": 0.96,
        "success": success,
    }


def _run(gt: list[list[bool]], chained: list[list[bool]], drag: list[bool], story: list[list[tuple]]) -> dict:
    ops = ("add", "move", "remove")
    return {
        "config": {"num_sessions": len(gt), "num_turns": 3},
        "first_seeds": dict(SEEDS),
        "turns": {
            "ground_truth/full": [[_turn(ops[k], ok) for k, ok in enumerate(session)] for session in gt],
            "chained/full": [[_turn(ops[k], ok) for k, ok in enumerate(session)] for session in chained],
            "drag/drag": [_turn("move", ok) for ok in drag],
            "story": [
                [{"direction": "left", "camera_change": change, "preserved": kept} for change, kept in session]
                for session in story
            ],
        },
    }


def test_mcnemar_p_is_the_exact_two_sided_binomial_tail():
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(3, 3) == 1.0
    assert mcnemar_p(0, 6) == pytest.approx(2 / 64)  # 2 x P(X <= 0), X ~ Bin(6, 1/2)
    assert mcnemar_p(9, 1) == pytest.approx(2 * (1 + 10) / 1024)
    assert mcnemar_p(2, 3) == pytest.approx(1.0)  # the tail beyond half is capped at 1


def test_compare_counts_the_items_only_one_run_passes_per_protocol_and_chained_turn():
    a = _run(
        gt=[[True, False, True], [False, False, True]],
        chained=[[True, False], [True, True, True]],
        drag=[True, False, False],
        story=[[(True, 0.99), (True, 0.90)]],
    )
    b = _run(
        gt=[[True, True, True], [True, False, False]],
        chained=[[False], [True, True, False]],
        drag=[True, True, True],
        story=[[(True, 0.99), (True, 0.99)]],
    )
    rows = {row["protocol"]: row for row in compare_runs(a, b)}
    assert set(rows) == {
        "ground_truth/full",
        "chained/full t1",
        "chained/full t2",
        "chained/full t3",
        "drag/drag",
        "story",
    }
    gt = rows["ground_truth/full"]
    assert (gt["items"], gt["success_a"], gt["success_b"], gt["only_a"], gt["only_b"]) == (6, 0.5, 4 / 6, 1, 2)
    # chained turn k: a session passes when its turns 1..k all succeeded (the bench's cumulative success)
    assert (rows["chained/full t1"]["only_a"], rows["chained/full t1"]["only_b"]) == (1, 0)
    assert (rows["chained/full t2"]["only_a"], rows["chained/full t2"]["only_b"]) == (0, 0)
    assert (rows["chained/full t3"]["success_a"], rows["chained/full t3"]["only_a"]) == (0.5, 1)
    assert (rows["drag/drag"]["only_a"], rows["drag/drag"]["only_b"], rows["drag/drag"]["p"]) == (0, 2, 0.5)
    # a story turn passes with the pan made and the unchanged pixels kept (>= 0.95)
    assert (rows["story"]["only_a"], rows["story"]["only_b"]) == (0, 1)
    table = comparison_markdown(list(rows.values()), "bicubic", "nearest")
    assert "| ground_truth/full | 6 | 0.500 | 0.667 | 1 | 2 | 1 |" in table
    assert "only nearest" in table.splitlines()[0]


def test_runs_on_other_sessions_are_refused():
    a = _run(gt=[[True, True, True]], chained=[[True, False]], drag=[True], story=[[(True, 1.0)]])
    other_seed = json.loads(json.dumps(a))
    other_seed["first_seeds"]["chained_and_ground_truth"] += 1
    with pytest.raises(UsageError, match="--seed"):
        compare_runs(a, other_seed)
    other_ops = json.loads(json.dumps(a))
    other_ops["turns"]["ground_truth/full"][0][1]["op"] = "recolour"
    with pytest.raises(UsageError, match="ground_truth/full` session 0"):
        compare_runs(a, other_ops)
    more = _run(gt=[[True] * 3, [True] * 3], chained=[[True], [True]], drag=[True], story=[[(True, 1.0)]])
    with pytest.raises(UsageError, match="--num_sessions"):
        compare_runs(a, more)
    disjoint = json.loads(json.dumps(a))
    disjoint["turns"] = {"composition": [{"num_objects": 2, "success": True}]}
    with pytest.raises(UsageError, match="share no protocol"):
        compare_runs(a, disjoint)


def test_cli_prints_the_table_and_a_bad_argument_is_one_line_and_exit_2(tmp_path, capsys):
    run = _run(gt=[[True, False, True]], chained=[[True, False]], drag=[True], story=[[(True, 1.0)]])
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "results.json").write_text(json.dumps(run))
    (tmp_path / "b.json").write_text(json.dumps(run))
    table = compare_bench.main([str(tmp_path / "a"), str(tmp_path / "b.json"), "--labels", "x,y"])
    assert "| ground_truth/full | 3 | 0.667 | 0.667 | 0 | 0 | 1 |" in table
    one_line_exit_2(
        lambda: compare_bench.main([str(tmp_path / "a"), str(tmp_path / "b.json"), "--labels", "x"]),
        capsys,
        "--labels",
    )
    one_line_exit_2(
        lambda: compare_bench.main([str(tmp_path / "missing"), str(tmp_path / "a")]), capsys, "has no results.json"
    )
