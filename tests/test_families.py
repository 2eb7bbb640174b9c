"""Every pipeline feature on both model families: the same calls on a tiny VINCIE-3B-family pipeline (Qwen-like
word tokenizer, ``AutoencoderKL``, linear text projection) and a tiny VINCIE-7B-family one (T5 tokenizer and encoder,
`VincieAutoencoderKL7B`, MLP text projection, v3 RoPE, patch 1, attention wider than the streams)."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import assert_masks_and_drag

from diffusers_vincie import VincieEditingSession, VincieInContextPipeline
from diffusers_vincie.models import VincieAutoencoderKL7B
from diffusers_vincie.testing import tiny_7b_family_pipeline, tiny_pipeline

FAMILIES = {"3b": tiny_pipeline, "7b": tiny_7b_family_pipeline}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make(family: str, **options) -> VincieInContextPipeline:
    pipe = FAMILIES[family](**options)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def pipe(request) -> VincieInContextPipeline:
    return make(request.param)


@pytest.fixture(scope="module")
def image() -> PIL.Image.Image:
    return PIL.Image.fromarray((np.random.RandomState(0).rand(40, 56, 3) * 255).astype(np.uint8))


def test_the_7b_family_pipeline_is_what_it_says():
    pipe = make("7b")
    assert isinstance(pipe.vae, VincieAutoencoderKL7B) and type(pipe.text_encoder).__name__ == "T5EncoderModel"
    assert type(pipe.tokenizer).__name__ in ("T5TokenizerFast", "T5Tokenizer")  # transformers 4 / 5 name
    config = pipe.transformer.config
    assert (config.text_projection, config.rope_type, config.patch_size) == ("mlp", "mmrope3d_v3", 1)
    assert config.num_attention_heads * config.attention_head_dim != config.hidden_size


def test_session_edit_undo_branch_save_load(pipe, image, tmp_path):
    session = pipe.start_session(image, resolution=32)
    session.edit("add a red circle", num_inference_steps=2, generator=_gen())
    session.edit("make it bigger", num_inference_steps=2, generator=_gen(1))
    branch = session.branch(1)
    branch.edit("move it left", num_inference_steps=2, generator=_gen(2))
    assert [h[0] for h in branch.history] == [None, "add a red circle", "move it left"]
    session.save(tmp_path / "s")
    restored = VincieEditingSession.load(pipe, tmp_path / "s")
    torch.testing.assert_close(restored.turns[-1].latent, session.turns[-1].latent)
    a = session.edit("move it left", num_inference_steps=2, generator=_gen(5))
    b = restored.edit("move it left", num_inference_steps=2, generator=_gen(5))
    assert np.array_equal(np.asarray(a), np.asarray(b)) and restored.encode_calls["image"] == 0
    session.undo()
    assert len(session.turns) == 2


def test_candidates(pipe, image):
    out = pipe(image, ["add a red circle"], num_images_per_prompt=2, num_inference_steps=2, resolution=32)
    assert len(out.images) == 2 and out.images[0] != out.images[1]


def test_masks_and_drag(pipe, image):
    assert_masks_and_drag(pipe, image)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_model_offload_gives_the_same_image(family, image):
    kwargs = dict(num_inference_steps=2, resolution=32, output_type="pt", generator=_gen())
    reference = make(family)(image, "add a red circle", **kwargs).images
    offloaded = make(family)
    offloaded.enable_model_cpu_offload(device="cpu")
    torch.testing.assert_close(
        offloaded(image, "add a red circle", **{**kwargs, "generator": _gen()}).images, reference
    )


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_first_block_cache(family, image):
    from diffusers import FirstBlockCacheConfig

    p = make(family, num_layers=4)
    kwargs = dict(num_inference_steps=6, guidance_scale=3.0, resolution=32, output_type="pt")
    reference = p(image, "add a red circle", generator=_gen(), **kwargs).images
    p.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.0))  # never skips: exactly the uncached output
    exact = p(image, "add a red circle", generator=_gen(), **kwargs).images
    p.transformer.disable_cache()
    p.transformer.enable_cache(FirstBlockCacheConfig(threshold=10.0))  # skips every step it can
    cached = p(image, "add a red circle", generator=_gen(), **kwargs).images
    p.transformer.disable_cache()
    assert torch.equal(exact, reference)
    assert torch.isfinite(cached).all() and (cached - reference).abs().max() > 0


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_lora_load_and_unload(family, image, tmp_path):
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    p = make(family, seed=1)
    kwargs = dict(num_inference_steps=2, resolution=32, output_type="latent", posterior="mode")
    base = p(image, "add a red circle", generator=_gen(), **kwargs).images[0]
    donor = make(family, seed=1).transformer
    donor.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_q", "to_v"]))
    VincieInContextPipeline.save_lora_weights(tmp_path, transformer_lora_layers=get_peft_model_state_dict(donor))
    p.load_lora_weights(tmp_path / "pytorch_lora_weights.safetensors")
    assert (p(image, "add a red circle", generator=_gen(), **kwargs).images[0] - base).abs().max() > 1e-4
    p.unload_lora_weights()
    torch.testing.assert_close(p(image, "add a red circle", generator=_gen(), **kwargs).images[0], base)


def test_lora_training_on_a_7b_family_pipeline_loads_and_changes_its_output(tmp_path):
    """``train_vincie_lora.py`` on a saved 7B-family pipeline and sessions built by the project's data scripts; the
    written LoRA loads into the pipeline and changes its output."""
    import sys

    from accelerate.state import AcceleratorState
    from conftest import REPO, load_script

    data_scripts, training_scripts = REPO / "dataset_scripts", REPO / "training_scripts"
    sys.path.insert(0, str(training_scripts))  # the scripts import their siblings
    load_script(data_scripts / "make_synthetic_videos.py", "make_synthetic_videos").main(
        ["--output-dir", str(tmp_path / "videos"), "--num-videos", "2", "--num-turns", "2", "--resolution", "16"]
        + ["--no-progress"]
    )
    load_script(data_scripts / "build_sessions.py", "build_sessions").main(
        [str(tmp_path / "videos"), "--output", str(tmp_path / "sessions"), "--annotator", "ground_truth"]
        + ["--strategy", "equal_interval", "--interval", "1.0"]
    )
    make("7b").save_pretrained(tmp_path / "pipeline")
    AcceleratorState._reset_state(reset_partial_state=True)
    load_script(training_scripts / "train_vincie_lora.py", "train_vincie_lora").main(
        ["--pretrained_model_name_or_path", str(tmp_path / "pipeline"), "--dataset_name", str(tmp_path / "sessions")]
        + ["--output_dir", str(tmp_path / "lora"), "--train_batch_size", "2", "--max_train_steps", "2"]
        + ["--learning_rate", "5e-2", "--lora_rank", "4", "--attention_layout", "full", "--mask_probability", "0"]
        + ["--checkpointing_steps", "1000", "--resolution", "16"]  # the sessions' size, not the model's 256
    )
    pipe = VincieInContextPipeline.from_pretrained(tmp_path / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.vae, VincieAutoencoderKL7B) and pipe.transformer.config.text_projection == "mlp"
    image = PIL.Image.fromarray(np.full((16, 16, 3), 90, np.uint8))
    kwargs = dict(num_inference_steps=2, guidance_scale=1.0, resolution=16, output_type="pt")
    before = pipe(image, ["move the red circle left"], generator=_gen(), **kwargs).images
    pipe.load_lora_weights(tmp_path / "lora")
    after = pipe(image, ["move the red circle left"], generator=_gen(), **kwargs).images
    assert (after - before).abs().max() > 1e-3
