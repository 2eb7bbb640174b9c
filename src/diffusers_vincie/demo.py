"""The main job: a 5-turn in-context editing session on the shipped default model, offline, in seconds on a CPU.

::

    python -m diffusers_vincie.demo --output demo_out
    python -m diffusers_vincie.demo --image my.png --instructions "add a big red circle at the top left" \\
        "move the red circle right" "change the red circle to blue" "remove the blue circle" \\
        "bring back the blue circle" --output demo_out

Without ``--image`` the source and its 5 instructions come from a held-out session of the synthetic shapes world
(the world the default model was trained on), so each turn is also scored against the exact ground truth and the
contact sheet shows the true frames under the model's. A user image is resized to the model's 32x32 resolution;
the model only knows the world's vocabulary (see ``docs/default_model.md``).

Writes ``turn_0_source.png``, ``turn_1.png`` ... ``turn_5.png`` (32x32, the model's resolution) and
``contact_sheet.png`` (every turn enlarged, with its instruction) to ``--output``, and ``.demo_outputs.json``, the
record of those names: a rerun replaces only them, never a file of yours.
"""

from __future__ import annotations

import argparse
import json
import os
import textwrap
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageOps

from .default_model import DEFAULT_SAMPLING
from .utils.cli import UsageError, check_number, usage_exit
from .utils.io import atomic_path, write_json_atomic

# Used with a user image when no instructions are given (a typical session of the synthetic world's vocabulary).
USER_IMAGE_INSTRUCTIONS = (
    "add a big red circle at the top left",
    "move the red circle right",
    "change the red circle to blue",
    "remove the blue circle",
    "bring back the blue circle",
)
DEMO_SESSION_SEED = 10_000_021  # held out (training draws seeds below 1,000,000); uses both history edits
OUTPUT_RECORD = ".demo_outputs.json"  # the images demo runs wrote into --output: the only ones a rerun replaces
CELL = 160  # contact-sheet side of one enlarged image, in pixels
CAPTION_HEIGHT = 44


# =====================================================================================================
#                                             Contact sheet
# =====================================================================================================


def _caption(draw: PIL.ImageDraw.ImageDraw, x: int, y: int, text: str) -> None:
    for row, line in enumerate(textwrap.wrap(text, width=26)[:3]):
        draw.text((x + 3, y + 2 + 13 * row), line, fill=(0, 0, 0))


def contact_sheet(
    rows: Sequence[Sequence[PIL.Image.Image]], captions: Sequence[str], row_labels: Sequence[str] = ()
) -> PIL.Image.Image:
    """One row of enlarged images per entry of ``rows`` (nearest-neighbour, so pixels stay visible), with the
    instruction of each column above it.

    Args:
        rows: rows of images (all rows as long as ``captions``).
        captions: one caption per column.
        row_labels: optional label drawn in the corner of each row's first image.
    """
    columns = len(captions)
    sheet = PIL.Image.new("RGB", (columns * CELL, CAPTION_HEIGHT + len(rows) * CELL), (255, 255, 255))
    draw = PIL.ImageDraw.Draw(sheet)
    for col, caption in enumerate(captions):
        _caption(draw, col * CELL, 0, caption)
    for r, images in enumerate(rows):
        if len(images) != columns:
            raise ValueError(f"rows: row {r} has {len(images)} images for {columns} captions.")
        for col, image in enumerate(images):
            sheet.paste(
                image.convert("RGB").resize((CELL, CELL), PIL.Image.NEAREST), (col * CELL, CAPTION_HEIGHT + r * CELL)
            )
        if r < len(row_labels):
            draw.text(
                (4, CAPTION_HEIGHT + r * CELL + 4),
                row_labels[r],
                fill=(255, 255, 255),
                stroke_width=2,
                stroke_fill=(0, 0, 0),
            )
    return sheet


def _open_image(path: str) -> PIL.Image.Image:
    """The RGB image at ``path`` (a file already known to exist), or a usage error saying what it is instead."""
    from .pipelines.image_processing import to_rgb

    try:
        with PIL.Image.open(path) as image:
            image.load()  # a photo's EXIF orientation applied: the image as viewers show it, not sideways
            return to_rgb(PIL.ImageOps.exif_transpose(image), "--image")
    except PIL.Image.DecompressionBombError as error:
        raise UsageError(f"--image {path}: {error}") from None
    except (PIL.UnidentifiedImageError, OSError, SyntaxError):
        raise UsageError(f"--image {path} is not an image file PIL can read; give a PNG or JPEG.") from None
    except ValueError as error:  # the image rule: a mode or size it refuses
        raise UsageError(f"--image {path}: {error}") from None


def _save(image: PIL.Image.Image, path: Path) -> None:
    with atomic_path(path) as temporary:
        image.save(temporary)


# =====================================================================================================
#                                                Session
# =====================================================================================================


def run_demo(
    output: str | os.PathLike,
    image: Optional[str] = None,
    instructions: Optional[Sequence[str]] = None,
    seed: int = 0,
    num_inference_steps: int = DEFAULT_SAMPLING["num_inference_steps"],
    guidance_scale: float = DEFAULT_SAMPLING["guidance_scale"],
    chain_of_editing: bool = False,
    model: Optional[str] = None,
) -> dict:
    """Runs the session and writes its images; returns ``{"images", "sheet", "scores", "seconds"}``.

    Args:
        output: folder for the PNGs (created).
        image: path of a source image (default: a held-out synthetic-world scene).
        instructions: the turns' instructions (default: the synthetic session's, or
            :data:`USER_IMAGE_INSTRUCTIONS` with a user image).
        seed: noise seed.
        num_inference_steps: sampler steps per image.
        guidance_scale: CFG scale (1 disables the negative pass).
        chain_of_editing: predict the RoE masks before each image.
        model: a pipeline folder (default: the shipped default model).
    """
    import torch

    from .data.shapes.score import score_edit
    from .data.shapes.world import ShapesWorld
    from .default_model import RESOLUTION, load_default_pipeline
    from .pipelines.inputs import check_text

    start = time.perf_counter()
    output = Path(output)
    truth = None
    if image is None:
        truth = ShapesWorld(resolution=RESOLUTION).sample_session(DEMO_SESSION_SEED, num_turns=5)
        source = PIL.Image.fromarray(truth.frames[0])
        instructions = list(instructions or truth.instructions)
        if len(instructions) != truth.num_turns or instructions != truth.instructions:
            truth = None  # custom instructions on the synthetic scene: nothing to score against
    else:
        if not Path(image).is_file():
            raise FileNotFoundError(f"--image {image}: no such file; give a PNG/JPEG path or leave it out.")
        source = _open_image(image).resize((RESOLUTION, RESOLUTION), PIL.Image.BICUBIC)
        instructions = list(instructions or USER_IMAGE_INSTRUCTIONS)
    if not instructions or any(not text.strip() for text in instructions):
        raise UsageError("--instructions: give at least one non-empty instruction.")
    for k, text in enumerate(instructions):
        try:
            check_text(f"instruction {k + 1}", text)
        except ValueError as error:
            raise UsageError(f"--instructions: {error}") from None

    names = ["turn_0_source.png"] + [f"turn_{turn}.png" for turn in range(1, len(instructions) + 1)]
    names.append("contact_sheet.png")
    recorded = _recorded_outputs(output)
    foreign = [name for name in names if (output / name).exists() and name not in recorded]
    if foreign:  # before any work: a user's file of the same name is never replaced
        raise UsageError(
            f"--output {output} holds {', '.join(foreign)}, which no demo run wrote; move them away or choose "
            "another --output."
        )

    pipe = load_default_pipeline(model)
    max_turns = pipe.transformer.config.max_turns
    if len(instructions) > max_turns:  # checked before the first turn, not found after the last one that fits
        raise UsageError(
            f"--instructions: {len(instructions)} instructions, but the model's turn table holds {max_turns} turns; "
            f"give at most {max_turns}."
        )
    generator = torch.Generator().manual_seed(seed)
    session = pipe.start_session(source, resolution=RESOLUTION, generator=generator)
    output.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output / OUTPUT_RECORD, {"written": sorted(recorded | set(names))})  # before they are written
    _save(source, output / "turn_0_source.png")
    images, scores = [], []
    for turn, instruction in enumerate(instructions):
        edited = session.edit(
            instruction,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generator,
            chain_of_editing=chain_of_editing,
        )
        images.append(edited)
        _save(edited, output / f"turn_{turn + 1}.png")
        line = f"turn {turn + 1}: {instruction}"
        if truth is not None:
            previous = np.asarray(images[-2].convert("RGB")) if turn else truth.frames[0]
            score = score_edit(np.asarray(edited.convert("RGB")), truth, turn, source_rgb=previous)
            scores.append(score)
            line += (
                f"  [{'ok' if score.success else 'failed'}: changed-region IoU {score.changed_iou:.2f}, "
                f"object {score.object_score:.2f}, preserved {score.preserved:.2f}]"
            )
        print(line, flush=True)

    rows = [[source, *images]]
    labels = ["model"]
    if truth is not None:
        rows.append([PIL.Image.fromarray(frame) for frame in truth.frames])
        labels.append("ground truth")
    sheet = contact_sheet(rows, ["source", *instructions], labels)
    _save(sheet, output / "contact_sheet.png")
    seconds = time.perf_counter() - start
    print(f"wrote {len(images) + 1} images and {output / 'contact_sheet.png'} in {seconds:.1f} s")
    return {"images": images, "sheet": sheet, "scores": scores, "seconds": seconds}


def _recorded_outputs(output: Path) -> set[str]:
    """The names of the images earlier demo runs wrote into ``output``."""
    try:
        return {name for name in json.loads((output / OUTPUT_RECORD).read_text())["written"] if isinstance(name, str)}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m diffusers_vincie.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--image", default=None, help="Source image (default: a synthetic-world scene).")
    parser.add_argument("--instructions", nargs="+", default=None, help="One instruction per turn.")
    parser.add_argument("--output", required=True, help="Folder for the turn images and the contact sheet.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--steps", type=int, default=DEFAULT_SAMPLING["num_inference_steps"], help="Sampler steps per image."
    )
    parser.add_argument(
        "--guidance_scale",
        type=float,
        default=DEFAULT_SAMPLING["guidance_scale"],
        help="CFG scale, >= 1 (default: the shipped model's; 1 skips the negative pass).",
    )
    parser.add_argument("--chain_of_editing", action="store_true", help="Predict the RoE masks before each image.")
    parser.add_argument("--model", default=None, help="Pipeline folder (default: the shipped model).")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        check_number("--steps", args.steps, 1)
        check_number("--guidance_scale", args.guidance_scale, 1)  # the pipeline's: 1 is unguided, below is invalid
        if Path(args.output).exists() and not Path(args.output).is_dir():
            raise UsageError(f"--output {args.output} is a file; give a folder for the images.")
        run_demo(
            args.output,
            args.image,
            args.instructions,
            args.seed,
            args.steps,
            args.guidance_scale,
            args.chain_of_editing,
            args.model,
        )
    except (UsageError, FileNotFoundError) as error:  # raised before the model is loaded, or naming the model
        usage_exit(parser.prog, error)


if __name__ == "__main__":
    main()
