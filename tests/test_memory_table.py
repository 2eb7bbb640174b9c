"""docs/memory.md's memory table is what benchmarks/memory_table.py computes from meta-device models, and those
counts agree with the official key list (3B DiT, 3D VAE taps summed) and with closed-form parameter counts."""

import json
import math
from pathlib import Path

import pytest
from conftest import REPO, load_script, official_fixtures_dir

REFERENCE = official_fixtures_dir().parent.parent / "reference"


@pytest.fixture(scope="module")
def table():
    return load_script(REPO / "benchmarks" / "memory_table.py", "memory_table", register=True)  # a dataclass inside


@pytest.fixture(scope="module")
def rows(table):
    return {(r.model, r.name): r for r in table.components()}


def test_docs_show_the_computed_table(table):
    docs = (Path(REPO) / "docs" / "memory.md").read_text()
    assert table.markdown() in docs, "docs/memory.md is stale: paste `python benchmarks/memory_table.py` into it"


def test_3b_dit_matches_the_official_key_list(rows):
    keys = json.loads((REFERENCE / "official-3b-dit-keys.json").read_text())
    official = sum(math.prod(shape) for name, shape in keys.items() if not name.endswith("rope.rope.freqs"))
    assert rows["VINCIE-3B", "DiT"].parameters == official == 3_391_803_456


def test_7b_dit_matches_the_official_key_list(rows):
    keys = json.loads((REFERENCE / "official-7b-dit-keys.json").read_text())
    official = sum(math.prod(shape) for name, shape in keys.items() if not name.endswith("rope.rope.freqs"))
    assert rows["VINCIE-7B", "DiT"].parameters == official == 7_310_132_784


def test_3b_vae_matches_the_official_keys_on_one_frame(rows):
    """On one frame each 3D kernel (t, h, w) acts as its 2D sum over t: 2D parameters = official ones with the
    temporal taps folded, less the depth-to-space up-samplers that the stock 2D VAE replaces when they are the
    identity (converting.md)."""
    keys = json.loads((REFERENCE / "official-vae-keys.json").read_text())
    folded = sum(
        math.prod(s[:2] + s[3:]) if len(s) == 5 else math.prod(s) for n, s in keys.items() if "upscale_conv" not in n
    )
    assert rows["VINCIE-3B", "VAE (2D, one frame)"].parameters == folded


def test_7b_vae_matches_the_official_keys_on_one_frame(rows):
    """On one frame each 3D kernel acts as its 2D sum over t, and of each up-sampler's ``upscale_conv`` only the
    first temporal copy (4C of its rows) is used: 2D parameters = official ones folded that way."""
    keys = json.loads((REFERENCE / "official-7b-vae-keys.json").read_text())

    def one_frame(name: str, shape: list) -> int:
        if "upscale_conv" in name:
            shape = [4 * keys[name.replace(".bias", ".weight")][1]] + shape[1:]
        return math.prod(shape[:2] + shape[3:]) if len(shape) == 5 else math.prod(shape)

    folded = sum(one_frame(name, shape) for name, shape in keys.items())
    assert rows["VINCIE-7B", "VAE (2D, one frame)"].parameters == folded == 154_598_627


def test_text_encoders_match_closed_form_counts(rows, table):
    h, layers, ffn, vocab = 5120, 40, 13696, 152064  # Qwen-14B as Qwen2: q/k/v with bias, o without, SwiGLU
    per_layer = 4 * h * h + 3 * h + 3 * h * ffn + 2 * h
    assert rows["VINCIE-3B", "text encoder (Qwen-14B)"].parameters == vocab * h + layers * per_layer + h
    t5 = table.UL2_ENCODER
    d, inner = t5["d_model"], t5["num_heads"] * t5["d_kv"]
    per_block = 4 * d * inner + 3 * d * t5["d_ff"] + 2 * d  # attention, gated FFN, two layer norms
    relative_bias = 32 * t5["num_heads"]  # first block's relative position buckets
    expected = t5["vocab_size"] * d + t5["num_layers"] * per_block + relative_bias + d
    assert rows["VINCIE-7B", "text encoder (Flan-UL2 T5)"].parameters == expected


def test_quantized_sizes_and_offload_peaks(rows, table):
    qwen = rows["VINCIE-3B", "text encoder (Qwen-14B)"]
    assert qwen.gib("nf4") < qwen.gib("int8") < qwen.gib("bf16") == pytest.approx(2 * qwen.parameters / 2**30)
    embedding = 152064 * 5120  # not an nn.Linear: stays bf16 when quantized
    assert qwen.parameters - qwen.linear_weights == embedding + 40 * (3 * 5120 + 2 * 5120) + 5120
    three_b = [r for r in rows.values() if r.model == "VINCIE-3B"]
    everything, model_offload, sequential = table.offload_peaks(three_b, "bf16")
    assert everything == pytest.approx(sum(r.gib("bf16") for r in three_b))
    assert model_offload == pytest.approx(qwen.gib("bf16"))  # one component at a time: the text encoder
    assert sequential == pytest.approx(2 * embedding / 2**30)  # the largest leaf: Qwen's token embedding


def test_space_readme_quotes_the_table(rows, table):
    readme = (Path(REPO) / "space" / "README.md").read_text()
    three_b = [r for r in rows.values() if r.model == "VINCIE-3B"]
    everything, model_offload, sequential = table.offload_peaks(three_b, "bf16")
    for gib in (everything, model_offload, sequential):
        assert f"{gib:.1f} GiB" in readme
    assert "suggested_hardware: l40sx1" in readme and everything < 40 * 1e9 / 2**30  # fits the 48 GB card
