"""5-turn editing session: independent official-style calls vs the session API (tiny random model, CPU).

    python benchmarks/bench_session.py [--steps 10] [--resolution 64]

(a) official style: turn k is a fresh call that re-encodes the source, every earlier output (from its PNG) and
    every instruction, as the official generator does; (b) one `VincieEditingSession`: each instruction encoded
    once, each image once, outputs kept as latents. Reports per-turn time, text-encoder and VAE-encoder calls, and
    the share of turn time spent outside the transformer.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import PIL.Image
import torch

from diffusers_vincie.testing import tiny_pipeline

INSTRUCTIONS = ["add a red circle", "make it bigger", "move it left", "change it to blue", "remove the square"]


class Counters:
    """Counts encoder calls and accumulates transformer time with hooks."""

    def __init__(self, pipe):
        self.text = self.vae = 0
        self.transformer_seconds = 0.0
        pipe.text_encoder.register_forward_pre_hook(lambda *a: self._inc("text"))
        pipe.vae.encoder.register_forward_pre_hook(lambda *a: self._inc("vae"))
        pipe.transformer.register_forward_pre_hook(self._start)
        pipe.transformer.register_forward_hook(self._stop)

    def _inc(self, name):
        setattr(self, name, getattr(self, name) + 1)

    def _start(self, *args):
        self._t0 = time.perf_counter()

    def _stop(self, *args):
        self.transformer_seconds += time.perf_counter() - self._t0

    def reset(self):
        self.text = self.vae = 0
        self.transformer_seconds = 0.0


def official_style(pipe, image, steps, resolution, generator):
    outputs = []
    for k in range(len(INSTRUCTIONS)):
        result = pipe(
            [image, *outputs],
            INSTRUCTIONS[: k + 1],
            num_inference_steps=steps,
            resolution=resolution,
            generator=generator,
        ).images[-1]
        outputs.append(result)
    return outputs


def session_style(pipe, image, steps, resolution, generator):
    session = pipe.start_session(image, resolution=resolution, generator=generator)
    return [session.edit(text, num_inference_steps=steps, generator=generator) for text in INSTRUCTIONS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = tiny_pipeline(hidden_size=256, num_layers=4, num_attention_heads=4, attention_head_dim=64, rope_dim=48)
    pipe.set_progress_bar_config(disable=True)
    counters = Counters(pipe)
    image = PIL.Image.fromarray((np.random.RandomState(0).rand(96, 96, 3) * 255).astype(np.uint8))
    print(f"threads={args.threads} steps={args.steps} resolution={args.resolution} turns={len(INSTRUCTIONS)}")
    with torch.no_grad():
        session_style(pipe, image, 1, args.resolution, torch.Generator().manual_seed(0))  # warm-up
        for name, run in (("official-style calls", official_style), ("session API", session_style)):
            counters.reset()
            start = time.perf_counter()
            run(pipe, image, args.steps, args.resolution, torch.Generator().manual_seed(0))
            total = time.perf_counter() - start
            outside = 1 - counters.transformer_seconds / total
            print(
                f"{name:>21}: {total / len(INSTRUCTIONS) * 1e3:7.1f} ms/turn, text-encoder calls {counters.text:3d}, "
                f"VAE-encoder calls {counters.vae:3d}, time outside the transformer {outside:6.1%}"
            )


if __name__ == "__main__":
    main()
