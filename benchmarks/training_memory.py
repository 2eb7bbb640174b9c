"""Training memory per GPU of VINCIE-3B and VINCIE-7B (the table in docs/training.md), and its check on tiny configs.

    python benchmarks/training_memory.py            # prints the markdown table of docs/training.md
    python benchmarks/training_memory.py --check    # formula vs measurement on tiny configs (tests run it)

* **States** (weights, gradients, AdamW moments, EMA) come from the parameter counts of the meta-device models of
  ``benchmarks/memory_table.py`` and ``diffusers_vincie.training.memory.training_state_bytes``: 16 bytes per trained
  parameter (+4 with EMA), fully sharded over the GPUs under FSDP2; LoRA keeps a bf16 base whole on every GPU.
* **Activations** are what autograd saves for the backward pass, measured in fp32 at the real block width: a
  transformer of 2 and of 3 blocks of the 3B / 7B width (small text and latent sizes) runs one forward on
  ``TOKENS`` tokens, and the difference is one block's bytes per token; bf16 autocast halves it. With gradient
  checkpointing a block keeps only its inputs (recomputed in the backward pass). The table scales it to one
  sample of ``SAMPLE_TOKENS`` tokens (a 5-turn session at 512 px: 6 frames of 32 x 32 tokens, about 200 text
  tokens) on every GPU. Attention probabilities are not saved by the flash / memory-efficient kernels of GPUs, so
  the measurement uses few tokens, where the attention matrices of the CPU kernel are negligible.
* ``--check`` runs a tiny model: one AdamW step with an EMA, whose held bytes must equal the formula exactly, and
  the saved activations of 2, 3 and 4 blocks, which must grow by the same amount per block (the per-block model).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import memory_table  # noqa: E402  (the meta-device parameter counts)

from diffusers_vincie.models import VincieTransformer  # noqa: E402
from diffusers_vincie.sequence import pack_sessions  # noqa: E402
from diffusers_vincie.training.memory import (  # noqa: E402
    measured_state_bytes,
    saved_activation_bytes,
    training_state_bytes,
)

GIB = 2**30
GPUS = 8
TOKENS = 256  # per measurement forward: attention matrices stay small next to the per-token tensors
SAMPLE_TOKENS = 6 * 32 * 32 + 200
LORA_RANK = 16
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out")


def _forward_backward_inputs(model: VincieTransformer, tokens: int, text_tokens: int = 16) -> dict:
    """One sample of ``tokens`` video tokens and ``text_tokens`` text tokens of one turn (so every weight is used)."""
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    side = int(tokens**0.5) * cfg.patch_size
    video = torch.randn(1, side, side, 2 * cfg.latent_channels + 1, generator=g)
    text = torch.randn(text_tokens, cfg.text_embed_dim, generator=g)
    video, shapes, text, lengths = pack_sessions([video], [text])
    return dict(
        hidden_states=video,
        video_shapes=shapes,
        encoder_hidden_states=text,
        text_lengths=lengths,
        timestep=torch.full((1,), 500.0),
        text_turn_ids=torch.zeros(text_tokens, dtype=torch.long),
    )


def build(config: dict, num_layers: int) -> VincieTransformer:
    torch.manual_seed(0)
    return VincieTransformer(**{**config, "num_layers": num_layers, "num_mm_layers": 1}).train()


def activation_bytes_per_token(model: VincieTransformer, checkpointing: bool, tokens: int = TOKENS) -> float:
    """fp32 bytes autograd saves per video token in one training forward of ``model``."""
    model.enable_gradient_checkpointing() if checkpointing else model.disable_gradient_checkpointing()
    inputs = _forward_backward_inputs(model, tokens)
    with saved_activation_bytes() as saved:
        model(**inputs).sample.float().square().mean()
    return saved["bytes"] / tokens


def per_block_activation_bytes(config: dict) -> dict[bool, float]:
    """One inner block's saved fp32 bytes per token at ``config``'s width, without and with gradient checkpointing
    (3 blocks minus 2: the first block has separate text weights and the last one skips the text stream's output,
    so both stay in)."""
    models = [build(config, n) for n in (2, 3)]
    return {
        ckpt: activation_bytes_per_token(models[1], ckpt) - activation_bytes_per_token(models[0], ckpt)
        for ckpt in (False, True)
    }


def _width_only(config: dict) -> dict:
    """``config`` with a small text side and latent size: the block width and heads stay, the memory shrinks."""
    return {**config, "text_embed_dim": 64, "latent_channels": 4, "patch_size": 1}


def lora_parameters(model: torch.nn.Module, rank: int = LORA_RANK, targets=LORA_TARGETS) -> int:
    """Parameters of rank-``rank`` LoRA adapters on the ``nn.Linear`` layers whose name ends with a target."""
    total = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.split(".")[-1] in targets:
            total += rank * (module.in_features + module.out_features)
        elif name.endswith("to_out") and isinstance(module, torch.nn.Sequential):
            total += sum(rank * (m.in_features + m.out_features) for m in module if isinstance(m, torch.nn.Linear))
    return total


def rows() -> list[dict]:
    from accelerate import init_empty_weights

    from diffusers_vincie.conversion.dit import VINCIE_3B_CONFIG

    counts = {(r.model, r.name): r.parameters for r in memory_table.components()}
    configs = {"VINCIE-3B": dict(VINCIE_3B_CONFIG), "VINCIE-7B": {**VINCIE_3B_CONFIG, **memory_table.DIT_7B}}
    result = []
    for model, config in configs.items():
        params = counts[(model, "DiT")]
        with init_empty_weights():
            lora = lora_parameters(VincieTransformer(**config))
        layers = config["num_layers"]
        width = _width_only(config)
        block = {ckpt: b / 2 for ckpt, b in per_block_activation_bytes(width).items()}  # bf16 autocast
        activations = {ckpt: block[ckpt] * SAMPLE_TOKENS * layers for ckpt in block}
        result.append(
            dict(
                model=model,
                params=params,
                lora_params=lora,
                full=training_state_bytes(params, params, GPUS),
                full_ema=training_state_bytes(params, params, GPUS, ema=True),
                lora=training_state_bytes(params + lora, lora, 1, frozen_bytes=2),
                block_bytes_per_token=block,
                activations=activations,
            )
        )
    return result


def markdown() -> str:
    lines = [
        "| model | DiT parameters | setup | states per GPU (GiB) | + activations, no checkpointing | "
        "+ activations, gradient checkpointing |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for r in rows():
        act = {k: v / GIB for k, v in r["activations"].items()}
        for setup, states in (
            (f"full fine-tuning, FSDP2 on {GPUS} GPUs", r["full"]),
            (f"full fine-tuning + EMA, FSDP2 on {GPUS} GPUs", r["full_ema"]),
            (f"LoRA r{LORA_RANK} ({r['lora_params']:,} params), bf16 base, 1 GPU", r["lora"]),
        ):
            s = states / GIB
            lines.append(
                f"| {r['model']} | {r['params']:,} | {setup} | {s:.2f} | {s + act[False]:.2f} | {s + act[True]:.2f} |"
            )
    return "\n".join(lines)


def check() -> dict:
    """Formula vs measurement on tiny configs (raises AssertionError on a mismatch); returns the numbers."""
    from diffusers.training_utils import EMAModel

    from diffusers_vincie.testing import tiny_transformer_config

    config = tiny_transformer_config()
    torch.manual_seed(0)
    model = VincieTransformer(**config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(**_forward_backward_inputs(model, 16)).sample.square().mean().backward()
    optimizer.step()
    ema = EMAModel(list(model.parameters()))
    params = sum(p.numel() for p in model.parameters())
    measured = measured_state_bytes(list(model.parameters()), optimizer, ema)
    predicted = training_state_bytes(params, params, ema=True)
    assert measured == predicted, (measured, predicted)

    width = _width_only(config)
    per_layers = [activation_bytes_per_token(build(width, n), checkpointing=False, tokens=16) for n in (2, 3, 4)]
    steps = [b - a for a, b in zip(per_layers, per_layers[1:])]
    assert steps[0] > 0 and abs(steps[1] - steps[0]) <= 0.02 * steps[0], per_layers
    return {"state_bytes": measured, "activation_bytes_per_token": per_layers}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="Check the formula on tiny configs and exit.")
    args = parser.parse_args(argv)
    print(json.dumps(check()) if args.check else markdown())


if __name__ == "__main__":
    main()
