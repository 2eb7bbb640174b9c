#!/usr/bin/env python
"""LoRA supervised fine-tuning of a VINCIE pipeline's transformer on pairwise or multi-turn edit data (PEFT).

Same data, sequences, loss and accelerate loop as ``train_vincie.py``; only LoRA adapters are trained (the base can
be loaded in bf16, ``--base_dtype bf16``) and the result is ``<output_dir>/pytorch_lora_weights.safetensors`` in the
diffusers LoRA format, loaded by ``VincieInContextPipeline.load_lora_weights(output_dir)``.

Example (MagicBrush-style pairs on a released checkpoint)::

    accelerate launch training_scripts/train_vincie_lora.py \\
        --pretrained_model_name_or_path <converted VINCIE pipeline> \\
        --dataset_name <pairwise dataset> --dataset_format pairwise --resolution 512 \\
        --attention_layout full --mask_probability 0 --max_turns 5 \\
        --lora_rank 32 --base_dtype bf16 --mixed_precision bf16 --output_dir runs/lora
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import train_vincie  # noqa: E402  (the shared training loop)

from diffusers_vincie.training.guards import check_lora_flags  # noqa: E402
from diffusers_vincie.utils.cli import UsageError, run_cli  # noqa: E402

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def add_lora_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("lora")
    group.add_argument("--lora_rank", type=int, default=16)
    group.add_argument("--lora_alpha", type=float, default=None, help="Default: the rank (scale 1).")
    group.add_argument("--lora_dropout", type=float, default=0.0)
    group.add_argument(
        "--lora_target_modules",
        type=str,
        default="to_q,to_k,to_v,to_out",
        help="Comma-separated module-name suffixes to adapt (attention projections by default; add "
        "'proj,net.2' for the MLPs).",
    )
    group.add_argument(
        "--base_dtype",
        choices=("fp32", "bf16", "fp16"),
        default="fp32",
        help="dtype of the frozen base weights (the adapters stay fp32).",
    )


def parse_args(argv=None) -> argparse.Namespace:
    parser = train_vincie.build_parser(__doc__.splitlines()[0])
    add_lora_args(parser)
    parser.set_defaults(learning_rate=1e-4, text_dropout=0.1)
    args = parser.parse_args(argv)
    check_lora_flags(args.lora_rank, args.lora_alpha, args.lora_dropout)  # cheap, before the model folder is read
    if not [m for m in args.lora_target_modules.split(",") if m.strip()]:
        raise UsageError("--lora_target_modules is empty; name at least one module (e.g. to_q).")
    return train_vincie.validate_args(args)


@dataclass
class LoraSetup:
    """Hooks of the shared loop: freeze the base and add adapters; save only the adapters."""

    weight_name = LORA_WEIGHT_NAME  # the run's final result in --output_dir

    def prepare_transformer(self, args, transformer):
        from diffusers.training_utils import cast_training_params
        from peft import LoraConfig

        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.base_dtype]
        transformer.requires_grad_(False).to(dtype)
        targets = [m.strip() for m in args.lora_target_modules.split(",") if m.strip()]
        config = LoraConfig(
            r=args.lora_rank,
            lora_alpha=args.lora_alpha or args.lora_rank,
            lora_dropout=args.lora_dropout,
            init_lora_weights="gaussian",
            target_modules=targets,
        )
        try:
            transformer.add_adapter(config)
        except ValueError as error:  # PEFT: a target module that the transformer does not have
            raise UsageError(f"--lora_target_modules {targets} matched no module of the transformer ({error}).")
        cast_training_params(transformer, dtype=torch.float32)  # adapters train in fp32 on a low-precision base
        trainable = sum(p.numel() for p in transformer.parameters() if p.requires_grad)
        if trainable == 0:
            raise UsageError(f"--lora_target_modules {targets} matched no module of the transformer.")
        return transformer

    def save(self, args, transformer, adapter_weights: dict) -> Path:
        """Writes ``adapter_weights`` (gathered whole, ``gather_trained_transformer``) of ``transformer``'s adapter."""
        from peft.utils import get_peft_model_state_dict

        from diffusers_vincie.pipelines import VincieInContextPipeline

        layers = get_peft_model_state_dict(transformer, state_dict=adapter_weights)
        VincieInContextPipeline.save_lora_weights(
            args.output_dir, transformer_lora_layers=layers, weight_name=LORA_WEIGHT_NAME, safe_serialization=True
        )
        return Path(args.output_dir) / LORA_WEIGHT_NAME


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.pretrained_model_name_or_path is None:
        raise UsageError("LoRA fine-tuning needs --pretrained_model_name_or_path (the pipeline to adapt).")
    os.makedirs(args.output_dir, exist_ok=True)
    return train_vincie.main(args, lora=LoraSetup())


if __name__ == "__main__":
    run_cli(main, "train_vincie_lora.py")
