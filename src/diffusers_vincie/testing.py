"""Tiny random VINCIE components built in code (no downloads): for tests, benchmarks, examples and smoke runs.

Pipelines: :func:`tiny_pipeline` (and its parts). Training: :func:`write_tiny_components` writes a folder usable by
the training scripts' flags::

    <folder>/text_encoder/        T5EncoderModel (1 layer)        --text_encoder_name_or_path
    <folder>/tokenizer/           word-level tokenizer of the synthetic world's vocabulary
    <folder>/transformer.json     VincieTransformer config (pixel space)  --transformer_config
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
from diffusers import AutoencoderKL
from diffusers.models.modeling_utils import ModelMixin

from .models.autoencoder_kl_vincie_7b import VincieAutoencoderKL7B
from .models.transformer_vincie import VincieTransformer
from .pipelines.pipeline_vincie import VincieInContextPipeline
from .pipelines.sampling import official_scheduler
from .text_encoding import build_word_level_tokenizer

WORDS = (
    "based on output add remove move change make the a to it red green blue yellow white black circle square "
    "triangle star big small bigger smaller left right up down top bottom middle center color was before bring "
    "back worst quality low res blurry"
).split()


def tiny_tokenizer():
    """A word-level fast tokenizer (``<pad>``=0, ``</s>``=1, ``<unk>``=2) over a small instruction vocabulary."""
    return build_word_level_tokenizer(WORDS)


def tiny_t5_tokenizer():
    """A real ``T5TokenizerFast`` (SentencePiece unigram, ``</s>`` appended by the tokenizer itself, ``<pad>``=0,
    ``</s>``=1) over the small vocabulary's words plus single characters, built offline in code: the tokenizer kind
    of VINCIE-7B's flan-ul2 encoder."""
    from transformers import T5TokenizerFast

    pieces = [(f"\u2581{word}", -1.0 - 0.01 * i) for i, word in enumerate(WORDS + ["based", "output", "<", ">"])]
    characters = [(c, -10.0) for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789<>.,:'\u2581"]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + pieces + characters
    return T5TokenizerFast(vocab=vocab, extra_ids=0)


def tiny_7b_family_overrides() -> dict:
    """`VincieTransformer` overrides that make a tiny model of the VINCIE-7B family: MLP text projection,
    ``mmrope3d_v3`` positions, patch 1, and attention 2 x 20 = 40 wide over the 32-wide streams of
    `tiny_transformer` / `tiny_transformer_config` (18 of the 20 head dims rotated). Pass them to those functions
    or to `tiny_pipeline`."""
    return dict(
        text_projection="mlp",
        rope_type="mmrope3d_v3",
        patch_size=1,
        num_attention_heads=2,
        attention_head_dim=20,
        rope_dim=18,
    )


def tiny_text_encoder(vocab_size: int, dim: int = 32, seed: int = 0):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=vocab_size,
        d_model=dim,
        d_kv=8,
        d_ff=2 * dim,
        num_layers=1,
        num_heads=2,
        feed_forward_proj="gated-gelu",
        decoder_start_token_id=0,
    )
    return T5EncoderModel(config).eval()


def tiny_transformer(
    latent_channels: int = 4, text_embed_dim: int = 32, seed: int = 0, **overrides
) -> VincieTransformer:
    """A 2-layer transformer with every parameter random (`initialize_weights` with random modulation offsets)."""
    torch.manual_seed(seed)
    config = dict(
        latent_channels=latent_channels,
        hidden_size=32,
        num_attention_heads=2,
        attention_head_dim=16,
        num_layers=2,
        num_mm_layers=1,
        text_embed_dim=text_embed_dim,
        rope_dim=12,
        max_turns=8,
    )
    model = VincieTransformer(**{**config, **overrides})
    model.initialize_weights(modulation_std=0.2)
    return model.eval()


VAE_FAMILIES = ("3b", "7b")


def tiny_vae(latent_channels: int = 4, seed: int = 0, family: str = "3b") -> ModelMixin:
    """A 2-level random VAE (spatial factor 2) of a VINCIE family, with that family's latent normalisation.

    Args:
        latent_channels: latent channels C.
        seed: seed of the random weights.
        family: ``"3b"``: an ``AutoencoderKL`` (scale 0.9152, no shift); ``"7b"``: a `VincieAutoencoderKL7B`
            (no attention, pixel-shuffle up-sampler; scale 0.9045, shift -0.0025).
    """
    if family not in VAE_FAMILIES:
        raise ValueError(f"`family` must be one of {VAE_FAMILIES}, got {family!r}.")
    torch.manual_seed(seed)
    if family == "7b":
        return VincieAutoencoderKL7B(
            encoder_block_out_channels=(8, 8),
            decoder_block_out_channels=(8, 8),
            encoder_layers_per_block=1,
            decoder_layers_per_block=1,
            latent_channels=latent_channels,
            norm_num_groups=4,
        ).eval()
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=latent_channels,
        block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=32,
        scaling_factor=0.9152,
        shift_factor=0.0,
        use_quant_conv=False,
        use_post_quant_conv=False,
    ).eval()


def tiny_pipeline(
    pixel_space: bool = False,
    seed: int = 0,
    negative_prompt: Optional[str] = None,
    frame_index_mode: Optional[str] = None,
    default_resolution: int = 256,
    default_num_inference_steps: int = 50,
    default_guidance_scale: float = 7.5,
    **transformer_overrides,
):
    """A complete random `VincieInContextPipeline` that runs in well under a second per turn on CPU."""
    tokenizer = tiny_tokenizer()
    encoder = tiny_text_encoder(len(tokenizer), seed=seed)
    channels = 3 if pixel_space else 4
    transformer = tiny_transformer(channels, encoder.config.d_model, seed=seed, **transformer_overrides)
    vae = None if pixel_space else tiny_vae(channels, seed=seed)
    kwargs = dict(
        default_resolution=default_resolution,
        default_num_inference_steps=default_num_inference_steps,
        default_guidance_scale=default_guidance_scale,
    )
    if negative_prompt is not None:
        kwargs["default_negative_prompt"] = negative_prompt
    if frame_index_mode is not None:
        kwargs["frame_index_mode"] = frame_index_mode
    return VincieInContextPipeline(transformer, vae, encoder, tokenizer, official_scheduler(), **kwargs)


def tiny_7b_family_pipeline(seed: int = 0, **pipeline_options):
    """A tiny random pipeline of the VINCIE-7B family: a T5 tokenizer and encoder, a `VincieAutoencoderKL7B`, and
    the transformer options of `tiny_7b_family_overrides` (``pipeline_options`` as for `tiny_pipeline`)."""
    pipe = tiny_pipeline(seed=seed, **{**tiny_7b_family_overrides(), **pipeline_options})
    tokenizer = tiny_t5_tokenizer()
    pipe.register_modules(
        tokenizer=tokenizer,
        text_encoder=tiny_text_encoder(len(tokenizer), seed=seed),
        vae=tiny_vae(pipe.transformer.config.latent_channels, seed=seed, family="7b"),
    )
    return pipe


# -------------------------------------------------------------------------------------------- training


def tiny_transformer_config(
    hidden_size: int = 32, num_layers: int = 2, patch_size: int = 4, text_embed_dim: int = 16, **overrides
) -> dict:
    """A VincieTransformer config of a few thousand parameters in pixel space (``latent_channels=3``)."""
    config = dict(
        latent_channels=3,
        hidden_size=hidden_size,
        num_attention_heads=2,
        attention_head_dim=hidden_size // 2,
        num_layers=num_layers,
        num_mm_layers=1,
        text_embed_dim=text_embed_dim,
        patch_size=patch_size,
        mlp_hidden_size=2 * hidden_size,
        rope_dim=12,
        max_turns=16,
    )
    config.update(overrides)
    return config


def write_tiny_components(
    folder: str | Path, text_embed_dim: int = 16, seed: int = 0, **transformer_overrides
) -> Path:
    """Writes a tiny T5 text encoder, a tokenizer of the synthetic world's words and a transformer config."""
    from transformers import T5Config, T5EncoderModel

    from .data.shapes.world import ShapesWorld

    folder = Path(folder)
    tokenizer = build_word_level_tokenizer(ShapesWorld().vocabulary)
    tokenizer.save_pretrained(folder / "tokenizer")
    torch.manual_seed(seed)
    encoder = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=text_embed_dim,
            d_kv=8,
            d_ff=2 * text_embed_dim,
            num_layers=1,
            num_heads=2,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    encoder.save_pretrained(folder / "text_encoder")
    config = tiny_transformer_config(text_embed_dim=text_embed_dim, **transformer_overrides)
    (folder / "transformer.json").write_text(json.dumps(config, indent=2))
    return folder
