"""Convert an official VINCIE release, either family, into a diffusers folder.

    python -m diffusers_vincie.conversion --official ckpt/VINCIE-3B --out VINCIE-3B-diffusers [--dtype fp32|bf16]
        [--text-encoder-dtype bf16|fp32] [--push-to-hub user/VINCIE-3B-diffusers]
    python -m diffusers_vincie.conversion --official ckpt/VINCIE-7B --out VINCIE-7B-diffusers

The family is recognised from the files: VINCIE-3B (``dit.pth``, ``vae.pth``, ``llm14b/`` with ``qwen.tiktoken``)
or VINCIE-7B (``ema.pth``, ``ema_vae.pth``, ``flan-ul2/`` with a T5 encoder and tokenizer). Every size is read from
the checkpoints. The output loads with ``DiffusionPipeline.from_pretrained(out)`` with the family's official
sampling defaults (scheduler shift, CFG scale, resolution, negative prompt): ``transformer/`` (VincieTransformer,
streamed tensor by tensor), ``vae/`` (the family's single-frame VAE, float32), ``text_encoder/`` (3B: transformers
Qwen2Model, streamed shard by shard; 7B: T5EncoderModel), ``tokenizer/``, ``scheduler/``, ``model_index.json`` and
a model card. Only safetensors are written; ``.pth`` inputs are read with ``torch.load(weights_only=True,
mmap=True)``. Each finished component folder is kept on a re-run (delete it to redo it), and the 3B text encoder
resumes shard by shard.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import unicodedata
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
from transformers import AutoConfig, AutoModel, AutoTokenizer

from ..image_latents import vae_class
from ..models import VincieTransformer
from ..pipelines import OFFICIAL_NEGATIVE_PROMPT, VincieInContextPipeline, official_scheduler
from ..utils.cli import print_usage_error
from ..utils.io import TEMPORARY_GLOBS, OutputLockedError, atomic_directory, exclusive_lock, write_text_atomic
from .checkpoint import load_torch_state_dict
from .dit import VINCIE_3B_CONFIG, VINCIE_7B_CONFIG, convert_official_dit
from .qwen import (
    PORTABLE_TOKENIZER_CLASS,
    QWEN_PATTERN,
    QWEN_SPECIAL_TOKENS,
    convert_qwen_checkpoint,
    convert_qwen_tokenizer,
    read_tiktoken_ranks,
)
from .t5 import check_t5_folder, convert_t5_encoder, convert_t5_tokenizer
from .vae import write_official_vae

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
CONVERSION_RECORD = "conversion.json"
CONVERSION_LOCK = ".conversion.lock"  # flock held by the running conversion: a second one into --out is refused
OUTPUT_ENTRIES = {*COMPONENTS, CONVERSION_RECORD, CONVERSION_LOCK, "model_index.json", "README.md"}
TEMPORARY = re.compile(r"^\..+\.\d+-[0-9a-f]{8}\.tmp")  # utils.io.temporary_sibling, left by a killed run

# Prompts whose token ids are compared with tiktoken on the real vocabulary (template, unicode, a special token).
TOKENIZER_PROBES = (
    "Based on <IMG0>, change the sky to a sunset. Output <IMG1>: ",
    "Based on <IMG2>, remove the cafe\u0301's sign and add 3 red umbrellas. Output <IMG3>: ",
    "把猫换成狗, THE QUICK'S fox'll jump\n\n  over<|endoftext|>",
)


@dataclass(frozen=True)
class OfficialFamily:
    """What differs between the official releases: their files, text encoder, preset and sampling defaults.

    Args:
        name: release name (``VINCIE-3B``); ``hub_id`` where it is downloaded from.
        files: the release's paths by role (``dit``, ``vae``, ``llm`` = the text encoder's folder, ``llm_config``,
            and for 3B ``tiktoken``), relative to the release folder.
        preset: the full-size `VincieTransformer` config, compared with the converted one in the model card.
        scheduler_shift, guidance_scale, resolution: the official sampling settings (resolution: the side of the
            area the inputs are resized to, rounded to an integer).
        tokenizer_class: the tokenizer class recorded in ``model_index.json`` (a name transformers 4 and 5 share).
        text_components: model card lines on ``text_encoder/`` (``{dtype}``: its dtype) and ``tokenizer/``.
    """

    name: str
    hub_id: str
    files: dict
    preset: dict
    scheduler_shift: float
    guidance_scale: float
    resolution: int
    tokenizer_class: str
    text_components: str


VINCIE_3B = OfficialFamily(
    name="VINCIE-3B",
    hub_id="ByteDance-Seed/VINCIE-3B",
    files={
        "dit": "dit.pth",
        "vae": "vae.pth",
        "llm": "llm14b",
        "llm_config": "llm14b/config.json",
        "tiktoken": "llm14b/qwen.tiktoken",
    },
    preset=VINCIE_3B_CONFIG,
    scheduler_shift=12.0,
    guidance_scale=7.5,
    resolution=256,
    tokenizer_class=PORTABLE_TOKENIZER_CLASS,
    text_components="- `text_encoder/`: transformers `Qwen2Model` equivalent of the first-generation Qwen-14B "
    "encoder ({dtype})\n- `tokenizer/`: fast tokenizer from `qwen.tiktoken` (`<|endoftext|>` appended to every "
    "prompt by the pipeline)",
)
VINCIE_7B = OfficialFamily(
    name="VINCIE-7B",
    hub_id="ByteDance-Seed/VINCIE-7B",
    files={"dit": "ema.pth", "vae": "ema_vae.pth", "llm": "flan-ul2", "llm_config": "flan-ul2/config.json"},
    preset=VINCIE_7B_CONFIG,
    scheduler_shift=10.0,
    guidance_scale=10.0,
    resolution=554,  # official sqrt(640 * 480) = 554.26; area 306,916 instead of 307,200 pixels
    tokenizer_class="T5TokenizerFast",
    text_components="- `text_encoder/`: transformers `T5EncoderModel` (the flan-ul2 encoder, {dtype})\n"
    "- `tokenizer/`: `T5TokenizerFast` (`</s>` appended by the tokenizer, at most 150 tokens)",
)
FAMILIES = (VINCIE_3B, VINCIE_7B)


# ----------------------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------------------


def detect_family(official: Path) -> OfficialFamily:
    """The release family whose files ``official`` holds the most of (3B when it holds none of either's)."""
    present = [sum((official / name).exists() for name in family.files.values()) for family in FAMILIES]
    if present[0] and present[1]:
        raise ValueError(
            f"--official {official} mixes the files of both releases ({', '.join(VINCIE_3B.files.values())} and "
            f"{', '.join(VINCIE_7B.files.values())}); pass a folder holding one release."
        )
    return VINCIE_7B if present[1] else VINCIE_3B


def check_official_folder(official: Path, family: OfficialFamily | None = None) -> dict[str, Path]:
    """Locate the files of an official release and name what is missing.

    Args:
        official: folder holding ``dit.pth``, ``vae.pth`` and ``llm14b/`` (VINCIE-3B) or ``ema.pth``,
            ``ema_vae.pth`` and ``flan-ul2/`` (VINCIE-7B), as downloaded from the Hub.
        family: the release family (default: recognised from the files, `detect_family`).
    """
    family = family or detect_family(official)
    paths = {role: official / name for role, name in family.files.items()}
    missing = [str(path) for path in paths.values() if not path.exists()]
    if missing:
        raise FileNotFoundError(
            f"--official {official} is not an official {family.name} release folder: missing {missing}. Download it "
            f"with huggingface_hub.snapshot_download('{family.hub_id}') and pass that folder."
        )
    return paths


def conversion_inputs(paths: dict[str, Path], options: dict) -> dict:
    """What identifies one conversion, recorded in ``conversion.json`` before anything else is written: the release
    folder's name, each input file's size and the SHA-256 of its first MiB (cheap, and different for any two
    releases), and the options that change the output."""

    def fingerprint(path: Path) -> list:
        with open(path, "rb") as handle:
            return [path.stat().st_size, hashlib.sha256(handle.read(1 << 20)).hexdigest()]

    files = [paths[role] for role in ("dit", "vae", "llm_config", "tiktoken") if role in paths]  # 7B: no tiktoken
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
    if not out.is_dir() or not any(p.name != CONVERSION_LOCK for p in out.iterdir()):
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
    from .dit import load_official_state_dict, transformer_config_from_state_dict
    from .qwen import _source_files, qwen2_config_from_qwen
    from .vae import vae_config_from_state_dict

    try:
        transformer_config_from_state_dict(load_official_state_dict(paths["dit"]))
    except (KeyError, ValueError) as error:
        raise ValueError(f"{paths['dit']}: {error}") from error
    try:
        vae_config_from_state_dict(load_torch_state_dict(paths["vae"]), vae_config)
    except (KeyError, ValueError) as error:
        raise ValueError(f"{paths['vae']}: {error}") from error
    if "tiktoken" not in paths:  # the 7B release: a Hugging Face T5 model folder instead of Qwen + tiktoken
        check_t5_folder(paths["llm"])
        return
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
    """Convert an official VINCIE release folder (either family, `detect_family`) into a diffusers pipeline folder.

    Args:
        official: folder with ``dit.pth``, ``vae.pth`` and ``llm14b/`` (3B) or ``ema.pth``, ``ema_vae.pth`` and
            ``flan-ul2/`` (7B).
        out: output folder (created; finished components of an earlier run are kept).
        dtype: transformer dtype (the official 3B DiT runs in float32).
        text_encoder_dtype: text encoder dtype (the official encoders run in bfloat16).
        hash_inputs: record SHA-256 of the DiT and VAE checkpoints in the model card.
        vae_config: official VAE constructor arguments for a non-standard VAE (only ``norm_num_groups`` cannot be
            read from the weights; default: the official 32 groups).
        repo_id: Hub repository id to show in the model card's loading snippet.

    Returns:
        The output folder.
    """
    official, out = Path(official), Path(out)
    family = detect_family(official)
    paths = check_official_folder(official, family)
    check_out_folder(official, out)
    check_inputs(paths, vae_config)
    inputs = conversion_inputs(paths, {"dtype": dtype, "text_encoder_dtype": text_encoder_dtype, "vae": vae_config})
    check_out_folder(official, out, inputs)
    with ExitStack() as stack:
        try:  # the lock, then the record: it marks the folder as this conversion's, and proves it writable
            out.mkdir(parents=True, exist_ok=True)
            stack.enter_context(exclusive_lock(out / CONVERSION_LOCK, f"--out {out}"))
            check_out_folder(official, out, inputs)  # again, now that no other conversion can change it
            record = out / CONVERSION_RECORD  # rewritten as it is when resuming: a write that tests the folder
            new_record = json.dumps({"notes": [], "inputs": inputs}, indent=2) + "\n"
            write_text_atomic(record, record.read_text() if record.is_file() else new_record)
        except OSError as error:
            raise ValueError(
                f"--out {out} cannot be written ({error.strerror or error}); give a writable folder."
            ) from None
        except OutputLockedError as error:
            raise ValueError(str(error)) from None
        _convert_components(official, out, family, paths, dtype, text_encoder_dtype, hash_inputs, vae_config, repo_id)
    return out


def _convert_components(
    official: Path,
    out: Path,
    family: OfficialFamily,
    paths: dict[str, Path],
    dtype: torch.dtype,
    text_encoder_dtype: torch.dtype,
    hash_inputs: bool,
    vae_config: dict | None,
    repo_id: str | None,
) -> None:
    """The conversion itself, once ``out`` is checked, locked and recorded (see ``convert_official_release``)."""
    notes: list[str] = []

    print(f"converting {family.name} from {official}")
    if family is VINCIE_3B:
        # Text encoder first: the largest job, resumable shard by shard.
        print("text encoder: first-generation Qwen -> Qwen2Model (streaming)")
        qwen2_config = convert_qwen_checkpoint(paths["llm"], out / "text_encoder", dtype=text_encoder_dtype)
        notes.append(
            f"text encoder: every QWen tensor mapped exactly once onto Qwen2Model ({qwen2_config.num_hidden_layers} "
            f"layers, hidden {qwen2_config.hidden_size}; fused c_attn split into q/k/v with biases, w2 = gate, "
            "w1 = up), shapes checked against the Qwen2 config; exact for prompts up to 2048 tokens"
        )

        def save_tokenizer(folder: Path) -> None:
            tokenizer = convert_qwen_tokenizer(paths["tiktoken"], folder)
            notes.extend(verify_tokenizer_ids(tokenizer, paths["tiktoken"]))

    else:
        print("text encoder: T5 encoder -> T5EncoderModel")
        _write_component(
            out,
            "text_encoder",
            lambda folder: notes.append(convert_t5_encoder(paths["llm"], folder, text_encoder_dtype)),
        )

        def save_tokenizer(folder: Path) -> None:
            notes.append(convert_t5_tokenizer(paths["llm"], folder))

    _write_component(out, "tokenizer", save_tokenizer)

    def save_vae(folder: Path) -> None:  # the 7B VAE is streamed: one converted tensor at a time
        notes.append(write_official_vae(load_torch_state_dict(paths["vae"]), folder, vae_config))

    _write_component(out, "vae", save_vae)

    def save_transformer(folder: Path) -> None:
        config = convert_official_dit(paths["dit"], folder, dtype=dtype)  # streamed: never the whole DiT in memory
        preset = {k: v for k, v in family.preset.items() if config.get(k) != v}
        notes.append(
            "transformer: config derived from the checkpoint's keys and shapes, every tensor mapped and checked "
            "against the model's shapes before writing (turn table present, no unknown, missing or mis-shaped tensor)"
            + (
                f", equal to the {family.name} preset"
                if not preset
                else f", differs from the {family.name} preset in {sorted(preset)}"
            )
        )

    _write_component(out, "transformer", save_transformer)
    _write_component(
        out, "scheduler", lambda folder: official_scheduler(shift=family.scheduler_shift).save_pretrained(folder)
    )

    write_model_index(out, family)
    digests = {paths[name].name: sha256_of(paths[name]) for name in ("dit", "vae")} if hash_inputs else {}
    write_model_card(out, official, notes, digests, dtype, text_encoder_dtype, repo_id, family)


def write_model_index(out: Path, family: OfficialFamily = VINCIE_3B) -> None:
    """Write ``model_index.json`` from the pipeline's own registration of the converted components, with the
    family's official sampling defaults as the pipeline's config.

    The pipeline is built with the text encoder on the meta device (its weights are already on disk), so the
    14B model is never materialised just to record its class; ``save_config`` writes the ``model_index.json`` that
    ``save_pretrained`` would, and the tokenizer is then recorded under its transformers 4 and 5 name.
    """
    text_config = AutoConfig.from_pretrained(out / "text_encoder")
    # the class the encoder was saved as: AutoModel would record the model type's full model (T5Model for a
    # T5EncoderModel, whose folder then loads as an encoder-decoder missing its decoder)
    saved_as = getattr(transformers, (text_config.architectures or [""])[0], None)
    with torch.device("meta"):
        text_encoder = saved_as(text_config) if saved_as is not None else AutoModel.from_config(text_config)
        transformer = VincieTransformer.from_config(VincieTransformer.load_config(out / "transformer"))
        vae_config = AutoencoderKL.load_config(out / "vae")
        vae = vae_class(vae_config["_class_name"]).from_config(vae_config)
    pipeline = VincieInContextPipeline(
        transformer=transformer,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=AutoTokenizer.from_pretrained(out / "tokenizer"),
        scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(out / "scheduler"),
        default_negative_prompt=OFFICIAL_NEGATIVE_PROMPT,  # the same string in both families' official configs
        default_resolution=family.resolution,
        default_guidance_scale=family.guidance_scale,
    )
    pipeline.save_config(out)
    index_path = out / "model_index.json"
    index = json.loads(index_path.read_text())
    index["tokenizer"] = ["transformers", family.tokenizer_class]  # loadable with transformers 4 and 5
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
    family: OfficialFamily = VINCIE_3B,
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
        family: the release family (its text components and sampling defaults).
    """
    previous = out / CONVERSION_RECORD
    record = json.loads(previous.read_text()) if previous.is_file() else {"notes": []}
    record["notes"] = list(dict.fromkeys(record["notes"] + notes))  # keep notes of components from earlier runs
    record.update({"source": str(official.resolve().name), "sha256": digests or record.get("sha256", {})})
    write_text_atomic(previous, json.dumps(record, indent=2) + "\n")
    checks = "\n".join(f"- {note}" for note in record["notes"])
    hashes = (
        "\n".join(f"- `{name}`: sha256 `{digest}`" for name, digest in record["sha256"].items()) or "- (not hashed)"
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
- `vae/`: single-frame 2D equivalent of the official causal 3D VAE (float32)
{family.text_components.format(dtype=_dtype_name(text_encoder_dtype))}
- `scheduler/`: `FlowMatchEulerDiscreteScheduler`, shift {family.scheduler_shift:g}, used with the official trailing
  timesteps
- pipeline defaults (official {family.name}): CFG scale {family.guidance_scale:g}, resolution {family.resolution},
  the official negative prompt

## Source files

{hashes}

## Verification

Done during this conversion:

{checks}

Done in the diffusers-vincie test suite on tiny models in the official formats: the VAE converter reproduces the
official VAEs' posterior and decoder outputs (max abs error 1e-4 of the output's scale in float32); the Qwen
converter reproduces an independent first-generation Qwen forward; the DiT converter and the T5 text path reproduce
the official outputs of both families (`python -m diffusers_vincie.parity`).
"""
    write_text_atomic(out / "README.md", card)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def push_to_hub(out: Path, repo_id: str) -> None:
    """Upload the converted folder to the Hugging Face Hub (created if absent)."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, exist_ok=True)
    api.upload_folder(folder_path=out, repo_id=repo_id, ignore_patterns=[*TEMPORARY_GLOBS, CONVERSION_LOCK])


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
        "--official",
        required=True,
        type=Path,
        help="official release folder: VINCIE-3B (dit.pth, vae.pth, llm14b/) or VINCIE-7B (ema.pth, ema_vae.pth, "
        "flan-ul2/)",
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
