"""Validation during training: next-image samples of a few sessions, saved as an image grid (and to trackers).

Each row is one session: ground-truth frames ``I_0 .. I_n`` on the top half, and under each ``I_k`` (k >= 1) the
model's sample of ``I_k`` from the ground-truth context ``I_0 .. I_{k-1}`` and instructions ``T_0 .. T_{k-1}``.
Sampling runs on the pipeline's own sampler (``pipelines.sampling.sample_frame``) over the items of
``diffusers_vincie.sequence``, so validation grids show exactly what ``VincieInContextPipeline`` would generate from
the same context.

:func:`log_instruction_sensitivity` measures how much one swapped instruction word changes the output
(``evaluation.instruction_sensitivity``), the earliest sign that a small model reads its text.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Optional

import numpy as np
import PIL.Image
import torch

from ..image_latents import decode_latents
from ..pipelines.sampling import official_scheduler, sample_frame
from ..sequence import IMAGE, Frame, session_items, session_text
from ..utils.io import atomic_path
from .data import encode_frames
from .text import session_prompts


def _to_uint8(latent: torch.Tensor, vae=None) -> np.ndarray:
    """``(h, w, C)`` latent -> ``(H, W, 3)`` uint8 image (pixel space when ``vae`` is None)."""
    image = decode_latents(vae, latent[None])[0].permute(1, 2, 0)
    return ((image.clamp(-1, 1) + 1) * 127.5).round().byte().cpu().numpy()


@torch.no_grad()
def sample_frames(
    transformer,
    sample,
    text_cache,
    vae,
    layout: str,
    frame_index_mode: str,
    steps: int,
    guidance_scale: float,
    negative_prompt: str,
    seed: int,
    max_turns: int = 3,
    shift: float = 1.0,
) -> list[np.ndarray]:
    """Samples ``I_1 .. I_k`` (``k = min(max_turns, n)``) of one session with ground-truth context each turn."""
    device = transformer.device
    images = torch.from_numpy(sample.frames.astype(np.float32) / 127.5 - 1.0).to(device)
    latents = encode_frames(images, vae)
    if transformer.config.attention_layout != layout:
        raise ValueError(
            f"The transformer's attention layout is {transformer.config.attention_layout!r}, not {layout!r}."
        )
    outputs = []
    for k in range(1, min(max_turns, sample.num_turns) + 1):
        instructions = sample.instructions[:k]
        text = session_text(text_cache(session_prompts(instructions), device=device), list(range(k)))
        negative = None
        if guidance_scale > 1:
            unconditional = session_prompts(instructions, drop=True, negative_prompt=negative_prompt)
            negative = session_text(text_cache(unconditional, device=device), [0])
        items = session_items(k)[:-1]  # I_0, T_0, ..., I_{k-1}, T_{k-1}; I_k is generated
        num_frames = 1 if layout == "block_causal" else k + 1
        noise = torch.randn((num_frames, *latents.shape[1:]), generator=torch.Generator().manual_seed(seed + k))
        out = sample_frame(
            transformer,
            official_scheduler(shift=shift),
            items,
            latents[:k],
            text,
            negative,
            guidance_scale,
            steps,
            noise.to(device),
            Frame(IMAGE, k),
            frame_index_mode,
        )
        outputs.append(_to_uint8(out, vae))
    return outputs


def save_grid(rows: list[list[np.ndarray]], path: str | os.PathLike) -> Path:
    """Writes rows of equally sized images as one PNG (atomically); blank cells stay black."""
    h, w, _ = rows[0][0].shape
    cols = max(len(r) for r in rows)
    grid = np.zeros((len(rows) * h, cols * w, 3), dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            grid[i * h : (i + 1) * h, j * w : (j + 1) * w] = image
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        PIL.Image.fromarray(grid).save(temporary)
    return path


def log_validation(
    args, accelerator, transformer, ema, text_cache, vae, dataset, step: int, gathered_weights=None
) -> Optional[Path]:
    """Samples ``args.num_validation_sessions`` sessions, saves ``validation/step-<step>.png`` and logs it.

    With EMA the EMA weights are used (and the training weights restored afterwards). Under FSDP every rank runs it,
    with ``gathered_weights`` the context that gathers the weights the transformer blocks do not gather themselves
    (entered once the EMA weights are in place), and the main process writes the grid; ``None`` elsewhere.
    """
    rows = []
    with _averaged_weights(transformer, ema), gathered_weights or nullcontext():
        for index in range(min(args.num_validation_sessions, len(dataset))):
            sample = dataset.session(index)
            predictions = sample_frames(
                transformer,
                sample,
                text_cache,
                vae,
                args.attention_layout,
                args.frame_index,
                args.validation_inference_steps,
                args.validation_guidance_scale,
                args.negative_prompt,
                args.seed,
                shift=args.scheduler_shift,
            )
            truth = list(sample.frames[: len(predictions) + 1])
            rows.append(truth)
            rows.append([np.zeros_like(truth[0])] + predictions)
    if not accelerator.is_main_process:
        return None
    path = save_grid(rows, Path(args.output_dir) / "validation" / f"step-{step}.png")
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            grid = np.asarray(PIL.Image.open(path))
            tracker.writer.add_image("validation", grid, step, dataformats="HWC")
    return path


@contextmanager
def _averaged_weights(model, ema):
    """``model`` in eval mode with its EMA weights (if any) for the block; its training weights and mode after."""
    params = [p for p in model.parameters() if p.requires_grad]
    if ema is not None:
        ema.store(params)
        ema.copy_to(params)
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        if ema is not None:
            ema.restore(params)
        model.train(was_training)


def log_instruction_sensitivity(args, transformer, ema, components: dict, world, step: int, text_ema=None) -> dict:
    """Instruction sensitivity of the current (EMA) weights on ``args.num_sensitivity_sessions`` held-out sessions
    of ``world``; appends ``{"step", "colour", "shape", "op", "noise", ...}`` to
    ``<output_dir>/sensitivity.jsonl`` and returns it."""
    from ..evaluation.instruction_sensitivity import instruction_sensitivity, sensitivity_sessions
    from ..pipelines import VincieInContextPipeline

    sessions = sensitivity_sessions(args.num_sensitivity_sessions, **world.config)
    with _averaged_weights(transformer, ema), _averaged_weights(components["text_encoder"], text_ema), torch.no_grad():
        pipe = VincieInContextPipeline(
            transformer=transformer,
            vae=components.get("vae"),
            text_encoder=components["text_encoder"],
            tokenizer=components["tokenizer"],
            scheduler=official_scheduler(shift=args.scheduler_shift),
            default_negative_prompt=args.negative_prompt,
            frame_index_mode=args.frame_index,
        )
        pipe.set_progress_bar_config(disable=True)
        result = instruction_sensitivity(
            pipe,
            sessions,
            world.colours,
            world.shapes,
            sampling={
                "num_inference_steps": args.validation_inference_steps,
                "guidance_scale": args.validation_guidance_scale,
            },
        )
    record = {"step": step, **result}
    with open(Path(args.output_dir) / "sensitivity.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    return record


__all__ = ["log_instruction_sensitivity", "log_validation", "sample_frames", "save_grid"]
