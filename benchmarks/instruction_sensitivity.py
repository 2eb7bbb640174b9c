#!/usr/bin/env python
"""Instruction sensitivity of a pixel-space VINCIE model: does one swapped word change its output?

On held-out synthetic sessions (seeds from 20,000,000: disjoint from training, 0..999,999, and from ShapesBench,
10,000,000 + i), the first edit is run with the same source image and noise seed under the true instruction and
under one with a colour word, a shape word or the op swapped; the table gives the fraction of pixels that change
by more than 32 levels, next to the fraction for the same instruction under another noise seed
(``diffusers_vincie.evaluation.instruction_sensitivity``). ~15 s for 20 sessions on one CPU core.

Usage::

    python benchmarks/instruction_sensitivity.py                               # the shipped default model
    python benchmarks/instruction_sensitivity.py --model runs/arm/pipeline --output runs/arm/sensitivity.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from diffusers_vincie.default_model import DEFAULT_SAMPLING, load_default_pipeline
from diffusers_vincie.evaluation.instruction_sensitivity import (
    SENSITIVITY_SEED,
    instruction_sensitivity,
    sensitivity_sessions,
)

REPO = Path(__file__).resolve().parents[1]
WORLD_CONFIG = REPO / "training_scripts" / "configs" / "vincie_shapes_world.json"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="Pipeline folder (default: the shipped default model).")
    parser.add_argument("--num_sessions", type=int, default=20)
    parser.add_argument("--seed", type=int, default=SENSITIVITY_SEED, help="Seed of session 0 (held out).")
    parser.add_argument("--world_config", type=Path, default=WORLD_CONFIG, help="ShapesWorld JSON of training.")
    parser.add_argument("--num_inference_steps", type=int, default=DEFAULT_SAMPLING["num_inference_steps"])
    parser.add_argument(
        "--guidance_scale",
        type=float,
        default=DEFAULT_SAMPLING["guidance_scale"],
        help="CFG scale (default: the shipped model's; 1 skips the negative pass).",
    )
    parser.add_argument("--threshold", type=int, default=32, help="Per-channel change that counts a pixel.")
    parser.add_argument("--output", type=Path, default=None, help="Write the result as JSON here too.")
    args = parser.parse_args(argv)
    if args.num_sessions < 1:
        parser.print_usage(sys.stderr)
        parser.exit(2, f"--num_sessions must be >= 1, got {args.num_sessions}.\n")
    if not 0 <= args.threshold < 255:
        parser.exit(2, f"--threshold must lie in [0, 255), got {args.threshold}.\n")

    world = json.loads(args.world_config.read_text())
    sessions = sensitivity_sessions(args.num_sessions, args.seed, **world)
    pipe = load_default_pipeline(args.model)
    start = time.perf_counter()
    result = instruction_sensitivity(
        pipe,
        sessions,
        colours=world.get("colours", ("red", "green", "blue", "yellow", "purple")),
        shapes=world.get("shapes", ("circle", "square", "triangle")),
        sampling={"num_inference_steps": args.num_inference_steps, "guidance_scale": args.guidance_scale},
        threshold=args.threshold,
    )
    result["seconds"] = time.perf_counter() - start
    result["config"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.output.with_name(f".{args.output.name}.tmp")
        tmp.write_text(json.dumps(result, indent=2))
        os.replace(tmp, args.output)
    print(
        "| swap | colour | shape | op | noise seed |\n|---|---|---|---|---|\n"
        f"| changed pixels (> {args.threshold}) | {result['colour']:.4f} | {result['shape']:.4f} | "
        f"{result['op']:.4f} | {result['noise']:.4f} |"
    )
    print(f"{args.num_sessions} sessions, {result['seconds']:.0f} s")
    return result


if __name__ == "__main__":
    main()
