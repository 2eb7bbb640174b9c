"""Diffusers conventions of the pipeline: text encoded apart, candidates per turn, callback properties, stacked
outputs, CFG interval and rescale, the model's sampling defaults in the pipeline config."""

from dataclasses import replace

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DiffusionPipeline

from diffusers_vincie import VincieInContextPipeline
from diffusers_vincie.pipelines.sampling import consensus_index
from diffusers_vincie.testing import tiny_pipeline

PROMPTS = ["add a red circle", "make it bigger"]


@pytest.fixture(scope="module")
def image():
    return PIL.Image.fromarray((np.random.RandomState(0).rand(32, 32, 3) * 255).astype(np.uint8))


def _kwargs(**extra):
    kwargs = dict(
        num_inference_steps=2,
        resolution=32,
        posterior="mode",
        output_type="latent",
        generator=torch.Generator().manual_seed(0),
    )
    return {**kwargs, **extra}


def test_text_encoded_apart_gives_identical_images(pipe, image, tmp_path):
    reference = pipe(image, PROMPTS, **_kwargs()).images
    # the same weights in memory: embeddings from encode_prompt give exactly the images of the prompts
    in_memory, in_memory_negative = pipe.encode_prompt(PROMPTS)
    assert torch.equal(
        pipe(image, prompt_embeds=in_memory, negative_prompt_embeds=in_memory_negative, **_kwargs()).images, reference
    )
    pipe.save_pretrained(tmp_path / "p")
    encoder_only = DiffusionPipeline.from_pretrained(tmp_path / "p", transformer=None, vae=None)
    prompt_embeds, negative = encoder_only.encode_prompt(PROMPTS)
    editor = DiffusionPipeline.from_pretrained(tmp_path / "p", text_encoder=None, tokenizer=None)
    editor.set_progress_bar_config(disable=True)
    assert editor.text_encoder is None and encoder_only.transformer is None
    out = editor(image, prompt_embeds=prompt_embeds, negative_prompt_embeds=negative, **_kwargs()).images
    # reloaded weights are bitwise equal, but on some CPUs (an AMD EPYC here) the kernels round differently for
    # tensors at other addresses (4e-6 measured); a wrong template or turn index changes the images by far more
    torch.testing.assert_close(out, reference, atol=2e-5, rtol=0)
    with pytest.raises(ValueError, match="text_encoder=None"):
        editor(image, PROMPTS, **_kwargs())
    with pytest.raises(ValueError, match="transformer=None"):
        encoder_only(image, prompt_embeds=prompt_embeds, **_kwargs())
    with pytest.raises(ValueError, match="not both"):
        pipe(image, PROMPTS, prompt_embeds=prompt_embeds, **_kwargs())


def test_candidates_per_turn_and_continuing_from_any(pipe, image):
    out = pipe(image, PROMPTS, num_images_per_prompt=3, **_kwargs())
    assert out.images.shape[0] == 6  # 2 turns x 3 candidates, stacked
    assert not torch.equal(out.images[0], out.images[1])
    generators = [torch.Generator().manual_seed(s) for s in (5, 6)]
    session = pipe.start_session(image, resolution=32, posterior="mode")
    candidates = session.edit(PROMPTS[0], num_inference_steps=2, num_images_per_prompt=2, generator=generators)
    assert len(candidates) == 2 and len(session.turns[0].candidates) == 2
    single = pipe.start_session(image, resolution=32, posterior="mode")
    single.edit(PROMPTS[0], num_inference_steps=2, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(session.turns[0].candidates[1].latent, single.turns[0].latent)  # one generator each
    session.choose(1)
    assert session.turns[0].frame is session.turns[0].candidates[1]
    continued = session.edit(PROMPTS[1], num_inference_steps=2, generator=torch.Generator().manual_seed(1))
    single.edit(PROMPTS[1], num_inference_steps=2, generator=torch.Generator().manual_seed(1))
    assert np.array_equal(np.asarray(continued), np.asarray(single.images[-1]))  # continued from candidate 1
    with pytest.raises(ValueError, match="one generator per candidate"):
        pipe(
            image,
            PROMPTS,
            num_images_per_prompt=3,
            generator=[torch.Generator()] * 2,
            num_inference_steps=1,
            resolution=32,
        )
    with pytest.raises(ValueError, match="candidate"):
        session.choose(5)


def test_consensus_index_is_the_sample_closest_to_the_others():
    base = torch.zeros(3, 4, 4)
    assert consensus_index([base, base + 1.0, base + 0.1]) == 2  # summed distances 1.1, 1.9, 1.0
    assert consensus_index([base + 0.5, base, base + 0.6]) == 0  # summed distances 0.6, 1.1, 0.7
    assert consensus_index([base, base + 1.0]) == 0  # a tie keeps the first
    assert consensus_index([base]) == 0


def test_consensus_samples_keep_the_sample_that_agrees_most(pipe, image, monkeypatch):
    session = pipe.start_session(image, resolution=32, posterior="mode")
    drawn, generate = [], session._generate
    offsets = iter([0.0, 1.0, 0.1])  # the third sample is the consensus of the three

    def spy(items, target, sampling, latents=None):
        frame = generate(items, target, sampling, latents)
        drawn.append(frame)
        return replace(frame, pixels=torch.full_like(frame.pixels, next(offsets)))

    monkeypatch.setattr(session, "_generate", spy)
    kept = session.edit(
        PROMPTS[0], num_inference_steps=2, consensus_samples=3, generator=torch.Generator().manual_seed(0)
    )
    assert len(drawn) == 3 and len({frame.image.tobytes() for frame in drawn}) == 3  # three different samples
    assert kept.tobytes() == drawn[2].image.tobytes() and session.turns[0].frame.latent is drawn[2].latent
    single = pipe.start_session(image, resolution=32, posterior="mode")
    single.edit(PROMPTS[0], num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(drawn[0].latent, single.turns[0].latent)  # the first sample is the one-sample edit


def test_callback_reads_and_changes_guidance(pipe, image):
    seen = []

    def callback(p, step, t, kwargs):
        seen.append((p.guidance_scale, p.num_timesteps, p.do_classifier_free_guidance, tuple(kwargs)))
        p._guidance_scale = 1.0  # later steps run unguided
        return kwargs

    calls = []
    hook = pipe.transformer.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    try:
        pipe(
            image,
            PROMPTS[0],
            guidance_scale=5.0,
            callback_on_step_end=callback,
            callback_on_step_end_tensor_inputs=["latents", "noise_pred"],
            **_kwargs(num_inference_steps=3),
        )
    finally:
        hook.remove()
    assert seen[0] == (5.0, 3, True, ("latents", "noise_pred")) and seen[1][0] == 1.0
    pixels = 2 * 32 * 32 // 4  # two frames of 16x16 latents (CFG-batched: twice that)
    assert calls == [2 * pixels, pixels, pixels]


def test_guidance_interval_and_rescale(pipe, image):
    base = pipe(image, PROMPTS[0], guidance_scale=4.0, **_kwargs()).images
    unguided = pipe(image, PROMPTS[0], guidance_scale=1.0, **_kwargs()).images
    assert torch.equal(
        pipe(image, PROMPTS[0], guidance_scale=4.0, guidance_interval=0.0, **_kwargs()).images, unguided
    )
    half = pipe(image, PROMPTS[0], guidance_scale=4.0, guidance_interval=0.5, **_kwargs()).images
    assert not torch.equal(half, base) and not torch.equal(half, unguided)
    rescaled = pipe(image, PROMPTS[0], guidance_scale=4.0, guidance_rescale=0.7, **_kwargs()).images
    assert not torch.equal(rescaled, base)
    # that the defaults (interval 1, rescale 0) reproduce the official CFG is checked on the official sampler
    # fixture by the parity suite


def test_stacked_outputs_and_pil_lists(pipe, image):
    kwargs = dict(num_inference_steps=1, resolution=32)
    assert pipe(image, PROMPTS, output_type="np", **kwargs).images.shape == (2, 32, 32, 3)
    assert pipe(image, PROMPTS, output_type="pt", **kwargs).images.shape == (2, 3, 32, 32)
    assert pipe(image, PROMPTS, output_type="latent", **kwargs).images.shape == (2, 16, 16, 4)
    images = pipe(image, PROMPTS, output_type="pil", **kwargs).images
    assert isinstance(images, list) and all(isinstance(im, PIL.Image.Image) for im in images)


def test_sampling_defaults_live_in_the_pipeline_config(image, tmp_path):
    p = tiny_pipeline(default_resolution=32, default_num_inference_steps=2, default_guidance_scale=1.0)
    p.set_progress_bar_config(disable=True)
    assert p.config.max_resolution == 128
    calls = []
    hook = p.transformer.register_forward_pre_hook(lambda m, a: calls.append(1))
    out = p(image, PROMPTS[0])
    hook.remove()
    assert out.images[0].size == (32, 32) and len(calls) == 2  # 2 steps, no CFG pass
    p.save_pretrained(tmp_path / "p")
    assert VincieInContextPipeline.from_pretrained(tmp_path / "p").config.default_num_inference_steps == 2
    consensus = VincieInContextPipeline.from_pretrained(tmp_path / "p", default_consensus_samples=3)
    consensus.set_progress_bar_config(disable=True)
    calls.clear()
    hook = consensus.transformer.register_forward_pre_hook(lambda m, a: calls.append(1))
    consensus(image, PROMPTS[0], guidance_scale=1.0)
    hook.remove()
    assert len(calls) == 6  # 3 samples x 2 steps
    with pytest.raises(ValueError, match="max_resolution"):
        p(image, PROMPTS[0], resolution=4096)


def test_fuse_qkv_projections_is_a_clear_no_op(pipe):
    pipe.transformer.fuse_qkv_projections()  # no attention module claims fusion support: nothing changes
    assert not any("to_qkv" in name for name, _ in pipe.transformer.named_modules())


def test_encode_prompt_returns_the_call_argument_names():
    """diffusers' pipeline tests read `encode_prompt`'s return names from its source and pass them to `__call__`."""
    import ast
    import inspect
    import textwrap

    from diffusers.utils.source_code_parsing_utils import ReturnNameVisitor

    visitor = ReturnNameVisitor()
    visitor.visit(ast.parse(textwrap.dedent(inspect.getsource(VincieInContextPipeline.encode_prompt))))
    assert visitor.return_names == ["prompt_embeds", "negative_prompt_embeds"]
    assert set(visitor.return_names) <= set(inspect.signature(VincieInContextPipeline.__call__).parameters)


def test_current_timestep_during_the_step_loop(pipe, image):
    """`current_timestep` is the timestep of the step being denoised (what PAB / FasterCache hooks read), else None."""
    from diffusers import PyramidAttentionBroadcastConfig

    seen = []
    hook = pipe.transformer.register_forward_pre_hook(lambda m, a: seen.append(pipe.current_timestep))
    try:
        pipe(image, PROMPTS, **_kwargs(num_inference_steps=3, guidance_scale=1.0))
    finally:
        hook.remove()
    assert pipe.current_timestep is None
    assert len(seen) == 6 and all(t is not None for t in seen)  # 2 turns x 3 steps, one forward each (no CFG)
    assert [float(t) for t in seen[:3]] == [float(t) for t in pipe.scheduler.timesteps]
    pipe.transformer.enable_cache(
        PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=2,
            spatial_attention_timestep_skip_range=(0, 1000),
            spatial_attention_block_identifiers=["transformer_blocks"],
            current_timestep_callback=lambda: pipe.current_timestep,
        )
    )
    try:
        cached = pipe(image, PROMPTS, **_kwargs(num_inference_steps=3)).images
    finally:
        pipe.transformer.disable_cache()
    assert torch.isfinite(cached).all()


def test_image_stacks_in_the_diffusers_layout_and_other_vaes(pipe, image):
    """A numpy (N, H, W, 3) / torch (N, 3, H, W) stack is N images (diffusers' batched image layout), and a VAE
    without ``latent_dist`` or ``shift_factor`` in its config (``AutoencoderTiny``) works as the VAE."""
    from diffusers import AutoencoderTiny

    from diffusers_vincie.testing import tiny_text_encoder, tiny_tokenizer, tiny_transformer

    reference = pipe(image, PROMPTS[0], **_kwargs()).images
    array = np.asarray(image, dtype=np.float32)[None] / 255.0
    for stack in (array, torch.from_numpy(array).permute(0, 3, 1, 2)):
        torch.testing.assert_close(pipe(stack, PROMPTS[0], **_kwargs()).images, reference, atol=1e-5, rtol=0)
    two = pipe(np.concatenate([array, array]), PROMPTS, use_prompt_template=False, **_kwargs()).images
    assert two.shape[0] == 1  # two reference images, one instruction each: one generated turn
    tokenizer = tiny_tokenizer()
    encoder = tiny_text_encoder(len(tokenizer))
    torch.manual_seed(0)
    tiny_vae = AutoencoderTiny(
        encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8),
        num_encoder_blocks=(1, 1),
        num_decoder_blocks=(1, 1),
        latent_channels=4,
    )
    other = VincieInContextPipeline(
        tiny_transformer(4, encoder.config.d_model), tiny_vae, encoder, tokenizer, pipe.scheduler
    )
    other.set_progress_bar_config(disable=True)
    out = other(image, PROMPTS[0], **_kwargs(output_type="np")).images
    assert out.shape == (1, 32, 32, 3) and np.isfinite(out).all()


@pytest.mark.parametrize("layout", ["full", "block_causal"])
def test_first_block_cache(image, layout):
    from diffusers import FirstBlockCacheConfig

    p = tiny_pipeline(pixel_space=layout == "block_causal", attention_layout=layout, num_layers=4)
    p.set_progress_bar_config(disable=True)
    kwargs = _kwargs(num_inference_steps=6, guidance_scale=3.0)
    reference = p(image, PROMPTS, **kwargs).images
    blocks = []
    # a cached block is still called (its hook returns the cached residual); its attention runs only when computed
    hook = p.transformer.transformer_blocks[2].attn.register_forward_pre_hook(lambda *a: blocks.append(1))
    p.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.0))  # never skips: exactly the uncached output
    exact = p(image, PROMPTS, **_kwargs(num_inference_steps=6, guidance_scale=3.0)).images
    computed = len(blocks)
    p.transformer.disable_cache()
    p.transformer.enable_cache(FirstBlockCacheConfig(threshold=10.0))  # skips every step it can
    blocks.clear()
    cached = p(image, PROMPTS, **_kwargs(num_inference_steps=6, guidance_scale=3.0)).images
    hook.remove()
    p.transformer.disable_cache()
    assert torch.equal(exact, reference)
    assert len(blocks) < computed and torch.isfinite(cached).all()
    assert (cached - reference).abs().max() > 0
