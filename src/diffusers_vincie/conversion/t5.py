"""The VINCIE-7B release's ``flan-ul2/`` folder (a Hugging Face T5 model folder) -> the pipeline's text encoder
(``T5EncoderModel``, encoder weights only, streamed) and tokenizer (``T5TokenizerFast`` limited to 150 tokens, as the official
code loads them). Weights are read from safetensors only: a folder holding only PyTorch ``.bin`` pickles is refused
with the fix, as nothing is ever unpickled here."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .checkpoint import StreamingSafetensorsWriter

T5_MAX_LENGTH = 150  # the official text encoder's ``model_max_length`` (end token included)
T5_TOKENIZER_FILES = ("tokenizer.json", "spiece.model")


def check_t5_folder(folder: Path) -> dict:
    """Checks that ``folder`` is a T5 model folder with safetensors weights and a tokenizer; returns its config.

    Raises:
        FileNotFoundError: the config, the weights or the tokenizer files are missing (each named).
        ValueError: the config is not a T5 one, or the weights are only pickles.
    """
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} is missing: {folder} must be a Hugging Face T5 model folder.")
    try:
        config = json.loads(config_path.read_text())
    except (UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"{config_path} is not a JSON config ({error}).") from None
    if not isinstance(config, dict) or config.get("model_type") != "t5":
        model_type = config.get("model_type") if isinstance(config, dict) else None
        raise ValueError(f"{config_path} has model_type {model_type!r}; the 7B text encoder is a T5 ('t5').")
    if not list(folder.glob("*.safetensors")):
        pickles = sorted(p.name for p in folder.glob("*.bin"))
        if pickles:
            raise ValueError(
                f"{folder} holds its weights only as PyTorch pickles ({', '.join(pickles[:3])}), which this converter "
                "never unpickles; put the same model's *.safetensors files in it (e.g. saved with transformers' "
                "save_pretrained(..., safe_serialization=True) where the pickles are trusted) and run again."
            )
        raise FileNotFoundError(f"{folder} holds no *.safetensors weights of the T5 text encoder.")
    if not any((folder / name).is_file() for name in T5_TOKENIZER_FILES):
        raise FileNotFoundError(
            f"{folder} holds no T5 tokenizer: expected one of {list(T5_TOKENIZER_FILES)} (tokenizer.json for "
            "T5TokenizerFast, or the SentencePiece spiece.model it is built from)."
        )
    return config


def convert_t5_encoder(folder: Path, out: Path, dtype: torch.dtype) -> str:
    """Writes the encoder half of the T5 in ``folder`` as a ``T5EncoderModel`` folder, streamed tensor by tensor
    from its safetensors files (the decoder weights of a full encoder-decoder checkpoint are never read, and at
    most one tensor is held: the flan-ul2 encoder is 17 GB in bfloat16). Every tensor the encoder needs is found
    and shape-checked before a byte is written. Returns a model card line."""
    from safetensors import safe_open
    from transformers import T5Config, T5EncoderModel

    config = T5Config.from_pretrained(folder)
    with torch.device("meta"):
        expected = {name: tuple(tensor.shape) for name, tensor in T5EncoderModel(config).state_dict().items()}
    # the token embedding is one tensor saved as ``shared.weight`` (``encoder.embed_tokens.weight`` is tied to it);
    # a checkpoint may hold it under either name
    expected.pop("encoder.embed_tokens.weight", None)
    files: dict[str, Path] = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, "pt") as handle:
            files.update({name: file for name in handle.keys() if name not in files})
    source = {name: name for name in expected if name in files}
    if "shared.weight" not in source and "encoder.embed_tokens.weight" in files:
        source["shared.weight"] = "encoder.embed_tokens.weight"
    missing = sorted(set(expected) - set(source))
    if missing:
        raise ValueError(f"{folder}: the T5 encoder weights lack {missing[:5]} ({len(missing)} in all).")
    plan = [(name, expected[name]) for name in expected]
    for name, shape in plan:
        with safe_open(files[source[name]], "pt") as handle:
            found = tuple(handle.get_slice(source[name]).get_shape())
        if found != shape:
            raise ValueError(f"{folder}: {source[name]} has shape {found}, its config.json says {shape}.")
    out.mkdir(parents=True, exist_ok=True)
    writer = StreamingSafetensorsWriter(out / "model.safetensors", plan, dtype)
    for name, _ in plan:
        with safe_open(files[source[name]], "pt") as handle:
            writer.write(name, handle.get_tensor(source[name]))
    writer.close()
    config.architectures = ["T5EncoderModel"]
    config.save_pretrained(out)
    return (
        f"text encoder: T5EncoderModel from the release's T5 folder ({config.num_layers} layers, d_model "
        f"{config.d_model}; the encoder's {len(plan)} tensors streamed from safetensors, shapes checked against "
        "the config)"
    )


def convert_t5_tokenizer(folder: Path, out: Path) -> str:
    """Writes the folder's tokenizer as a ``T5TokenizerFast`` limited to 150 tokens; returns a model card line."""
    from transformers import T5TokenizerFast

    tokenizer = T5TokenizerFast.from_pretrained(folder, model_max_length=T5_MAX_LENGTH)
    tokenizer.save_pretrained(out)
    return (
        f"tokenizer: T5TokenizerFast ({len(tokenizer)} tokens, '</s>' appended by the tokenizer, model_max_length "
        f"{T5_MAX_LENGTH})"
    )
