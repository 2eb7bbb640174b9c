"""First-generation Qwen (``QWenLMHeadModel`` remote code, ``llm14b/``) -> stock ``transformers.Qwen2Model``.

For sequences up to ``seq_length`` (2048) tokens the QWen math equals a Qwen2 model with as many key-value heads
as heads: the fused ``c_attn`` splits into q/k/v (with biases), ``w2`` is the SwiGLU gate and ``w1`` the
up projection (QWen computes ``w1(x) * silu(w2(x))``), and the config's ``intermediate_size`` is halved.

Weights are converted tensor by tensor: each source shard is read one tensor (group) at a time and its output shard
is streamed to disk through a safetensors writer that knows every shape in advance, so peak memory stays near the
largest tensor group instead of the whole model. Output shards are written atomically, so an interrupted run
resumes where it stopped.

The ``qwen.tiktoken`` vocabulary becomes a Hugging Face fast tokenizer with identical ids: the BPE ranks keep their
ids, the special tokens follow them (``<|endoftext|>`` = number of ranks, 151643 for the real vocabulary), NFC
normalisation and the QWen pre-tokenisation pattern as in ``QWenTokenizer``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from tokenizers import normalizers
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2Model
from transformers.convert_slow_tokenizer import TikTokenConverter

from ..utils.io import write_json_atomic
from .checkpoint import SAFETENSORS_DTYPES, StreamingSafetensorsWriter

# QWenTokenizer's pre-tokenisation pattern and special tokens, in id order after the BPE ranks.
QWEN_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
QWEN_END_OF_TEXT = "<|endoftext|>"
QWEN_SPECIAL_TOKENS = (QWEN_END_OF_TEXT, "<|im_start|>", "<|im_end|>", *(f"<|extra_{i}|>" for i in range(205)))

# QWen's dynamic-NTK and log-n scaling only act beyond this many tokens; below it the Qwen2 math is exact.
QWEN_EXACT_MAX_LENGTH = 2048

_LAYER_KEY = re.compile(r"^transformer\.h\.(\d+)\.(.+)$")
_SKIPPED_KEYS = {"lm_head.weight", "transformer.rotary_emb.inv_freq"}  # LM head unused; rotary table derivable


# ----------------------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------------------


def qwen2_config_from_qwen(qwen_config: Mapping[str, Any], dtype: torch.dtype = torch.bfloat16) -> Qwen2Config:
    """Translate a first-generation QWen ``config.json`` into the equivalent ``Qwen2Config``.

    Args:
        qwen_config: the parsed ``llm14b/config.json`` (``model_type`` ``qwen``).
        dtype: dtype recorded in the config (the dtype the weights are written in).
    """
    if qwen_config.get("model_type") not in (None, "qwen"):
        raise ValueError(
            f"config model_type is {qwen_config.get('model_type')!r}, expected 'qwen' (first-generation Qwen remote "
            "code); is this the llm14b/ folder of the official release?"
        )
    required = ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size", "vocab_size")
    missing = [name for name in required if name not in qwen_config]
    if missing:
        raise ValueError(f"QWen config lacks {missing}; pass the config.json shipped next to the weights")
    hidden, heads = int(qwen_config["hidden_size"]), int(qwen_config["num_attention_heads"])
    if float(qwen_config.get("rotary_pct", 1.0)) != 1.0:
        raise ValueError(f"rotary_pct = {qwen_config['rotary_pct']}: only full-head rotary (1.0) maps onto Qwen2")
    if int(qwen_config.get("kv_channels", hidden // heads)) * heads != hidden:
        raise ValueError(f"kv_channels * num_attention_heads must equal hidden_size {hidden}")
    return Qwen2Config(
        vocab_size=int(qwen_config["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(qwen_config["intermediate_size"]) // 2,  # QWen's config counts w1 and w2 together
        num_hidden_layers=int(qwen_config["num_hidden_layers"]),
        num_attention_heads=heads,
        num_key_value_heads=heads,
        hidden_act="silu",
        max_position_embeddings=int(qwen_config.get("max_position_embeddings", QWEN_EXACT_MAX_LENGTH)),
        rms_norm_eps=float(qwen_config.get("layer_norm_epsilon", 1e-6)),
        rope_parameters={"rope_type": "default", "rope_theta": float(qwen_config.get("rotary_emb_base", 10000.0))},
        tie_word_embeddings=bool(qwen_config.get("tie_word_embeddings", False)),
        use_sliding_window=False,
        attention_dropout=0.0,
        architectures=["Qwen2Model"],
        dtype=dtype,
    )


# ----------------------------------------------------------------------------------------------------------------------
# Key mapping
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    """One output tensor: ``source[rows]`` of a source tensor (all rows when ``rows`` is None)."""

    name: str
    source: str
    rows: tuple[int, int] | None
    shape: tuple[int, ...]


_LAYER_RENAMES = {
    "ln_1.weight": "input_layernorm.weight",
    "ln_2.weight": "post_attention_layernorm.weight",
    "attn.c_proj.weight": "self_attn.o_proj.weight",
    "mlp.w2.weight": "mlp.gate_proj.weight",  # QWen: w1(x) * silu(w2(x)) -> w2 is the gate
    "mlp.w1.weight": "mlp.up_proj.weight",
    "mlp.c_proj.weight": "mlp.down_proj.weight",
}


def _targets_for(source: str, shape: tuple[int, ...]) -> list[_Target]:
    """Map one QWen key (and its shape) to its Qwen2Model key(s); raises on keys Qwen2 cannot represent."""
    if source in _SKIPPED_KEYS:
        return []
    if source == "transformer.wte.weight":
        return [_Target("embed_tokens.weight", source, None, shape)]
    if source == "transformer.ln_f.weight":
        return [_Target("norm.weight", source, None, shape)]
    match = _LAYER_KEY.match(source)
    if match:
        layer, rest = match.groups()
        prefix = f"layers.{layer}."
        if rest in _LAYER_RENAMES:
            return [_Target(prefix + _LAYER_RENAMES[rest], source, None, shape)]
        if rest in ("attn.c_attn.weight", "attn.c_attn.bias"):
            if shape[0] % 3:
                raise ValueError(f"{source} has {shape[0]} rows, not divisible into q/k/v thirds")
            third = shape[0] // 3
            kind = rest.rsplit(".", 1)[1]
            return [
                _Target(
                    f"{prefix}self_attn.{part}_proj.{kind}", source, (i * third, (i + 1) * third), (third, *shape[1:])
                )
                for i, part in enumerate("qkv")
            ]
    raise ValueError(
        f"QWen checkpoint key {source!r} has no Qwen2 counterpart (biases on c_proj/MLP need no_bias=true); "
        "is this a first-generation Qwen checkpoint?"
    )


# ----------------------------------------------------------------------------------------------------------------------
# Source checkpoint reading (one tensor at a time)
# ----------------------------------------------------------------------------------------------------------------------


def _source_files(qwen_dir: Path) -> list[Path]:
    """Weight files of the QWen folder, safetensors preferred, in shard order."""
    for pattern in ("*.safetensors", "*.bin"):
        files = sorted(path for path in qwen_dir.glob(pattern) if path.is_file())
        if files:
            return files
    raise FileNotFoundError(f"no *.safetensors or *.bin weights in {qwen_dir}; pass the llm14b/ folder")


@contextlib.contextmanager
def _open_source(path: Path) -> Iterator[tuple[dict[str, tuple[int, ...]], Callable[[str], torch.Tensor]]]:
    """Yield ``({name: shape}, read(name))`` for one source shard without loading it whole.

    safetensors shards are re-opened per tensor, so the memory map of the previous tensor is released; ``.bin``
    shards are memory-mapped with ``torch.load(weights_only=True, mmap=True)`` for the time of the shard.
    """
    if path.suffix == ".safetensors":
        with safe_open(path, framework="pt") as handle:
            shapes = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}

        def read_safetensors(name: str) -> torch.Tensor:
            with safe_open(path, framework="pt") as shard:
                return shard.get_tensor(name)

        yield shapes, read_safetensors
        return
    from .checkpoint import load_torch_state_dict

    state = load_torch_state_dict(path)
    yield {name: tuple(tensor.shape) for name, tensor in state.items()}, state.__getitem__
    del state


# ----------------------------------------------------------------------------------------------------------------------
# Streaming safetensors writer
# ----------------------------------------------------------------------------------------------------------------------


def _shard_is_complete(path: Path, names: list[str]) -> bool:
    """Whether ``path`` already holds exactly ``names`` (a finished shard of an earlier, interrupted run)."""
    if not path.is_file():
        return False
    with safe_open(path, framework="pt") as handle:
        return set(handle.keys()) == set(names)


# ----------------------------------------------------------------------------------------------------------------------
# Weight conversion
# ----------------------------------------------------------------------------------------------------------------------


def _expected_shapes(config: Qwen2Config) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = Qwen2Model(config)
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def convert_qwen_checkpoint(
    qwen_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    dtype: torch.dtype = torch.bfloat16,
    show_progress: bool = True,
) -> Qwen2Config:
    """Convert the weights of a first-generation QWen folder into a ``Qwen2Model`` folder, streaming.

    Writes ``config.json``, ``model-XXXXX-of-YYYYY.safetensors`` (one output shard per source shard) and
    ``model.safetensors.index.json``; ``Qwen2Model.from_pretrained(output_dir)`` loads the result. Everything is
    validated (unknown, missing, duplicate keys and shapes) before any tensor is written. Re-running after an
    interruption skips the shards already written.

    Args:
        qwen_dir: the official ``llm14b/`` folder (``config.json`` + ``*.safetensors`` or ``*.bin`` shards).
        output_dir: destination folder (created).
        dtype: output dtype (bfloat16 as the official encoder runs, or float32).
        show_progress: show a tqdm bar over tensors.

    Returns:
        The written ``Qwen2Config``.
    """
    qwen_dir, output_dir = Path(qwen_dir), Path(output_dir)
    if dtype not in SAFETENSORS_DTYPES:
        raise ValueError(f"dtype {dtype} is not supported; use torch.bfloat16, torch.float16 or torch.float32")
    config_path = qwen_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} does not exist; pass the llm14b/ folder of the official release")
    config = qwen2_config_from_qwen(json.loads(config_path.read_text()), dtype=dtype)
    expected = _expected_shapes(config)
    files = _source_files(qwen_dir)

    # Plan every output tensor from the source headers alone, and validate the whole plan before writing.
    plan: list[tuple[Path, list[_Target]]] = []
    for path in files:
        with _open_source(path) as (shapes, _):
            plan.append((path, [target for name, shape in shapes.items() for target in _targets_for(name, shape)]))
    planned = [target for _, targets in plan for target in targets]
    names = [target.name for target in planned]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    missing = sorted(set(expected) - set(names))
    if duplicates:
        raise ValueError(f"QWen checkpoint maps several tensors onto {duplicates[:5]}; remove duplicate shards")
    if missing:
        raise ValueError(f"QWen checkpoint is missing tensors for {missing[:5]} ({len(missing)} in all)")
    for target in planned:
        if target.shape != expected[target.name]:
            raise ValueError(
                f"QWen tensor {target.source} gives {target.name} of shape {target.shape}, the config "
                f"({config_path}) implies {expected[target.name]}"
            )

    output_dir.mkdir(parents=True, exist_ok=True)
    weight_map: dict[str, str] = {}
    progress = tqdm(total=len(planned), desc="Qwen -> Qwen2", unit="tensor", disable=not show_progress)
    for index, (path, targets) in enumerate(plan, start=1):
        shard = output_dir / f"model-{index:05d}-of-{len(plan):05d}.safetensors"
        weight_map.update({target.name: shard.name for target in targets})
        if _shard_is_complete(shard, [target.name for target in targets]):
            progress.update(len(targets))
            continue
        writer = StreamingSafetensorsWriter(shard, [(target.name, target.shape) for target in targets], dtype)
        with _open_source(path) as (_, read):
            loaded_name, loaded = None, None
            for target in targets:
                if target.source != loaded_name:  # q/k/v share one read of c_attn
                    loaded_name, loaded = target.source, read(target.source)
                tensor = loaded if target.rows is None else loaded[target.rows[0] : target.rows[1]]
                writer.write(target.name, tensor)
                progress.update(1)
            del loaded
        writer.close()
    progress.close()

    index_path = output_dir / "model.safetensors.index.json"
    total_size = sum(
        int(torch.Size(shape).numel()) * torch.empty((), dtype=dtype).element_size() for shape in expected.values()
    )
    write_json_atomic(
        index_path, {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
    )
    config.save_pretrained(output_dir)
    return config


# ----------------------------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------------------------


def read_tiktoken_ranks(path: str | os.PathLike) -> dict[bytes, int]:
    """Parse a ``qwen.tiktoken`` file (``base64(token) rank`` per line) and check the ranks are 0..n-1.

    Args:
        path: the ``qwen.tiktoken`` file.
    """
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except ValueError as error:
                raise ValueError(f"{path}:{line_number} is not 'base64token rank': {line[:60]!r}") from error
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"{path}: BPE ranks are not the contiguous range 0..{len(ranks) - 1}")
    return ranks


class _RanksConverter(TikTokenConverter):
    """``TikTokenConverter`` fed with already-parsed ranks.

    tiktoken's own loader caches files by path in a temporary folder, which would return stale ranks when a
    different vocabulary later sits at the same path.
    """

    def __init__(self, ranks: dict[bytes, int]):
        super().__init__(vocab_file="<parsed ranks>", pattern=QWEN_PATTERN, extra_special_tokens=QWEN_SPECIAL_TOKENS)
        self._ranks = ranks

    def load_tiktoken_bpe(self, tiktoken_url: str) -> dict[bytes, int]:
        return self._ranks


def convert_qwen_tokenizer(
    tiktoken_path: str | os.PathLike, output_dir: str | os.PathLike | None = None
) -> PreTrainedTokenizerFast:
    """Build a fast tokenizer giving the same ids as ``QWenTokenizer`` (special tokens included).

    Args:
        tiktoken_path: the ``qwen.tiktoken`` BPE file.
        output_dir: when given, the tokenizer is saved there (``tokenizer.json`` + config).

    Returns:
        The tokenizer; ``eos_token`` = ``pad_token`` = ``<|endoftext|>`` (id = number of BPE ranks).
    """
    ranks = read_tiktoken_ranks(tiktoken_path)
    backend = _RanksConverter(ranks).converted()
    backend.normalizer = normalizers.NFC()  # QWenTokenizer normalises every text to NFC first
    for offset, token in enumerate(QWEN_SPECIAL_TOKENS):
        if backend.token_to_id(token) != len(ranks) + offset:
            raise ValueError(
                f"{token} got id {backend.token_to_id(token)}, expected {len(ranks) + offset}; "
                f"the BPE file {tiktoken_path} must not contain special-token strings"
            )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=QWEN_END_OF_TEXT,
        pad_token=QWEN_END_OF_TEXT,
        model_max_length=QWEN_EXACT_MAX_LENGTH,
        padding_side="right",
        truncation_side="right",
    )
    if output_dir is not None:
        tokenizer.save_pretrained(output_dir)
        _record_portable_tokenizer_class(Path(output_dir) / "tokenizer_config.json")
    return tokenizer


# transformers 5 records its tokenizers-backed class as "TokenizersBackend", a name transformers 4 lacks;
# "PreTrainedTokenizerFast" names the same class in both.
PORTABLE_TOKENIZER_CLASS = "PreTrainedTokenizerFast"


def _record_portable_tokenizer_class(config_path: Path) -> None:
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = PORTABLE_TOKENIZER_CLASS
    write_json_atomic(config_path, config)
