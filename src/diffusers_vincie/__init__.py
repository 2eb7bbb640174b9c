"""diffusers-vincie: in-context multi-turn image editing (VINCIE) for diffusers.

Importing the package registers `VincieInContextPipeline` with diffusers, so
``DiffusionPipeline.from_pretrained(folder)`` loads VINCIE folders without ``trust_remote_code``.
"""

import diffusers as _diffusers

from .conversion.vae import VincieAutoencoderKL
from .default_model import DEFAULT_MODEL, load_default_pipeline
from .models import VincieContextCache, VincieTransformer
from .pipelines import (
    OFFICIAL_NEGATIVE_PROMPT,
    VincieEditingSession,
    VincieInContextPipeline,
    VincieInContextPipelineOutput,
    official_scheduler,
)

__version__ = "0.1.0"

# diffusers resolves `_class_name` of model_index.json on its own namespace
setattr(_diffusers, "VincieInContextPipeline", VincieInContextPipeline)

__all__ = [
    "DEFAULT_MODEL",
    "OFFICIAL_NEGATIVE_PROMPT",
    "VincieAutoencoderKL",
    "VincieContextCache",
    "VincieEditingSession",
    "VincieInContextPipeline",
    "VincieInContextPipelineOutput",
    "VincieTransformer",
    "load_default_pipeline",
    "official_scheduler",
]
