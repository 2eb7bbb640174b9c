"""benchmarks/move_probe.py: where a model draws a moved object, with and without RoE masks given."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from conftest import REPO, load_script

import diffusers_vincie.default_model as default_model
import diffusers_vincie.evaluation.shapes_bench as shapes_bench

move_probe = load_script(REPO / "benchmarks" / "move_probe.py", "move_probe")


def _follower(follows_masks: bool):
    """A stand-in model: draws the moved object in the cell of the given next mask (or, ignoring masks or given
    none, where the instruction says)."""

    def edit(pipe, session, turn, mode, sampling, seed, masks=None):
        edit, world = session.edits[turn], session.world
        if not (follows_masks and masks):
            return session.frames[turn + 1]
        mask = np.asarray(masks["next_mask"], dtype=bool)
        cell_size = world.resolution / world.grid
        y, x = np.argwhere(mask).mean(axis=0)
        moved = replace(edit.before, row=int(y // cell_size), col=int(x // cell_size))
        before = session.states[turn]
        others = tuple(obj for obj in before.objects if obj.id != edit.before.id)
        return world.render(replace(before, objects=others + (moved,)))

    return edit


@pytest.mark.parametrize("follows_masks", [True, False])
def test_the_decoy_mask_shows_whether_a_model_follows_the_next_mask(monkeypatch, tmp_path, follows_masks):
    monkeypatch.setattr(default_model, "load_default_pipeline", lambda model: None)
    monkeypatch.setattr(shapes_bench, "ground_truth_edit", _follower(follows_masks))
    results = {}
    for given in ("none", "true", "decoy"):
        out = tmp_path / f"{given}.json"
        assert move_probe.main(["--num_moves", "12", "--given_masks", given, "--output", str(out)]) == 0
        results[given] = json.loads(out.read_text())
    for given in ("none", "true"):  # the truth, or a next mask at the instructed cell: drawn where instructed
        assert results[given]["instructed"] == 12 and results[given]["at_decoy"] == 0
    decoy = results["decoy"]
    assert decoy["moves"] == decoy["moves_with_decoy"] == 12
    if follows_masks:
        assert decoy["at_decoy"] == 12 and decoy["instructed"] == 0 and decoy["elsewhere"] == 12
    else:
        assert decoy["at_decoy"] == 0 and decoy["instructed"] == 12


def test_undirected_moves_leave_the_destination_to_the_next_mask(monkeypatch, tmp_path):
    """With ``--undirected`` the edited turn says "move the <object>" and nothing else: a stand-in that moves the
    object only when its instruction names a direction leaves it where it was; one that follows the next mask puts
    it in the decoy cell."""
    follow_masks = _follower(True)

    def edit(pipe, session, turn, mode, sampling, seed, masks=None):
        assert session.instructions[turn] == f"move the {session.edits[turn].before.name}"
        assert session.instructions[:turn] == [e.instruction for e in session.edits[:turn]]  # the context is kept
        return follow_masks(pipe, session, turn, mode, sampling, seed, masks) if masks else session.frames[turn]

    monkeypatch.setattr(default_model, "load_default_pipeline", lambda model: None)
    monkeypatch.setattr(shapes_bench, "ground_truth_edit", edit)
    results = {}
    for given in ("none", "decoy"):
        out = tmp_path / f"{given}.json"
        assert (
            move_probe.main(["--num_moves", "12", "--given_masks", given, "--undirected", "--output", str(out)]) == 0
        )
        results[given] = json.loads(out.read_text())
    assert results["none"]["stayed"] == 12 and results["none"]["undirected"] is True
    assert results["decoy"]["at_decoy"] == 12
