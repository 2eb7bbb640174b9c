"""The pixel annotator of the shapes world: every op recovered from rendered frames alone (instruction in the
world's words, regions of editing), camera pans compensated, transitions it cannot word rejected, and the
session build from videos whose sidecars are gone."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from conftest import load_script
from datasets import load_dataset

from diffusers_vincie.data.schema import mask_to_array
from diffusers_vincie.data.shapes.pixels import PixelSceneReader, UnreadableTransition, describe_transition
from diffusers_vincie.data.shapes.shots import shot_edit_masks
from diffusers_vincie.data.shapes.world import OP_KINDS, SceneObject, SceneState, ShapesWorld
from diffusers_vincie.data.video.annotate import AnnotationRejected, ShapesPixelAnnotator, Transition
from diffusers_vincie.data.video.frames import SampledFrame

REPO = Path(__file__).resolve().parents[1]
RESOLUTION = 64
WORLD = ShapesWorld(op_weights={"pan": 0.5})


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def noisy(frame: np.ndarray, seed: int, sigma: float = 6.0) -> np.ndarray:
    """A frame with compression-like noise."""
    noise = np.random.default_rng(seed).normal(0, sigma, frame.shape)
    return np.clip(frame.astype(np.float64) + noise, 0, 255).astype(np.uint8)


def transitions(frames: list[np.ndarray]) -> list[Transition]:
    sampled = [SampledFrame(PIL.Image.fromarray(f), float(i), i) for i, f in enumerate(frames)]
    return [Transition("clip.mp4", "clip", a, b) for a, b in zip(sampled, sampled[1:])]


def test_every_op_is_recovered_with_its_regions_from_noisy_frames():
    annotator = ShapesPixelAnnotator(WORLD)
    seen = {op: 0 for op in OP_KINDS}
    for seed in range(200):
        session = WORLD.sample_session(seed, num_turns=5)
        frames = [noisy(WORLD.render(state, RESOLUTION), seed * 10 + k) for k, state in enumerate(session.states)]
        results = annotator.annotate_many(transitions(frames))
        for k, (edit, result) in enumerate(zip(session.edits, results)):
            assert not isinstance(result, AnnotationRejected), (seed, edit.instruction, result)
            assert result.instruction == edit.instruction and result.details["op"] == edit.op
            assert result.camera_motion == edit.camera_motion
            source, target = WORLD.edit_masks(edit, session.states[k], session.states[k + 1], RESOLUTION)
            assert iou(result.source_mask, source) == 1.0 and iou(result.target_mask, target) == 1.0
            seen[edit.op] += 1
        if min(seen.values()) >= 3:
            break
    assert min(seen.values()) >= 3, seen  # history ops and pans included


def test_a_camera_pan_is_compensated_and_named_by_the_camera_direction():
    reader = PixelSceneReader(WORLD)
    session = next(s for s in (WORLD.sample_session(i, 5) for i in range(500)) if "pan" in s.ops)
    k = session.ops.index("pan")
    before, after = (reader.read(WORLD.render(s, RESOLUTION)) for s in session.states[k : k + 2])
    assert before.camera != after.camera  # the objects moved in the frame, the scene did not
    reading = describe_transition(WORLD, before, after, RESOLUTION)
    assert reading.instruction == session.instructions[k] and reading.camera_motion == session.camera_motion[k]
    # a pan and an object edit in one transition is not one edit of the world
    moved = [s for s in session.states[k + 1 :] if s.objects != session.states[k + 1].objects]
    if moved:
        with pytest.raises(UnreadableTransition, match="camera moved"):
            describe_transition(WORLD, before, reader.read(WORLD.render(moved[0], RESOLUTION)), RESOLUTION)


def test_transitions_it_cannot_word_are_rejected_with_the_reason():
    annotator = ShapesPixelAnnotator(WORLD)
    red = SceneObject(0, "circle", "red", "big", 0, 0)
    blue = SceneObject(1, "square", "blue", "small", 2, 2)
    before = SceneState("light", (red, blue))
    two_edits = SceneState("light", (replace(red, colour="green"), replace(blue, size="big")))
    first = WORLD.render(before, RESOLUTION)
    moving = SceneState("light", (replace(red, col=1), blue))  # mid-move: the circle is between two cells
    middle = WORLD.render_between(before, moving, 0.5, RESOLUTION)
    frames = [first, first, WORLD.render(two_edits, RESOLUTION), middle]
    unchanged, several, animated = annotator.annotate_many(transitions(frames))
    assert isinstance(unchanged, AnnotationRejected) and "no visible change" in unchanged.reason
    assert isinstance(several, AnnotationRejected) and "not one edit" in several.reason
    assert isinstance(animated, AnnotationRejected) and "not a still scene" in animated.reason


def test_build_sessions_annotates_videos_from_their_pixels_without_the_sidecars(tmp_path, capsys):
    make = load_script(REPO / "dataset_scripts" / "make_synthetic_videos.py", "make_synthetic_videos_cli")
    build = load_script(REPO / "dataset_scripts" / "build_sessions.py", "build_sessions_cli")
    videos = tmp_path / "videos"
    make.main(["--output-dir", str(videos), "--num-videos", "2", "--num-turns", "3", "--resolution", "64",
               "--seed", "7", "--no-progress"])  # fmt: skip
    truth = {}
    for sidecar in sorted(videos.glob("synth_*.json")):  # the log is read here only to check, then removed
        truth[sidecar.stem] = json.loads(sidecar.read_text())
        sidecar.unlink()
    out = tmp_path / "sessions"
    argv = [str(videos), "--output", str(out), "--annotator", "pixels", "--world-config", str(videos / "world.json"),
            "--strategy", "equal_interval", "--interval", "1.0"]  # fmt: skip
    assert build.main(argv) == 0
    assert "2 sessions from 2 videos" in capsys.readouterr().out
    rows = list(load_dataset(str(out), split="train", streaming=True))
    assert len(rows) == 2
    for row in rows:
        expected = truth[row["video_id"]]
        assert row["instructions"] == expected["instructions"]
        assert json.loads(row["annotator"])["name"] == "pixels"
        assert all(mask_to_array(m).shape == (64, 64) for m in row["source_masks"] + row["target_masks"])
    # a world config only the pixel annotator reads, and a broken one, are one-line usage errors
    for bad in (["--annotator", "ground_truth", "--world-config", str(videos / "world.json")],
                ["--annotator", "pixels", "--world-config", str(tmp_path / "missing.json")]):  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            build.main([str(videos), "--output", str(tmp_path / "other"), *bad])
        assert exit_info.value.code == 2 and "--world-config" in capsys.readouterr().err


def test_composition_and_story_sessions_are_labelled_from_pixels():
    from diffusers_vincie.data.shapes.shots import sample_composition_session, sample_story_session

    annotator = ShapesPixelAnnotator(WORLD)
    for seed in range(6):
        for session in (sample_composition_session(WORLD, seed), sample_story_session(WORLD, seed, num_turns=4)):
            frames = [WORLD.render(state, RESOLUTION) for state in session.states]
            results = annotator.annotate_many(transitions(frames))
            assert [r.instruction for r in results] == session.instructions
            for k, (edit, result) in enumerate(zip(session.edits, results)):
                source, target = shot_edit_masks(WORLD, edit, session.states[k], session.states[k + 1], RESOLUTION)
                assert iou(result.source_mask, source) == 1.0 and iou(result.target_mask, target) == 1.0
    composition = sample_composition_session(WORLD, 0, num_objects=3)
    assert composition.ops == ["introduce", "introduce", "compose"]
    assert composition.instructions[-1].startswith("show the ") and composition.instructions[-1].count(" and ") == 2
    assert (
        all(len(state.objects) == 1 for state in composition.states[:-1]) and len(composition.states[-1].objects) == 3
    )
    story = sample_story_session(WORLD, 0, num_turns=4)
    assert set(story.ops) == {"pan"} and all(s.objects == story.states[0].objects for s in story.states)


def test_the_video_maker_adds_composition_and_story_videos_only_when_asked(tmp_path):
    from diffusers_vincie.data.shapes.video import make_synthetic_videos, read_ground_truth, video_session_seed

    plain = make_synthetic_videos(tmp_path / "plain", 4, seed=3, world=WORLD, num_turns=2, progress=False)
    for index, path in enumerate(plain):  # off by default: the same editing sessions as before the option
        expected = WORLD.sample_session(video_session_seed(3, index), num_turns=2)
        assert read_ground_truth(path)["instructions"] == expected.instructions
    mixed = make_synthetic_videos(
        tmp_path / "mixed", 8, seed=3, world=WORLD, num_turns=2, progress=False, composition_fraction=0.5,
        story_fraction=0.5,
    )  # fmt: skip
    kinds = {frozenset(read_ground_truth(path)["ops"]) for path in mixed}
    assert frozenset({"pan"}) in kinds and any("compose" in ops for ops in kinds)
    assert all(ops <= {"pan"} or ops <= {"introduce", "compose"} for ops in kinds)
    with pytest.raises(ValueError, match="composition_fraction"):
        make_synthetic_videos(tmp_path / "bad", 1, composition_fraction=0.8, story_fraction=0.4, progress=False)


def test_pans_that_cut_a_lone_object_at_the_frame_edge_are_still_pans():
    # a big triangle cut by the bottom edge shows the same pixels as a smaller one a camera step higher: the
    # clip's previous frame settles it
    state = SceneState("light", (SceneObject(0, "triangle", "red", "big", 2, 0),))
    states, instructions = [state], []
    for direction in ("up", "up", "left", "down"):
        state, edit = WORLD._apply_pan(state, direction, None)
        states.append(state)
        instructions.append(edit.instruction)
    assert states[2].camera == (0, 4)  # the content moved down by the camera's full range
    frames = [WORLD.render(s, 128) for s in states]
    results = ShapesPixelAnnotator(WORLD).annotate_many(transitions(frames))
    assert [r.instruction for r in results] == instructions


def flood_fill_labels(classes: np.ndarray) -> tuple[np.ndarray, int]:
    """Reference labelling: 4-connected pixels of one class >= 0, numbered in raster order of first pixels."""
    labels = np.zeros(classes.shape, dtype=np.int64)
    count = 0
    for y, x in zip(*np.nonzero(classes >= 0)):
        if labels[y, x]:
            continue
        count += 1
        labels[y, x], stack = count, [(y, x)]
        while stack:
            cy, cx = stack.pop()
            for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                inside = 0 <= ny < classes.shape[0] and 0 <= nx < classes.shape[1]
                if inside and not labels[ny, nx] and classes[ny, nx] == classes[cy, cx]:
                    labels[ny, nx] = count
                    stack.append((ny, nx))
    return labels, count


def test_component_labels_match_a_flood_fill_on_random_class_maps():
    from diffusers_vincie.data.shapes.pixels import _label_components

    rng = np.random.default_rng(0)
    maps = [np.full((5, 7), -1), np.zeros((1, 9), dtype=int), np.zeros((9, 1), dtype=int)]
    for _ in range(30):
        height, width = rng.integers(1, 40, size=2)
        coarse = rng.integers(-1, 3, size=(height // 4 + 1, width // 4 + 1))  # blobs, spirals of runs
        blobs = np.kron(coarse, np.ones((4, 4), dtype=int))[:height, :width]
        speckle = rng.integers(-1, 3, size=(height, width))  # many one-pixel components
        maps += [blobs, np.where(rng.random((height, width)) < 0.2, speckle, blobs), speckle]
    for classes in maps:
        labels, count = _label_components(classes)
        expected, expected_count = flood_fill_labels(classes)
        assert count == expected_count
        np.testing.assert_array_equal(labels, expected)


def test_distinct_colours_are_indexed_exactly_with_or_without_the_hash_table():
    from diffusers_vincie.data.shapes.pixels import _index_of

    rng = np.random.default_rng(1)
    for size in (1, 3, 300, 5000, 20000):  # 20000 distinct values: no table small enough, binary search
        distinct = np.unique(rng.integers(0, 1 << 24, size=size, dtype=np.uint32))
        values = rng.choice(distinct, size=4096)
        np.testing.assert_array_equal(_index_of(values, distinct), np.searchsorted(distinct, values))


def test_reading_a_clip_at_once_equals_reading_its_frames_one_by_one():
    session = next(s for s in (WORLD.sample_session(i, 5) for i in range(500)) if "pan" in s.ops)
    frames = [noisy(WORLD.render(state, 2 * RESOLUTION), k) for k, state in enumerate(session.states)]
    frames.insert(2, noisy(WORLD.render(session.states[1], RESOLUTION), 99))  # another size, read at its own
    frames.insert(4, np.zeros((RESOLUTION, RESOLUTION // 2, 3), dtype=np.uint8))  # not square: no scene
    previous = [None, *range(len(frames) - 1)]
    together = PixelSceneReader(WORLD).read_many([PIL.Image.fromarray(f) for f in frames], previous)
    reader, alone = PixelSceneReader(WORLD), []
    for frame, before in zip(frames, previous):
        prior = alone[before] if before is not None and not isinstance(alone[before], Exception) else None
        try:
            alone.append(reader.read(frame, prior))
        except UnreadableTransition as error:
            alone.append(error)
    assert [type(a) for a in together] == [type(a) for a in alone]
    assert isinstance(together[4], UnreadableTransition) and "square RGB" in together[4].reason
    for a, b in zip(together, alone):
        assert a == b if not isinstance(a, Exception) else a.reason == b.reason
    with pytest.raises(ValueError, match="previous"):
        reader.read_many(frames[:2], [None, 1])
