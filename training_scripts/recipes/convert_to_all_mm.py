#!/usr/bin/env python
"""Turns a pipeline's transformer into an all-MM one (every block with its own text weights), same function.

A shared block runs the text tokens through the image stream's projections, MLP and modulation offsets; an MM
block has its own copies. Starting the new text weights as copies of the shared ones keeps the model's output
exactly, so a model trained with ``num_mm_layers < num_layers`` can continue training with separate text weights
in every block (the layout of the early experiment in ``shared/reference/small-model-experiment.md``)::

    python training_scripts/recipes/convert_to_all_mm.py --model src/diffusers_vincie/default_model \\
        --output runs/all_mm_init
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import torch


def all_mm_transformer(transformer):
    """A ``VincieTransformer`` with ``num_mm_layers = num_layers`` computing what ``transformer`` computes."""
    from diffusers_vincie.models.transformer_vincie import VincieTransformer

    config = {k: v for k, v in transformer.config.items() if not k.startswith("_")}
    shared = range(config["num_mm_layers"], config["num_layers"])
    config["num_mm_layers"] = config["num_layers"]
    converted = VincieTransformer(**config)
    state = dict(transformer.state_dict())
    for index in shared:
        block = f"transformer_blocks.{index}."
        for key in [k for k in state if k.startswith(block)]:
            name = key[len(block) :]
            for source, copy in (
                ("attn.video_stream.", "attn.text_projections."),
                ("ff.", "ff_context."),
                ("scale_shift_table", "scale_shift_table_context"),
            ):
                if name.startswith(source):
                    state[block + copy + name[len(source) :]] = state[key].clone()
    converted.load_state_dict(state, strict=True)
    return converted.to(transformer.dtype)


def convert_pipeline(model: Path, output: Path) -> Path:
    """Copies the pipeline folder ``model`` to ``output`` with an all-MM transformer (``output`` must not exist)."""
    from diffusers_vincie.models.transformer_vincie import VincieTransformer

    if output.exists():
        raise FileExistsError(f"--output {output} exists; remove it or pick another folder.")
    transformer = VincieTransformer.from_pretrained(model, subfolder="transformer")
    staging = output.parent / f".{output.name}.tmp"
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(model, staging, ignore=shutil.ignore_patterns("__pycache__", "*.py", "*.png", "README.md"))
    shutil.rmtree(staging / "transformer")
    with torch.no_grad():
        all_mm_transformer(transformer).save_pretrained(staging / "transformer", safe_serialization=True)
    os.replace(staging, output)
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="Pipeline folder to convert.")
    parser.add_argument("--output", type=Path, required=True, help="New pipeline folder (must not exist).")
    args = parser.parse_args()
    if not (args.model / "transformer").is_dir():
        parser.exit(2, f"--model {args.model}: no transformer/ folder (give a pipeline folder).\n")
    print(convert_pipeline(args.model, args.output))


if __name__ == "__main__":
    main()
