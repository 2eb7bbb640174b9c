"""Peak memory of the whole VINCIE-7B conversion command on a synthetic release folder with the real layer sizes.

The folder has the real 7B file layout (``ema.pth``, ``ema_vae.pth``, ``flan-ul2/``) and every tensor at its real
size, but few layers so that it fits a laptop's disk:

* ``ema.pth``: the DiT at its real widths (hidden 3584, SwiGLU 9728, text input 4096), ``--layers`` blocks;
* ``ema_vae.pth``: the whole real 7B VAE (every key and shape of the official file, 552.8M parameters, random
  values);
* ``flan-ul2/``: a T5 encoder at flan-ul2's sizes (d_model 4096, d_ff 16384 gated-SiLU, 16 heads of 256, vocabulary
  32128) with one layer, in safetensors, plus a small T5 tokenizer built in code.

Every file is float32. ``python -m diffusers_vincie.conversion --official DIR --out DIR`` runs in a fresh process
through a wrapper that records, after imports and then for each step of the conversion (text encoder, tokenizer,
VAE, transformer, scheduler, model index and card):

* the peak ``RssAnon`` (sampled every 5 ms): memory the conversion itself allocates;
* ``VmHWM``: peak resident memory, also counting the pages of the memory-mapped inputs that were read
  (file-backed, reclaimable page cache).

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_convert_7b.py [--layers 1 --mm-layers 1]``
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_convert_dit import official_7b_shapes  # noqa: E402

from diffusers_vincie.models.attention_vincie import VincieRotaryEmbedding  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VAE_KEYS = REPO.parent / "shared" / "reference" / "official-7b-vae-keys.json"
ROPE_FREQUENCIES = VincieRotaryEmbedding(120, 10000.0).inverse_frequencies()[0]  # the 7B DiT's deterministic buffer
# the public flan-ul2 encoder's sizes (its tensors are all of these shapes; only the layer count is cut)
FLAN_UL2 = {"d_model": 4096, "d_ff": 16384, "num_heads": 16, "d_kv": 256, "vocab_size": 32128}

WRAPPER = r"""
import json, sys, threading, time
import diffusers, transformers, safetensors.torch
from transformers import T5Config, T5EncoderModel, T5TokenizerFast
from diffusers_vincie.conversion import convert

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

after_imports = {"hwm_kb": status("VmHWM"), "anon_kb": status("RssAnon")}
window = {"anon_kb": 0}
done = threading.Event()
def sample():
    while not done.is_set():
        window["anon_kb"] = max(window["anon_kb"], status("RssAnon"))
        time.sleep(0.005)

steps = []
def measured(name, run):
    window["anon_kb"] = status("RssAnon")
    start = time.perf_counter()
    result = run()
    window["anon_kb"] = max(window["anon_kb"], status("RssAnon"))
    steps.append({"step": name, "peak_anon_kb": window["anon_kb"], "hwm_kb": status("VmHWM"),
                  "seconds": time.perf_counter() - start})
    return result

write_component = convert._write_component
convert._write_component = lambda out, name, save: measured(name, lambda: write_component(out, name, save))
for function in ("check_inputs", "write_model_index", "write_model_card"):
    original = getattr(convert, function)
    setattr(convert, function, lambda *a, _f=original, _n=function, **k: measured(_n, lambda: _f(*a, **k)))
sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
start = time.perf_counter()
code = convert.main(sys.argv[1:])
seconds = time.perf_counter() - start
done.set()
sampler.join()
print(json.dumps({"code": code, "after_imports": after_imports, "steps": steps, "peak_hwm_kb": status("VmHWM"),
                  "seconds": seconds}))
"""


def tensor_bytes(shape) -> int:
    return 4 * math.prod(shape)


def write_release(folder: Path, layers: int, mm_layers: int) -> dict[str, tuple[int, int, str]]:
    """Writes the synthetic release; returns, per input, (total bytes, largest tensor bytes, largest tensor name)."""
    from transformers import T5Config, T5EncoderModel

    from diffusers_vincie.testing import tiny_t5_tokenizer

    folder.mkdir()
    summary = {}
    for file, shapes in (
        ("ema.pth", official_7b_shapes(layers, mm_layers)),
        ("ema_vae.pth", {k: tuple(v) for k, v in json.loads(VAE_KEYS.read_text()).items()}),
    ):
        state = {name: torch.randn(shape) * 0.02 for name, shape in shapes.items()}
        state.update({name: ROPE_FREQUENCIES.clone() for name in state if name.endswith("rope.rope.freqs")})
        torch.save(state, folder / file)
        largest = max(shapes, key=lambda name: tensor_bytes(shapes[name]))
        summary[file] = (sum(map(tensor_bytes, shapes.values())), tensor_bytes(shapes[largest]), largest)
        del state
    config = T5Config(**FLAN_UL2, num_layers=1, feed_forward_proj="gated-silu", tie_word_embeddings=False)
    encoder = T5EncoderModel(config)
    encoder.save_pretrained(folder / "flan-ul2", safe_serialization=True)
    tiny_t5_tokenizer().save_pretrained(folder / "flan-ul2")
    shapes = {
        name: tuple(t.shape) for name, t in encoder.state_dict().items() if name != "encoder.embed_tokens.weight"
    }
    largest = max(shapes, key=lambda name: tensor_bytes(shapes[name]))
    summary["flan-ul2/"] = (sum(map(tensor_bytes, shapes.values())), tensor_bytes(shapes[largest]), largest)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=1, help="DiT blocks (default 1)")
    parser.add_argument("--mm-layers", type=int, default=1, help="of which MM blocks (default 1)")
    args = parser.parse_args()
    mib = 1024 * 1024
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        official, out = Path(tmp) / "VINCIE-7B", Path(tmp) / "converted"
        start = time.perf_counter()
        summary = write_release(official, args.layers, args.mm_layers)
        print(f"synthetic release written in {time.perf_counter() - start:.0f}s:")
        for name, (total, largest, largest_name) in summary.items():
            print(f"  {name}: {total / mib:.0f} MiB float32, largest tensor {largest_name} {largest / mib:.0f} MiB")
        largest = max(entry[1] for entry in summary.values())
        command = ["-m", "diffusers_vincie.conversion", "--official", str(official), "--out", str(out)]
        print("command: python " + " ".join(command))
        result = subprocess.run(
            [sys.executable, "-c", WRAPPER, *command[2:]], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            sys.exit(f"the conversion failed:\n{result.stderr[-3000:]}")
        report = json.loads(result.stdout.strip().splitlines()[-1])
        if report["code"] != 0:
            sys.exit(f"the conversion refused the folder:\n{result.stderr[-3000:]}")
        base = report["after_imports"]
        print(f"largest input tensor: {largest / mib:.0f} MiB; 2 x = {2 * largest / mib:.0f} MiB")
        print(f"after imports: RssAnon {base['anon_kb'] / 1024:.0f} MiB, VmHWM {base['hwm_kb'] / 1024:.0f} MiB")
        for step in report["steps"]:
            added = (step["peak_anon_kb"] - base["anon_kb"]) * 1024
            print(
                f"  {step['step']:18s} added peak RssAnon {added / mib:6.0f} MiB ({added / largest:.2f} x largest "
                f"tensor), VmHWM so far +{(step['hwm_kb'] - base['hwm_kb']) / 1024:.0f} MiB, {step['seconds']:.1f}s"
            )
        worst = max((s["peak_anon_kb"] - base["anon_kb"]) * 1024 for s in report["steps"])
        added_hwm = (report["peak_hwm_kb"] - base["hwm_kb"]) * 1024
        print(
            f"whole run: added peak RssAnon {worst / mib:.0f} MiB ({worst / largest:.2f} x largest tensor), added "
            f"VmHWM {added_hwm / mib:.0f} MiB, {report['seconds']:.0f}s; output "
            f"{sum(f.stat().st_size for f in out.rglob('*') if f.is_file()) / mib:.0f} MiB"
        )
        shutil.rmtree(out)


if __name__ == "__main__":
    main()
