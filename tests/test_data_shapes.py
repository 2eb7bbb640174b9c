"""Tests of the synthetic shapes world: determinism, exact masks, history ops, videos, scoring."""

import json
import random
import time

import av
import numpy as np
import pytest
from conftest import REPO, load_script

from diffusers_vincie.data.schema import SessionRecord, mask_to_array
from diffusers_vincie.data.shapes.score import score_edit
from diffusers_vincie.data.shapes.video import decode_mask, encode_mask, read_ground_truth, render_video
from diffusers_vincie.data.shapes.world import COLOURS, HISTORY_OPS, OP_KINDS, ShapesWorld

ALL_OPS_WEIGHTS = {"pan": 1.0}


@pytest.fixture(scope="module")
def world():
    return ShapesWorld(resolution=32)


@pytest.fixture(scope="module")
def sessions(world):
    return [world.sample_session(seed, num_turns=5) for seed in range(300)]


# =====================================================================================================
# Sampling
# =====================================================================================================


def test_deterministic_by_seed(world):
    a, b = world.sample_session(7), ShapesWorld(resolution=32).sample_session(7)
    assert a.instructions == b.instructions and a.ops == b.ops and a.seed == 7
    for x, y in zip(a.frames + a.source_masks + a.target_masks, b.frames + b.source_masks + b.target_masks):
        np.testing.assert_array_equal(x, y)
    others = [world.sample_session(seed).instructions for seed in range(8, 16)]
    assert any(instructions != a.instructions for instructions in others)
    # Generators are advanced: two draws differ, the same generator state repeats.
    g1, g2 = np.random.default_rng(3), np.random.default_rng(3)
    first, second = world.sample_session(g1), world.sample_session(g1)
    assert world.sample_session(g2).instructions == first.instructions
    assert first.seed is None and (first.instructions != second.instructions or first.ops != second.ops)
    assert world.sample_session(random.Random(5)).num_turns == 5


def test_shapes_and_types(sessions):
    session = sessions[0]
    assert len(session.frames) == 6 and len(session.instructions) == 5
    assert session.frames[0].shape == (32, 32, 3) and session.frames[0].dtype == np.uint8
    for masks in (session.source_masks, session.target_masks, session.changed_masks):
        assert len(masks) == 5 and all(m.shape == (32, 32) and m.dtype == bool for m in masks)


def test_frames_are_exact_palette_renders(world, sessions):
    allowed = {tuple(c) for c in COLOURS.values()}
    from diffusers_vincie.data.shapes.world import BACKGROUNDS

    allowed |= {c for name in world.backgrounds for c in BACKGROUNDS[name][:2]}
    for session in sessions[:30]:
        for frame, state in zip(session.frames, session.states):
            assert {tuple(p) for p in frame.reshape(-1, 3)} <= allowed
            for obj in state.objects:  # every object pixel has the object's colour
                assert (frame[world.footprint(obj, state.camera)] == COLOURS[obj.colour]).all()
            # one object per cell, never overlapping
            assert len(state.occupied()) == len(state.objects)


def test_masks_are_exact(world, sessions):
    seen = set()
    for session in sessions:
        for t, edit in enumerate(session.edits):
            before, after = session.frames[t], session.frames[t + 1]
            source, target, changed = session.source_masks[t], session.target_masks[t], session.changed_masks[t]
            np.testing.assert_array_equal(changed, (before != after).any(-1))
            # Nothing outside the RoE changes.
            outside = ~(source | target)
            np.testing.assert_array_equal(before[outside], after[outside])
            assert changed.any(), f"turn {t} of seed {session.seed} ({edit.op}) changes nothing"
            if edit.before is not None:
                assert (before[source] == COLOURS[edit.before.colour]).all()
            if edit.after is not None:
                assert (after[target] == COLOURS[edit.after.colour]).all()
            op = edit.op
            seen.add(op)
            if op in ("add", "bring_back"):
                assert not source.any() and (changed == target).all()
            elif op == "remove":
                assert not target.any() and (changed == source).all()
            elif op in ("recolour", "revert_colour"):
                assert (source == target).all() and (changed == source).all()
                assert edit.after.colour != edit.before.colour
            elif op == "move":
                assert not (source & target).any() and (changed == (source | target)).all()
                assert abs(edit.after.row - edit.before.row) + abs(edit.after.col - edit.before.col) == 1
            elif op == "resize":
                assert (changed == (source ^ target)).all() and edit.before.size != edit.after.size
    assert seen == set(OP_KINDS) - {"pan"}


def test_history_ops_are_valid(sessions):
    counts = {op: 0 for op in HISTORY_OPS}
    for session in sessions:
        for t, edit in enumerate(session.edits):
            earlier = session.edits[:t]
            if edit.op == "bring_back":
                counts[edit.op] += 1
                removals = [e for e in earlier if e.op == "remove" and e.before.id == edit.after.id]
                assert removals, "bring back without an earlier removal"
                assert removals[-1].before == edit.after  # restored exactly where and as it was
                assert session.states[t].find(edit.after.colour, edit.after.shape) is None
                assert edit.uses_history
            elif edit.op == "revert_colour":
                counts[edit.op] += 1
                recolours = [e for e in earlier if e.op == "recolour" and e.after.id == edit.before.id]
                assert recolours
                assert "colour it was before" in edit.instruction and edit.before.colour in edit.instruction
                # The restored colour is the colour before the latest recolour of the object.
                assert edit.after.colour == edit.before.previous_colours[-1]
                assert edit.after.colour not in edit.instruction.split()
            else:
                assert not edit.uses_history
    assert all(count >= 10 for count in counts.values()), counts


def test_vocabulary_covers_every_instruction_and_pan(sessions):
    world = ShapesWorld(resolution=32, op_weights=ALL_OPS_WEIGHTS)
    vocabulary = set(world.vocabulary)
    pans = 0
    for seed in range(100):
        session = world.sample_session(seed)
        for t, (edit, instruction) in enumerate(zip(session.edits, session.instructions)):
            assert set(instruction.split()) <= vocabulary, instruction
            if edit.op == "pan":
                pans += 1
                assert edit.camera_motion == instruction.replace("the camera ", "")
                shift = np.subtract(session.states[t + 1].camera, session.states[t].camera)
                # The content moves opposite to the camera ("pan left" moves everything right).
                direction = {"left": (1, 0), "right": (-1, 0), "up": (0, 1), "down": (0, -1)}[instruction.split()[-1]]
                assert tuple(np.sign(shift)) == direction
                assert max(abs(c) for c in session.states[t + 1].camera) <= world.max_pan_steps * world.pan_step
            else:
                assert edit.camera_motion == "static"
    assert pans > 20
    for instruction in world.example_instructions():
        assert set(instruction.split()) <= vocabulary
    assert max(len(s.split()) for s in world.example_instructions()) <= 10


def test_sample_batch(world):
    batch = world.sample_batch(9, batch_size=4, num_turns=3)
    assert batch["frames"].shape == (4, 4, 32, 32, 3) and batch["frames"].dtype == np.uint8
    assert batch["source_masks"].shape == batch["changed_masks"].shape == (4, 3, 32, 32)
    assert batch["uses_history"].shape == (4, 3) and len(batch["instructions"]) == 4
    again = world.sample_batch(9, batch_size=4, num_turns=3)
    np.testing.assert_array_equal(batch["frames"], again["frames"])
    session = batch["sessions"][2]
    np.testing.assert_array_equal(batch["target_masks"][2, 1], session.target_masks[1])
    assert batch["ops"][2] == session.ops and list(batch["uses_history"][2]) == [e.uses_history for e in session.edits]
    assert len({tuple(i) for i in batch["instructions"]}) > 1
    with pytest.raises(ValueError, match="batch_size"):
        world.sample_batch(0, batch_size=0)


def test_sampling_is_fast(world):
    for seed in range(50):
        world.sample_session(seed)
    start = time.perf_counter()
    for seed in range(300):
        world.sample_session(seed, num_turns=4)
    per_session = (time.perf_counter() - start) / 300
    assert per_session < 3e-3, f"{per_session * 1e3:.2f} ms per session"  # ~0.3 ms measured; loose for CI load


def test_to_record(sessions):
    session = sessions[3]
    record = session.to_record()
    assert isinstance(record, SessionRecord) and record.num_turns == 5
    assert record.annotator["name"] == "ground_truth" and record.annotator["ops"] == session.ops
    np.testing.assert_array_equal(np.asarray(record.frames[2]), session.frames[2])
    np.testing.assert_array_equal(mask_to_array(record.target_masks[1]), session.target_masks[1])
    assert record.session_id == f"synthetic-{session.seed}/0"
    unseeded = ShapesWorld().sample_session(np.random.default_rng(0), num_turns=1)
    with pytest.raises(ValueError, match="video_id"):
        unseeded.to_record()
    assert unseeded.to_record(video_id="clip-7").session_id == "clip-7/0"


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"resolution": 4}, "resolution"),
        ({"grid": 5}, "grid"),
        ({"colours": ("red", "mauve")}, "colours"),
        ({"colours": ("red",)}, "colours"),
        ({"shapes": ("circle", "circle")}, "shapes"),
        ({"sizes": {"huge": 0.7}}, "sizes"),
        ({"max_objects": 10}, "max_objects"),
        ({"op_weights": {"explode": 1.0}}, "op_weights"),
        ({"op_weights": {op: 0.0 for op in OP_KINDS}}, "op_weights"),
    ],
)
def test_bad_world_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        ShapesWorld(**kwargs)


def test_bad_sample_arguments(world):
    with pytest.raises(ValueError, match="num_turns"):
        world.sample_session(0, num_turns=0)
    with pytest.raises(TypeError, match="rng_or_seed"):
        world.sample_session("seed")
    only_removals = ShapesWorld(op_weights={op: float(op == "remove") for op in OP_KINDS})
    with pytest.raises(RuntimeError, match="op_weights"):
        only_removals.sample_session(0, num_turns=4)  # at most 3 removals are possible


def test_config_rebuilds_the_same_world(world):
    clone = ShapesWorld(**json.loads(json.dumps(world.config)))
    assert clone.sample_session(11).instructions == world.sample_session(11).instructions


# =====================================================================================================
# Scoring
# =====================================================================================================


def test_score_edit(world, sessions):
    session = next(s for s in sessions if "recolour" in s.ops)
    turn = session.ops.index("recolour")
    truth = score_edit(session.frames[turn + 1], session, turn)
    assert not truth.uses_history and truth.op == "recolour"
    assert truth.success and truth.changed_iou == 1.0 and truth.preserved == 1.0 and truth.object_score == 1.0
    assert truth.failed == ()
    copy = score_edit(session.frames[turn], session, turn)
    assert not copy.success and copy.changed_iou == 0.0 and copy.failed[0] == "changed_region"
    # Right region, wrong colour: IoU fine, object score fails.
    wrong = session.frames[turn + 1].copy()
    edit = session.edits[turn]
    other = next(c for c in world.colours if c not in (edit.after.colour, edit.before.colour))
    wrong[session.target_masks[turn]] = COLOURS[other]
    scored = score_edit(wrong, session, turn)
    assert scored.changed_iou == 1.0 and scored.object_score == 0.0 and not scored.success
    assert scored.failed == ("object",)
    # Small noise within tolerance still succeeds; a damaged background does not.
    noise = np.random.default_rng(0).integers(-8, 9, (32, 32, 3))
    noisy = np.clip(session.frames[turn + 1].astype(int) + noise, 0, 255)
    assert score_edit(noisy.astype(np.uint8), session, turn).success
    damaged = session.frames[turn + 1].copy()
    damaged[:, :4] = 255 - damaged[:, :4]
    damaged_score = score_edit(damaged, session, turn)
    assert damaged_score.preserved < 0.95 and "preserved" in damaged_score.failed and not damaged_score.success
    for t in range(session.num_turns):
        assert score_edit(session.frames[t + 1], session, t).success
    with pytest.raises(ValueError, match="pred_rgb"):
        score_edit(np.zeros((16, 16, 3), np.uint8), session, 0)
    with pytest.raises(ValueError, match="turn"):
        score_edit(session.frames[0], session, 5)


# =====================================================================================================
# Video
# =====================================================================================================


def test_mask_encoding_round_trip():
    mask = np.random.default_rng(0).random((13, 7)) > 0.5
    np.testing.assert_array_equal(decode_mask(json.loads(json.dumps(encode_mask(mask)))), mask)


def test_render_video(tmp_path):
    world = ShapesWorld(resolution=32, op_weights=ALL_OPS_WEIGHTS)
    session = next(s for s in (world.sample_session(seed, num_turns=3) for seed in range(50)) if "pan" in s.ops)
    path = tmp_path / "videos" / "clip.mp4"
    ground_truth = render_video(world, session, path, fps=8, seconds_per_turn=1.0, resolution=64)
    assert sorted(p.name for p in path.parent.iterdir()) == ["clip.json", "clip.mp4"]  # no temporary left

    with av.open(str(path)) as container:
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(decoded) == ground_truth["num_frames"] == 4 * 8
    loaded = read_ground_truth(path)
    assert loaded["instructions"] == session.instructions and loaded["ops"] == session.ops
    assert loaded["camera_motion"] == session.camera_motion
    assert loaded["key_timestamps"] == [i / 8 for i in loaded["key_frame_indices"]]
    for k, (index, (start, end)) in enumerate(zip(loaded["key_frame_indices"], loaded["hold_intervals"])):
        assert start <= index / 8 < end
        expected = world.render(session.states[k], 64)
        error = np.abs(decoded[index].astype(int) - expected.astype(int))
        assert error.mean() < 4 and np.median(error) <= 2, (k, error.mean())
    for t in range(session.num_turns):
        source, target, changed = (loaded[name][t] for name in ("source_masks", "target_masks", "changed_masks"))
        assert source.shape == (64, 64)
        a, b = world.render(session.states[t], 64), world.render(session.states[t + 1], 64)
        np.testing.assert_array_equal(changed, (a != b).any(-1))
        if session.ops[t] != "pan":
            np.testing.assert_array_equal(a[~(source | target)], b[~(source | target)])
        # The 64 px masks are the 32 px masks at twice the resolution (up to boundary pixels).
        small = session.source_masks[t].repeat(2, 0).repeat(2, 1)
        assert (small != source).mean() < 0.05
    # Animated frames lie between key states (not a hard cut): they differ from both neighbouring key frames.
    between = decoded[loaded["key_frame_indices"][0] + 6].astype(int)
    for index in loaded["key_frame_indices"][:2]:
        assert np.abs(between - decoded[index].astype(int)).mean() > 0.1


def test_render_video_bad_arguments(tmp_path, world, sessions):
    with pytest.raises(ValueError, match="path"):
        render_video(world, sessions[0], tmp_path / "clip.avi")
    with pytest.raises(ValueError, match="resolution"):
        render_video(world, sessions[0], tmp_path / "clip.mp4", resolution=33)
    with pytest.raises(ValueError, match="held frame"):
        render_video(world, sessions[0], tmp_path / "clip.mp4", fps=1, seconds_per_turn=1.0, transition_fraction=0.9)
    with pytest.raises(ValueError, match="not a synthetic-video"):
        (tmp_path / "other.json").write_text("{}")
        read_ground_truth(tmp_path / "other.json")


# =====================================================================================================
# CLI
# =====================================================================================================


def _load_cli():
    return load_script(REPO / "dataset_scripts" / "make_synthetic_videos.py", "make_synthetic_videos")


def test_make_synthetic_videos_cli_is_deterministic_and_resumable(tmp_path, capsys):
    cli = _load_cli()
    common = ["--num-videos", "3", "--seed", "4", "--num-turns", "2", "--resolution", "32", "--no-progress"]
    first = cli.main(["--output-dir", str(tmp_path / "a"), *common])
    cli.main(["--output-dir", str(tmp_path / "b"), *common])
    assert [p.name for p in first] == ["synth_000000.mp4", "synth_000001.mp4", "synth_000002.mp4"]
    sidecars = [json.loads(p.with_suffix(".json").read_text()) for p in first]
    for name in ("synth_000000.json", "synth_000002.json"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    assert len({json.dumps(s["instructions"]) for s in sidecars}) > 1  # videos differ from one another
    assert json.loads((tmp_path / "a" / "world.json").read_text())["op_weights"]["pan"] == 0.5
    # Resume: existing videos are kept as they are, a missing one is rewritten identically.
    kept = first[0].stat().st_mtime_ns
    first[1].unlink()
    cli.main(["--output-dir", str(tmp_path / "a"), *common])
    assert first[0].stat().st_mtime_ns == kept and first[1].exists()
    assert first[1].with_suffix(".json").read_text() == (tmp_path / "b" / "synth_000001.json").read_text()
    with pytest.raises(SystemExit) as exit_info:  # one line, exit 2, nothing written
        cli.main(["--output-dir", str(tmp_path / "c"), "--num-videos", "-1"])
    assert exit_info.value.code == 2 and "--num-videos" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_synthetic_world_needs_neither_datasets_nor_av():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['datasets'] = None; sys.modules['av'] = None\n"
        "from diffusers_vincie.data import ShapesWorld, score_edit\n"
        "s = ShapesWorld().sample_session(0)\n"
        "assert score_edit(s.frames[1], s, 0).success\n"
        "import diffusers_vincie.data as data\n"
        "try:\n    data.load_sessions\nexcept ImportError:\n    print('lazy ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "lazy ok" in result.stdout
