"""Bad inputs to the pipeline and its sessions: each is a clear error naming the argument, raised before any work,
and a saved session is never lost or loaded wrong."""

import json
import math

import numpy as np
import PIL.Image
import pytest
import torch

from diffusers_vincie import VincieEditingSession, load_default_pipeline
from diffusers_vincie.testing import tiny_pipeline


@pytest.fixture(scope="module")
def pipe():
    p = tiny_pipeline(default_resolution=32)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def image():
    return PIL.Image.fromarray((np.random.RandomState(0).rand(32, 32, 3) * 255).astype(np.uint8))


@pytest.fixture()
def no_forward(pipe):
    """Fails the test if the transformer runs: the error must come before any heavy work."""
    calls = []
    hook = pipe.transformer.register_forward_pre_hook(lambda *a: calls.append(1))
    yield calls
    hook.remove()
    assert not calls, "the transformer ran before the bad input was refused"


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(guidance_scale=float("nan")), ValueError, "`guidance_scale`"),
        (dict(guidance_scale=float("inf")), ValueError, "`guidance_scale`"),
        (dict(guidance_scale="7.5"), TypeError, "`guidance_scale` must be a number"),
        (dict(guidance_scale=True), TypeError, "`guidance_scale`"),
        (dict(num_inference_steps=2.5), TypeError, "`num_inference_steps` must be an integer"),
        (dict(num_inference_steps=0), ValueError, "`num_inference_steps`"),
        (dict(num_inference_steps=10**6), ValueError, "`num_inference_steps`"),
        (dict(generator=0), TypeError, "`generator` must be a torch.Generator"),
        (dict(generator=[torch.Generator(), torch.Generator()]), ValueError, "one generator per candidate"),
        (dict(resolution=float("nan")), TypeError, "`resolution` must be an integer"),
        (dict(resolution=4096), ValueError, "max_resolution"),
        (dict(resolution=2), ValueError, "`resolution`"),
        (dict(num_images_per_prompt=0), ValueError, "`num_images_per_prompt`"),
        (dict(consensus_samples=0), ValueError, "`consensus_samples`"),
        (dict(consensus_samples=2.0), TypeError, "`consensus_samples` must be an integer"),
        (dict(guidance_interval=1.5), ValueError, "`guidance_interval`"),
        (dict(guidance_rescale=-1.0), ValueError, "`guidance_rescale`"),
        (dict(output_type="jpeg"), ValueError, "`output_type`"),
        (dict(posterior="mean"), ValueError, "`posterior`"),
        (dict(fidelity="fast"), ValueError, "`fidelity`"),
        (dict(callback_on_step_end="print"), TypeError, "`callback_on_step_end` must be callable"),
        (dict(callback_on_step_end_tensor_inputs=["text"]), ValueError, "callback_on_step_end_tensor_inputs"),
        (dict(latents=[torch.randn(2, 16, 16, 4)] * 3), ValueError, "`latents` must be one tensor per turn"),
        (dict(latents="noise"), ValueError, "`latents`"),
        (dict(prompt=["  "]), ValueError, "non-empty instruction"),
        (dict(prompt=["a"] * 9), ValueError, "turn table"),
        (dict(image=None), ValueError, "`image` is required"),
        (dict(image="photo.png"), TypeError, "`image` must be a PIL image"),
        (dict(image=torch.full((3, 32, 32), float("nan"))), ValueError, "`image` contains NaN"),
    ],
)
def test_call_refuses_bad_arguments_before_any_work(pipe, image, no_forward, kwargs, error, message):
    args = dict(image=image, prompt="add a red circle", num_inference_steps=1)
    args.update(kwargs)
    with pytest.raises(error, match=message):
        pipe(**args)


def test_callback_returning_none_is_a_clear_error(pipe, image):
    with pytest.raises(TypeError, match="must return a dict"):
        pipe(image, "add a red circle", num_inference_steps=1, callback_on_step_end=lambda *a: None)


def test_session_arguments(pipe, image, no_forward):
    session = pipe.start_session(image)
    with pytest.raises(TypeError, match="`turn` must be an integer"):
        session.branch("1")
    with pytest.raises(ValueError, match="`turn`"):
        session.branch(3)
    with pytest.raises(ValueError, match="Nothing to choose"):
        session.choose(0)
    with pytest.raises(ValueError, match="`instruction` must be a non-empty string"):
        session.edit("   ", num_inference_steps=1)
    with pytest.raises(ValueError, match=r"`prompt_embeds` must be one \(tokens, 32\)"):
        session.edit(prompt_embeds=torch.zeros(0, 32), num_inference_steps=1)
    with pytest.raises(ValueError, match="`resolution`"):
        pipe.start_session(image, resolution=10**5)
    with pytest.raises(TypeError, match="`generator`"):
        pipe.start_session(image, generator=1)


# ----------------------------------------------------------------------------------------- saved sessions


@pytest.fixture(scope="module")
def saved(pipe, image, tmp_path_factory):
    session = pipe.start_session(image)
    session.edit("add a red circle", num_inference_steps=1)
    folder = tmp_path_factory.mktemp("saved") / "s"
    session.save(folder)
    return session, folder


def _copy(folder, tmp_path):
    import shutil

    shutil.copytree(folder, tmp_path / "copy")
    return tmp_path / "copy"


def test_save_never_destroys_other_files(saved, tmp_path):
    session, _ = saved
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "thesis.txt").write_text("x")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        session.save(folder)
    assert (folder / "thesis.txt").read_text() == "x"
    regular = tmp_path / "notes.txt"
    regular.write_text("keep")
    with pytest.raises(FileExistsError, match="is a file"):
        session.save(regular)
    assert regular.read_text() == "keep" and not (tmp_path / ".notes.txt.old").exists()
    session.save(tmp_path / "new")
    session.save(tmp_path / "new")  # a saved session is replaced
    session.save(folder, overwrite=True)
    assert not (folder / "thesis.txt").exists() and (folder / "session.json").is_file()


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f: (f / "session.json").write_text('{"version": 2, "resol'), "session.json is not valid JSON"),
        (lambda f: _edit_record(f, version=99), "format version 99"),
        (
            lambda f: (f / "session.safetensors").write_bytes((f / "session.safetensors").read_bytes()[:100]),
            "session.safetensors cannot be read",
        ),
        (
            lambda f: PIL.Image.new("RGB", (32, 32), (9, 9, 9)).save(f / "turn_1.png"),
            "turn_1.png is missing or differs",
        ),
        (lambda f: _edit_record(f, name="../../etc/passwd"), "not a plain file name"),
        (lambda f: _edit_record(f, drop="resolution"), "lacks `resolution`"),
    ],
)
def test_load_refuses_damaged_sessions_naming_the_file(pipe, saved, tmp_path, damage, message):
    folder = _copy(saved[1], tmp_path)
    damage(folder)
    with pytest.raises(ValueError, match=message):
        VincieEditingSession.load(pipe, folder)


def _edit_record(folder, version=None, name=None, drop=None):
    path = folder / "session.json"
    record = json.loads(path.read_text())
    if version is not None:
        record["version"] = version
    if name is not None:
        record["turns"][0]["frame"]["name"] = name
    if drop is not None:
        del record[drop]
    path.write_text(json.dumps(record))


def test_load_round_trip_still_works(pipe, saved):
    session, folder = saved
    loaded = VincieEditingSession.load(pipe, folder)
    torch.testing.assert_close(loaded.turns[0].latent, session.turns[0].latent)


def test_load_default_pipeline_names_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no pipeline folder"):
        load_default_pipeline(str(tmp_path / "missing"))


def test_check_helpers_reject_bools_and_non_finite():
    from diffusers_vincie.pipelines.inputs import check_int, check_real

    assert check_real("x", 2, 1.0) == 2.0 and check_int("n", np.int64(3), 1) == 3
    for bad in (math.nan, -math.inf):
        with pytest.raises(ValueError, match="`x`"):
            check_real("x", bad, 0.0)
    with pytest.raises(TypeError, match="`n`"):
        check_int("n", False, 0)


def test_a_config_that_does_not_match_its_weights_is_refused_at_load(tmp_path):
    from diffusers_vincie.models import VincieTransformer
    from diffusers_vincie.testing import tiny_transformer

    tiny_transformer().save_pretrained(tmp_path / "t")
    config = json.loads((tmp_path / "t" / "config.json").read_text())
    config["num_layers"] = 3
    (tmp_path / "t" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="num_layers"):
        VincieTransformer.from_pretrained(tmp_path / "t")
