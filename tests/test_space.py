"""The Space (space/app.py, space/deploy.py) on the tiny random pipeline, driven through gradio_client."""

import configparser
import json
import os
import re
import socket
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import load_script

REPO = Path(__file__).resolve().parents[1]
SPACE = REPO / "space"
HOUSE, SHAPES = SPACE / "examples" / "house.png", SPACE / "examples" / "shapes.png"
STEPS, RESOLUTION = 2, 64

pytestmark = pytest.mark.timeout(120)


def load_space_module(name: str):
    return load_script(SPACE / f"{name}.py", f"space_{name}", register=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VINCIE_SPACE_TINY", "1")
        mp.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        yield load_space_module("app")


@pytest.fixture(scope="module")
def model(app):
    return app.load_model()


@pytest.fixture(scope="module")
def url(app, model):
    demo = app.build_demo(model)
    port = free_port()
    demo.launch(
        server_name="127.0.0.1",
        server_port=port,
        prevent_thread_lock=True,
        quiet=True,
        max_file_size=app.MAX_UPLOAD_SIZE,
    )
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def client(url):
    from gradio_client import Client

    return Client(url, verbose=False)


def edit(c, image, instruction, chain=False, seed=0):
    from gradio_client import handle_file

    image = None if image is None else handle_file(str(image))
    return c.predict(image, instruction, STEPS, 7.5, seed, RESOLUTION, chain, api_name="/edit")


def pixels(path) -> np.ndarray:
    return np.asarray(PIL.Image.open(path).convert("RGB"))


def captions(history) -> list:
    return [item["caption"] for item in history]


def direct_session_images(pipe, image_path, instructions, seed=0, **options) -> list:
    """What the app should return: the same session run on the pipeline itself, seeded as the app seeds it."""
    session = pipe.start_session(
        PIL.Image.open(image_path).convert("RGB"), resolution=RESOLUTION, generator=torch.Generator().manual_seed(seed)
    )
    return [
        np.asarray(
            session.edit(
                i,
                num_inference_steps=STEPS,
                guidance_scale=7.5,
                generator=torch.Generator().manual_seed(seed),
                **options,
            )
        )
        for i in instructions
    ]


# =====================================================================================================
#                                       Sessions through the API
# =====================================================================================================


def test_two_turns_and_undo(url, model):
    c = client(url)
    expected = direct_session_images(model.pipe, HOUSE, ["add a red circle", "make it bigger"])
    result, history, masks, _, turn, status = edit(c, HOUSE, "add a red circle")
    assert captions(history) == ["0 · source", "1 · add a red circle"] and turn == 1
    np.testing.assert_array_equal(pixels(result), expected[0])
    np.testing.assert_array_equal(pixels(history[0]["image"]), pixels(HOUSE))
    assert masks == []

    result, history, _, _, turn, _ = edit(c, None, "make it bigger")  # no image: continue this client's session
    assert captions(history) == ["0 · source", "1 · add a red circle", "2 · make it bigger"] and turn == 2
    np.testing.assert_array_equal(pixels(result), expected[1])  # turn 2 conditioned on turn 1, as in the pipeline

    result, history, _, _, turn, status = c.predict(api_name="/undo")
    assert captions(history) == ["0 · source", "1 · add a red circle"] and turn == 1 and "Undid" in status
    np.testing.assert_array_equal(pixels(result), expected[0])


def test_chain_of_editing_restore_branches_and_download(url):
    c = client(url)
    edit(c, SHAPES, "add a red circle")
    _, history, masks, _, _, _ = edit(c, None, "move it left", chain=True)
    assert [m["caption"] for m in masks] == ["2 · current region", "2 · next region"]
    assert pixels(masks[0]["image"]).shape[:2] == pixels(history[2]["image"]).shape[:2]

    _, history, _, _, _, status = c.predict(1, api_name="/restore")
    assert captions(history) == ["0 · source", "1 · add a red circle"] and "Branch 2 of 2" in status
    edit(c, None, "make it green")
    _, history, _, _, _, _ = c.predict(0, api_name="/switch_branch")  # the first branch is intact
    assert captions(history)[-1] == "2 · move it left"
    _, history, _, _, _, _ = c.predict(1, api_name="/switch_branch")
    assert captions(history)[-1] == "2 · make it green"

    archive = zipfile.ZipFile(c.predict(api_name="/download"))
    record = json.loads(archive.read("session.json"))
    assert [t["instruction"] for t in record["turns"]] == ["add a red circle", "make it green"]
    assert {"source.png", "turn_1.png", "turn_2.png"} <= set(archive.namelist())
    np.testing.assert_array_equal(np.asarray(PIL.Image.open(archive.open("source.png"))), pixels(SHAPES))

    _, history, _, _, turn, _ = c.predict(api_name="/reset")
    assert history == [] and turn == 0
    edit(c, SHAPES, "add a red circle")
    _, history, _, _, _, status = edit(c, HOUSE, "add a red circle")  # another source: a new session
    assert captions(history) == ["0 · source", "1 · add a red circle"] and "new session" in status
    np.testing.assert_array_equal(pixels(history[0]["image"]), pixels(HOUSE))


def test_parallel_clients_keep_separate_sessions(url):
    clients = {HOUSE: (client(url), "add a red circle"), SHAPES: (client(url), "remove the blue square")}
    results, errors = {}, []

    def run(path, c, instruction):
        try:
            edit(c, path, instruction)
            results[path] = edit(c, None, "make it bigger")
        except Exception as error:  # surfaced by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(p, c, i)) for p, (c, i) in clients.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not errors, errors
    for path, (_, instruction) in clients.items():
        history = results[path][1]
        assert captions(history) == ["0 · source", f"1 · {instruction}", "2 · make it bigger"]
        np.testing.assert_array_equal(pixels(history[0]["image"]), pixels(path))


def painted_layer(path, tmp_path, box=(0.2, 0.2, 0.6, 0.7)) -> tuple:
    """A region editor stroke layer (RGBA, transparent outside ``box``, given as fractions of the image) over
    ``path``'s image, saved as a PNG, and the mask the session should get (source size)."""
    size = PIL.Image.open(path).size
    left, top, right, bottom = (round(f * n) for f, n in zip(box, size * 2))
    layer = PIL.Image.new("RGBA", size, (0, 0, 0, 0))
    layer.paste((255, 51, 102, 255), (left, top, right, bottom))
    layer.save(tmp_path / "layer.png")
    mask = PIL.Image.new("L", size, 0)
    mask.paste(255, (left, top, right, bottom))
    return tmp_path / "layer.png", mask


def region_payload(background, layer) -> dict:
    from gradio_client import handle_file

    return {"background": handle_file(str(background)), "layers": [handle_file(str(layer))], "composite": None}


def test_painted_region_drag_and_negative_prompt(url, model, tmp_path):
    from gradio_client import handle_file

    from diffusers_vincie.pipelines.image_processing import transform_mask

    c = client(url)
    layer, mask = painted_layer(HOUSE, tmp_path)
    painted = np.asarray(mask) > 127

    result, history, masks, _, _, _ = c.predict(
        handle_file(str(HOUSE)),
        "make it blue",
        STEPS,
        7.5,
        0,
        RESOLUTION,
        False,
        "blurry",
        region_payload(HOUSE, layer),
        api_name="/edit",
    )
    assert [m["caption"] for m in masks] == ["1 · current region", "1 · next region"]
    np.testing.assert_array_equal(pixels(masks[0]["image"])[..., 0] > 127, painted)  # the session got the painted mask

    result, history, masks, _, turn, _ = c.predict(
        None,
        "move it right",
        STEPS,
        7.5,
        0,
        RESOLUTION,
        "blurry",
        region_payload(HOUSE, layer),
        25,
        -10,
        1.5,
        30,
        api_name="/drag",
    )
    width, height = mask.size
    moved = transform_mask(mask.convert("RGB"), (0.25 * width, -0.1 * height), 1.5, 30)
    np.testing.assert_array_equal(pixels(masks[2]["image"])[..., 0] > 127, painted)
    np.testing.assert_array_equal(pixels(masks[3]["image"]), np.asarray(moved))  # the next region is the moved one
    assert (
        turn == 2
        and captions(history)[-1] == "2 · move it right"
        and pixels(result).shape == pixels(history[1]["image"]).shape
    )

    _, _, masks, _, _, _ = c.predict(
        None, "move it left", STEPS, 7.5, 0, RESOLUTION, "", None, -20, 0, 1.0, 0, api_name="/drag"
    )  # nothing painted: the model predicts the region
    assert [m["caption"] for m in masks][-2:] == ["3 · current region", "3 · next region"]
    with pytest.raises(Exception, match="Scale: Value 0.0 is less than minimum value 0.25"):
        c.predict(None, "move it", STEPS, 7.5, 0, RESOLUTION, "", None, 0, 0, 0.0, 0, api_name="/drag")

    plain = c.predict(
        handle_file(str(SHAPES)), "add a red circle", STEPS, 7.5, 0, RESOLUTION, False, "", None, api_name="/edit"
    )
    other = client(url).predict(
        handle_file(str(SHAPES)),
        "add a red circle",
        STEPS,
        7.5,
        0,
        RESOLUTION,
        False,
        "blurry, low quality",
        None,
        api_name="/edit",
    )
    expected = direct_session_images(model.pipe, SHAPES, ["add a red circle"], negative_prompt="blurry, low quality")
    np.testing.assert_array_equal(pixels(other[0]), expected[0])  # the negative prompt reaches the sampler
    assert not np.array_equal(pixels(plain[0]), pixels(other[0]))


def test_region_canvas_shows_the_latest_image_enlarged(app, model):
    session = model.pipe.start_session(PIL.Image.open(HOUSE), resolution=RESOLUTION)
    session.edit("add a red circle", num_inference_steps=1)
    canvas = app.current_canvas(app.EditorState([session]))
    latest = session.history[-1][1]
    factor = canvas["background"].width // latest.width
    assert factor >= 2 and canvas["background"].size == (latest.width * factor, latest.height * factor)
    np.testing.assert_array_equal(np.asarray(canvas["background"])[::factor, ::factor], np.asarray(latest))
    assert canvas["layers"] == [] and app.current_canvas(None)["background"] is None


def test_story_runs_one_session(url, model):
    from gradio_client import handle_file

    lines = ["add a red circle", "make it bigger", "move it left"]
    gallery = client(url).predict(
        handle_file(str(HOUSE)), "\n".join(lines) + "\n\n", STEPS, 7.5, 3, RESOLUTION, "", api_name="/story"
    )
    assert captions(gallery) == ["0 · source"] + [f"{k} · {line}" for k, line in enumerate(lines, start=1)]
    expected = direct_session_images(model.pipe, HOUSE, lines, seed=3, negative_prompt="")
    for item, image in zip(gallery[1:], expected):
        np.testing.assert_array_equal(pixels(item["image"]), image)
    with pytest.raises(Exception, match="between 1 and 7 instructions"):
        client(url).predict(
            handle_file(str(HOUSE)),
            "\n".join(["add a red circle"] * 8),
            STEPS,
            7.5,
            0,
            RESOLUTION,
            "",
            api_name="/story",
        )


def test_settings_are_bounded_with_clear_messages(url, app, model):
    from gradio_client import handle_file

    c = client(url)
    assert model.max_resolution == 32 * model.pipe.size_multiple  # 1024 patches per frame
    for args, message in (  # Gradio checks the components' bounds; the app names the field
        ((STEPS, 7.5, 1e30, RESOLUTION), r"Seed: Value 1e\+30 is greater than maximum value 4294967295"),
        ((STEPS, 7.5, -1, RESOLUTION), "Seed: Value -1 is less than minimum value 0"),
        (
            (app.MAX_STEPS + 1, 7.5, 0, RESOLUTION),
            f"Steps: Value {app.MAX_STEPS + 1} is greater than maximum value {app.MAX_STEPS}",
        ),
        ((2.5, 7.5, 0, RESOLUTION), "Steps must be a whole number from 1 to"),
        (
            (STEPS, 7.5, 0, 1024),
            rf"Resolution \(.*at most {model.max_resolution} for this model\): Value 1024 is greater",
        ),
    ):
        with pytest.raises(Exception, match=message):
            c.predict(handle_file(str(HOUSE)), "add a red circle", *args, False, api_name="/edit")
    with pytest.raises(Exception, match="Resolution .*Value 4096 is greater"):
        c.predict(handle_file(str(HOUSE)), "a story", STEPS, 7.5, 0, 4096, "", api_name="/story")
    edit_fn = next(f.fn for f in app.build_demo(model).fns.values() if f.api_name == "edit")
    with pytest.raises(app.gr.Error, match="Resolution must be a whole number from 4 to 128; got 1024"):
        edit_fn(PIL.Image.open(HOUSE), "add a red circle", STEPS, 7.5, 0, 1024, False, None)  # direct calls too


def test_a_call_past_the_time_limit_stops_and_keeps_the_session(app, model, monkeypatch):
    import gradio as gr

    handlers = {f.api_name: f.fn for f in app.build_demo(model).fns.values() if f.api_name}
    image = PIL.Image.open(HOUSE)
    state = handlers["edit"](image, "add a red circle", STEPS, 7.5, 0, RESOLUTION, False, None)[0]
    monkeypatch.setattr(app, "MAX_CALL_SECONDS", -1.0)  # every call is already late at its first step
    for name, args in (
        ("edit", (None, "make it bigger", STEPS, 7.5, 0, RESOLUTION, False, state)),
        ("drag", (None, "move it", STEPS, 7.5, 0, RESOLUTION, state)),
        ("story", (image, "add a red circle", STEPS, 7.5, 0, RESOLUTION)),
        ("compose", ([str(HOUSE), str(SHAPES)], "both", STEPS, 7.5, 0, RESOLUTION)),
    ):
        with pytest.raises(gr.Error, match="ran past the limit of -1 s per call"):
            handlers[name](*args)
    assert [t.instruction for t in state.session.turns] == ["add a red circle"]  # nothing half-done was kept
    assert not state.busy.locked()


def test_shipped_model_refuses_large_resolutions(app):
    from diffusers_vincie.default_model import RESOLUTION as SHIPPED
    from diffusers_vincie.default_model import load_default_pipeline

    model = app.LoadedModel(load_default_pipeline(), "VINCIE-Shapes", resolution=SHIPPED)
    assert SHIPPED < model.max_resolution == 128 < 1024
    with pytest.raises(app.gr.Error, match="Resolution must be a whole number from 4 to 128; got 1024"):
        app.check_settings(model, 10, 0, 1024)


def test_offload_switch(app, model, monkeypatch):
    from diffusers_vincie.testing import tiny_pipeline

    monkeypatch.setenv("VINCIE_SPACE_TINY", "1")
    monkeypatch.setenv("VINCIE_SPACE_OFFLOAD", "model")
    loaded = app.load_model()  # no GPU here: the switch is harmless, and the banner says it was ignored
    assert loaded.offload == "none" and "VINCIE_SPACE_OFFLOAD=model ignored: no GPU" in loaded.note
    assert {p.device.type for p in loaded.pipe.transformer.parameters()} == {"cpu"}
    monkeypatch.setenv("VINCIE_SPACE_OFFLOAD", "disk")
    with pytest.raises(ValueError, match="VINCIE_SPACE_OFFLOAD must be one of none, model, sequential; got 'disk'"):
        app.load_model()

    calls = []  # on a GPU machine each mode installs its diffusers hooks (run for real by benchmarks/gpu_check.sh)
    for offload, method in (("model", "enable_model_cpu_offload"), ("sequential", "enable_sequential_cpu_offload")):
        target = app.LoadedModel(tiny_pipeline(), "tiny")
        monkeypatch.setattr(target.pipe, method, lambda: calls.append(offload), raising=False)
        app.place(target, "cuda", offload)
        assert target.offload == offload
    assert calls == ["model", "sequential"]


def test_compose_multi_concept(url):
    from gradio_client import handle_file

    c = client(url)
    composed = c.predict(
        [handle_file(str(HOUSE)), handle_file(str(SHAPES))],
        "the house with the shapes",
        STEPS,
        7.5,
        0,
        RESOLUTION,
        api_name="/compose",
    )
    assert pixels(composed).ndim == 3
    with pytest.raises(Exception, match="between 2 and"):
        c.predict([handle_file(str(HOUSE))], "the house", STEPS, 7.5, 0, RESOLUTION, api_name="/compose")


def test_compose_with_a_models_own_wording(app, monkeypatch):
    """A model with its own composition wording (the shapes models) gets its references introduced in it, the
    templated prompts, and a clear error for a reference it cannot read."""
    from gradio_client import handle_file

    from diffusers_vincie.default_model import composition_prompts
    from diffusers_vincie.testing import tiny_pipeline

    model = app.LoadedModel(
        tiny_pipeline(),
        "tiny shapes",
        is_random=True,
        steps=STEPS,
        resolution=32,
        composition_prompts=composition_prompts,
        compose_example=app.SHAPES_COMPOSITION_EXAMPLE,
    )
    calls = []
    call = type(model.pipe).__call__

    def recording_call(pipe, images, prompts, **kwargs):
        calls.append((prompts, kwargs["use_prompt_template"]))
        return call(pipe, images, prompts, **kwargs)

    monkeypatch.setattr(type(model.pipe), "__call__", recording_call)
    demo = app.build_demo(model)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        c = client(f"http://127.0.0.1:{port}/")
        files, description = app.SHAPES_COMPOSITION_EXAMPLE
        references = [handle_file(str(SPACE / "examples" / name)) for name in files]
        composed = c.predict(references, description, STEPS, 2.0, 0, 32, api_name="/compose")
        assert pixels(composed).ndim == 3
        assert calls == [(["show a big purple circle", f"show {description}"], True)]
        two_objects = [references[0], handle_file(str(SPACE / "examples" / "scene_2.png"))]
        with pytest.raises(Exception, match="image 1 shows 2 objects"):
            c.predict(two_objects, description, STEPS, 2.0, 0, 32, api_name="/compose")
    finally:
        demo.close()


def test_full_turn_table_gets_a_friendly_error(app):
    import gradio as gr

    from diffusers_vincie.testing import tiny_pipeline

    demo = app.build_demo(app.LoadedModel(tiny_pipeline(max_turns=2), "two-turn model", is_random=True))
    edit_fn = next(f.fn for f in demo.fns.values() if f.api_name == "edit")
    image, state = PIL.Image.open(HOUSE).convert("RGB"), None
    for instruction in ("add a red circle", "make it bigger"):
        state = edit_fn(image, instruction, 1, 1.0, 0, RESOLUTION, False, state)[0]
    with pytest.raises(gr.Error, match="turn table .*Restore an earlier turn or reset the session"):
        edit_fn(image, "move it left", 1, 1.0, 0, RESOLUTION, False, state)


def test_a_drag_off_the_image_is_a_clear_error_and_keeps_the_session(app, model):
    import gradio as gr

    handlers = {f.api_name: f.fn for f in app.build_demo(model).fns.values() if f.api_name}
    image = PIL.Image.open(HOUSE).convert("RGB")
    state = handlers["edit"](image, "add a red circle", 1, 1.0, 0, RESOLUTION, False, None)[0]
    layer = PIL.Image.new("RGBA", image.size, (0, 0, 0, 0))
    layer.paste((255, 0, 0, 255), (10, 10, image.width // 2, image.height // 2))
    region = {"background": image, "layers": [layer], "composite": image}
    for move_x, move_y in ((100, 0), (0, -100), (-100, 100)):  # the sliders at their ends
        with pytest.raises(gr.Error, match="moves the region entirely off"):
            handlers["drag"](None, "move it", 1, 1.0, 0, RESOLUTION, state, "", region, move_x, move_y, 1.0, 0)
    assert len(state.session.turns) == 1 and not state.busy.locked()


def test_an_upload_goes_through_the_package_image_rule(app, tmp_path):
    sixteen_bit = tmp_path / "depth.png"
    PIL.Image.fromarray(np.full((32, 32), 32896, dtype=np.uint16)).save(sixteen_bit)  # half of 65535
    assert PIL.Image.open(sixteen_bit).mode.startswith("I")
    opened = np.asarray(app.open_user_image(str(sixteen_bit)))
    assert opened.shape == (32, 32, 3) and np.all(opened == 128)  # scaled by its 16-bit range, not clipped to white


def test_state_is_not_changed_while_an_edit_runs(app, model):
    import gradio as gr

    demo = app.build_demo(model)
    handlers = {f.api_name: f.fn for f in demo.fns.values() if f.api_name}
    state = handlers["edit"](PIL.Image.open(HOUSE), "add a red circle", 1, 1.0, 0, RESOLUTION, False, None)[0]
    with state.busy:  # as while the user's edit samples
        for name, args in (("undo", ()), ("restore", (0,)), ("switch_branch", (0,))):
            with pytest.raises(gr.Error, match="still running"):
                handlers[name](*args, state)
    assert len(state.session.turns) == 1
    handlers["undo"](state)  # free again
    assert len(state.session.turns) == 0


# =====================================================================================================
#                                      Validation and isolation
# =====================================================================================================


def test_bad_input_gets_friendly_errors(url, app, tmp_path):
    c = client(url)
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(Exception, match="'notes.txt' is not a supported image file: upload a PNG"):
        edit(c, text, "add a red circle")
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"definitely not a PNG")
    with pytest.raises(Exception, match="'fake.png' could not be read as an image"):
        edit(c, fake, "add a red circle")
    side = int(app.MAX_PIXELS**0.5) + 100
    huge = tmp_path / "huge.png"
    PIL.Image.new("RGB", (side, side), "white").save(huge)
    with pytest.raises(Exception, match=rf"'huge.png' is {side} x {side} pixels .*Downscale the image"):
        edit(c, huge, "add a red circle")
    with pytest.raises(Exception, match="keep it under 400"):
        edit(c, HOUSE, "add a red circle " * 40)
    with pytest.raises(Exception, match="Type an instruction first"):
        edit(c, HOUSE, "   ")
    with pytest.raises(Exception, match="Upload an image"):
        edit(c, None, "add a red circle")
    with pytest.raises(Exception, match="Nothing to undo|no session yet"):
        c.predict(api_name="/undo")


def raw_edit(url, image, region=None) -> str:
    """One `/edit` call over plain HTTP (no gradio_client, which would upload local files itself): the event
    stream's text."""
    import httpx

    data = [image, "add a red circle", STEPS, 7.5, 0, RESOLUTION, False, None, "", region]
    event = httpx.post(f"{url}gradio_api/call/edit", json={"data": data}, timeout=10)
    return httpx.get(f"{url}gradio_api/call/edit/{event.json()['event_id']}", timeout=60).text


def file_data(path, name="photo.png") -> dict:
    return {"path": str(path), "meta": {"_type": "gradio.FileData"}, "orig_name": name}


def test_server_paths_are_not_reachable(url, app, tmp_path, monkeypatch):
    import httpx

    secret = str(REPO / "setup.cfg")
    assert httpx.get(f"{url}gradio_api/file={secret}", timeout=10).status_code == 403
    stream = raw_edit(url, file_data(secret, "setup.png"))
    assert "event: error" in stream and "configparser" not in stream and "install_requires" not in stream

    opened = []  # every file the app itself opened as an upload
    original = app.open_user_image
    monkeypatch.setattr(app, "open_user_image", lambda path, name=None: opened.append(path) or original(path, name))
    outside = tmp_path / "private.png"  # a real PNG on the server, outside Gradio's upload folder
    PIL.Image.new("RGB", (48, 40), "red").save(outside)
    with outside.open("rb") as f:
        uploaded = httpx.post(
            f"{url}gradio_api/upload", files={"files": ("private.png", f, "image/png")}, timeout=10
        ).json()[0]
    assert "event: complete" in raw_edit(url, file_data(uploaded))  # the same image, uploaded: a normal edit
    assert opened == [uploaded]

    own_stroke = file_data(uploaded, "layer.png")
    assert "event: complete" in raw_edit(
        url, file_data(uploaded), {"background": own_stroke, "layers": [own_stroke], "composite": own_stroke}
    )
    for path in (outside, HOUSE):  # HOUSE is served as an example, but only through its cached copy
        assert httpx.get(f"{url}gradio_api/file={path}", timeout=10).status_code == 403
        assert "event: error" in raw_edit(url, file_data(path))
        stroke = file_data(path, "layer.png")  # the region editor's images obey the same rule
        assert "event: error" in raw_edit(
            url, file_data(uploaded), {"background": stroke, "layers": [stroke], "composite": stroke}
        )
    assert set(opened) == {uploaded}  # the files outside were refused before the app opened them


# =====================================================================================================
#                                     Model choice, ZeroGPU, deploy
# =====================================================================================================


def test_model_choice_from_environment(app, monkeypatch, tmp_path):
    from diffusers_vincie.testing import tiny_pipeline

    monkeypatch.setenv("VINCIE_SPACE_TINY", "1")
    random_model = app.load_model()
    assert random_model.is_random and "random" in random_model.name and "VINCIE_SPACE_TINY" in random_model.note
    tiny_pipeline(seed=3).save_pretrained(tmp_path / "checkpoint")
    monkeypatch.setenv("VINCIE_MODEL", str(tmp_path / "checkpoint"))
    loaded = app.load_model()
    assert not loaded.is_random and loaded.name == str(tmp_path / "checkpoint")
    reference = tiny_pipeline(seed=3).transformer.state_dict()
    for name, tensor in loaded.pipe.transformer.state_dict().items():
        torch.testing.assert_close(tensor, reference[name])


def test_a_7b_family_folder_is_selectable_with_its_own_defaults(app, monkeypatch, tmp_path):
    from diffusers_vincie.models import VincieAutoencoderKL7B
    from diffusers_vincie.testing import tiny_7b_family_pipeline

    tiny_7b_family_pipeline(default_guidance_scale=10.0, default_resolution=48).save_pretrained(tmp_path / "7b")
    monkeypatch.setenv("VINCIE_MODEL", str(tmp_path / "7b"))
    loaded = app.load_model()
    assert isinstance(loaded.pipe.vae, VincieAutoencoderKL7B) and loaded.name == str(tmp_path / "7b")
    assert (loaded.guidance, loaded.resolution, loaded.steps) == (10.0, 48, 50)
    session = loaded.pipe.start_session(PIL.Image.new("RGB", (32, 32), (9, 90, 200)), resolution=32)
    session.edit("add a star", num_inference_steps=1, generator=torch.Generator().manual_seed(0))
    assert len(session.images) == 1


def test_embedded_default_model_is_the_default(app, monkeypatch, tmp_path):
    import diffusers_vincie.default_model as default_model
    from diffusers_vincie.testing import tiny_pipeline

    monkeypatch.delenv("VINCIE_SPACE_TINY", raising=False)
    monkeypatch.delenv("VINCIE_MODEL", raising=False)
    monkeypatch.setattr(default_model, "DEFAULT_MODEL", str(tmp_path / "missing"))
    fallback = app.load_model()  # no shipped weights in this install: the random model, saying why
    assert fallback.is_random and fallback.note == "no default model shipped"
    tiny_pipeline(seed=5).save_pretrained(tmp_path / "shipped")
    monkeypatch.setattr(default_model, "DEFAULT_MODEL", str(tmp_path / "shipped"))
    loaded = app.load_model()
    assert not loaded.is_random and "default model" in loaded.name
    assert (loaded.resolution, loaded.steps, loaded.guidance) == (
        default_model.RESOLUTION,
        default_model.DEFAULT_SAMPLING["num_inference_steps"],
        default_model.DEFAULT_SAMPLING["guidance_scale"],
    )
    assert loaded.examples == app.SHAPES_EXAMPLES and all(
        (SPACE / "examples" / f).is_file() for f, _ in loaded.examples
    )
    # the Multi-concept tab words references as the shapes model's composition shots; its example reads
    files, description = loaded.compose_example
    references = [PIL.Image.open(SPACE / "examples" / name) for name in files]
    assert loaded.composition_prompts(references, description) == [
        "show a big purple circle",
        f"show {description}",
    ]


def test_gpu_duration_grows_with_turns(app, model, monkeypatch):
    import types

    assert app.on_gpu(duration=lambda *a: 1)(len) is len  # no `spaces` package: a no-op
    durations = {}

    def gpu(duration):
        def wrap(fn):
            durations[fn.__name__] = duration
            return fn

        return wrap

    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=gpu))
    app.build_demo(model)
    assert set(durations) == {"edit", "drag", "story", "compose"}
    assert not (SPACE / "app.pyi").exists()  # building the app writes nothing next to it
    session = model.pipe.start_session(PIL.Image.open(HOUSE), resolution=RESOLUTION)
    seconds = []
    for _ in range(3):
        seconds.append(durations["edit"](None, "x", 50, 7.5, 0, 256, False, app.EditorState([session])))
        session.edit("add a red circle", num_inference_steps=1)
    assert seconds[0] < seconds[1] < seconds[2] <= app.GPU_SECONDS_MAX


def test_samplers_pass_the_gate_and_quick_handlers_skip_the_queue(app, model):
    demo = app.build_demo(model)
    names = ("edit", "drag", "story", "compose")
    samplers = [f for f in demo.fns.values() if getattr(f.fn, "__name__", "") in names]
    assert len(samplers) == 5  # edit button, Enter in the instruction box, drag, story, compose
    assert all(f.concurrency_limit is None and f.queue is not False for f in samplers)
    assert all(getattr(f.fn, "__wrapped__", None) is not None for f in samplers)  # each runs through the gate
    quick = [f for f in demo.fns.values() if f not in samplers]
    assert {f.api_name for f in quick} >= {"undo", "restore", "switch_branch", "reset", "download"}
    assert all(f.queue is False for f in quick), [f.api_name for f in quick if f.queue is not False]


def test_deploy_dry_run_lists_exactly_the_uploaded_files(monkeypatch):
    deploy = load_space_module("deploy")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, str(SPACE / "deploy.py"), "--repo-id", "someone/vincie", "--dry-run"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    ).stdout.splitlines()
    files = out[1:]
    assert out[0] == f"Would upload {len(files)} files to https://huggingface.co/spaces/someone/vincie:"
    assert {
        "app.py",
        "model_choice.py",
        "serving.py",
        "README.md",
        "requirements.txt",
        "examples/house.png",
        "diffusers_vincie/__init__.py",
        "diffusers_vincie/pipelines/session.py",
    } <= set(files)
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]

    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, **kwargs):
            calls["create_repo"] = (repo_id, kwargs)

        def upload_folder(self, folder_path, **kwargs):
            calls["uploaded"] = sorted(
                p.relative_to(folder_path).as_posix() for p in Path(folder_path).rglob("*") if p.is_file()
            )
            calls["upload_folder"] = kwargs

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert deploy.deploy("someone/vincie") == files
    assert calls["create_repo"] == (
        "someone/vincie",
        {"repo_type": "space", "space_sdk": "gradio", "private": False, "exist_ok": True},
    )
    assert calls["uploaded"] == files and calls["upload_folder"]["repo_type"] == "space"

    bad = subprocess.run(
        [sys.executable, str(SPACE / "deploy.py"), "--repo-id", "no-slash", "--dry-run"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2 and "must look like USER/NAME" in bad.stderr


def test_space_metadata_and_requirements():
    readme = (SPACE / "README.md").read_text()
    front = readme.split("---")[1]
    for key in (
        "sdk: gradio",
        "app_file: app.py",
        "python_version:",
        "sdk_version: 6.",
        "suggested_hardware:",
        "models:",
    ):
        assert key in front
    import gradio

    sdk_major = re.search(r"sdk_version: (\d+)\.", front).group(1)
    assert sdk_major == gradio.__version__.split(".")[0]  # the Space runs the gradio major the tests ran
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    needed = {
        re.split(r"[<>=!\s]", line.strip())[0].lower()
        for line in setup["options"]["install_requires"].splitlines()
        if line.strip()
    }
    listed = {
        re.split(r"[<>=!\s]", line)[0].lower()
        for line in (SPACE / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert needed <= listed, f"space/requirements.txt misses {needed - listed}"
