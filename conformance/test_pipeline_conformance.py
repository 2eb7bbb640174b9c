"""diffusers' `PipelineTesterMixin` run on `VincieInContextPipeline` with tiny components (CPU).

A call edits one session: ``image`` is the source image, ``prompt`` one instruction per turn. There is no batch
axis, so ``batch_params`` is empty and the mixin tests that build batches are excluded in conftest.py.
"""

from __future__ import annotations

import tempfile
import unittest

import diffusers.pipelines
import numpy as np
import PIL.Image
import torch
from tests.pipelines.pipeline_params import TEXT_GUIDED_IMAGE_VARIATION_PARAMS, TEXT_TO_IMAGE_CALLBACK_CFG_PARAMS
from tests.pipelines.test_pipelines_common import (
    FasterCacheTesterMixin,
    FirstBlockCacheTesterMixin,
    MagCacheTesterMixin,
    PipelineLatentTesterMixin,
    PipelineTesterMixin,
    PyramidAttentionBroadcastTesterMixin,
    TaylorSeerCacheTesterMixin,
)

from diffusers_vincie import VincieInContextPipeline
from diffusers_vincie.pipelines.sampling import official_scheduler
from diffusers_vincie.testing import (
    tiny_7b_family_overrides,
    tiny_t5_tokenizer,
    tiny_text_encoder,
    tiny_tokenizer,
    tiny_transformer,
    tiny_vae,
)

# `test_encode_prompt_works_in_isolation` reads the names `encode_prompt` returns from its source, looking the
# class up on `diffusers.pipelines` (written for pipelines inside diffusers); an out-of-tree pipeline is found there
# once registered.
setattr(diffusers.pipelines, VincieInContextPipeline.__name__, VincieInContextPipeline)


class VincieInContextPipelineConformanceTests(
    PipelineTesterMixin,
    PipelineLatentTesterMixin,
    FirstBlockCacheTesterMixin,
    TaylorSeerCacheTesterMixin,
    MagCacheTesterMixin,
    PyramidAttentionBroadcastTesterMixin,
    FasterCacheTesterMixin,
    unittest.TestCase,
):
    pipeline_class = VincieInContextPipeline
    # the image size is set by `resolution` (area-preserving, the aspect ratio of the input), not height/width
    params = (TEXT_GUIDED_IMAGE_VARIATION_PARAMS - {"height", "width"}) | {"resolution"}
    batch_params = frozenset()  # one session per call: `prompt` and `image` are not batch axes
    callback_cfg_params = TEXT_TO_IMAGE_CALLBACK_CFG_PARAMS
    image_params = frozenset({"image"})  # PIL, numpy or torch images give the same edit
    image_latents_params = frozenset()  # `image` takes pictures, never VAE latents
    test_layerwise_casting = True
    test_group_offloading = True

    def test_save_load_optional_components(self, expected_max_difference=1e-4):
        """Overrides the mixin's version, which drops every optional component at once; a VINCIE call always needs
        its transformer (and a latent model its VAE). As diffusers' own Wan tests do for their optional
        transformer, drop what this pipeline can run without: the text encoder and tokenizer, editing from
        ``prompt_embeds``. The reference is the full pipeline's output from the prompt."""
        pipe = self.pipeline_class(**self.get_dummy_components())
        pipe.set_progress_bar_config(disable=True)
        inputs = self.get_dummy_inputs("cpu")
        reference = pipe(**inputs)[0]
        prompt_embeds, negative_prompt_embeds = pipe.encode_prompt(inputs.pop("prompt"))
        pipe.text_encoder, pipe.tokenizer = None, None
        with tempfile.TemporaryDirectory() as folder:
            pipe.save_pretrained(folder)  # safetensors: nothing here is pickled
            loaded = self.pipeline_class.from_pretrained(folder)
        loaded.set_progress_bar_config(disable=True)
        self.assertIsNone(loaded.text_encoder, "`text_encoder` did not stay None after loading.")
        self.assertIsNone(loaded.tokenizer, "`tokenizer` did not stay None after loading.")
        inputs = self.get_dummy_inputs("cpu")
        inputs.pop("prompt")
        output = loaded(**inputs, prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds)[0]
        self.assertLess(np.abs(np.asarray(output) - np.asarray(reference)).max(), expected_max_difference)

    def get_dummy_components(self, num_layers: int = 2):
        tokenizer = tiny_tokenizer()
        text_encoder = tiny_text_encoder(len(tokenizer))
        return {
            "transformer": tiny_transformer(4, text_encoder.config.d_model, num_layers=num_layers),
            "vae": tiny_vae(4),
            "text_encoder": text_encoder,
            "tokenizer": tokenizer,
            "scheduler": official_scheduler(),
        }

    def get_dummy_inputs(self, device, seed=0):
        image = PIL.Image.fromarray((np.random.RandomState(seed).rand(32, 32, 3) * 255).astype(np.uint8))
        generator_device = "cpu" if str(device).startswith("mps") else device
        return {
            "image": image,
            "prompt": "add a red circle",
            "generator": torch.Generator(device=generator_device).manual_seed(seed),
            "num_inference_steps": 2,
            "guidance_scale": 5.0,
            "resolution": 32,
            "output_type": "np",
        }


class VincieInContextPipeline7BFamilyConformanceTests(VincieInContextPipelineConformanceTests):
    """The same mixins on a VINCIE-7B-family pipeline: T5 tokenizer and encoder, `VincieAutoencoderKL7B` (no
    attention, pixel-shuffle up-sampler, shifted normalisation), MLP text projection, v3 RoPE, patch 1."""

    def get_dummy_components(self, num_layers: int = 2):
        tokenizer = tiny_t5_tokenizer()
        text_encoder = tiny_text_encoder(len(tokenizer))
        return {
            "transformer": tiny_transformer(
                4, text_encoder.config.d_model, num_layers=num_layers, **tiny_7b_family_overrides()
            ),
            "vae": tiny_vae(4, family="7b"),
            "text_encoder": text_encoder,
            "tokenizer": tokenizer,
            "scheduler": official_scheduler(),
        }

    def test_multi_vae(self):
        """The mixin's test swaps in diffusers' 2-D VAEs (``AutoencoderKL``, ``AsymmetricAutoencoderKL``,
        ``ConsistencyDecoderVAE``, ``AutoencoderTiny``) sized from ``vae.config.block_out_channels``; the 7B VAE's
        config names its widths ``encoder_block_out_channels`` / ``decoder_block_out_channels`` (its encoder and
        decoder may differ). So the swap starts here from a stock ``AutoencoderKL`` of the same widths; what it
        checks, that the 7B-family pipeline runs with any diffusers VAE of its latent channels, is unchanged."""
        original = self.get_dummy_components
        widths = tuple(original()["vae"].config.encoder_block_out_channels)

        def components_with_a_2d_vae(num_layers: int = 2):
            components = original(num_layers)
            vae = tiny_vae(4)  # a stock AutoencoderKL whose config carries block_out_channels
            assert tuple(vae.config.block_out_channels) == widths
            components["vae"] = vae
            return components

        self.get_dummy_components = components_with_a_2d_vae
        try:
            super().test_multi_vae()
        finally:
            del self.get_dummy_components
