"""The image owner (`diffusers_vincie.image_latents`): one latent rule per VAE, read from its config, used alike by
the pipeline, training data, validation and export, for both VINCIE VAE families."""

import json
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import AutoencoderKL, AutoModel, DiffusionPipeline

from diffusers_vincie import VincieAutoencoderKL, VincieAutoencoderKL7B, VincieInContextPipeline
from diffusers_vincie.image_latents import (
    decode_latents,
    denormalize_latents,
    encode_images,
    load_vae,
    normalize_latents,
    spatial_factor,
)
from diffusers_vincie.pipelines.sampling import official_scheduler
from diffusers_vincie.testing import tiny_text_encoder, tiny_tokenizer, tiny_transformer, tiny_vae
from diffusers_vincie.training.data import encode_frames
from diffusers_vincie.training.validation import _to_uint8

FAMILIES = ["3b", "7b"]


def _pipeline(family: str) -> VincieInContextPipeline:
    tokenizer = tiny_tokenizer()
    encoder = tiny_text_encoder(len(tokenizer))
    vae = tiny_vae(4, family=family)
    pipe = VincieInContextPipeline(
        tiny_transformer(4, encoder.config.d_model),
        vae,
        encoder,
        tokenizer,
        official_scheduler(),
        default_resolution=32,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _images(count: int = 3, size: int = 32) -> torch.Tensor:
    return torch.rand(count, size, size, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1


@pytest.mark.parametrize("family", FAMILIES)
def test_training_and_pipeline_give_identical_latents_and_images(family):
    pipe = _pipeline(family)
    images = _images()
    training = encode_frames(images, pipe.vae)  # the frames of one training sample, encoded together
    for index, image in enumerate(images):
        pipeline = pipe.encode_image(image.permute(2, 0, 1), posterior="mode")
        assert torch.equal(training[index], pipeline), f"frame {index}"
        # validation grids and the pipeline's output decode the same latent to the same image
        decoded = ((pipe.decode_latent(pipeline).permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
        np.testing.assert_array_equal(_to_uint8(pipeline, pipe.vae), decoded)


def test_the_latent_normalisation_of_each_family_is_read_from_its_config():
    z = torch.randn(2, 4, 3, 5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(normalize_latents(tiny_vae(4, family="3b"), z), z * 0.9152, rtol=0, atol=0)
    torch.testing.assert_close(normalize_latents(tiny_vae(4, family="7b"), z), (z + 0.0025) * 0.9045, rtol=0, atol=0)
    mean, std = [0.1, -0.2, 0.3, 0.0], [1.5, 0.5, 2.0, 1.0]
    per_channel = AutoencoderKL(latent_channels=4, scaling_factor=0.5, latents_mean=mean, latents_std=std)
    expected = (z - torch.tensor(mean).view(1, 4, 1, 1)) * 0.5 / torch.tensor(std).view(1, 4, 1, 1)
    torch.testing.assert_close(normalize_latents(per_channel, z), expected)
    for vae in (tiny_vae(4, family="3b"), tiny_vae(4, family="7b"), per_channel):
        torch.testing.assert_close(denormalize_latents(vae, normalize_latents(vae, z)), z, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="latents_std"):
        normalize_latents(AutoencoderKL(latent_channels=4, latents_mean=mean), z)


def test_spatial_factor_and_channels_come_from_the_vae():
    assert spatial_factor(None) == 1 and spatial_factor(tiny_vae(family="3b")) == 2
    assert spatial_factor(tiny_vae(family="7b")) == 2
    assert VincieAutoencoderKL7B().spatial_compression_ratio == 16  # the official 5 levels
    pipe = _pipeline("7b")
    assert pipe.spatial_factor == 2 and pipe.size_multiple == 2 * pipe.transformer.config.patch_size
    with pytest.raises(ValueError, match="latent channels"):
        VincieInContextPipeline(tiny_transformer(4), tiny_vae(48, family="7b"), None, None, official_scheduler())


def test_a_7b_family_vae_in_a_pipeline_samples_its_posterior_from_the_generator_and_edits():
    pipe = _pipeline("7b")
    pixels = _images(1)[0].permute(2, 0, 1)
    latent = pipe.encode_image(pixels, generator=torch.Generator().manual_seed(3))
    posterior = pipe.vae.encode(pixels[None]).latent_dist
    eps = torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(3))
    expected = ((posterior.mean + posterior.std * eps + 0.0025) * 0.9045)[0].permute(1, 2, 0)
    torch.testing.assert_close(latent, expected, rtol=0, atol=1e-6)
    decoded = pipe.decode_latent(latent)
    reference = pipe.vae.decode((latent.permute(2, 0, 1)[None] / 0.9045) - 0.0025).sample[0]
    torch.testing.assert_close(decoded, reference, rtol=0, atol=1e-6)
    out = pipe(_images(1)[0].add(1).div(2).numpy(), "add a red circle", num_inference_steps=2, output_type="np")
    assert out.images.shape == (1, 32, 32, 3) and np.isfinite(out.images).all()


def test_encode_and_decode_refuse_wrong_shapes_naming_the_argument():
    vae = tiny_vae(4, family="7b")
    with pytest.raises(ValueError, match="`images` must be"):
        encode_images(vae, torch.zeros(1, 32, 32, 3))
    with pytest.raises(ValueError, match="`posterior` must be"):
        encode_images(vae, torch.zeros(1, 3, 32, 32), posterior="argmax")
    with pytest.raises(ValueError, match=r"`latents` must be \(N, h, w, 4\)"):
        decode_latents(vae, torch.zeros(1, 4, 16, 16))
    with pytest.raises(ValueError, match="multiples of 2"):
        vae.encode(torch.zeros(1, 3, 31, 32))


@pytest.mark.parametrize("family", FAMILIES)
def test_vae_folders_load_by_their_class_name_in_training_and_in_diffusers(family, tmp_path):
    from diffusers_vincie.testing import write_tiny_components
    from diffusers_vincie.training.export import load_components

    vae = tiny_vae(4, family=family)
    vae.save_pretrained(tmp_path / "vae")
    loaded = load_vae(tmp_path / "vae")
    assert type(loaded) is type(vae)
    for key, value in vae.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert type(AutoModel.from_pretrained(str(tmp_path / "vae"))) is type(vae)  # registered with diffusers

    write_tiny_components(tmp_path / "parts")
    args = SimpleNamespace(
        pretrained_model_name_or_path=None,
        text_encoder_name_or_path=str(tmp_path / "parts" / "text_encoder"),
        tokenizer_name_or_path=str(tmp_path / "parts" / "tokenizer"),
        vae_name_or_path=str(tmp_path / "vae"),
        transformer_config=None,
    )
    assert type(load_components(args)["vae"]) is type(vae)


def test_load_vae_refuses_folders_without_a_vae_class(tmp_path):
    with pytest.raises(ValueError, match="not a diffusers VAE folder"):
        load_vae(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "VincieTransformer"}))
    with pytest.raises(ValueError, match="not a diffusers VAE class"):
        load_vae(tmp_path)


def test_pipeline_folders_with_a_7b_vae_and_older_3b_folders_load(tmp_path):
    pipe = _pipeline("7b")
    pipe.save_pretrained(tmp_path / "7b")
    index = json.loads((tmp_path / "7b" / "model_index.json").read_text())
    assert index["vae"] == ["diffusers_vincie.models.autoencoder_kl_vincie_7b", "VincieAutoencoderKL7B"]
    assert isinstance(DiffusionPipeline.from_pretrained(tmp_path / "7b").vae, VincieAutoencoderKL7B)

    # folders converted before the VAE classes moved into models/ name the conversion module
    old = _pipeline("3b")
    old.register_modules(
        vae=VincieAutoencoderKL(
            block_out_channels=(8, 8),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            norm_num_groups=4,
            depth_to_space_upsamplers=(0,),
        )
    )
    old.save_pretrained(tmp_path / "3b")
    index_path = tmp_path / "3b" / "model_index.json"
    index = json.loads(index_path.read_text())
    index["vae"] = ["diffusers_vincie.conversion.vae", "VincieAutoencoderKL"]
    index_path.write_text(json.dumps(index))
    assert isinstance(DiffusionPipeline.from_pretrained(tmp_path / "3b").vae, VincieAutoencoderKL)


def test_model_offload_hooks_fire_on_encode_and_decode_of_the_7b_vae():
    """``enable_model_cpu_offload`` moves a VAE to the GPU in an accelerate hook that wraps ``forward``; the pipeline
    calls ``encode`` / ``decode``, so they must run the hook too (as diffusers' own VAEs do)."""
    vae = tiny_vae(4, family="7b")
    calls = []
    vae._hf_hook = SimpleNamespace(pre_forward=lambda module: calls.append(module))
    latents = encode_images(vae, torch.zeros(1, 3, 8, 8))
    decode_latents(vae, latents)
    assert calls == [vae, vae]


def test_a_7b_vae_pipeline_runs_sessions_official_fidelity_and_model_offload(tmp_path):
    """The session features that go through the VAE (encode once per image, re-encode outputs with
    ``fidelity="official"``, save / load, model offload) with the 7B VAE."""
    from diffusers_vincie import VincieEditingSession

    pipe = _pipeline("7b")
    image = PIL.Image.fromarray((np.random.RandomState(0).rand(24, 40, 3) * 255).astype(np.uint8))
    session = pipe.start_session(image, resolution=32, generator=torch.Generator().manual_seed(0))
    session.edit("add a red circle", num_inference_steps=2, fidelity="official")
    session.edit("make it bigger", num_inference_steps=2, fidelity="official")
    assert session.encode_calls["image"] == 3  # the source, then each output re-encoded
    assert session.turns[0].frame.latent.shape == (12, 20, 4)  # 24 x 40 (area ~32^2, multiples of 4) / 2
    session.save(tmp_path / "s")
    restored = VincieEditingSession.load(pipe, tmp_path / "s")
    torch.testing.assert_close(restored.turns[-1].latent, session.turns[-1].latent)
    reference = pipe(image, "add a red circle", num_inference_steps=2, output_type="np", generator=_seeded())
    pipe.enable_model_cpu_offload(device="cpu")
    offloaded = pipe(image, "add a red circle", num_inference_steps=2, output_type="np", generator=_seeded())
    np.testing.assert_array_equal(offloaded.images, reference.images)


def _seeded() -> torch.Generator:
    return torch.Generator().manual_seed(7)
