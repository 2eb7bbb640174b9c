#!/usr/bin/env python
"""Flow-matching loss of a trained pipeline on sessions datasets, with the same draws for every dataset.

The leading indicator of whether a model is short of data: its loss on the sessions it trained on against its
loss on held-out sessions built the same way (new videos, same build). The sequence plan, the times and the noise
of the ``i``-th sample depend only on ``i`` and the draw, never on the dataset, so the datasets differ only in their
sessions. Sequences are drawn as the next-image task of training (1-5 turns, block-causal, no mask frames, no text
dropout), frames resized to the pipeline's resolution. Usage::

    OMP_NUM_THREADS=1 python benchmarks/session_loss.py --model runs/vincie_shapes_video/train/phase4/pipeline \\
        --sessions train=runs/vincie_shapes_video/sessions --sessions held_out=runs/held_out/sessions \\
        --num_sessions 400 --draws 3

Prints one line per dataset: mean loss over its batches of 16 and the standard error of that mean.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from diffusers_vincie.training.data import INTERPOLATION_MODES
from diffusers_vincie.utils.cli import UsageError, run_cli

BATCH = 16


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="A trained pipeline folder (model_index.json).")
    parser.add_argument(
        "--sessions",
        action="append",
        required=True,
        metavar="NAME=PATH",
        help="A sessions dataset (build_sessions.py output) and its label; repeat for each dataset.",
    )
    parser.add_argument("--num_sessions", type=int, default=400, help="Sessions drawn from each dataset.")
    parser.add_argument("--draws", type=int, default=3, help="Sequence/time/noise draws per session.")
    parser.add_argument(
        "--image_interpolation_mode",
        choices=sorted(INTERPOLATION_MODES),
        default="bicubic",
        help="The filter that resizes the frames, as in train_vincie.py (the run's own for a fair comparison).",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not (Path(args.model) / "model_index.json").is_file():
        raise UsageError(f"--model: {args.model} has no model_index.json; give a saved pipeline folder.")
    datasets = {}
    for text in args.sessions:
        name, sep, path = text.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"--sessions: expected NAME=PATH, got {text!r}.")
        if name in datasets:
            raise UsageError(f"--sessions: the name {name!r} is given twice; give each dataset its own name.")
        if not Path(path).exists():
            raise UsageError(f"--sessions: {path} does not exist; give a folder of build_sessions.py.")
        datasets[name] = path
    args.datasets = datasets
    for flag, value in (("--num_sessions", args.num_sessions), ("--draws", args.draws)):
        if value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}.")
    return args


def main(args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    from diffusers_vincie import VincieInContextPipeline
    from diffusers_vincie.data.loaders import load_sessions
    from diffusers_vincie.training import (
        PromptEmbeddingCache,
        SequenceConfig,
        VincieTrainingModule,
        build_training_batch,
        encode_plan_frames,
        training_loss,
    )
    from diffusers_vincie.training.data import SessionRowsDataset
    from diffusers_vincie.training.export import pipeline_default_resolution

    pipe = VincieInContextPipeline.from_pretrained(args.model)
    resolution = pipeline_default_resolution(args.model)
    module = VincieTrainingModule(pipe.transformer.eval(), "block_causal")
    text = PromptEmbeddingCache(pipe.text_encoder.eval(), pipe.tokenizer)
    config = SequenceConfig(
        layout="block_causal",
        min_turns=1,
        max_turns=5,
        mask_probability=0.0,
        drop_current_frame=0.0,
        task_weights={"next_image": 1.0, "current_mask": 0.0, "next_mask": 0.0},
    )
    results = {}
    for name, path in args.datasets.items():
        rows = load_sessions(path)
        picked = np.random.default_rng(args.seed).permutation(len(rows))[: args.num_sessions]
        sessions = SessionRowsDataset(
            rows, config, seed=args.seed, resolution=resolution, interpolation=args.image_interpolation_mode
        )
        decoded = [sessions.session(int(index)) for index in picked]  # once, for every draw
        losses = []
        with torch.no_grad():
            for draw in range(args.draws):
                for start in range(0, len(decoded), BATCH):
                    # planned from the position i, not the session: the same plans, times and noise for every set
                    planned = [
                        sessions.plan(session, start + i, draw)
                        for i, session in enumerate(decoded[start : start + BATCH])
                    ]
                    latents = encode_plan_frames(planned, pipe.vae)
                    batch = build_training_batch(planned, latents, text, config, seed=args.seed, text_dropout=0.0)
                    losses.append(training_loss(module, batch).item())
        results[name] = (float(np.mean(losses)), float(np.std(losses) / np.sqrt(len(losses))))
        print(
            f"{name}: {len(decoded)} sessions x {args.draws} draws, loss {results[name][0]:.4f} "
            f"+- {results[name][1]:.4f}",
            flush=True,
        )
    return results


if __name__ == "__main__":
    main(run_cli(parse_args, "session_loss.py"))
