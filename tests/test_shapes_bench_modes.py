"""ShapesBench's drag, composition and story protocols and the degenerate-output check: the scorers are exact, and
the protocols give a model the right inputs (a model that answers with the truth only when given them scores 1)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import REPO, load_script

from diffusers_vincie.data.shapes.score import (
    NEAR_BLACK_BRIGHTNESS,
    degenerate_output,
    score_camera_turn,
    score_composition,
    score_edit,
)
from diffusers_vincie.data.shapes.shots import sample_composition_session
from diffusers_vincie.data.shapes.world import ShapesWorld
from diffusers_vincie.evaluation.shapes_bench import BENCH_SEED, DegenerateOutputs
from diffusers_vincie.evaluation.shapes_bench_modes import (
    COMPOSITION_SEED,
    DRAG_SEED,
    STORY_SEED,
    build_composition_sessions,
    build_drag_sessions,
    build_story_sessions,
    drag_offset,
    modes_markdown,
    run_composition,
    run_drag,
    run_story,
    summarize_modes,
)
from diffusers_vincie.pipelines.image_processing import transform_mask
from diffusers_vincie.testing import tiny_pipeline

WORLD = {k: v for k, v in json.loads((REPO / "training_scripts/configs/vincie_shapes_world.json").read_text()).items()}
WORLD.pop("resolution")
SAMPLING = {"num_inference_steps": 2, "guidance_scale": 1.0}


def _as_mask(array: np.ndarray) -> np.ndarray:
    return np.asarray(PIL.Image.fromarray(np.asarray(array)).convert("L")) > 127


class FakeSession:
    """An editing session whose answer to (last image, instruction) is looked up in ``answers``: the true next
    frame (``"oracle"``; a drag only when its masks move the true current mask onto the true next one), the last
    image (``"copy"``) or black (``"black"``)."""

    def __init__(self, answers: dict, behaviour: str, image) -> None:
        self.answers, self.behaviour = answers, behaviour
        images = image if isinstance(image, list) else [image]
        self.last = np.asarray(images[-1].convert("RGB"))
        self.prompts = 0

    def add_instruction(self, prompt: str) -> None:
        self.prompts += 1

    def _answer(self, instruction: str, moved_mask: np.ndarray | None = None) -> PIL.Image.Image:
        if self.behaviour == "copy":
            return PIL.Image.fromarray(self.last)
        if self.behaviour == "black":
            return PIL.Image.fromarray(np.zeros_like(self.last))
        frame, target_mask = self.answers[self.last.tobytes(), instruction]
        if moved_mask is not None and not (moved_mask == target_mask).all():
            frame = self.last
        self.last = frame
        return PIL.Image.fromarray(frame)

    def edit(self, instruction: str, generator=None, **sampling) -> PIL.Image.Image:
        return self._answer(instruction)

    def drag(self, instruction: str, translate, current_mask, generator=None, **sampling) -> PIL.Image.Image:
        moved = transform_mask(PIL.Image.fromarray(current_mask).convert("RGB"), translate)
        return self._answer(instruction, _as_mask(moved))


class FakePipe:
    def __init__(self, sessions, behaviour: str = "oracle") -> None:
        self.behaviour = behaviour
        self.answers = {
            (session.frames[t].tobytes(), session.instructions[t]): (session.frames[t + 1], session.target_masks[t])
            for session in sessions
            for t in range(session.num_turns)
        }

    def start_session(self, image, resolution=None, generator=None) -> FakeSession:
        return FakeSession(self.answers, self.behaviour, image)


def test_protocol_seeds_are_disjoint_from_the_bench_and_training():
    assert BENCH_SEED < DRAG_SEED < COMPOSITION_SEED < STORY_SEED < 20_000_000
    assert min(DRAG_SEED - BENCH_SEED, COMPOSITION_SEED - DRAG_SEED, STORY_SEED - COMPOSITION_SEED) >= 1_000_000
    sessions = build_drag_sessions(5, image_size=32, **WORLD)
    assert all(s.edits[0].op == "move" and DRAG_SEED <= s.seed < COMPOSITION_SEED for s in sessions)
    assert len({s.seed for s in sessions}) == 5


def test_drag_offset_moves_the_true_mask_onto_the_next_one():
    for session in build_drag_sessions(20, image_size=32, **WORLD):
        moved = transform_mask(PIL.Image.fromarray(session.source_masks[0]).convert("RGB"), drag_offset(session))
        assert (_as_mask(moved) == session.target_masks[0]).all()
        assert score_edit(session.frames[1], session, 0).success
        assert not score_edit(session.frames[0], session, 0).success
    with pytest.raises(ValueError, match="not a move"):
        drag_offset(build_story_sessions(1, image_size=32, **WORLD)[0])


@pytest.mark.parametrize("num_objects", [2, 3])
def test_composition_score_is_exact(num_objects):
    for session in build_composition_sessions(5, num_objects=num_objects, image_size=32, **WORLD):
        perfect = score_composition(session.frames[-1], session)
        assert perfect.success and perfect.objects_found == 1.0 and perfect.background == 1.0
        assert perfect.num_objects == num_objects and len(perfect.object_scores) == num_objects
        assert not score_composition(session.frames[-2], session).success  # the last reference, unchanged
        # the true scene less its last object: the others and the background are right, one object is missing
        world, scene = session.world, session.states[-1]
        partial = world.render(type(scene)(scene.background, scene.objects[:-1], scene.camera))
        missing = score_composition(partial, session)
        assert not missing.success and missing.objects_found == pytest.approx(1 - 1 / num_objects)
        # the instruction names no background: the scene on any background the session could have drawn (any but
        # the last reference shot's) is right; on the last reference's it is not a new shot
        last_shot = session.states[-2].background
        for name in world.backgrounds:
            elsewhere = score_composition(world.render(replace(scene, background=name)), session)
            assert elsewhere.objects_found == 1.0 and elsewhere.success == (name != last_shot), name
    with pytest.raises(ValueError, match="composition session"):
        score_composition(session.frames[1], build_story_sessions(1, image_size=32, **WORLD)[0])


def test_camera_turn_score_is_exact():
    sessions = build_story_sessions(4, image_size=32, **WORLD)
    for session in sessions:
        for turn in range(session.num_turns):
            perfect = score_camera_turn(session.frames[turn + 1], session, turn)
            assert perfect.camera_change and perfect.preserved == 1.0 and perfect.closest == perfect.direction
            unchanged = score_camera_turn(session.frames[turn], session, turn)
            assert not unchanged.camera_change and unchanged.closest == "none"
    # the same scene panned the opposite way is not the asked pan
    for session in sessions:
        for turn in range(session.num_turns):
            now, asked = session.states[turn].camera, session.states[turn + 1].camera
            opposite = (2 * now[0] - asked[0], 2 * now[1] - asked[1])
            wrong = score_camera_turn(
                session.world.render(replace(session.states[turn], camera=opposite)), session, turn
            )
            assert not wrong.camera_change and wrong.closest not in ("none", wrong.direction)
    # chained: judged from the model's own input. A model that missed turn 1 (its input at turn 2 is frames[0])
    # and then makes the asked pan from there made it; keeping its input did not.
    for session in sessions:
        (x0, y0), (x1, y1), (x2, y2) = (session.states[k].camera for k in range(3))
        first = session.states[0]
        panned = session.world.render(replace(first, camera=(x0 + x2 - x1, y0 + y2 - y1)))
        right = score_camera_turn(panned, session, 1, source_rgb=session.frames[0])
        step = session.world.pan_step
        assert right.camera_change and right.preserved == 1.0
        assert right.input_offset == ((x0 - x1) // step, (y0 - y1) // step)
        assert not score_camera_turn(session.frames[0], session, 1, source_rgb=session.frames[0]).camera_change
    with pytest.raises(ValueError, match="not a camera pan"):
        score_camera_turn(session.frames[1], build_drag_sessions(1, image_size=32, **WORLD)[0], 0)


def test_degenerate_output():
    frame = build_story_sessions(1, image_size=32, **WORLD)[0].frames[0]
    assert degenerate_output(np.zeros((32, 32, 3), np.uint8)) == "near_black"
    dark = np.full((32, 32, 3), int(NEAR_BLACK_BRIGHTNESS) - 1, np.uint8)
    dark[0, 0] = 60  # not constant, still near-black on average
    assert degenerate_output(dark) == "near_black"
    assert degenerate_output(np.full((32, 32, 3), 200, np.uint8)) == "constant"
    assert degenerate_output(frame) is None
    counter = DegenerateOutputs()
    for image in (frame, np.zeros_like(frame), np.full_like(frame, 90)):
        counter.check(image)
    assert counter.as_dict() == {"outputs": 3, "near_black": 1, "constant": 1, "degenerate": 2}


def test_protocols_score_a_perfect_model_1_and_a_copy_0():
    drag = build_drag_sessions(3, image_size=32, **WORLD)
    composition = build_composition_sessions(2, num_objects=2, image_size=32, **WORLD) + build_composition_sessions(
        2, seed=COMPOSITION_SEED + 2, num_objects=3, image_size=32, **WORLD
    )
    story = build_story_sessions(2, num_turns=4, image_size=32, **WORLD)
    oracle = FakePipe(drag + composition + story)
    summary = summarize_modes(
        run_drag(oracle, drag, SAMPLING),
        run_composition(oracle, composition, SAMPLING),
        run_story(oracle, story, SAMPLING),
    )
    assert summary["drag"]["success"] == 1.0 and summary["drag"]["instruction_success"] == 1.0
    assert summary["composition"]["success"] == 1.0
    assert summary["composition"]["per_num_objects"] == {"2": {"success": 1.0, "n": 2}, "3": {"success": 1.0, "n": 2}}
    assert summary["story"]["camera_change"] == 1.0 and summary["story"]["preserved"] == 1.0
    assert summary["story"]["per_turn_camera_change"] == [1.0] * 4

    copy = FakePipe(drag + composition + story, "copy")
    summary = summarize_modes(
        run_drag(copy, drag, SAMPLING), run_composition(copy, composition, SAMPLING), run_story(copy, story, SAMPLING)
    )
    assert summary["drag"]["success"] == 0.0 and summary["composition"]["success"] == 0.0
    assert summary["story"]["camera_change"] == 0.0 and summary["story"]["preserved"] == 1.0  # kept, not panned

    black, counter = FakePipe(story, "black"), DegenerateOutputs()
    run_story(black, story, SAMPLING, counter)
    assert counter.as_dict()["near_black"] == 8


def test_drag_protocol_needs_the_true_masks():
    """The fake model answers a drag only when the next-frame mask is the true one: a zero offset fails."""
    sessions = build_drag_sessions(2, image_size=32, **WORLD)
    oracle = FakePipe(sessions)
    for session in sessions:
        editing = oracle.start_session(PIL.Image.fromarray(session.frames[0]))
        output = editing.drag(session.instructions[0], (0.0, 0.0), session.source_masks[0])
        assert not score_edit(np.asarray(output), session, 0).success


def test_protocols_run_on_a_pipeline():
    torch.set_num_threads(1)
    pipe = tiny_pipeline(pixel_space=True, default_resolution=32)
    pipe.set_progress_bar_config(disable=True)
    counters = {name: DegenerateOutputs() for name in ("drag", "composition", "story")}
    composition = [
        sample_composition_session(ShapesWorld(resolution=32, **WORLD), COMPOSITION_SEED + k, n)
        for k, n in ((0, 2), (1, 3))
    ]
    summary = summarize_modes(
        run_drag(pipe, build_drag_sessions(2, image_size=32, **WORLD), SAMPLING, counters["drag"]),
        run_composition(pipe, composition, SAMPLING, counters["composition"]),
        run_story(
            pipe,
            build_story_sessions(2, num_turns=3, seed=STORY_SEED, image_size=32, **WORLD),
            SAMPLING,
            counters["story"],
        ),
    )
    assert [counters[name].outputs for name in ("drag", "composition", "story")] == [2, 2, 6]
    assert summary["drag"]["n"] == 2 and summary["composition"]["n"] == 2 and summary["story"]["n_turns"] == 6
    assert 0.0 <= summary["story"]["preserved"] <= 1.0 and 0.0 <= summary["composition"]["mean_background"] <= 1.0
    summary["degenerate_outputs"] = {name: counter.as_dict() for name, counter in counters.items()}
    text = modes_markdown(summary)
    assert "Drag on first-turn move edits" in text and "| story | 6 |" in text


def test_bench_command_runs_one_protocol(tmp_path):
    torch.set_num_threads(1)
    model = tmp_path / "model"
    tiny_pipeline(pixel_space=True, default_resolution=32).save_pretrained(model)
    bench = load_script(REPO / "benchmarks" / "shapes_bench.py", "shapes_bench")
    common = ["--model", str(model), "--num_sessions", "2", "--num_turns", "2", "--num_inference_steps", "2"]
    summary = bench.main(
        common + ["--protocols", "composition", "--composition_objects", "3", "--output_dir", str(tmp_path / "out")]
    )
    assert set(summary["degenerate_outputs"]) == {"composition"} and not summary["chained"]
    assert summary["first_seeds"]["composition"] == COMPOSITION_SEED
    assert summary["composition"]["per_num_objects"]["3"]["n"] == 2 and "drag" not in summary
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    assert (
        written["composition"]["n"] == 2
        and "Composition from the reference frames" in (tmp_path / "out" / "results.md").read_text()
    )
    shifted = bench.main(
        common
        + ["--protocols", "story", "--seed", str(BENCH_SEED + 7), "--consensus_samples", "2"]
        + ["--output_dir", str(tmp_path / "shifted")]
    )
    assert shifted["config"]["consensus_samples"] == 2
    asked = [[turn["direction"] for turn in scores] for scores in shifted["turns"]["story"]]
    expected = build_story_sessions(2, num_turns=2, seed=STORY_SEED + 7, image_size=32, **WORLD)
    assert asked == [[edit.camera_motion.removeprefix("pan ") for edit in s.edits] for s in expected]
    assert shifted["first_seeds"]["story"] == STORY_SEED + 7
    with pytest.raises(ValueError, match="--protocols"):
        bench.main(common + ["--protocols", "dragging"])
    with pytest.raises(ValueError, match="--composition_objects"):
        bench.main(common + ["--composition_objects", "4"])
    with pytest.raises(ValueError, match="--consensus_samples"):
        bench.main(common + ["--consensus_samples", "0"])
