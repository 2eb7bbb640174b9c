"""Peak memory of the streaming QWen -> Qwen2 conversion on a synthetic checkpoint with real 14B layer sizes.

A QWen-14B layer (hidden 5120, SwiGLU 13696, 40 heads) is ~630 MB in bfloat16; the synthetic checkpoint has a
reduced vocabulary and only a few layers so it fits a laptop, yet every tensor has its real size. Each variant runs
in a fresh subprocess and reports its peak RSS (``VmHWM``) and the RSS right after imports:

* streaming: ``convert_qwen_checkpoint`` (this project);
* naive: load every shard into one state dict, build the renamed/split Qwen2 dict, ``save_file`` it.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_convert_qwen.py [--layers 2] [--vocab 8192] [--dtype bf16]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

HIDDEN, HEADS, INTERMEDIATE = 5120, 40, 13696

CHILD = r"""
import sys, time, json
from pathlib import Path
import torch
from safetensors.torch import load_file, save_file
from diffusers_vincie.conversion.qwen import convert_qwen_checkpoint, _targets_for
def high_water_kb():
    # VmHWM: peak RSS of this process image (ru_maxrss would inherit the parent's peak across fork/exec).
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
after_imports = high_water_kb()
mode, source, out, dtype = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), getattr(torch, sys.argv[4])
start = time.perf_counter()
if mode == "streaming":
    convert_qwen_checkpoint(source, out, dtype=dtype, show_progress=False)
else:
    state = {}
    for shard in sorted(source.glob("*.safetensors")):
        state.update(load_file(shard))
    converted = {}
    for name, tensor in state.items():
        for target in _targets_for(name, tuple(tensor.shape)):
            rows = target.rows
            converted[target.name] = (tensor if rows is None else tensor[rows[0]:rows[1]]).to(dtype).contiguous()
    out.mkdir(parents=True, exist_ok=True)
    save_file(converted, out / "model.safetensors")
seconds = time.perf_counter() - start
print(json.dumps({"after_imports_kb": after_imports,
                  "peak_kb": high_water_kb(), "seconds": seconds}))
"""


def write_synthetic_qwen(folder: Path, layers: int, vocab: int) -> tuple[int, int]:
    """Write a bf16 QWen folder, one shard per layer; returns (total bytes, largest tensor bytes)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "model_type": "qwen",
        "hidden_size": HIDDEN,
        "num_attention_heads": HEADS,
        "num_hidden_layers": layers,
        "intermediate_size": 2 * INTERMEDIATE,
        "kv_channels": HIDDEN // HEADS,
        "vocab_size": vocab,
        "layer_norm_epsilon": 1e-6,
        "rotary_emb_base": 10000,
        "rotary_pct": 1.0,
        "no_bias": True,
    }
    (folder / "config.json").write_text(json.dumps(config))

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, dtype=torch.bfloat16)

    shards = [
        {
            "transformer.wte.weight": rand(vocab, HIDDEN),
            "transformer.ln_f.weight": rand(HIDDEN),
            "lm_head.weight": rand(vocab, HIDDEN),
        }
    ]
    for i in range(layers):
        p = f"transformer.h.{i}."
        shards.append(
            {
                p + "ln_1.weight": rand(HIDDEN),
                p + "ln_2.weight": rand(HIDDEN),
                p + "attn.c_attn.weight": rand(3 * HIDDEN, HIDDEN),
                p + "attn.c_attn.bias": rand(3 * HIDDEN),
                p + "attn.c_proj.weight": rand(HIDDEN, HIDDEN),
                p + "mlp.w1.weight": rand(INTERMEDIATE, HIDDEN),
                p + "mlp.w2.weight": rand(INTERMEDIATE, HIDDEN),
                p + "mlp.c_proj.weight": rand(HIDDEN, INTERMEDIATE),
            }
        )
    total, largest = 0, 0
    for index, shard in enumerate(shards, start=1):
        save_file(shard, folder / f"model-{index:05d}-of-{len(shards):05d}.safetensors")
        sizes = [t.numel() * t.element_size() for t in shard.values()]
        total, largest = total + sum(sizes), max(largest, *sizes)
        del shard
    return total, largest


def run_child(mode: str, source: Path, out: Path, dtype: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(source), str(out), dtype], check=True, capture_output=True, text=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    args = parser.parse_args()
    mib = 1024 * 1024
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        start = time.perf_counter()
        total, largest = write_synthetic_qwen(tmp_path / "llm14b", args.layers, args.vocab)
        print(
            f"synthetic checkpoint: {args.layers} layers, vocab {args.vocab}, {total / mib:.0f} MiB bf16, "
            f"largest tensor {largest / mib:.0f} MiB (written in {time.perf_counter() - start:.1f}s)"
        )
        results = {}
        for mode in ("streaming", "naive"):
            results[mode] = run_child(mode, tmp_path / "llm14b", tmp_path / f"out-{mode}", args.dtype)
            r = results[mode]
            print(
                f"{mode:9s}: peak RSS {r['peak_kb'] / 1024:7.0f} MiB, after imports {r['after_imports_kb'] / 1024:5.0f}"
                f" MiB, conversion adds {(r['peak_kb'] - r['after_imports_kb']) / 1024:6.0f} MiB, {r['seconds']:.1f}s"
            )
        added = {mode: (r["peak_kb"] - r["after_imports_kb"]) * 1024 for mode, r in results.items()}
        print(
            f"streaming added memory / checkpoint size: {added['streaming'] / total:.2f}; "
            f"/ largest tensor: {added['streaming'] / largest:.2f}; "
            f"naive / streaming added memory: {added['naive'] / max(added['streaming'], 1):.1f}x"
        )


if __name__ == "__main__":
    main()
