#!/usr/bin/env python
"""Builds the text side of VINCIE-Shapes offline: a sentencepiece tokenizer trained on the synthetic world's
instructions and a small frozen T5 encoder, both saved in the ``transformers`` layout.

Writes::

    <output_dir>/tokenizer/      T5Tokenizer over our sentencepiece BPE model (trained here)
    <output_dir>/text_encoder/   T5EncoderModel (random weights, seeded; frozen during training)

The tokenizer's training text is the *templated* prompts the model sees (``format_turn_prompt``: "Based on <IMGk>,
{instruction}. Output <IMGk+1>: "), drawn from synthetic sessions of the same world as training, so every word of
the world's vocabulary and of the template becomes one piece. The image placeholders ``<IMG0>`` ... ``<IMG63>`` are
user-defined symbols (one piece each). A random frozen encoder is enough at this scale: its embeddings separate the
~40 words and the transformer's text layers learn what they mean (the experiment in
``shared/reference/small-model-experiment.md`` used the same).

``--tokenizer word_level`` builds a word-level tokenizer of the world's vocabulary instead
(``text_encoding.build_word_level_tokenizer``), ``--strip_template`` makes it drop the template's boilerplate (the
prompt becomes the instruction's words), and ``--num_layers 0`` makes the encoder learned word embeddings (an RMS
norm after the embedding table; train it with ``train_vincie.py --train_text_encoder``).

Usage::

    python training_scripts/build_shapes_text_encoder.py --output_dir runs/shapes_text \\
        --world_config training_scripts/configs/vincie_shapes_world.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
from pathlib import Path

from diffusers_vincie.utils.cli import UsageError, run_cli, usage_exit
from diffusers_vincie.utils.io import atomic_directory

MAX_IMAGE_INDEX = 64  # <IMG0> .. <IMG63>: room for 31 turns with masks in slots


# =====================================================================================================
#                                         Tokenizer training text
# =====================================================================================================


def instruction_corpus(world, num_sessions: int, num_turns: int, seed: int) -> list[str]:
    """Templated prompts of ``num_sessions`` sampled sessions, each at a random turn index, plus one example of
    every instruction template at every turn index (so rare templates are covered)."""
    from diffusers_vincie.sequence import format_turn_prompt

    rng = random.Random(seed)
    lines = []
    for index in range(num_sessions):
        session = world.sample_session(seed + index, num_turns=num_turns)
        for instruction in session.instructions:
            lines.append(format_turn_prompt(instruction, rng.randrange(MAX_IMAGE_INDEX - 1)))
    for turn in range(MAX_IMAGE_INDEX - 1):
        lines.extend(format_turn_prompt(text, turn) for text in world.example_instructions())
    return lines


OWN_ENTRIES = {"tokenizer", "text_encoder"}  # what a build writes into --output_dir


def check_output_dir(output_dir: Path) -> None:
    """The folder is replaced whole, so it must be new or hold only what an earlier build wrote."""
    if output_dir.exists() and not output_dir.is_dir():
        raise UsageError(f"--output_dir {output_dir} is a file; give a folder.")
    if output_dir.is_dir() and (foreign := sorted({p.name for p in output_dir.iterdir()} - OWN_ENTRIES)):
        raise UsageError(
            f"--output_dir {output_dir} holds {', '.join(foreign[:5])}, which this script does not write; give a "
            "new folder or one an earlier build wrote (only tokenizer/ and text_encoder/)."
        )


def train_sentencepiece(lines: list[str], output_dir: Path, vocab_size: int) -> Path:
    """Trains a BPE sentencepiece model on ``lines``; returns the ``.model`` path.

    Ids follow T5: ``<pad>`` 0, ``</s>`` 1 (the end token of each prompt), ``<unk>`` 2; no BOS.
    """
    import sentencepiece as spm

    output_dir.mkdir(parents=True, exist_ok=True)
    corpus = output_dir / "corpus.txt"
    corpus.write_text("\n".join(lines) + "\n")
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(output_dir / "spiece"),
        model_type="bpe",  # unigram keeps splitting this tiny, repetitive corpus into letters
        vocab_size=vocab_size,
        hard_vocab_limit=False,  # the world has fewer distinct pieces than a round vocab size
        character_coverage=1.0,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        user_defined_symbols=[f"<IMG{i}>" for i in range(MAX_IMAGE_INDEX)],
        split_digits=False,
        num_threads=1,
        minloglevel=2,
    )
    corpus.unlink()
    return output_dir / "spiece.model"


def sentencepiece_vocab(model_file: Path) -> list[tuple[str, float]]:
    """``(piece, log-probability)`` of every id of a trained model, in id order (``T5Tokenizer(vocab=...)``)."""
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_file=str(model_file))
    return [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]


# =====================================================================================================
#                                                Build
# =====================================================================================================


def build(
    output_dir: str | os.PathLike,
    world_config: dict,
    d_model: int = 64,
    num_layers: int = 2,
    vocab_size: int = 256,
    num_sessions: int = 3000,
    seed: int = 0,
    tokenizer_kind: str = "bpe",
    strip_template: bool = False,
    dropout_rate: float = 0.1,
    shot_words: bool = False,
) -> Path:
    """Writes ``tokenizer/`` and ``text_encoder/`` under ``output_dir`` (atomically); returns ``output_dir``.

    Args:
        output_dir: destination folder.
        world_config: ``ShapesWorld`` arguments (the training world).
        d_model: encoder width (= the transformer's ``text_embed_dim``).
        num_layers: encoder layers.
        vocab_size: sentencepiece vocabulary size (an upper bound: the world needs fewer pieces).
        num_sessions: sessions drawn for the tokenizer's training text.
        seed: seed of those sessions (kept far below the evaluation seeds) and of the encoder weights.
        tokenizer_kind: ``"bpe"`` (sentencepiece trained on the templated prompts) or ``"word_level"``.
        strip_template: word-level only: the tokenizer drops the template's boilerplate.
        dropout_rate: the encoder's dropout (active only while it is trained).
        shot_words: word-level only: also the words of the composition and story shots (``"show"``, ``"and"``),
            for a model trained on videos that contain such shots.
    """
    if tokenizer_kind not in ("bpe", "word_level"):
        raise ValueError(f"tokenizer_kind must be 'bpe' or 'word_level', got {tokenizer_kind!r}.")
    if strip_template and tokenizer_kind != "word_level":
        raise ValueError("strip_template needs the word-level tokenizer (--tokenizer word_level).")
    if shot_words and tokenizer_kind != "word_level":
        raise ValueError("shot_words needs the word-level tokenizer (--tokenizer word_level).")
    if num_layers < 0:
        raise ValueError(f"num_layers must be >= 0 (0: learned word embeddings), got {num_layers}.")
    output_dir = Path(output_dir)
    check_output_dir(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    with atomic_directory(output_dir, replace=True) as tmp:
        _write_text_components(
            tmp,
            world_config,
            d_model,
            num_layers,
            vocab_size,
            num_sessions,
            seed,
            tokenizer_kind,
            strip_template,
            dropout_rate,
            shot_words,
        )
    return output_dir


def _write_text_components(
    tmp: Path,
    world_config: dict,
    d_model: int,
    num_layers: int,
    vocab_size: int,
    num_sessions: int,
    seed: int,
    tokenizer_kind: str,
    strip_template: bool,
    dropout_rate: float,
    shot_words: bool,
) -> None:
    import torch
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    from diffusers_vincie.data.shapes.world import ShapesWorld

    world = ShapesWorld(**world_config)
    if tokenizer_kind == "bpe":
        model_file = train_sentencepiece(instruction_corpus(world, num_sessions, 5, seed), tmp / "spm", vocab_size)
        tokenizer = T5Tokenizer(vocab=sentencepiece_vocab(model_file), extra_ids=0)
        shutil.rmtree(tmp / "spm")
    else:
        from diffusers_vincie.data.shapes.shots import SHOT_WORDS
        from diffusers_vincie.text_encoding import build_word_level_tokenizer

        words = world.vocabulary + list(SHOT_WORDS if shot_words else ())
        tokenizer = build_word_level_tokenizer(words, strip_template=strip_template)
    tokenizer.save_pretrained(tmp / "tokenizer")

    torch.manual_seed(seed)
    encoder = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=d_model,
            d_kv=d_model // 4,
            d_ff=2 * d_model,
            num_layers=num_layers,
            num_heads=4,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
            dropout_rate=dropout_rate,
        )
    )
    encoder.save_pretrained(tmp / "text_encoder")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--world_config", default=None, help="JSON file or string of ShapesWorld arguments.")
    parser.add_argument("--d_model", type=int, default=64, help="Must equal the transformer's text_embed_dim.")
    parser.add_argument("--num_layers", type=int, default=2, help="0: learned word embeddings (train them).")
    parser.add_argument("--tokenizer", choices=("bpe", "word_level"), default="bpe")
    parser.add_argument(
        "--strip_template",
        action="store_true",
        help="Word-level tokenizer only: drop the prompt template's boilerplate.",
    )
    parser.add_argument(
        "--shot_words",
        action="store_true",
        help="Word-level tokenizer only: also the words of composition and story shots ('show', 'and').",
    )
    parser.add_argument("--dropout_rate", type=float, default=0.1, help="Encoder dropout (only while trained).")
    parser.add_argument("--vocab_size", type=int, default=256)
    parser.add_argument("--num_sessions", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for flag in ("d_model", "vocab_size", "num_sessions"):
        if getattr(args, flag) < 1:
            usage_exit("build_shapes_text_encoder.py", f"--{flag} must be >= 1, got {getattr(args, flag)}.")
    if args.num_layers < 0:
        usage_exit(
            "build_shapes_text_encoder.py",
            f"--num_layers must be >= 0 (0: learned word embeddings), got {args.num_layers}.",
        )
    if args.d_model % 4:
        usage_exit("build_shapes_text_encoder.py", f"--d_model must be a multiple of 4 (4 heads), got {args.d_model}.")
    if (args.strip_template or args.shot_words) and args.tokenizer != "word_level":
        usage_exit("build_shapes_text_encoder.py", "--strip_template and --shot_words need --tokenizer word_level.")
    world_config = {}
    if args.world_config:
        text = args.world_config
        try:
            world_config = json.loads(Path(text).read_text() if os.path.isfile(text) else text)
        except ValueError as error:
            usage_exit("build_shapes_text_encoder.py", f"--world_config is neither a JSON file nor JSON: {error}")
    run_cli(lambda: check_output_dir(Path(args.output_dir)), "build_shapes_text_encoder.py")
    path = build(
        args.output_dir,
        world_config,
        args.d_model,
        args.num_layers,
        args.vocab_size,
        args.num_sessions,
        args.seed,
        args.tokenizer,
        args.strip_template,
        args.dropout_rate,
        args.shot_words,
    )
    print(f"wrote {path}/tokenizer and {path}/text_encoder")


if __name__ == "__main__":
    main()
