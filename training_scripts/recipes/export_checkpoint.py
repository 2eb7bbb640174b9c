#!/usr/bin/env python
"""Exports a training checkpoint of the VINCIE-Shapes recipe as a pipeline folder (EMA weights by default).

The training script writes the final pipeline only at its last step; this exports any ``checkpoint-<step>``
(``accelerator.save_state`` folder) of a run, e.g. to benchmark intermediate checkpoints or to ship the best one::

    python training_scripts/recipes/export_checkpoint.py --run_dir runs/vincie_shapes --checkpoint latest \\
        --output src/diffusers_vincie/default_model

The folder gets the same layout and config as the training script's own export (``save_final_pipeline``):
``default_negative_prompt`` = the training negative prompt, ``frame_index_mode`` = the training frame index, and
the shipped sampling defaults (``diffusers_vincie.default_model``: 32 px, 10 steps, guidance 2) as the pipeline's call
defaults.

The text side comes from ``--text_dir`` (``text_encoder/`` and ``tokenizer/``; default ``<run_dir>/text``, the
recipe's own; for a run started with ``INIT_FROM`` give that pipeline folder). A run with ``--train_text_encoder``
stores the encoder in the checkpoint (``model_1.safetensors``, its EMA in ``text_ema.safetensors``); those weights
are exported then.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent


def load_checkpoint_transformer(checkpoint: Path, transformer_config: dict, use_ema: bool = True):
    """A ``VincieTransformer`` with the checkpoint's weights (its EMA shadow weights with ``use_ema``).

    Args:
        checkpoint: ``checkpoint-<step>`` folder (``model.safetensors`` of the training module, and with EMA
            ``ema.safetensors``, the ``EMAModel`` state).
        transformer_config: the run's ``--transformer_config``.
        use_ema: load the EMA weights (fails when the run had no ``--use_ema``).
    """
    from diffusers_vincie.models.transformer_vincie import VincieTransformer
    from diffusers_vincie.training.checkpoints import EMA_FILE, refuse_pickled_objects

    transformer = VincieTransformer(**{k: v for k, v in transformer_config.items() if not k.startswith("_")})
    state = load_file(str(checkpoint / "model.safetensors"))
    state = {key.removeprefix("transformer."): value for key, value in state.items()}
    transformer.load_state_dict(state, strict=True)
    if use_ema:
        refuse_pickled_objects(checkpoint)  # an earlier version's checkpoint: the error says how to convert it
        copy_ema_weights(checkpoint / EMA_FILE, transformer, "transformer")
    return transformer.eval()


def copy_ema_weights(ema_file: Path, module, name: str) -> None:
    """Copies the EMA shadow weights of ``ema_file`` into ``module``'s trainable parameters (in order)."""
    from diffusers_vincie.training.checkpoints import load_ema_shadow

    if not ema_file.is_file():
        raise FileNotFoundError(f"{ema_file} is missing: the run has no EMA of its {name}; pass --no_ema.")
    shadow, _ = load_ema_shadow(ema_file)
    params = [p for p in module.parameters() if p.requires_grad]
    if len(shadow) != len(params):
        raise ValueError(f"{ema_file} holds {len(shadow)} tensors, the {name} {len(params)} trainable parameters.")
    with torch.no_grad():
        for param, value in zip(params, shadow):
            param.copy_(value)


def load_checkpoint_text_encoder(checkpoint: Path, text_encoder, use_ema: bool = True) -> bool:
    """Loads a trained text encoder's weights (EMA with ``use_ema``) from ``checkpoint`` into ``text_encoder``;
    ``False`` (nothing loaded) when the run kept its text encoder frozen."""
    from diffusers_vincie.training.checkpoints import TEXT_EMA_FILE

    weights = checkpoint / "model_1.safetensors"
    if not weights.is_file():
        return False
    missing, unexpected = text_encoder.load_state_dict(load_file(str(weights)), strict=False)
    if unexpected or any(not key.endswith("embed_tokens.weight") for key in missing):  # tied to shared.weight
        raise ValueError(f"{weights} does not fit the text encoder: missing {missing}, unexpected {unexpected}.")
    if use_ema:
        copy_ema_weights(checkpoint / TEXT_EMA_FILE, text_encoder, "text encoder")
    text_encoder.eval()
    return True


def check_output(output: Path) -> None:
    """``output`` must be new, empty, or an earlier export (its ``checkpoint.json`` record): the export replaces the
    pipeline's entries there (``transformer/``, ``text_encoder/``, ...), so another model's folder is refused."""
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output {output} is a file; give a folder.")
    if not output.is_dir() or not any(output.iterdir()):
        return
    try:
        recorded = json.loads((output / "checkpoint.json").read_text())
    except (OSError, ValueError):
        recorded = None
    if not isinstance(recorded, dict) or "checkpoint" not in recorded:
        raise ValueError(
            f"--output {output} is a non-empty folder that no export wrote (no checkpoint.json); its transformer/, "
            "text_encoder/, tokenizer/ and scheduler/ would be replaced. Give a new folder, or delete this one."
        )


def export(
    run_dir: Path,
    checkpoint: str,
    output: Path,
    transformer_config: Path,
    use_ema: bool = True,
    text_dir: Path | None = None,
    scheduler_shift: float = 1.0,
) -> Path:
    """Writes the pipeline folder of ``checkpoint`` (a path, a step number or ``latest``) to ``output``."""
    from diffusers_vincie.utils.io import exclusive_lock

    check_output(output)
    # one export into ``output`` at a time, refused before any work: two would share the staging folder
    with exclusive_lock(output.parent / f".{output.name}.export.lock", f"--output {output}"):
        return _export_checkpoint(run_dir, checkpoint, output, transformer_config, use_ema, text_dir, scheduler_shift)


def _export_checkpoint(run_dir, checkpoint, output, transformer_config, use_ema, text_dir, scheduler_shift) -> Path:
    from diffusers_vincie.training.checkpoints import find_checkpoint, list_checkpoints
    from diffusers_vincie.training.export import load_components

    if checkpoint.isdigit():
        checkpoint = f"checkpoint-{checkpoint}"
    path = find_checkpoint(run_dir, checkpoint)
    if path is None:
        raise FileNotFoundError(f"--checkpoint {checkpoint}: not found in {run_dir} ({list_checkpoints(run_dir)}).")
    text_dir = text_dir or run_dir / "text"
    args = argparse.Namespace(
        pretrained_model_name_or_path=None,
        text_encoder_name_or_path=str(text_dir / "text_encoder"),
        tokenizer_name_or_path=str(text_dir / "tokenizer"),
        vae_name_or_path="none",
        transformer_config=str(transformer_config),
    )
    components = load_components(args)
    trained_text = load_checkpoint_text_encoder(path, components["text_encoder"], use_ema)
    transformer = load_checkpoint_transformer(path, json.loads(transformer_config.read_text()), use_ema)
    return _write_export(output, path, transformer, components, trained_text, use_ema, scheduler_shift)


def _write_export(output, path, transformer, components, trained_text, use_ema, scheduler_shift) -> Path:
    """Saves the pipeline into a staging sibling, then moves its entries into ``output`` and records the export."""
    from diffusers_vincie.default_model import DEFAULT_SAMPLING, RESOLUTION
    from diffusers_vincie.training.export import save_final_pipeline
    from diffusers_vincie.utils.io import write_text_atomic

    staging = output.parent / f".{output.name}.export"
    if staging.exists():
        shutil.rmtree(staging)
    folder = save_final_pipeline(
        str(staging),
        transformer,
        components,
        scheduler_shift=scheduler_shift,
        negative_prompt="",
        frame_index="slots",
        sampling_defaults=dict(
            default_resolution=RESOLUTION,
            default_num_inference_steps=DEFAULT_SAMPLING["num_inference_steps"],
            default_guidance_scale=DEFAULT_SAMPLING["guidance_scale"],
            default_consensus_samples=DEFAULT_SAMPLING["consensus_samples"],
        ),
    )
    output.mkdir(parents=True, exist_ok=True)
    for item in folder.iterdir():  # replace only the pipeline's own entries (the target may hold other files)
        target = output / item.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)
    shutil.rmtree(staging)
    record = {"checkpoint": path.name, "ema": use_ema}
    if trained_text:
        record["trained_text_encoder"] = True
    write_text_atomic(output / "checkpoint.json", json.dumps(record) + "\n")
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run_dir", type=Path, required=True)
    parser.add_argument("--checkpoint", default="latest", help="'latest', a step number or a checkpoint folder.")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--transformer_config", type=Path, default=HERE / "vincie_shapes_transformer.json")
    parser.add_argument("--no_ema", action="store_true", help="Export the raw weights instead of the EMA.")
    parser.add_argument(
        "--text_dir",
        type=Path,
        default=None,
        help="Folder with text_encoder/ and tokenizer/ (default: <run_dir>/text).",
    )
    parser.add_argument("--scheduler_shift", type=float, default=1.0, help="Shift of the saved sampler schedule.")
    args = parser.parse_args()
    from diffusers_vincie.utils.cli import run_cli
    from diffusers_vincie.utils.io import OutputLockedError

    print(
        run_cli(
            lambda: export(
                args.run_dir,
                args.checkpoint,
                args.output,
                args.transformer_config,
                not args.no_ema,
                args.text_dir,
                args.scheduler_shift,
            ),
            "export_checkpoint.py",
            errors=(ValueError, FileNotFoundError, OutputLockedError),
        )
    )


if __name__ == "__main__":
    main()
