"""Convert an official VINCIE release (``dit.pth``, ``vae.pth``, ``llm14b/``) into a diffusers folder.

    python -m diffusers_vincie.conversion --official ckpt/VINCIE-3B --out VINCIE-3B-diffusers [--dtype fp32|bf16]
        [--text-encoder-dtype bf16|fp32] [--push-to-hub user/VINCIE-3B-diffusers]

The output loads with ``VincieInContextPipeline.from_pretrained(out)``: ``transformer/`` (VincieTransformer, config
derived from the checkpoint), ``vae/`` (2D AutoencoderKL, float32), ``text_encoder/`` (transformers Qwen2Model,
streamed shard by shard), ``tokenizer/`` (fast tokenizer from ``qwen.tiktoken``), ``scheduler/``,
``model_index.json`` and a model card. Only safetensors are written; inputs are read with
``torch.load(weights_only=True, mmap=True)``. Each finished component folder is kept on a re-run (delete it to redo
it), and the text encoder resumes shard by shard.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import unicodedata
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
from transformers import AutoConfig, AutoModel, AutoTokenizer

from ..image_latents import vae_class
from ..models import VincieTransformer
from ..pipelines import VincieInContextPipeline, official_scheduler
from ..utils.cli import print_usage_error
from ..utils.io import TEMPORARY_GLOBS, atomic_directory, write_text_atomic
from .checkpoint import load_torch_state_dict
from .dit import VINCIE_3B_CONFIG, load_official_dit
from .qwen import (
    PORTABLE_TOKENIZER_CLASS,
    QWEN_PATTERN,
    QWEN_SPECIAL_TOKENS,
    convert_qwen_checkpoint,
    convert_qwen_tokenizer,
    read_tiktoken_ranks,
)
from .vae import convert_official_vae, describe_converted_vae

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
CONVERSION_RECORD = "conversion.json"
OUTPUT_ENTRIES = {*COMPONENTS, CONVERSION_RECORD, "model_index.json", "README.md"}
TEMPORARY = re.compile(r"^\..+\.\d+-[0-9a-f]{8}\.tmp")  # utils.io.temporary_sibling, left by a killed run

# Prompts whose token ids are compared with tiktoken on the real vocabulary (template, unicode, a special token).
TOKENIZER_PROBES = (
    "Based on <IMG0>, change the sky to a sunset. Output <IMG1>: ",
    "Based on <IMG2>, remove the cafe\u0301's sign and add 3 red umbrellas. Output <IMG3>: ",
    "把猫换成狗, THE QUICK'S fox'll jump\n\n  over<|endoftext|>",
)


# ----------------------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------------------


def check_official_folder(official: Path) -> dict[str, Path]:
    """Locate the files of an official release and name what is missing.

    Args:
        official: folder holding ``dit.pth``, ``vae.pth`` and ``llm14b/`` (as downloaded from ByteDance-Seed/VINCIE-3B).
    """
    paths = {
        "dit": official / "dit.pth",
        "vae": official / "vae.pth",
        "llm": official / "llm14b",
        "llm_config": official / "llm14b" / "config.json",
        "tiktoken": official / "llm14b" / "qwen.tiktoken",
    }
    missing = [str(path) for path in paths.values() if not path.exists()]
    if missing:
        raise FileNotFoundError(
            f"--official {official} is not an official VINCIE release folder: missing {missing}. Download it with "
            "huggingface_hub.snapshot_download('ByteDance-Seed/VINCIE-3B') and pass that folder."
        )
    return paths


def conversion_inputs(paths: dict[str, Path], options: dict) -> dict:
    """What identifies one conversion, recorded in ``conversion.json`` before anything else is written: the release
    folder's name, each input file's size and the SHA-256 of its first MiB (cheap, and different for any two
    releases), and the options that change the output."""

    def fingerprint(path: Path) -> list:
        with open(path, "rb") as handle:
            return [path.stat().st_size, hashlib.sha256(handle.read(1 << 20)).hexdigest()]

    files = [paths["dit"], paths["vae"], paths["llm_config"], paths["tiktoken"]]
    files += sorted(p for p in paths["llm"].iterdir() if p.is_file() and p not in files)
    official = paths["dit"].parent
    return {
        "source": official.resolve().name,
        "files": {str(p.relative_to(official)): fingerprint(p) for p in files},
        "options": json.loads(json.dumps(options, default=str)),
    }


def check_out_folder(official: Path, out: Path, inputs: dict | None = None) -> None:
    """``--out`` must be a new or empty folder, or the folder of the same conversion (same inputs and options, by
    the record ``conversion.json`` that a conversion writes first) holding nothing else; never the release or a
    folder inside it, nor another model's folder (its components would be mixed with this one's)."""
    official_resolved, out_resolved = official.resolve(), out.resolve()
    if out_resolved == official_resolved or official_resolved in out_resolved.parents:
        raise ValueError(f"--out {out} is (inside) --official {official}; give a separate output folder.")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder.")
    if not out.is_dir() or not any(out.iterdir()):
        return
    try:
        recorded = json.loads((out / CONVERSION_RECORD).read_text()).get("inputs")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if recorded is None:
        raise ValueError(
            f"--out {out} is a non-empty folder that no conversion of this version started (no {CONVERSION_RECORD} "
            "with its inputs); give a new or empty folder (its files would be replaced or mixed with the new model)."
        )
    if inputs is not None and recorded != inputs:
        raise ValueError(
            f"--out {out} holds the conversion of other inputs or options (source {recorded.get('source')!r}); give "
            "a new folder, or delete this one to convert again."
        )
    foreign = sorted(p.name for p in out.iterdir() if p.name not in OUTPUT_ENTRIES and not TEMPORARY.match(p.name))
    if foreign:
        raise ValueError(
            f"--out {out} holds files a conversion does not write ({', '.join(foreign[:5])}); move them away or give "
            "a new folder."
        )


def check_inputs(paths: dict[str, Path], vae_config: dict | None) -> None:
    """Opens every input before any component is converted, so a truncated, legacy-format or foreign file is an
    error naming it instead of a failure after hours of work. Checkpoints are memory-mapped: only their indexes
    and the few small tensors the checks need are read."""
    from .dit import infer_transformer_config, load_official_state_dict
    from .qwen import _source_files, qwen2_config_from_qwen
    from .vae import vae_config_from_state_dict

    try:
        infer_transformer_config(load_official_state_dict(paths["dit"]))
    except (KeyError, ValueError) as error:
        raise ValueError(f"{paths['dit']}: {error}") from error
    try:
        vae_config_from_state_dict(load_torch_state_dict(paths["vae"]), vae_config)
    except (KeyError, ValueError) as error:
        raise ValueError(f"{paths['vae']}: {error}") from error
    try:
        qwen2_config_from_qwen(json.loads(paths["llm_config"].read_text()))
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{paths['llm_config']} is not a Qwen config ({type(error).__name__}: {error}).") from error
    _source_files(paths["llm"])
    try:
        read_tiktoken_ranks(paths["tiktoken"])
    except (UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"{paths['tiktoken']} is not a tiktoken vocabulary ({error}).") from error


def sha256_of(path: Path, chunk_bytes: int = 16 << 20) -> str:
    """SHA-256 of a file, read in chunks (recorded in the model card for provenance)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------------------------------
# Components (each written to a temporary folder, then moved into place)
# ----------------------------------------------------------------------------------------------------------------------


def _write_component(out: Path, name: str, save: Callable[[Path], None]) -> bool:
    """Run ``save(temporary_folder)`` and move the folder to ``out/name``; skip if ``out/name`` exists.

    Returns:
        True when the component was written now, False when an earlier run had finished it.
    """
    final = out / name
    if final.is_dir():
        print(f"{name}/ already converted, kept (delete it to convert it again)")
        return False
    with atomic_directory(final) as temporary:
        save(temporary)
    return True


def verify_tokenizer_ids(tokenizer, tiktoken_path: Path) -> list[str]:
    """Compare the fast tokenizer's ids with tiktoken (QWenTokenizer's engine) on the probe prompts.

    Returns:
        Human-readable verification lines for the model card (empty if tiktoken is not installed).
    """
    try:
        import tiktoken
    except ImportError:
        return []
    ranks = read_tiktoken_ranks(tiktoken_path)
    reference = tiktoken.Encoding(
        "qwen",
        pat_str=QWEN_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={token: len(ranks) + i for i, token in enumerate(QWEN_SPECIAL_TOKENS)},
    )
    for prompt in TOKENIZER_PROBES:
        expected = reference.encode(unicodedata.normalize("NFC", prompt), allowed_special="all")
        ours = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if ours != expected:
            raise RuntimeError(f"converted tokenizer disagrees with tiktoken on {prompt!r}: {ours} vs {expected}")
    return [f"tokenizer ids equal tiktoken's on {len(TOKENIZER_PROBES)} probe prompts (templates, NFC, specials)"]


def convert_official_release(
    official: str | os.PathLike,
    out: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
    text_encoder_dtype: torch.dtype = torch.bfloat16,
    hash_inputs: bool = True,
    vae_config: dict | None = None,
    repo_id: str | None = None,
) -> Path:
    """Convert an official VINCIE release folder into a diffusers pipeline folder.

    Args:
        official: folder with ``dit.pth``, ``vae.pth`` and ``llm14b/``.
        out: output folder (created; finished components of an earlier run are kept).
        dtype: transformer dtype (the official DiT runs in float32).
        text_encoder_dtype: text encoder dtype (the official encoder runs in bfloat16).
        hash_inputs: record SHA-256 of ``dit.pth`` and ``vae.pth`` in the model card.
        vae_config: official VAE constructor arguments for a non-standard VAE (only ``norm_num_groups`` cannot be
            read from the weights; default: the official 32 groups).
        repo_id: Hub repository id to show in the model card's loading snippet.

    Returns:
        The output folder.
    """
    official, out = Path(official), Path(out)
    paths = check_official_folder(official)
    check_out_folder(official, out)
    check_inputs(paths, vae_config)
    inputs = conversion_inputs(paths, {"dtype": dtype, "text_encoder_dtype": text_encoder_dtype, "vae": vae_config})
    check_out_folder(official, out, inputs)
    try:  # the record first: it marks the folder as this conversion's, and proves it writable before any work
        out.mkdir(parents=True, exist_ok=True)
        record = out / CONVERSION_RECORD  # rewritten as it is when resuming: a write that tests the folder
        text = record.read_text() if record.is_file() else json.dumps({"notes": [], "inputs": inputs}, indent=2) + "\n"
        write_text_atomic(record, text)
    except OSError as error:
        raise ValueError(
            f"--out {out} cannot be written ({error.strerror or error}); give a writable folder."
        ) from None
    notes: list[str] = []

    # Text encoder first: the largest job, resumable shard by shard.
    print("text encoder: first-generation Qwen -> Qwen2Model (streaming)")
    qwen2_config = convert_qwen_checkpoint(paths["llm"], out / "text_encoder", dtype=text_encoder_dtype)
    notes.append(
        f"text encoder: every QWen tensor mapped exactly once onto Qwen2Model ({qwen2_config.num_hidden_layers} "
        f"layers, hidden {qwen2_config.hidden_size}; fused c_attn split into q/k/v with biases, w2 = gate, w1 = up), "
        "shapes checked against the Qwen2 config; exact for prompts up to 2048 tokens"
    )

    def save_tokenizer(folder: Path) -> None:
        tokenizer = convert_qwen_tokenizer(paths["tiktoken"], folder)
        notes.extend(verify_tokenizer_ids(tokenizer, paths["tiktoken"]))

    _write_component(out, "tokenizer", save_tokenizer)

    def save_vae(folder: Path) -> None:
        vae = convert_official_vae(load_torch_state_dict(paths["vae"]), vae_config)
        notes.append(describe_converted_vae(vae))
        vae.save_pretrained(folder)

    _write_component(out, "vae", save_vae)

    def save_transformer(folder: Path) -> None:
        transformer = load_official_dit(paths["dit"], dtype=dtype)
        preset = {k: v for k, v in VINCIE_3B_CONFIG.items() if transformer.config.get(k) != v}
        notes.append(
            "transformer: config derived from the checkpoint's keys and shapes, strict load (turn table present, no "
            "unknown, missing or mis-shaped tensor)"
            + (
                ", equal to the VINCIE-3B preset"
                if not preset
                else f", differs from the 3B preset in {sorted(preset)}"
            )
        )
        transformer.save_pretrained(folder)

    _write_component(out, "transformer", save_transformer)
    _write_component(out, "scheduler", lambda folder: official_scheduler().save_pretrained(folder))

    write_model_index(out)
    inputs = {name: paths[name] for name in ("dit", "vae")}
    digests = {name: sha256_of(path) for name, path in inputs.items()} if hash_inputs else {}
    write_model_card(out, official, notes, digests, dtype, text_encoder_dtype, repo_id)
    return out


def write_model_index(out: Path) -> None:
    """Write ``model_index.json`` from the pipeline's own registration of the converted components.

    The pipeline is built with the text encoder on the meta device (its weights are already on disk), so the
    14B model is never materialised just to record its class; ``save_config`` writes the ``model_index.json`` that
    ``save_pretrained`` would, and the tokenizer is then recorded under its transformers 4 and 5 name.
    """
    with torch.device("meta"):
        text_encoder = AutoModel.from_config(AutoConfig.from_pretrained(out / "text_encoder"))
        transformer = VincieTransformer.from_config(VincieTransformer.load_config(out / "transformer"))
        vae_config = AutoencoderKL.load_config(out / "vae")
        vae = vae_class(vae_config["_class_name"]).from_config(vae_config)
    pipeline = VincieInContextPipeline(
        transformer=transformer,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=AutoTokenizer.from_pretrained(out / "tokenizer"),
        scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(out / "scheduler"),
    )
    pipeline.save_config(out)
    index_path = out / "model_index.json"
    index = json.loads(index_path.read_text())
    index["tokenizer"] = ["transformers", PORTABLE_TOKENIZER_CLASS]  # loadable with transformers 4 and 5
    write_text_atomic(index_path, json.dumps(index, indent=2, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------------------------------------------------
# Model card and Hub upload
# ----------------------------------------------------------------------------------------------------------------------


def write_model_card(
    out: Path,
    official: Path,
    notes: list[str],
    digests: dict[str, str],
    dtype: torch.dtype,
    text_encoder_dtype: torch.dtype,
    repo_id: str | None = None,
) -> None:
    """Write ``README.md`` stating the source, the conversion and the verification done.

    Args:
        out: the converted folder.
        official: the official release folder (its name is recorded as the source).
        notes: verification lines of the components converted in this run (earlier runs' lines are kept).
        digests: SHA-256 of the input files.
        dtype: transformer dtype.
        text_encoder_dtype: text encoder dtype.
        repo_id: Hub repository the folder is pushed to, used in the loading snippet.
    """
    previous = out / CONVERSION_RECORD
    record = json.loads(previous.read_text()) if previous.is_file() else {"notes": []}
    record["notes"] = list(dict.fromkeys(record["notes"] + notes))  # keep notes of components from earlier runs
    record.update({"source": str(official.resolve().name), "sha256": digests or record.get("sha256", {})})
    write_text_atomic(previous, json.dumps(record, indent=2) + "\n")
    checks = "\n".join(f"- {note}" for note in record["notes"])
    hashes = (
        "\n".join(f"- `{name}.pth`: sha256 `{digest}`" for name, digest in record["sha256"].items())
        or "- (not hashed)"
    )
    card = f"""---
library_name: diffusers
pipeline_tag: image-to-image
tags: [vincie, image-editing, diffusers-vincie]
license: apache-2.0
---

# {record["source"]} (diffusers format)

Diffusers-format conversion of the official VINCIE release `{record["source"]}` (ByteDance-Seed, paper
arXiv:2506.10941, "VINCIE: Unlocking In-context Image Editing from Video"), made with
`python -m diffusers_vincie.conversion` (package `diffusers-vincie`). No remote code, no pickles: every weight is a
safetensors file.

```python
import diffusers_vincie  # registers the pipeline with diffusers
from diffusers_vincie import VincieInContextPipeline

pipe = VincieInContextPipeline.from_pretrained("{repo_id or out.name}")
```

## Components

- `transformer/`: `VincieTransformer` ({_dtype_name(dtype)})
- `vae/`: 2D `AutoencoderKL` equivalent of the official causal 3D VAE on single frames (float32), scaling factor 0.9152
- `text_encoder/`: transformers `Qwen2Model` equivalent of the first-generation Qwen-14B encoder ({_dtype_name(text_encoder_dtype)})
- `tokenizer/`: fast tokenizer from `qwen.tiktoken` (`<|endoftext|>` appended to every prompt by the pipeline)
- `scheduler/`: `FlowMatchEulerDiscreteScheduler`, shift 12, used with the official trailing timesteps

## Source files

{hashes}

## Verification

Done during this conversion:

{checks}

Done in the diffusers-vincie test suite on tiny models in the official formats: the VAE converter reproduces the
official VAE's posterior and decoder outputs (max abs error 1e-4 in float32) with both up-sampler variants; the
Qwen converter reproduces an independent first-generation Qwen forward; the DiT converter reproduces the official
NaDiT outputs (`python -m diffusers_vincie.parity`).
"""
    write_text_atomic(out / "README.md", card)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def push_to_hub(out: Path, repo_id: str) -> None:
    """Upload the converted folder to the Hugging Face Hub (created if absent)."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, exist_ok=True)
    api.upload_folder(folder_path=out, repo_id=repo_id, ignore_patterns=list(TEMPORARY_GLOBS))


# ----------------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------------


def load_vae_config(path: Path) -> dict:
    """Read ``--vae-config``: the VAE constructor arguments, or a config whose ``vae`` section holds them."""
    if not path.is_file():
        raise FileNotFoundError(f"--vae-config {path} does not exist")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"--vae-config {path} is not a readable JSON file ({error}).") from None
    config = config.get("vae", config) if isinstance(config, dict) else config
    if not isinstance(config, dict):
        raise ValueError(
            f"--vae-config {path} must hold a JSON object (or one with a 'vae' object), not {config!r:.40}."
        )
    if "norm_num_groups" not in config:
        raise ValueError(f"--vae-config {path} has no norm_num_groups (nor a 'vae' section holding it)")
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m diffusers_vincie.conversion",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--official", required=True, type=Path, help="official release folder (dit.pth, vae.pth, llm14b/)"
    )
    parser.add_argument("--out", required=True, type=Path, help="output diffusers folder")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="transformer dtype (official: fp32)")
    parser.add_argument(
        "--text-encoder-dtype", choices=sorted(DTYPES), default="bf16", help="text encoder dtype (official: bf16)"
    )
    parser.add_argument(
        "--vae-config",
        type=Path,
        default=None,
        help="JSON with the official VAE constructor arguments (or a config with a 'vae' section); only needed for "
        "non-release VAEs, the release uses the official defaults",
    )
    parser.add_argument("--no-hash", action="store_true", help="skip SHA-256 of the input files in the model card")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", default=None, help="upload the result to this Hub repo")
    args = parser.parse_args(argv)
    try:
        vae_config = load_vae_config(args.vae_config) if args.vae_config else None
        out = convert_official_release(
            args.official,
            args.out,
            DTYPES[args.dtype],
            DTYPES[args.text_encoder_dtype],
            hash_inputs=not args.no_hash,
            vae_config=vae_config,
            repo_id=args.push_to_hub,
        )
    except (FileNotFoundError, ValueError) as error:
        return print_usage_error(parser.prog, error)
    print(f"wrote {out}; load it with VincieInContextPipeline.from_pretrained({str(out)!r})")
    if args.push_to_hub:
        push_to_hub(out, args.push_to_hub)
        print(f"pushed to https://huggingface.co/{args.push_to_hub}")
    return 0
