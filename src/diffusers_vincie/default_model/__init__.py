"""VINCIE-Shapes, the package's default model: a small pixel-space VINCIE trained by this package's own scripts.

The pipeline folder next to this file (``model_index.json``, ``transformer/``, ``text_encoder/``, ``tokenizer/``,
``scheduler/``; safetensors only, a few MB) is shipped as package data, so the model loads offline::

    from diffusers_vincie.default_model import DEFAULT_MODEL, load_default_pipeline

    pipe = load_default_pipeline()                      # or VincieInContextPipeline.from_pretrained(DEFAULT_MODEL)
    session = pipe.start_session(image)                 # the model's own defaults: 32 px, 10 steps, CFG 2
    session.edit("remove the red circle")

It edits 32x32 images of the synthetic shapes world (``diffusers_vincie.data.shapes.world.ShapesWorld``) with
that world's instructions; see ``README.md`` in this folder (the model card) for the recipe, data and numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

DEFAULT_MODEL: str = str(Path(__file__).resolve().parent)
"""Folder of the shipped pipeline (pass it to ``VincieInContextPipeline.from_pretrained``)."""

RESOLUTION: int = 32
"""Working resolution of the model (the synthetic world's): images are resized to ``RESOLUTION**2`` pixels."""

DEFAULT_SAMPLING: dict[str, Any] = {"num_inference_steps": 10, "guidance_scale": 2.0, "consensus_samples": 1}
"""Sampler settings the shipped numbers were measured with; also the pipeline's configured call defaults (the
benchmarks', the demo's, the Space's and export_checkpoint.py's). Guidance 2 was chosen on validation sessions
(docs/default_model.md, "Move, a longer phase 3 and guidance")."""


def load_default_pipeline(model: Optional[str] = None, **kwargs: Any):
    """Loads the shipped VINCIE-Shapes pipeline (CPU, float32) with its progress bars off.

    Args:
        model: another pipeline folder to load the same way instead, e.g. a checkpoint of the recipe exported by
            ``training_scripts/recipes/export_checkpoint.py`` (default: the shipped model).
        kwargs: passed to ``VincieInContextPipeline.from_pretrained`` (e.g. ``torch_dtype``).
    """
    from ..pipelines import VincieInContextPipeline

    if model is None and not (Path(DEFAULT_MODEL) / "model_index.json").is_file():
        raise FileNotFoundError(
            f"The default model is missing from {DEFAULT_MODEL} (no model_index.json). Reinstall the package "
            "(`pip install -e .`), or train and export it with training_scripts/recipes/vincie_shapes.sh."
        )
    if model is not None and not (Path(model) / "model_index.json").is_file():
        raise FileNotFoundError(
            f"`model`: there is no pipeline folder at {model} (no model_index.json); give a folder written by "
            "`save_pretrained` or training_scripts/recipes/export_checkpoint.py."
        )
    pipe = VincieInContextPipeline.from_pretrained(model or DEFAULT_MODEL, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def composition_prompts(references: list, description: str) -> list[str]:
    """The prompts that ask a shapes-world model to compose ``references`` the way its training videos' composition
    shots are worded: reference ``k >= 1`` is introduced as ``"show a big red circle"`` (read from its pixels by
    :class:`~diffusers_vincie.data.shapes.pixels.PixelSceneReader`, the annotator of the training videos), and the
    description asks for the composed scene (``"show the red circle at the top left and the blue square at the
    bottom right"``; ``"show "`` is added when missing). Pass them with the references to the pipeline:
    ``pipe(references, composition_prompts(references, description))``.

    Args:
        references: 2 or more square PIL images of the world (any size), one object on a background each.
        description: the composed scene in the world's words.

    Raises:
        ValueError: naming the reference that is not one object of the world on its background.
    """
    import numpy as np

    from ..data.shapes.pixels import PixelSceneReader, UnreadableTransition
    from ..data.shapes.shots import introduce_instruction
    from ..data.shapes.world import ShapesWorld

    world = ShapesWorld(resolution=RESOLUTION)
    reader = PixelSceneReader(world)
    prompts = []
    for index, image in enumerate(references[1:], start=1):
        frame = np.asarray(image.convert("RGB"))
        try:
            objects = reader.read(frame).objects
        except UnreadableTransition as error:
            raise ValueError(f"references: image {index} is not a scene of the shapes world ({error}).") from None
        if len(objects) != 1:
            raise ValueError(
                f"references: image {index} shows {len(objects)} objects; give one reference per object, each "
                "alone on its background."
            )
        prompts.append(introduce_instruction(world, objects[0]))
    text = " ".join(description.split())
    return prompts + [text if text.startswith("show ") else f"show {text}"]


__all__ = ["DEFAULT_MODEL", "DEFAULT_SAMPLING", "RESOLUTION", "composition_prompts", "load_default_pipeline"]
