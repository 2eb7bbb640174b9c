"""The prepared GPU check (run through `benchmarks/gpu_check.sh`): VINCIE-3B- or 7B-sized random weights on one GPU.

Sections, each timed and written to ``OUT/gpu_check.json`` and ``OUT/gpu_check.md`` as it finishes:

- ``forward``: one transformer forward of a 5-frame session at 256 px, per attention backend (native, flash,
  flash_varlen, where installed), with achieved TFLOP/s and MFU against the card's bf16 dense peak;
- ``sessions``: 5-turn sessions at 256 and 512 px, time per turn and peak GPU memory;
- ``compile``: `torch.compile` of the transformer, forward time before / after;
- ``first_block_cache``: FirstBlockCache speed-up and the difference it makes, when the transformer supports
  diffusers' `CacheMixin` (detected by feature; otherwise the section says it was skipped and why);
- ``offload``: one turn with `enable_model_cpu_offload` and with group offloading (block level), compared with
  the same turn without offloading.

A section that fails is recorded with its error and the check goes on; nothing is skipped silently. ``--tiny``
runs every section on a tiny random model on the CPU (in seconds; CUDA-only parts say they were skipped):
that is how the suite tests this script. ``--family 7b`` builds the VINCIE-7B family instead (``VINCIE_7B_CONFIG``,
`VincieAutoencoderKL7B`, a T5 encoder; tiny: `tiny_7b_family_pipeline`). The text encoder is 2 layers of the real
width (3B: Qwen2, 5120; 7B: T5, 4096): its depth does not change the DiT's work, and its memory is in docs/memory.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from diffusers_vincie import VincieInContextPipeline
from diffusers_vincie.conversion.dit import VINCIE_3B_CONFIG, VINCIE_7B_CONFIG
from diffusers_vincie.models import VincieAutoencoderKL7B
from diffusers_vincie.pipelines.sampling import official_scheduler
from diffusers_vincie.sequence import pack_sessions
from diffusers_vincie.testing import (
    tiny_7b_family_pipeline,
    tiny_t5_tokenizer,
    tiny_text_encoder,
    tiny_tokenizer,
    tiny_transformer,
    tiny_vae,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_transformer import forward_flops  # noqa: E402
from memory_table import VAE_3B, vae  # noqa: E402

BF16_DENSE_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}  # vendor spec sheets
BACKENDS = ("native", "flash", "flash_varlen")
INSTRUCTIONS = ["add a red hat", "make it snow", "turn the sky orange", "remove the car", "add a rainbow"]


class Check:
    """Collects section results and writes them after each section."""

    def __init__(self, out: Path, tiny: bool):
        self.out, self.results = out, {"tiny": tiny, "sections": {}}
        out.mkdir(parents=True, exist_ok=True)

    def section(self, name: str, fn) -> None:
        start = time.perf_counter()
        try:
            result = fn()
        except Exception as error:  # recorded, printed, and the check goes on
            result = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc(limit=8)}
        result["seconds"] = round(time.perf_counter() - start, 2)
        self.results["sections"][name] = result
        print(f"[{name}] {json.dumps({k: v for k, v in result.items() if k != 'traceback'})}", flush=True)
        self.write()

    def write(self) -> None:
        (self.out / "gpu_check.json").write_text(json.dumps(self.results, indent=2))
        lines = [f"# GPU check ({self.results['environment']['device']})", ""]
        for name, result in self.results["sections"].items():
            shown = {k: v for k, v in result.items() if k != "traceback"}
            lines.append(f"- **{name}**: `{json.dumps(shown)}`")
        (self.out / "gpu_check.md").write_text("\n".join(lines) + "\n")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats: int) -> float:
    """Median seconds of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build_7b_pipeline(tiny: bool, device: torch.device, dtype: torch.dtype) -> VincieInContextPipeline:
    """VINCIE-7B-sized random weights: the DiT of ``VINCIE_7B_CONFIG``, the 7B VAE, a 2-layer T5 encoder 4096 wide."""
    if tiny:
        pipe = tiny_7b_family_pipeline()
    else:
        from transformers import T5Config, T5EncoderModel

        tokenizer = tiny_t5_tokenizer()
        with torch.device(device):  # random weights made on the GPU: seconds, not minutes
            t5 = dict(d_model=4096, d_kv=256, d_ff=16384, num_layers=2, num_heads=16, feed_forward_proj="gated-silu")
            encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), **t5)).eval()
            config = {k: v for k, v in VINCIE_7B_CONFIG.items() if k not in ("latent_channels", "text_embed_dim")}
            transformer = tiny_transformer(48, 4096, **config)  # 7B sizes, modulation offsets random too
            autoencoder = VincieAutoencoderKL7B().eval()  # the official 7B VAE's sizes
        pipe = VincieInContextPipeline(transformer, autoencoder, encoder, tokenizer, official_scheduler(shift=10.0))
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, dtype)


def build_pipeline(tiny: bool, device: torch.device, dtype: torch.dtype) -> VincieInContextPipeline:
    tokenizer = tiny_tokenizer()
    if tiny:
        encoder = tiny_text_encoder(len(tokenizer))
        transformer, autoencoder = tiny_transformer(4, encoder.config.d_model), tiny_vae(4)
    else:
        from transformers import Qwen2Config, Qwen2Model

        with torch.device(device):  # random weights made on the GPU: seconds, not minutes
            encoder = Qwen2Model(
                Qwen2Config(
                    vocab_size=len(tokenizer),
                    hidden_size=5120,
                    intermediate_size=13696,
                    num_hidden_layers=2,
                    num_attention_heads=40,
                    num_key_value_heads=40,
                )
            ).eval()
            config = {k: v for k, v in VINCIE_3B_CONFIG.items() if k not in ("latent_channels", "text_embed_dim")}
            transformer = tiny_transformer(16, 5120, **config)  # 3B sizes, modulation offsets random too
            autoencoder = vae(**VAE_3B).eval()
    pipe = VincieInContextPipeline(transformer, autoencoder, encoder, tokenizer, official_scheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, dtype)


def source_image(size: int = 512) -> PIL.Image.Image:
    rng = np.random.default_rng(0)
    return PIL.Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def one_turn(pipe, resolution: int, steps: int, device) -> np.ndarray:
    session = pipe.start_session(source_image(), resolution=resolution, generator=torch.Generator().manual_seed(0))
    image = session.edit(INSTRUCTIONS[0], num_inference_steps=steps, generator=torch.Generator().manual_seed(1))
    synchronize(device)
    return np.asarray(image, dtype=np.float32)


def forward_inputs(pipe, frames: int, resolution: int, device, dtype):
    """A packed ``frames``-frame session at ``resolution`` px with 20 text tokens per frame, and its FLOPs."""
    t = pipe.transformer
    side = resolution // pipe.spatial_factor
    channels, text_dim = t.config.latent_channels, t.config.text_embed_dim
    g = torch.Generator().manual_seed(0)
    video = torch.randn(frames, side, side, 2 * channels + 1, generator=g)
    text = torch.randn(20 * frames, text_dim, generator=g)
    video, shapes, text, lengths = pack_sessions([video], [text])
    timestep = torch.full((1,), 500.0, device=device, dtype=dtype)
    tokens = frames * (side // t.config.patch_size) ** 2
    # sizes as host-side lists, as the sampler passes them: the forward then never syncs (and compiles fullgraph)
    inputs = (video.to(device, dtype), shapes.tolist(), text.to(device, dtype), lengths.tolist(), timestep)
    return inputs, forward_flops(t, [tokens], [20 * frames])


def forward_section(pipe, device, dtype, tiny):
    resolution = 64 if tiny else 256
    inputs, flops = forward_inputs(pipe, 5, resolution, device, dtype)
    peak = (
        next((v for k, v in BF16_DENSE_PEAK.items() if k in torch.cuda.get_device_name(device)), None)
        if device.type == "cuda"
        else None
    )
    result = {"frames": 5, "resolution": resolution, "tflop_per_forward": round(flops / 1e12, 4), "backends": {}}
    for backend in BACKENDS:
        try:
            pipe.transformer.set_attention_backend(backend)
            with torch.no_grad():
                seconds = timed(lambda: pipe.transformer(*inputs), device, 2 if tiny else 10)
        except Exception as error:  # e.g. the flash-attn package is not installed
            result["backends"][backend] = f"not run: {type(error).__name__}: {str(error)[:200]}"
            continue
        entry = {"ms": round(seconds * 1e3, 2), "tflops": round(flops / seconds / 1e12, 2)}
        if peak:
            entry["mfu"] = round(flops / seconds / peak, 3)
        result["backends"][backend] = entry
    pipe.transformer.set_attention_backend("native")
    return result


def sessions_section(pipe, device, tiny):
    result = {}
    for resolution in (32, 64) if tiny else (256, 512):
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        session = pipe.start_session(source_image(), resolution=resolution, generator=torch.Generator().manual_seed(0))
        turns = []
        for instruction in INSTRUCTIONS:
            start = time.perf_counter()
            session.edit(
                instruction, num_inference_steps=2 if tiny else 20, generator=torch.Generator().manual_seed(1)
            )
            synchronize(device)
            turns.append(round(time.perf_counter() - start, 3))
        entry = {"steps": 2 if tiny else 20, "seconds_per_turn": turns}
        if device.type == "cuda":
            entry["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        result[f"{resolution}px"] = entry
    return result


def offload_section(pipe, device, tiny):
    if device.type != "cuda":
        return {"skipped": "offloading moves weights between the CPU and a GPU: needs CUDA (tiny mode runs on CPU)"}
    from diffusers.hooks import apply_group_offloading

    resolution, steps = 256, 8
    reference = one_turn(pipe, resolution, steps, device)
    result = {}
    for name in ("enable_model_cpu_offload", "group_offload_block_level"):
        try:
            if name == "enable_model_cpu_offload":
                pipe.enable_model_cpu_offload(device=device)
            else:
                pipe.to("cpu")
                for component in (pipe.transformer, pipe.vae, pipe.text_encoder):
                    apply_group_offloading(
                        component, onload_device=device, offload_type="block_level", num_blocks_per_group=1
                    )
            start = time.perf_counter()
            image = one_turn(pipe, resolution, steps, device)
            result[name] = {
                "turn_seconds": round(time.perf_counter() - start, 2),
                "max_abs_diff_0_255": float(np.abs(image - reference).max()),
                "equal": bool(np.array_equal(image, reference)),
            }
        except Exception as error:
            result[name] = f"failed: {type(error).__name__}: {str(error)[:300]}"
        finally:
            if name == "enable_model_cpu_offload":  # group offloading comes last: nothing runs after it
                pipe.remove_all_hooks()
                pipe.to(device)
    return result


def compile_section(pipe, device, dtype, tiny):
    inputs, _ = forward_inputs(pipe, 5, 64 if tiny else 256, device, dtype)
    model = pipe.transformer
    with torch.no_grad():
        eager = timed(lambda: model(*inputs), device, 2 if tiny else 10)
        backend = "eager" if tiny else "inductor"  # tiny: exercise the path without generating kernels
        compiled = torch.compile(model, backend=backend, fullgraph=True)
        start = time.perf_counter()
        compiled(*inputs)
        synchronize(device)
        compile_seconds = time.perf_counter() - start
        fast = timed(lambda: compiled(*inputs), device, 2 if tiny else 10)
        difference = (compiled(*inputs).sample.float() - model(*inputs).sample.float()).abs().max().item()
    return {
        "backend": backend,
        "eager_ms": round(eager * 1e3, 2),
        "compiled_ms": round(fast * 1e3, 2),
        "speedup": round(eager / fast, 3),
        "compile_seconds": round(compile_seconds, 1),
        "max_abs_diff": difference,
    }


def first_block_cache_section(pipe, device, tiny):
    from diffusers.models.cache_utils import CacheMixin

    if not isinstance(pipe.transformer, CacheMixin):
        return {"skipped": "VincieTransformer is not a diffusers CacheMixin yet (no enable_cache); see issue 15"}
    from diffusers.hooks import FirstBlockCacheConfig

    resolution, steps = (32, 4) if tiny else (256, 20)
    start = time.perf_counter()
    reference = one_turn(pipe, resolution, steps, device)
    plain = time.perf_counter() - start
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.05))
    try:
        start = time.perf_counter()
        cached = one_turn(pipe, resolution, steps, device)
        fast = time.perf_counter() - start
    finally:
        pipe.transformer.disable_cache()
    return {
        "threshold": 0.05,
        "uncached_seconds": round(plain, 4),
        "cached_seconds": round(fast, 4),
        "speedup": round(plain / fast, 3),
        "mean_abs_diff_0_255": float(np.abs(cached - reference).mean()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--tiny", action="store_true", help="tiny random model on the CPU (the suite's smoke run)")
    parser.add_argument("--family", choices=("3b", "7b"), default="3b", help="model family whose sizes to build")
    args = parser.parse_args()
    if not args.tiny and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU here; use --tiny for the CPU smoke run", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    torch.manual_seed(0)
    check = Check(args.out, args.tiny)
    import diffusers
    import transformers

    check.results["environment"] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    pipe = (build_7b_pipeline if args.family == "7b" else build_pipeline)(args.tiny, device, dtype)
    check.results["environment"]["family"] = args.family
    check.results["environment"]["transformer_parameters"] = sum(p.numel() for p in pipe.transformer.parameters())
    check.section("forward", lambda: forward_section(pipe, device, dtype, args.tiny))
    check.section("sessions", lambda: sessions_section(pipe, device, args.tiny))
    check.section("compile", lambda: compile_section(pipe, device, dtype, args.tiny))
    check.section("first_block_cache", lambda: first_block_cache_section(pipe, device, args.tiny))
    check.section("offload", lambda: offload_section(pipe, device, args.tiny))  # last: it leaves hooks behind
    failed = [name for name, result in check.results["sections"].items() if "error" in result]
    print(f"gpu_check: wrote {args.out / 'gpu_check.json'}; sections with errors: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
