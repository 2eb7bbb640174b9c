"""VincieInContextPipeline and VincieEditingSession on tiny random components."""

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import assert_masks_and_drag

from diffusers_vincie import OFFICIAL_NEGATIVE_PROMPT, VincieEditingSession, VincieInContextPipeline
from diffusers_vincie.pipelines.image_processing import preprocess, to_rgb, transform_mask
from diffusers_vincie.testing import tiny_pipeline

STEPS = 3


@pytest.fixture(scope="module")
def image():
    return PIL.Image.fromarray((np.random.RandomState(0).rand(40, 56, 3) * 255).astype(np.uint8))


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_official_negative_prompt_matches_fixture(official_fixtures):
    from safetensors import safe_open

    with safe_open(str(official_fixtures / "forward_session.safetensors"), "pt") as f:
        assert f.metadata()["negative_text"] == OFFICIAL_NEGATIVE_PROMPT


def test_multi_turn_call_returns_every_turn(pipe, image):
    out = pipe(
        image,
        ["add a red circle", "make it bigger", "move it left"],
        num_inference_steps=STEPS,
        resolution=32,
        generator=_gen(),
    )
    assert len(out.images) == 3 and all(im.size == (36, 24) for im in out.images)
    again = pipe(
        image,
        ["add a red circle", "make it bigger", "move it left"],
        num_inference_steps=STEPS,
        resolution=32,
        generator=_gen(),
    )
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(out.images, again.images))
    for output_type, kind in (("np", np.ndarray), ("pt", torch.Tensor), ("latent", torch.Tensor)):
        images = pipe(image, "add a red circle", num_inference_steps=2, resolution=32, output_type=output_type).images
        assert isinstance(images[0], kind)


def test_turn_conditions_on_history(pipe, image):
    """Turn 2's output depends on instruction 1 (history), with identical noise for turn 2."""
    noise = [torch.randn(2, 12, 18, 4, generator=_gen(1)), torch.randn(3, 12, 18, 4, generator=_gen(2))]
    a = pipe(
        image,
        ["add a red circle", "make it bigger"],
        latents=noise,
        num_inference_steps=STEPS,
        resolution=32,
        output_type="latent",
    ).images
    b = pipe(
        image,
        ["remove the blue square", "make it bigger"],
        latents=noise,
        num_inference_steps=STEPS,
        resolution=32,
        output_type="latent",
    ).images
    assert (a[1] - b[1]).abs().max() > 1e-4


def test_session_matches_call_and_encodes_each_thing_once(pipe, image):
    prompts = ["add a red circle", "make it bigger", "move it left"]
    noise = [torch.randn(k + 2, 12, 18, 4, generator=_gen(k)) for k in range(3)]
    call = pipe(
        image, prompts, latents=noise, num_inference_steps=STEPS, resolution=32, output_type="latent", posterior="mode"
    ).images
    session = pipe.start_session(image, resolution=32, posterior="mode")
    for k, p in enumerate(prompts):
        session.edit(p, latents=noise[k], num_inference_steps=STEPS)
    for a, turn in zip(call, session.turns):
        torch.testing.assert_close(turn.latent, a)
    assert session.encode_calls == {"text": 4, "image": 1}  # 3 instructions + negative prompt, 1 source image


def test_session_undo_branch_save_load(pipe, image, tmp_path):
    session = pipe.start_session(image, resolution=32)
    session.edit("add a red circle", num_inference_steps=2, generator=_gen())
    session.edit("make it bigger", num_inference_steps=2, generator=_gen())
    branch = session.branch(1)
    branch.edit("move it left", num_inference_steps=2, generator=_gen())
    assert [h[0] for h in session.history] == [None, "add a red circle", "make it bigger"]
    assert [h[0] for h in branch.history] == [None, "add a red circle", "move it left"]
    session.save(tmp_path / "s")
    session.save(tmp_path / "s")  # overwriting is atomic too
    restored = VincieEditingSession.load(pipe, tmp_path / "s")
    assert [t.instruction for t in restored.turns] == ["add a red circle", "make it bigger"]
    torch.testing.assert_close(restored.turns[-1].latent, session.turns[-1].latent)
    nxt_a = session.edit("move it left", num_inference_steps=2, latents=torch.randn(4, 12, 18, 4, generator=_gen(5)))
    nxt_b = restored.edit("move it left", num_inference_steps=2, latents=torch.randn(4, 12, 18, 4, generator=_gen(5)))
    assert np.array_equal(np.asarray(nxt_a), np.asarray(nxt_b))
    assert restored.encode_calls["image"] == 0  # nothing re-encoded after loading
    session.undo()
    assert len(session.turns) == 2
    with pytest.raises(ValueError, match="Nothing to undo"):
        pipe.start_session(image, resolution=32).undo()


def test_official_fidelity_re_encodes_outputs(pipe, image):
    session = pipe.start_session(image, resolution=32, generator=_gen())
    session.edit("add a red circle", num_inference_steps=2, fidelity="official", generator=_gen(3))
    session.edit("make it bigger", num_inference_steps=2, fidelity="official", generator=_gen(3))
    assert session.encode_calls["image"] == 3
    latent = session.turns[0].frame.latent
    assert latent.shape == (12, 18, 4)


def test_chain_of_editing_controllable_and_drag(pipe, image):
    session = assert_masks_and_drag(pipe, image)
    with pytest.raises(ValueError, match="is 10x10 but the session image is 56x40"):
        session.edit("x", current_mask=np.zeros((10, 10), bool), num_inference_steps=2)


def test_transform_mask_scale():
    mask = PIL.Image.new("RGB", (20, 20))
    mask.paste((255, 255, 255), (8, 8, 12, 12))
    grown = np.asarray(transform_mask(mask, scale=2.0).convert("L")) > 127
    assert 50 <= grown.sum() <= 80  # 4x4 region scaled by 2 -> ~8x8


def test_multi_concept_composition(pipe):
    refs = [PIL.Image.new("RGB", (32, 32), c) for c in ("red", "blue", "green")]
    prompts = ["<IMG1>: ", "<IMG2>: ", "Based on <IMG0>, <IMG1>, <IMG2>. Output <IMG3>: "]
    out = pipe(refs, prompts, use_prompt_template=False, num_inference_steps=2, resolution=32)
    assert len(out.images) == 1


def test_story_and_camera_prefix(pipe, image):
    session = pipe.start_session(image, resolution=32, camera_prefix="the camera turns left, ")
    session.edit("a dog appears", num_inference_steps=2)
    assert session.turns[0].text.prompt == "Based on <IMG0>, the camera turns left, a dog appears. Output <IMG1>: "


def test_callback_and_interrupt(pipe, image):
    seen = []

    def callback(p, step, t, kwargs):
        seen.append(step)
        return {"latents": kwargs["latents"] * 0}

    out = pipe(
        image,
        "add a red circle",
        num_inference_steps=3,
        resolution=32,
        callback_on_step_end=callback,
        output_type="latent",
    )
    assert seen == [0, 1, 2]
    assert out.images[0].abs().max() == 0


def test_save_pretrained_round_trip_and_diffusion_pipeline(pipe, image, tmp_path):
    from diffusers import DiffusionPipeline

    pipe.save_pretrained(tmp_path / "p")
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "p")
    assert isinstance(loaded, VincieInContextPipeline)
    loaded.set_progress_bar_config(disable=True)
    noise = torch.randn(2, 12, 18, 4, generator=_gen())
    a = pipe(
        image,
        "add a red circle",
        latents=noise,
        num_inference_steps=2,
        resolution=32,
        output_type="latent",
        posterior="mode",
    ).images[0]
    b = loaded(
        image,
        "add a red circle",
        latents=noise,
        num_inference_steps=2,
        resolution=32,
        output_type="latent",
        posterior="mode",
    ).images[0]
    torch.testing.assert_close(a, b)


def test_lora_load_and_unload(pipe, image, tmp_path):
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    p = tiny_pipeline(seed=1)
    p.set_progress_bar_config(disable=True)
    noise = torch.randn(2, 12, 18, 4, generator=_gen())
    kwargs = dict(latents=noise, num_inference_steps=2, resolution=32, output_type="latent", posterior="mode")
    base = p(image, "add a red circle", **kwargs).images[0]
    donor = tiny_pipeline(seed=1).transformer
    donor.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_q", "to_v"]))
    VincieInContextPipeline.save_lora_weights(tmp_path, transformer_lora_layers=get_peft_model_state_dict(donor))
    p.load_lora_weights(tmp_path / "pytorch_lora_weights.safetensors")
    with_lora = p(image, "add a red circle", **kwargs).images[0]
    assert (with_lora - base).abs().max() > 1e-4
    p.unload_lora_weights()
    torch.testing.assert_close(p(image, "add a red circle", **kwargs).images[0], base)


def test_offloading_runs(image):
    p = tiny_pipeline()
    p.set_progress_bar_config(disable=True)
    p.enable_model_cpu_offload(device="cpu")
    assert len(p(image, "add a red circle", num_inference_steps=2, resolution=32).images) == 1
    r = tiny_pipeline()
    r.set_progress_bar_config(disable=True)
    r.transformer.enable_group_offload(torch.device("cpu"), offload_type="block_level", num_blocks_per_group=1)
    assert len(r(image, "add a red circle", num_inference_steps=2, resolution=32).images) == 1


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="accelerate's sequential offload needs an accelerator device"
)
def test_sequential_offload_runs(image):
    q = tiny_pipeline()
    q.set_progress_bar_config(disable=True)
    q.enable_sequential_cpu_offload()
    assert len(q(image, "add a red circle", num_inference_steps=2, resolution=32).images) == 1


def test_block_causal_pixel_space_pipeline_uses_cached_context(image):
    p = tiny_pipeline(pixel_space=True, attention_layout="block_causal")
    p.set_progress_bar_config(disable=True)
    calls = []
    handle = p.transformer.register_forward_pre_hook(lambda m, a, k: calls.append(a[0].shape[0]), with_kwargs=True)
    out = p(image, ["add a red circle", "make it bigger"], num_inference_steps=4, resolution=32, generator=_gen())
    handle.remove()
    assert out.images[1].size == (38, 26)
    pixels_per_frame = 26 * 38
    # per turn: 2 context encodings (pos, neg) + 2 target-only calls per step
    assert calls.count(pixels_per_frame) == 2 * 4 * 2
    with pytest.raises(ValueError, match="has none"):
        p(image, "x", fidelity="official", num_inference_steps=1, resolution=32)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(image=None, prompt="x"), "`image` is required"),
        (dict(prompt=[]), "non-empty instruction"),
        (dict(prompt=["  "]), "non-empty instruction"),
        (dict(image=[PIL.Image.new("RGB", (32, 32))] * 3, prompt=["a"]), "one instruction per"),
        (dict(prompt=["a"] * 9), "turn table"),
        (dict(prompt="a", output_type="jpeg"), "output_type"),
        (dict(prompt="a", fidelity="fast"), "fidelity"),
        (dict(prompt="a", posterior="mean"), "posterior"),
        (dict(prompt="a", resolution=2), "resolution"),
        (dict(prompt="a", guidance_scale=0.5), "guidance_scale"),
        (dict(prompt="a", latents=torch.randn(1, 2, 2, 4)), "latents"),
        (dict(prompt="a", latents=torch.full((2, 12, 18, 4), float("nan"))), "NaN"),
        (dict(image=PIL.Image.new("RGB", (4, 4)), prompt="a"), "sides must be"),
        (dict(image=PIL.Image.new("F", (32, 32)), prompt="a"), "unsupported PIL mode"),
        (dict(image=PIL.Image.new("RGB", (2000, 16)), prompt="a"), "crops to nothing"),
    ],
)
def test_bad_input(pipe, image, kwargs, message):
    args = dict(image=image, num_inference_steps=1, resolution=32)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        pipe(**args)


def test_image_mode_conversions():
    rgba = PIL.Image.new("RGBA", (16, 16), (255, 0, 0, 0))
    assert to_rgb(rgba).getpixel((0, 0)) == (255, 255, 255)  # transparent -> white background
    gray = PIL.Image.new("L", (16, 16), 100)
    assert to_rgb(gray).getpixel((0, 0)) == (100, 100, 100)
    deep = PIL.Image.new("I;16", (16, 16), 65535)
    assert to_rgb(deep).getpixel((0, 0)) == (255, 255, 255)


def test_official_resize_example():
    """Spec 6.3: a 1024x768 input becomes 288x208 (crop of 296x222)."""
    x = preprocess(PIL.Image.new("RGB", (1024, 768)), 256, 16)
    assert tuple(x.shape) == (3, 208, 288)


def test_frame_index_slots_for_mask_aware_models(image):
    p = tiny_pipeline(frame_index_mode=None)
    assert p.config.frame_index_mode == "compact"
    p.register_to_config(frame_index_mode="slots")
    p.set_progress_bar_config(disable=True)
    seen = []
    hook = p.transformer.register_forward_pre_hook(lambda m, a, k: seen.append(k.get("frame_index")), with_kwargs=True)
    p(image, "remove it", chain_of_editing=True, num_inference_steps=1, resolution=32, guidance_scale=1.0)
    hook.remove()
    assert [f.tolist() for f in seen] == [[0, 1], [0, 1, 2], [0, 1, 2, 3]]
    with pytest.raises(ValueError, match="frame_index_mode"):
        tiny_pipeline(frame_index_mode="sparse")


def test_earlier_outputs_given_as_images_follow_the_official_turn_loop(pipe, image):
    """Official loop: turn k gets the source + earlier outputs as images and all k+1 prompts, templated."""
    session = pipe.start_session([image, image], resolution=32)
    session.add_instruction("add a red circle")
    session.edit("make it bigger", num_inference_steps=1)
    assert [t.prompt for t in session.reference_texts + [session.turns[0].text]] == [
        "Based on <IMG0>, add a red circle. Output <IMG1>: ",
        "Based on <IMG1>, make it bigger. Output <IMG2>: ",
    ]


def test_interrupt_ends_only_its_own_edit_or_call(pipe, image):
    calls = []
    hook = pipe.transformer.register_forward_pre_hook(lambda *a: calls.append(1))

    def stop(p, step, t, kwargs):
        p._interrupt = True
        return kwargs

    try:
        out = pipe(
            image,
            ["add a red circle", "make it bigger"],
            num_inference_steps=4,
            resolution=32,
            callback_on_step_end=stop,
        )
        assert len(calls) == 1 and len(out.images) == 1  # the call ends: no later step, no later turn
        session = pipe.start_session(image, resolution=32)
        session.edit("add a red circle", num_inference_steps=4, callback_on_step_end=stop)
        calls.clear()
        session.edit("make it bigger", num_inference_steps=4)  # a new edit runs every step again
        assert len(calls) == 4
        calls.clear()
        pipe(image, "move it left", num_inference_steps=3, resolution=32)
        assert len(calls) == 3
    finally:
        hook.remove()


def test_callbacks_fire_for_mask_frames_and_each_frame_is_decoded_once(image, monkeypatch):
    p = tiny_pipeline(frame_index_mode="slots")
    p.set_progress_bar_config(disable=True)
    seen = []

    def record(pipe, step, t, kwargs):
        seen.append((step, tuple(kwargs["latents"].shape)))
        return kwargs

    decodes, frees = [], []
    decode = p.vae.decode
    monkeypatch.setattr(p.vae, "decode", lambda *a, **k: decodes.append(1) or decode(*a, **k))
    free = p.maybe_free_model_hooks
    monkeypatch.setattr(p, "maybe_free_model_hooks", lambda: frees.append(1) or free())
    out = p(
        image,
        ["remove it", "add a red circle"],
        chain_of_editing=True,
        num_inference_steps=2,
        resolution=32,
        output_type="np",
        callback_on_step_end=record,
    )
    assert [step for step, _ in seen] == [0, 1] * 6  # current mask, next mask, image; two turns
    assert len(decodes) == 6  # every denoised frame decoded once, none again for the np output
    assert isinstance(out.images[0], np.ndarray)
    session = p.start_session(image, resolution=32)
    frees.clear()
    session.edit("remove it", num_inference_steps=1)
    assert frees == [1]  # a session edit frees the model hooks too


def test_drag_moves_a_predicted_mask_and_user_masks_are_seeded(image):
    p = tiny_pipeline(frame_index_mode="slots")
    p.set_progress_bar_config(disable=True)
    session = p.start_session(image, resolution=32, generator=torch.Generator().manual_seed(0))
    session.drag("move it left", translate=(-4, 0), num_inference_steps=1, generator=torch.Generator().manual_seed(1))
    assert len(session.turns[0].mask_frames) == 2  # predicted current mask, dragged next mask
    mask = np.zeros((40, 56), bool)
    mask[5:20, 10:30] = True
    latents = []
    for _ in range(2):
        s = p.start_session(image, resolution=32, generator=torch.Generator().manual_seed(0))
        s.edit("remove it", current_mask=mask, num_inference_steps=1, generator=torch.Generator().manual_seed(3))
        latents.append(s.turns[0].mask_frames[0].latent)
    torch.testing.assert_close(latents[0], latents[1])  # the user's mask is encoded with the edit's generator
