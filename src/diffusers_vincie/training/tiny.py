"""Tiny, randomly initialised training components built offline: for tests, benchmarks and smoke runs.

:func:`write_tiny_components` writes a folder usable by the training scripts' flags::

    <folder>/text_encoder/        T5EncoderModel (1 layer)        --text_encoder_name_or_path
    <folder>/tokenizer/           word-level tokenizer of the synthetic world's vocabulary
    <folder>/transformer.json     VincieTransformer config (pixel space)  --transformer_config
"""

from __future__ import annotations

import json
from pathlib import Path

from .text import build_word_level_tokenizer


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


def write_tiny_components(folder: str | Path, text_embed_dim: int = 16, seed: int = 0, **transformer_overrides) -> Path:
    """Writes a tiny T5 text encoder, a tokenizer of the synthetic world's words and a transformer config."""
    import torch
    from transformers import T5Config, T5EncoderModel

    from ..data.synthetic import SyntheticWorld

    folder = Path(folder)
    tokenizer = build_word_level_tokenizer(SyntheticWorld().vocabulary)
    tokenizer.save_pretrained(folder / "tokenizer")
    torch.manual_seed(seed)
    encoder = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=text_embed_dim, d_kv=8, d_ff=2 * text_embed_dim, num_layers=1,
        num_heads=2, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    ))
    encoder.save_pretrained(folder / "text_encoder")
    config = tiny_transformer_config(text_embed_dim=text_embed_dim, **transformer_overrides)
    (folder / "transformer.json").write_text(json.dumps(config, indent=2))
    return folder


__all__ = ["tiny_transformer_config", "write_tiny_components"]
