"""VincieTransformer forward speed on CPU as a fraction of this machine's large-matmul throughput.

    python benchmarks/bench_transformer.py [--threads 2] [--repeats 3]

Mid-size config (hidden 1024, 16 heads, 4 layers), one 5-frame session at 32x32 latents (1280 video tokens) plus
~100 text tokens. Achieved GFLOP/s = analytic FLOPs of the forward / time; the reference is a 4096^3 matmul in
the same dtype measured in the same run (machines are noisy: only the ratio is comparable). Also reports the
padding overhead of a mixed batch: per-token layers run on packed tokens and attention runs per sample (no padding).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from diffusers_vincie.models import VincieTransformer
from diffusers_vincie.sequence import pack_sessions

CONFIG = dict(
    latent_channels=16,
    hidden_size=1024,
    num_attention_heads=16,
    attention_head_dim=64,
    num_layers=4,
    num_mm_layers=2,
    text_embed_dim=1024,
    rope_dim=48,
    max_turns=16,
)


def forward_flops(model: VincieTransformer, video_tokens: list[int], text_tokens: list[int]) -> float:
    """Multiply-adds x 2 of the linear layers and attention (elementwise work ignored)."""
    cfg = model.config
    d, inner = cfg.hidden_size, cfg.num_attention_heads * cfg.attention_head_dim
    mlp = model.transformer_blocks[0].ff.net[2].in_features
    tokens = sum(video_tokens) + sum(text_tokens)
    per_token_layer = 2 * (3 * d * inner + inner * d + 3 * d * mlp)
    attention = sum(4 * (v + t) ** 2 * inner for v, t in zip(video_tokens, text_tokens))
    embed = 2 * sum(video_tokens) * (model.patch_embed.in_features * d + d * model.proj_out.out_features)
    embed += 2 * sum(text_tokens) * cfg.text_embed_dim * d
    return cfg.num_layers * (tokens * per_token_layer + attention) + embed


def matmul_gflops(dtype: torch.dtype, n: int = 4096, repeats: int = 3) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def session_inputs(frames: int, size: int, text: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(frames, size, size, 33, generator=g), torch.randn(text, 1024, generator=g)


def bench_forward(model, sessions, dtype, repeats):
    video, shapes, text, lengths = pack_sessions([s[0] for s in sessions], [s[1] for s in sessions])
    t = torch.full((len(sessions),), 500.0)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        model(video, shapes, text, lengths, t)
        return min(_timed(lambda: model(video, shapes, text, lengths, t)) for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bf16", action="store_true", help="also time bf16 autocast (slow on CPUs without AMX)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = VincieTransformer(**CONFIG).eval()
    p = model.config.patch_size
    flags = set(open("/proc/cpuinfo").read().split()) if os.path.exists("/proc/cpuinfo") else set()
    print(f"threads={args.threads} torch={torch.__version__} amx={'amx_bf16' in flags} avx512={'avx512f' in flags}")

    session = [session_inputs(5, 32, 100)]
    vid_tokens, txt_tokens = [5 * (32 // p) ** 2], [100]
    flops = forward_flops(model, vid_tokens, txt_tokens)
    for dtype in (torch.float32, torch.bfloat16) if args.bf16 else (torch.float32,):
        peak = matmul_gflops(dtype, n=4096 if dtype == torch.float32 else 2048, repeats=args.repeats)
        seconds = bench_forward(model, session, dtype, args.repeats)
        achieved = flops / seconds / 1e9
        print(
            f"{str(dtype).split('.')[-1]:>8}: forward {seconds * 1e3:7.1f} ms, {achieved:7.1f} GFLOP/s, "
            f"matmul peak {peak:7.1f} GFLOP/s, ratio {achieved / peak:.2f}"
        )

    # mixed batch: padding overhead. Per-token layers run on the packed tokens and attention runs once per sample on
    # its exact joint sequence (full layout), so the work is the sum of the samples' work: padded/needed = 1.
    mixed = [session_inputs(5, 32, 100, 1), session_inputs(2, 16, 30, 2), session_inputs(3, 24, 60, 3)]
    vids, txts = [5 * 16 * 16, 2 * 8 * 8, 3 * 12 * 12], [100, 30, 60]
    seq = max(v + t for v, t in zip(vids, txts))
    print(
        f"mixed batch of 3 sessions: tokens {sum(vids) + sum(txts)} needed = computed; a padded batch would compute "
        f"{len(vids) * seq} tokens in attention ({len(vids) * seq / (sum(vids) + sum(txts)):.2f}x) and "
        f"{_padded_flops(model, vids, txts, seq) / forward_flops(model, vids, txts):.3f}x the FLOPs"
    )
    seconds_batch = bench_forward(model, mixed, torch.float32, args.repeats)
    seconds_single = sum(bench_forward(model, [s], torch.float32, args.repeats) for s in mixed)
    print(
        f"mixed batch fp32: batched {seconds_batch * 1e3:.1f} ms vs one by one {seconds_single * 1e3:.1f} ms "
        f"(measured overhead of batching {seconds_batch / seconds_single:.2f}x)"
    )


def _padded_flops(model, vids, txts, seq) -> float:
    cfg = model.config
    inner = cfg.num_attention_heads * cfg.attention_head_dim
    extra = cfg.num_layers * sum(4 * (seq**2 - (v + t) ** 2) * inner for v, t in zip(vids, txts))
    return forward_flops(model, vids, txts) + extra


if __name__ == "__main__":
    main()
