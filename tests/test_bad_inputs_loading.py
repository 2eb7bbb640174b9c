"""Loading checks enough: a tampered or mismatched saved session is refused with the reason, the candidates of a
turn survive a save, and ground-truth masks of the wrong size are rejected instead of stretched."""

import json
import shutil

import numpy as np
import PIL.Image
import pytest

from diffusers_vincie import VincieEditingSession
from diffusers_vincie.testing import tiny_pipeline


@pytest.fixture(scope="module")
def pipe():
    p = tiny_pipeline(default_resolution=32)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def image():
    return PIL.Image.fromarray((np.random.RandomState(0).rand(32, 32, 3) * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def saved(pipe, image, tmp_path_factory):
    session = pipe.start_session(image)
    session.edit("add a red circle", num_inference_steps=1)
    session.edit("make it blue", num_inference_steps=1, num_images_per_prompt=3)
    session.choose(2)
    folder = tmp_path_factory.mktemp("saved") / "s"
    session.save(folder)
    return session, folder


def _tampered(folder, tmp_path, change) -> object:
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    record = json.loads((copy / "session.json").read_text())
    change(record)
    (copy / "session.json").write_text(json.dumps(record))
    return copy


def _twenty_turns(record):
    record["turns"] = [{**record["turns"][0], "text": {**record["turns"][0]["text"], "turn": k}} for k in range(20)]


@pytest.mark.parametrize(
    "change, words",
    [
        (_twenty_turns, "20 turns but the model's turn table has 8"),
        (lambda r: r["turns"][1]["text"].update(turn=5), "prompt 1 is numbered turn 5"),
        (lambda r: r["turns"][1].update(chosen=7), "`chosen` must be an integer in \\[0, 2\\]"),
        (lambda r: r["turns"][1].update(chosen="1"), "`chosen` must be an integer"),
        (lambda r: r.update(resolution="32"), "`resolution` must be an integer"),
        (lambda r: r.update(posterior="mean"), "`posterior`"),
        (lambda r: r.update(reference_size=7), "damaged"),
        (lambda r: r["turns"][0].pop("text"), "'text'"),
        (lambda r: r.update(turns={"a": 1}), "damaged"),
        (lambda r: r["turns"][1]["candidates"][0].update(kind="next_mask"), "a turn's image is not of kind 'image'"),
        (lambda r: r["sources"][0].update(kind="current_mask"), "frame of kind 'current_mask' stands where"),
        (lambda r: r["sources"][0].update(kind="photo"), "Frame `kind` must be one of"),
    ],
)
def test_a_tampered_session_is_refused_with_the_reason(pipe, saved, tmp_path, change, words):
    folder = _tampered(saved[1], tmp_path, change)
    with pytest.raises(ValueError, match=words) as error:
        VincieEditingSession.load(pipe, folder)
    assert "session.json" in str(error.value)


def test_the_candidates_of_a_turn_are_saved_and_choose_works_after_a_load(pipe, saved):
    session, folder = saved
    loaded = VincieEditingSession.load(pipe, folder)
    last, original = loaded.turns[-1], session.turns[-1]
    assert len(last.candidates) == 3
    for mine, theirs in zip(last.candidates, original.candidates):
        np.testing.assert_array_equal(np.asarray(mine.image), np.asarray(theirs.image))
        assert (mine.latent.cpu() == theirs.latent.cpu()).all()
    assert last.frame is last.candidates[2]  # the choice is kept
    np.testing.assert_array_equal(np.asarray(loaded.choose(0)), np.asarray(original.candidates[0].image))
    assert loaded.turns[-1].frame is loaded.turns[-1].candidates[0]


def test_a_session_saved_before_candidates_were_kept_still_loads(pipe, saved, tmp_path):
    def older(record):
        for turn in record["turns"]:
            turn.pop("candidates"), turn.pop("chosen")

    loaded = VincieEditingSession.load(pipe, _tampered(saved[1], tmp_path, older))
    assert [len(t.candidates) for t in loaded.turns] == [1, 1]


def test_a_session_loaded_into_a_model_with_another_patch_size_is_refused(image, tmp_path):
    small_patch = tiny_pipeline(default_resolution=36, patch_size=2)
    small_patch.set_progress_bar_config(disable=True)
    session = small_patch.start_session(image)  # 36x36 crops to 36 = 18 latent pixels; with patch 4, to 32 = 16
    session.edit("add a red circle", num_inference_steps=1)
    session.save(tmp_path / "s")
    other = tiny_pipeline(default_resolution=36, patch_size=4)
    with pytest.raises(ValueError, match="another patch size or VAE"):
        VincieEditingSession.load(other, tmp_path / "s")
    VincieEditingSession.load(small_patch, tmp_path / "s")  # the model that saved it still loads it


def test_ground_truth_masks_of_another_size_reject_the_transition_instead_of_being_upscaled(tmp_path):
    from diffusers_vincie.data.shapes.video import encode_mask, render_video
    from diffusers_vincie.data.shapes.world import ShapesWorld
    from diffusers_vincie.data.video.annotate import GroundTruthAnnotator
    from diffusers_vincie.data.video.build import SamplingConfig, build_sessions

    world = ShapesWorld(resolution=32)
    videos = tmp_path / "videos"
    render_video(world, world.sample_session(0, num_turns=1), videos / "video0.mp4", fps=8)
    sidecar = videos / "video0.json"
    truth = json.loads(sidecar.read_text())
    truth["source_masks"][0] = encode_mask(np.ones((8, 8), dtype=bool))
    sidecar.write_text(json.dumps(truth))
    out = tmp_path / "out"
    config = SamplingConfig(strategy="equal_interval", interval=1.0)
    summary = build_sessions([videos], out, GroundTruthAnnotator(), config=config)
    assert summary.sessions == 0
    reasons = (out / "rejects.jsonl").read_text()
    assert "source_masks[0] is 8x8 but the video is 32x32" in reasons
