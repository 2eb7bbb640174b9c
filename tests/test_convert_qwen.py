"""First-generation Qwen -> transformers Qwen2Model + fast tokenizer, against an independent reference."""

from __future__ import annotations

import base64
import json
import math
import unicodedata
from collections import Counter
from pathlib import Path

import pytest
import regex
import tiktoken
import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, Qwen2Model

from diffusers_vincie.conversion.qwen import convert_qwen_checkpoint, convert_qwen_tokenizer

# QWenTokenizer's pre-tokenisation regex and special tokens (written here from the spec, not imported).
PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [f"<|extra_{i}|>" for i in range(205)]

CORPUS = (
    "Based on <IMG0>, make the sky blue. Output <IMG1>: the quick brown fox jumps over the lazy dog. "
    "Change the colour of the car to red and add a cat on the sofa. Remove the person in the background. "
    "Based on <IMG1>, turn the photo into a watercolour painting. Output <IMG2>: 1234 5678 !!"
)
TEXTS = [
    "Based on <IMG0>, make the sky blue. Output <IMG1>: ",
    "a cafe\u0301 with 42 tables\n\nand   spaces",  # decomposed é -> NFC
    "Remove the lazy dog<|endoftext|>then <|extra_3|> more",
    "ünïcödé 汉字 text, THE Quick's fox'll",
]

HIDDEN, HEADS, LAYERS, FFN, VOCAB = 32, 4, 2, 48, 512


# ----------------------------------------------------------------------------------------------------------------------
# Tiny tiktoken vocabulary (trained here) and the reference tokenizer
# ----------------------------------------------------------------------------------------------------------------------


def _train_tiny_bpe(merges: int = 40) -> dict[bytes, int]:
    # Single bytes in a scrambled order (like qwen.tiktoken, whose first ranks are not in byte order).
    order = sorted(range(256), key=lambda b: (b * 37) % 256)
    ranks = {bytes([b]): rank for rank, b in enumerate(order)}
    words = [[bytes([c]) for c in piece.encode()] for piece in regex.findall(PATTERN, CORPUS)]
    for _ in range(merges):
        pairs = Counter((w[i], w[i + 1]) for w in words for i in range(len(w) - 1))
        if not pairs:
            break
        (left, right), _count = pairs.most_common(1)[0]
        ranks[left + right] = len(ranks)
        merged_words = []
        for word in words:
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == left and word[i + 1] == right:
                    out.append(left + right)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged_words.append(out)
        words = merged_words
    return ranks


@pytest.fixture(scope="module")
def tiktoken_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[bytes, int]]:
    ranks = _train_tiny_bpe()
    path = tmp_path_factory.mktemp("qwen") / "qwen.tiktoken"
    path.write_text("".join(f"{base64.b64encode(token).decode()} {rank}\n" for token, rank in ranks.items()))
    return path, ranks


def _reference_ids(ranks: dict[bytes, int], text: str) -> list[int]:
    encoding = tiktoken.Encoding(
        "tiny-qwen",
        pat_str=PATTERN,
        mergeable_ranks=ranks,
        special_tokens={token: len(ranks) + i for i, token in enumerate(SPECIALS)},
    )
    return encoding.encode(unicodedata.normalize("NFC", text), allowed_special="all")


def test_tokenizer_ids_match_tiktoken(tiktoken_file: tuple[Path, dict[bytes, int]], tmp_path: Path) -> None:
    path, ranks = tiktoken_file
    assert len(ranks) > 256  # merges were learned, so BPE merging is exercised
    convert_qwen_tokenizer(path, tmp_path / "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tokenizer")
    assert tokenizer.convert_tokens_to_ids("<|endoftext|>") == len(ranks)
    assert tokenizer.convert_tokens_to_ids("<|extra_204|>") == len(ranks) + 207
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == len(ranks)
    for text in TEXTS:
        ours = tokenizer(text, add_special_tokens=True)["input_ids"]
        assert ours == _reference_ids(ranks, text), text
        assert tokenizer.decode(ours) == unicodedata.normalize("NFC", text)


def test_tokenizer_rejects_non_contiguous_ranks(tmp_path: Path) -> None:
    path = tmp_path / "qwen.tiktoken"
    path.write_text(f"{base64.b64encode(b'a').decode()} 0\n{base64.b64encode(b'b').decode()} 5\n")
    with pytest.raises(ValueError, match="contiguous"):
        convert_qwen_tokenizer(path)


# ----------------------------------------------------------------------------------------------------------------------
# Tiny QWen checkpoint and an independent reference forward (spec 8.1)
# ----------------------------------------------------------------------------------------------------------------------


def _qwen_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * scale

    state = {"transformer.wte.weight": randn(VOCAB, HIDDEN), "transformer.ln_f.weight": 1 + randn(HIDDEN, scale=0.2)}
    for i in range(LAYERS):
        p = f"transformer.h.{i}."
        state[p + "ln_1.weight"] = 1 + randn(HIDDEN, scale=0.2)
        state[p + "attn.c_attn.weight"] = randn(3 * HIDDEN, HIDDEN, scale=HIDDEN**-0.5)
        state[p + "attn.c_attn.bias"] = randn(3 * HIDDEN, scale=0.1)
        state[p + "attn.c_proj.weight"] = randn(HIDDEN, HIDDEN, scale=HIDDEN**-0.5)
        state[p + "ln_2.weight"] = 1 + randn(HIDDEN, scale=0.2)
        state[p + "mlp.w1.weight"] = randn(FFN, HIDDEN, scale=HIDDEN**-0.5)
        state[p + "mlp.w2.weight"] = randn(FFN, HIDDEN, scale=HIDDEN**-0.5)
        state[p + "mlp.c_proj.weight"] = randn(HIDDEN, FFN, scale=FFN**-0.5)
    state["lm_head.weight"] = randn(VOCAB, HIDDEN)
    return state


def _qwen_config() -> dict:
    return {
        "model_type": "qwen",
        "architectures": ["QWenLMHeadModel"],
        "hidden_size": HIDDEN,
        "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS,
        "intermediate_size": 2 * FFN,  # QWen counts w1 + w2
        "kv_channels": HIDDEN // HEADS,
        "vocab_size": VOCAB,
        "layer_norm_epsilon": 1e-6,
        "rotary_emb_base": 10000,
        "rotary_pct": 1.0,
        "seq_length": 2048,
        "max_position_embeddings": 8192,
        "no_bias": True,
    }


def _reference_forward(state: dict[str, torch.Tensor], ids: list[int]) -> torch.Tensor:
    """QWenModel last hidden state, float64: RMSNorm, fused c_attn + bias, rotate-half rotary, w1 * silu(w2)."""
    w = {k: v.double() for k, v in state.items()}
    head_dim = HIDDEN // HEADS

    def rms(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * weight

    def rotate_half(x: torch.Tensor) -> torch.Tensor:
        first, second = x.chunk(2, dim=-1)
        return torch.cat([-second, first], dim=-1)

    n = len(ids)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    angles = torch.outer(torch.arange(n, dtype=torch.float64), inv_freq)
    cos, sin = torch.cat([angles, angles], -1).cos()[:, None], torch.cat([angles, angles], -1).sin()[:, None]
    causal = torch.ones(n, n, dtype=torch.bool).tril()

    x = w["transformer.wte.weight"][torch.tensor(ids)]
    for i in range(LAYERS):
        p = f"transformer.h.{i}."
        h = rms(x, w[p + "ln_1.weight"])
        qkv = h @ w[p + "attn.c_attn.weight"].T + w[p + "attn.c_attn.bias"]
        q, k, v = (t.view(n, HEADS, head_dim) for t in qkv.split(HIDDEN, dim=-1))
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(head_dim)
        attention = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        context = torch.einsum("hqk,khd->qhd", attention, v).reshape(n, HIDDEN)
        x = x + context @ w[p + "attn.c_proj.weight"].T
        h = rms(x, w[p + "ln_2.weight"])
        gated = (h @ w[p + "mlp.w1.weight"].T) * torch.nn.functional.silu(h @ w[p + "mlp.w2.weight"].T)
        x = x + gated @ w[p + "mlp.c_proj.weight"].T
    return rms(x, w["transformer.ln_f.weight"])


def _write_qwen_folder(folder: Path, state: dict[str, torch.Tensor], fmt: str = "safetensors") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(_qwen_config()))
    keys = sorted(state)
    shards = [keys[: len(keys) // 2], keys[len(keys) // 2 :]]
    for index, shard_keys in enumerate(shards, start=1):
        part = {k: state[k].contiguous() for k in shard_keys}
        if fmt == "safetensors":
            save_file(part, folder / f"model-{index:05d}-of-00002.safetensors")
        else:
            torch.save(part, folder / f"pytorch_model-{index:05d}-of-00002.bin")
    return folder


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_converted_qwen2_matches_reference_forward(
    tiktoken_file: tuple[Path, dict[bytes, int]], tmp_path: Path, fmt: str
) -> None:
    path, ranks = tiktoken_file
    state = _qwen_state_dict()
    source = _write_qwen_folder(tmp_path / "llm14b", state, fmt)
    config = convert_qwen_checkpoint(source, tmp_path / "text_encoder", dtype=torch.float32, show_progress=False)
    assert config.intermediate_size == FFN and config.num_key_value_heads == HEADS

    model = Qwen2Model.from_pretrained(tmp_path / "text_encoder", dtype=torch.float32).eval()
    tokenizer = convert_qwen_tokenizer(path)
    for text in TEXTS[:3]:
        ids = tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]  # the official EOD-appended prompt
        assert ids[:-1] == _reference_ids(ranks, text)
        with torch.no_grad():
            ours = model(input_ids=torch.tensor([ids])).last_hidden_state[0]
        expected = _reference_forward(state, ids)
        torch.testing.assert_close(ours.double(), expected, atol=2e-5, rtol=1e-5)


def test_swapping_gate_and_up_is_detected(tmp_path: Path) -> None:
    """Guard for the reference itself: with w1/w2 exchanged in the source, the outputs must differ."""
    state = _qwen_state_dict()
    swapped = dict(state)
    for i in range(LAYERS):
        p = f"transformer.h.{i}.mlp."
        swapped[p + "w1.weight"], swapped[p + "w2.weight"] = state[p + "w2.weight"], state[p + "w1.weight"]
    convert_qwen_checkpoint(_write_qwen_folder(tmp_path / "src", swapped), tmp_path / "out", torch.float32, False)
    model = Qwen2Model.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    ids = [5, 17, 300, 42]
    with torch.no_grad():
        ours = model(input_ids=torch.tensor([ids])).last_hidden_state[0].double()
    assert (ours - _reference_forward(state, ids)).abs().max() > 1e-3


def test_bf16_output_and_resume(tmp_path: Path) -> None:
    source = _write_qwen_folder(tmp_path / "llm14b", _qwen_state_dict())
    out = tmp_path / "text_encoder"
    convert_qwen_checkpoint(source, out, dtype=torch.bfloat16, show_progress=False)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    }
    assert "lm_head.weight" not in index["weight_map"]
    first = out / "model-00001-of-00002.safetensors"
    stamp = first.stat().st_mtime_ns
    (out / "model-00002-of-00002.safetensors").unlink()  # simulate an interrupted run
    convert_qwen_checkpoint(source, out, dtype=torch.bfloat16, show_progress=False)
    assert first.stat().st_mtime_ns == stamp  # finished shard kept
    model = Qwen2Model.from_pretrained(out)
    assert model.dtype == torch.bfloat16
    torch.testing.assert_close(
        model.layers[1].self_attn.k_proj.bias,
        _qwen_state_dict()["transformer.h.1.attn.c_attn.bias"][HIDDEN : 2 * HIDDEN].bfloat16(),
    )


# ----------------------------------------------------------------------------------------------------------------------
# Refusals
# ----------------------------------------------------------------------------------------------------------------------


def test_unknown_key_is_refused(tmp_path: Path) -> None:
    state = _qwen_state_dict()
    state["transformer.h.0.mlp.c_proj.bias"] = torch.zeros(HIDDEN)
    with pytest.raises(ValueError, match="mlp.c_proj.bias.*no Qwen2 counterpart"):
        convert_qwen_checkpoint(_write_qwen_folder(tmp_path / "src", state), tmp_path / "out", show_progress=False)


def test_missing_layer_is_refused(tmp_path: Path) -> None:
    state = {k: v for k, v in _qwen_state_dict().items() if not k.startswith("transformer.h.1.mlp.w1")}
    with pytest.raises(ValueError, match="missing tensors.*layers.1.mlp.up_proj"):
        convert_qwen_checkpoint(_write_qwen_folder(tmp_path / "src", state), tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out").exists()  # validated before anything was written


def test_shape_mismatch_is_refused(tmp_path: Path) -> None:
    state = _qwen_state_dict()
    state["transformer.h.0.mlp.w2.weight"] = torch.zeros(FFN + 1, HIDDEN)
    with pytest.raises(ValueError, match="gate_proj.weight of shape"):
        convert_qwen_checkpoint(_write_qwen_folder(tmp_path / "src", state), tmp_path / "out", show_progress=False)


def test_wrong_model_type_is_refused(tmp_path: Path) -> None:
    source = _write_qwen_folder(tmp_path / "src", _qwen_state_dict())
    (source / "config.json").write_text(json.dumps({**_qwen_config(), "model_type": "llama"}))
    with pytest.raises(ValueError, match="model_type"):
        convert_qwen_checkpoint(source, tmp_path / "out", show_progress=False)
