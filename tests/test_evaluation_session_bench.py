"""Session bench on the synthetic world: exact success with oracle, identity and mixed editors, via the CLI too."""

from __future__ import annotations

import csv
import os
import sys
import types

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import PIL.Image
import pytest

from diffusers_vincie.data.shapes.score import EDIT_TESTS, score_edit
from diffusers_vincie.evaluation.__main__ import main
from diffusers_vincie.evaluation.shapes_bench import (
    IdentityEditor,
    build_bench_sessions,
    run_session_bench,
    summarize,
)

NUM_SESSIONS, NUM_TURNS, SIZE = 6, 3, 48


class OracleEditor:
    """Returns the true next frame of the session whose source it is given; identity for odd sessions if asked."""

    def __init__(self, only_even: bool = False):
        self.sessions = build_bench_sessions(NUM_SESSIONS, NUM_TURNS, seed=0, image_size=SIZE)
        self.by_source = {s.frames[0].tobytes(): i for i, s in enumerate(self.sessions)}
        self.only_even = only_even

    def __call__(self, images, instructions, seed):
        index = self.by_source[images[0].tobytes()]
        if self.only_even and index % 2:
            return images[-1].copy()
        return PIL.Image.fromarray(self.sessions[index].frames[len(images)])


def read_csv(path):
    with open(path, newline="") as stream:
        return list(csv.reader(stream))


def test_oracle_succeeds_everywhere_identity_nowhere(tmp_path):
    oracle = run_session_bench(OracleEditor(), tmp_path / "oracle", NUM_SESSIONS, NUM_TURNS, image_size=SIZE)
    rows = read_csv(oracle["csv"])
    assert [row[1:] for row in rows[1:]] == [["1.0000", "10.0000", "10.0000", "10.0000"]] * NUM_TURNS

    identity = run_session_bench(IdentityEditor(), tmp_path / "identity", NUM_SESSIONS, NUM_TURNS, image_size=SIZE)
    rows = read_csv(identity["csv"])
    assert [float(row[1]) for row in rows[1:]] == [0.0] * NUM_TURNS
    turns = read_csv(identity["turns"])
    assert len(turns) == 1 + NUM_SESSIONS  # every session stops at its first (failed) turn
    assert all(row[turns[0].index("success")] == "False" for row in turns[1:])


def test_mixed_editor_matches_hand_computation_and_resumes(tmp_path):
    paths = run_session_bench(OracleEditor(only_even=True), tmp_path, NUM_SESSIONS, NUM_TURNS, image_size=SIZE)
    rows = [[float(value) for value in row[1:]] for row in read_csv(paths["csv"])[1:]]
    half = NUM_SESSIONS // 2
    # Even sessions succeed at every turn; odd ones fail at turn 1, so later turns only hold the even ones.
    assert [row[0] for row in rows] == [0.5] * NUM_TURNS
    assert rows[1][1:] == pytest.approx([10 * half / NUM_SESSIONS] * 3)
    assert rows[2][1:] == pytest.approx([10 * half / NUM_SESSIONS] * 3)

    mtime = os.path.getmtime(tmp_path / "outputs" / "0_turn0_rep0_seed0.png")
    calls = []

    def counting(images, instructions, seed):
        calls.append(seed)
        return images[-1]

    run_session_bench(counting, tmp_path, NUM_SESSIONS, NUM_TURNS, image_size=SIZE)
    assert calls == [] and os.path.getmtime(tmp_path / "outputs" / "0_turn0_rep0_seed0.png") == mtime


def test_session_bench_cli_with_an_importable_editor(tmp_path, monkeypatch, capsys):
    module = types.ModuleType("fake_editors_for_session_bench")
    module.Oracle = OracleEditor
    monkeypatch.setitem(sys.modules, module.__name__, module)
    assert (
        main(
            [
                "session-bench",
                "--report-dir",
                str(tmp_path),
                "--num-sessions",
                str(NUM_SESSIONS),
                "--num-turns",
                str(NUM_TURNS),
                "--image-size",
                str(SIZE),
                "--editor",
                f"{module.__name__}:Oracle",
            ]
        )
        == 0
    )
    assert read_csv(tmp_path / "session_bench.csv")[1][1] == "1.0000"
    assert (tmp_path / "session_bench_success.png").exists() and (tmp_path / "session_bench.md").exists()
    assert main(["session-bench", "--report-dir", str(tmp_path), "--editor", "no_colon_here"]) == 2
    assert "module:callable" in capsys.readouterr().err


def test_summary_counts_what_fails_the_failed_turns():
    """Ground-truth summary: the true frames fail nothing, copies miss the changed region, true frames with a
    quarter of their pixels inverted miss preservation; the counts are those of the turns' own failed tests."""
    sessions = build_bench_sessions(2, NUM_TURNS, seed=0)
    truths, copies, damaged = [], [], []
    for session in sessions:
        truths.append([score_edit(session.frames[t + 1], session, t) for t in range(NUM_TURNS)])
        copies.append([score_edit(session.frames[t], session, t) for t in range(NUM_TURNS)])
        scores = []
        for t in range(NUM_TURNS):
            frame = session.frames[t + 1].copy()
            border = frame.shape[1] // 4
            frame[:, :border] = 255 - frame[:, :border]
            scores.append(score_edit(frame, session, t))
        damaged.append(scores)
    summary = summarize({}, {"truth": truths, "copy": copies, "damaged": damaged}, NUM_TURNS)["ground_truth"]
    num = 2 * NUM_TURNS
    keys = ["failed", *EDIT_TESTS, *(f"only_{test}" for test in EDIT_TESTS)]
    assert summary["truth"]["failed_tests"] == dict.fromkeys(keys, 0)
    copy = summary["copy"]["failed_tests"]
    assert copy["failed"] == num and copy["changed_region"] == num
    expected = [s.failed for scores in damaged for s in scores]
    tests = summary["damaged"]["failed_tests"]
    assert tests["failed"] == sum(bool(f) for f in expected)
    assert tests["preserved"] == sum("preserved" in f for f in expected) == num
    assert tests["only_preserved"] == sum(f == ("preserved",) for f in expected)
