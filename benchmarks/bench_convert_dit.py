"""Peak memory of the streaming VINCIE-7B DiT conversion on a synthetic ``ema.pth`` with the real 7B layer sizes.

The real 7B DiT (hidden 3584, attention 32 x 128 = 4096, SwiGLU 9728, time embedding 21504, MLP text projection
from 4096) is 29 GB in float32; the synthetic checkpoint keeps every tensor at its real size but has only a few
blocks, so it fits a laptop. Each variant runs in a fresh subprocess and reports, after imports and at peak:

* ``VmHWM``: peak resident memory, including the pages of the memory-mapped checkpoint that were read (file-backed,
  reclaimable page cache);
* peak ``RssAnon`` (sampled every 5 ms): memory the conversion itself allocates.

Variants:

* streaming: ``convert_official_dit`` (this project: one converted tensor at a time);
* in-memory: ``load_official_dit`` then ``save_pretrained`` (the whole converted model at once).

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_convert_dit.py [--layers 2] [--mm-layers 1]``
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

HIDDEN, HEADS, HEAD_DIM, SWIGLU, TEXT, LATENT, TURNS = 3584, 32, 128, 9728, 4096, 48, 64

CHILD = r"""
import json, sys, threading, time
from pathlib import Path
import torch
from diffusers_vincie.conversion.dit import convert_official_dit, load_official_dit

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

peak_anon = [0]
done = threading.Event()
def sample():
    while not done.is_set():
        peak_anon[0] = max(peak_anon[0], status("RssAnon"))
        time.sleep(0.005)

after_imports = {"hwm_kb": status("VmHWM"), "anon_kb": status("RssAnon")}
mode, source, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
start = time.perf_counter()
if mode == "streaming":
    convert_official_dit(source, out)
else:
    load_official_dit(source).save_pretrained(out)
seconds = time.perf_counter() - start
done.set()
sampler.join()
peak_anon[0] = max(peak_anon[0], status("RssAnon"))
print(json.dumps({"after_imports": after_imports, "peak_hwm_kb": status("VmHWM"), "peak_anon_kb": peak_anon[0],
                  "seconds": seconds}))
"""


def official_7b_shapes(layers: int, mm_layers: int) -> dict[str, tuple[int, ...]]:
    """Official ``ema.pth`` key -> shape at the real 7B sizes, with ``layers`` blocks of which ``mm_layers`` MM."""
    shapes = {
        "vid_in.img_proj.weight": (HIDDEN, 2 * LATENT + 1),
        "vid_in.img_proj.bias": (HIDDEN,),
        "txt_in.0.0.0.weight": (TEXT, TEXT),
        "txt_in.0.0.0.bias": (TEXT,),
        "txt_in.0.0.2.weight": (HIDDEN, TEXT),
        "txt_in.0.0.2.bias": (HIDDEN,),
        "txt_in.0.1.weight": (HIDDEN,),
        "emb_in.proj_in.weight": (HIDDEN, 256),
        "emb_in.proj_in.bias": (HIDDEN,),
        "emb_in.proj_hid.weight": (HIDDEN, HIDDEN),
        "emb_in.proj_hid.bias": (HIDDEN,),
        "emb_in.proj_out.weight": (6 * HIDDEN, HIDDEN),
        "emb_in.proj_out.bias": (6 * HIDDEN,),
        "vid_out_norm.weight": (HIDDEN,),
        "vid_out_ada.out_shift": (HIDDEN,),
        "vid_out_ada.out_scale": (HIDDEN,),
        "vid_out.img_proj.weight": (LATENT, HIDDEN),
        "vid_out.img_proj.bias": (LATENT,),
        "prompt_id_embedding.embedding.weight": (TURNS, TEXT),
    }
    inner = HEADS * HEAD_DIM
    for i in range(layers):
        for tag in ("vid", "txt") if i < mm_layers else ("all",):
            p = f"blocks.{i}."
            shapes.update(
                {
                    p + f"attn.proj_qkv.{tag}.weight": (3 * inner, HIDDEN),
                    p + f"attn.proj_out.{tag}.weight": (HIDDEN, inner),
                    p + f"attn.proj_out.{tag}.bias": (HIDDEN,),
                    p + f"attn.norm_q.{tag}.weight": (HEAD_DIM,),
                    p + f"attn.norm_k.{tag}.weight": (HEAD_DIM,),
                    p + f"mlp.{tag}.proj_in_gate.weight": (SWIGLU, HIDDEN),
                    p + f"mlp.{tag}.proj_in.weight": (SWIGLU, HIDDEN),
                    p + f"mlp.{tag}.proj_out.weight": (HIDDEN, SWIGLU),
                    **{
                        p + f"ada.{tag}.{layer}_{slot}": (HIDDEN,)
                        for layer in ("attn", "mlp")
                        for slot in ("shift", "scale", "gate")
                    },
                }
            )
        shapes[f"blocks.{i}.attn.rope.rope.freqs"] = (20,)
    return shapes


def write_synthetic_ema(path: Path, layers: int, mm_layers: int) -> tuple[int, int]:
    """Writes a float32 ``ema.pth``; returns (total bytes, largest tensor bytes)."""
    state = {}
    for name, shape in official_7b_shapes(layers, mm_layers).items():
        state[name] = torch.randn(shape) * 0.02
    state.update({k: 10000.0 ** (-torch.arange(0, 40, 2)[:20].float() / 40) for k in state if k.endswith("freqs")})
    sizes = [t.numel() * t.element_size() for t in state.values()]
    torch.save(state, path)
    return sum(sizes), max(sizes)


def run_child(mode: str, source: Path, out: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(source), str(out)], check=True, capture_output=True, text=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--mm-layers", type=int, default=1)
    args = parser.parse_args()
    mib = 1024 * 1024
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        start = time.perf_counter()
        total, largest = write_synthetic_ema(tmp_path / "ema.pth", args.layers, args.mm_layers)
        print(
            f"synthetic ema.pth: {args.layers} blocks ({args.mm_layers} MM), {total / mib:.0f} MiB float32, "
            f"largest tensor {largest / mib:.0f} MiB (written in {time.perf_counter() - start:.1f}s)"
        )
        for mode in ("streaming", "in-memory"):
            r = run_child(mode, tmp_path / "ema.pth", tmp_path / f"out-{mode}")
            added_hwm = (r["peak_hwm_kb"] - r["after_imports"]["hwm_kb"]) * 1024
            added_anon = (r["peak_anon_kb"] - r["after_imports"]["anon_kb"]) * 1024
            print(
                f"{mode:9s}: added peak RssAnon {added_anon / mib:6.0f} MiB ({added_anon / largest:.2f} x largest "
                f"tensor), added VmHWM {added_hwm / mib:6.0f} MiB ({added_hwm / total:.2f} x checkpoint), "
                f"{r['seconds']:.1f}s"
            )


if __name__ == "__main__":
    main()
