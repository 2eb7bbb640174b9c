"""benchmarks/session_loss.py: the loss of a pipeline on sessions datasets, with draws that depend only on the
sample's position, so two datasets differ only in their sessions."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO, load_script

from diffusers_vincie.data.loaders import records_to_dataset
from diffusers_vincie.data.shapes.world import ShapesWorld
from diffusers_vincie.testing import tiny_pipeline
from diffusers_vincie.utils.cli import UsageError

session_loss = load_script(REPO / "benchmarks" / "session_loss.py", "session_loss")


def _sessions(folder, first_seed):
    world = ShapesWorld(resolution=16, grid=2, max_objects=3)
    records = [world.sample_session(first_seed + i, num_turns=3).to_record() for i in range(6)]
    records_to_dataset(records).to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    return str(folder)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("session_loss")
    tiny_pipeline(pixel_space=True, default_resolution=16).save_pretrained(root / "pipe")
    return str(root / "pipe"), _sessions(root / "a", 0), _sessions(root / "b", 100)


def test_the_same_sessions_give_the_same_loss_and_other_sessions_another(folders):
    pipe, a, b = folders
    args = session_loss.parse_args(
        ["--model", pipe, "--sessions", f"a={a}", "--sessions", f"a_again={a}", "--sessions", f"b={b}"]
        + ["--num_sessions", "6", "--draws", "2"]
    )
    losses = session_loss.main(args)
    assert losses["a"] == losses["a_again"]
    assert losses["a"][0] != losses["b"][0]
    assert all(loss > 0 and error >= 0 for loss, error in losses.values())


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--sessions", "no_equals_sign"], "expected NAME=PATH"),
        (["--sessions", "a=/nonexistent/sessions"], "does not exist"),
        (["--sessions", "a=.", "--draws", "0"], "--draws must be >= 1"),
        (["--sessions", "a=.", "--sessions", "a=."], "given twice"),
    ],
)
def test_bad_arguments_are_refused_naming_the_flag(folders, flags, match):
    with pytest.raises(UsageError, match=match):
        session_loss.parse_args(["--model", folders[0], *flags])


def test_the_command_line_prints_one_line_and_exits_2(folders):
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "session_loss.py"), "--model", folders[0], "--sessions", "a"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]  # (library import warnings may come before it)
    assert last == "session_loss.py: error: --sessions: expected NAME=PATH, got 'a'."
    assert "Traceback" not in result.stderr
