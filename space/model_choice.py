"""The Space's model: which pipeline it serves (`VINCIE_MODEL`, the embedded default, or a tiny random one), how
it is placed (`VINCIE_SPACE_OFFLOAD`) and how the UI presents it (defaults, examples, composition wording)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from diffusers_vincie import VincieInContextPipeline

# Largest frame, in transformer tokens, one call may ask for (the resolution bound follows from the model's patch
# grid: 1024 tokens is 512 px on VINCIE-3B and VINCIE-7B, whose frames are cut into 16 px patches, and 128 px on the
# 4 px patches of the shipped 32 px model).
MAX_FRAME_TOKENS = int(os.environ.get("VINCIE_SPACE_MAX_FRAME_TOKENS", "1024"))
OFFLOAD_MODES = ("none", "model", "sequential")

# Scenes of the synthetic shapes world (held-out sessions, seeds above the training range) with their first
# instruction: what the default model knows. Photos with open-vocabulary edits suit a converted VINCIE checkpoint.
SHAPES_EXAMPLES = [
    ["scene_1.png", "make the yellow square smaller"],
    ["scene_2.png", "add a big red circle at the bottom right"],
    ["scene_3.png", "change the red square to blue"],
]
SHAPES_COMPOSITION_EXAMPLE = (
    ("scene_1.png", "scene_4.png"),
    "the yellow square at the bottom right and the purple circle at the top left",
)
PHOTO_EXAMPLES = [["house.png", "add a red hat on the roof"], ["shapes.png", "change the blue circle to a green star"]]


@dataclass
class LoadedModel:
    """The pipeline and how the UI should present it.

    Args:
        pipe: the pipeline (already on its device).
        name: what the banner calls it.
        is_random: random weights (tests / no model available): the banner warns that outputs are noise.
        note: an extra line for the banner.
        steps: default sampler steps for this model.
        guidance: default guidance scale.
        resolution: default area resolution for this model.
        examples: ``[file in space/examples, instruction]`` pairs shown under the source image.
        offload: how the pipeline is placed: "none" (moved to the device), "model" or "sequential" CPU offload.
        composition_prompts: ``(references, description) -> prompts`` for a model that words composition its own
            way (the shapes models: each reference introduced as its training videos' shots introduce objects);
            ``None``: the official multi-reference prompt.
        compose_example: ``([files in space/examples], description)``, the Multi-concept tab's example.
    """

    pipe: VincieInContextPipeline
    name: str
    is_random: bool = False
    note: str = ""
    steps: int = 50
    guidance: float = 7.5
    resolution: int = 256
    examples: list = field(default_factory=lambda: PHOTO_EXAMPLES)
    offload: str = "none"
    composition_prompts: Optional[Callable[[list, str], list[str]]] = None
    compose_example: Optional[tuple] = None

    @property
    def max_resolution(self) -> int:
        """The model's own bound (``max_resolution`` in the pipeline config), or less: the largest resolution whose
        frames stay within `MAX_FRAME_TOKENS` patches, so that one user's call stays short on a shared Space."""
        multiple = self.pipe.size_multiple
        return min(self.pipe.config.max_resolution, max(multiple, int(MAX_FRAME_TOKENS**0.5) * multiple))


def default_model_folder() -> Optional[Path]:
    """The package's shipped default model, or None when this install has none."""
    try:
        from diffusers_vincie.default_model import DEFAULT_MODEL
    except ImportError:
        return None
    return Path(DEFAULT_MODEL) if (Path(DEFAULT_MODEL) / "model_index.json").is_file() else None


def load_model() -> LoadedModel:
    """Picks the model from the environment: `VINCIE_MODEL`, else the embedded default, else a tiny random one;
    places it as `VINCIE_SPACE_OFFLOAD` says."""
    offload = os.environ.get("VINCIE_SPACE_OFFLOAD", "none").strip().lower() or "none"
    if offload not in OFFLOAD_MODES:
        raise ValueError(f"VINCIE_SPACE_OFFLOAD must be one of {', '.join(OFFLOAD_MODES)}; got {offload!r}.")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    checkpoint = os.environ.get("VINCIE_MODEL", "").strip()
    if checkpoint:
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        pipe = VincieInContextPipeline.from_pretrained(checkpoint, dtype=dtype)
        defaults = pipe.config  # the checkpoint's own sampling defaults (VINCIE-7B: CFG 10, resolution 554)
        model = LoadedModel(
            pipe,
            checkpoint,
            steps=defaults.default_num_inference_steps,
            guidance=defaults.default_guidance_scale,
            resolution=defaults.default_resolution,
        )
    elif os.environ.get("VINCIE_SPACE_TINY") != "1" and default_model_folder() is not None:
        from diffusers_vincie.default_model import (
            DEFAULT_SAMPLING,
            RESOLUTION,
            composition_prompts,
            load_default_pipeline,
        )

        model = LoadedModel(
            load_default_pipeline(),
            "VINCIE-Shapes, the default model shipped with diffusers-vincie",
            note=f"It edits {RESOLUTION}x{RESOLUTION} scenes of a synthetic shapes world with that world's "
            "instructions (try the examples); set `VINCIE_MODEL` to a converted VINCIE checkpoint for photos.",
            steps=DEFAULT_SAMPLING["num_inference_steps"],
            guidance=DEFAULT_SAMPLING["guidance_scale"],
            resolution=RESOLUTION,
            examples=SHAPES_EXAMPLES,
            composition_prompts=composition_prompts,
            compose_example=SHAPES_COMPOSITION_EXAMPLE,
        )
    else:
        from diffusers_vincie.testing import tiny_pipeline

        reason = "`VINCIE_SPACE_TINY=1`" if os.environ.get("VINCIE_SPACE_TINY") == "1" else "no default model shipped"
        model = LoadedModel(
            tiny_pipeline(),
            "tiny random pipeline",
            is_random=True,
            note=reason,
            steps=4,
            resolution=64,
            examples=SHAPES_EXAMPLES,
        )
    place(model, device, offload)
    return model


def place(model: LoadedModel, device: str, offload: str) -> None:
    """Moves the pipeline to ``device``, or installs diffusers' CPU offload hooks (GPU only: on a CPU machine the
    weights already live where offloading would keep them, so the switch is noted in the banner and ignored)."""
    if offload != "none" and device != "cuda":
        model.note = f"{model.note} (VINCIE_SPACE_OFFLOAD={offload} ignored: no GPU.)".strip()
        offload = "none"
    if offload == "model":
        model.pipe.enable_model_cpu_offload()
    elif offload == "sequential":
        model.pipe.enable_sequential_cpu_offload()
    else:
        model.pipe.to(device)
    model.offload = offload
