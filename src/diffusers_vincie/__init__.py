"""diffusers-vincie: in-context multi-turn image editing (VINCIE) for diffusers.

Importing the package registers `VincieInContextPipeline` and the VAE classes with diffusers, so
``DiffusionPipeline.from_pretrained(folder)`` loads VINCIE folders without ``trust_remote_code`` and
``diffusers.AutoModel.from_pretrained(folder / "vae")`` loads a VAE folder by its ``_class_name``.
"""

import diffusers as _diffusers

# Folders converted before the VAE classes moved to `models/` name `diffusers_vincie.conversion.vae` in their
# model_index.json; diffusers loads a component only from a module that is already imported.
from .conversion import vae as _conversion_vae  # noqa: F401
from .default_model import DEFAULT_MODEL, load_default_pipeline
from .models import VincieAutoencoderKL, VincieAutoencoderKL7B, VincieContextCache, VincieTransformer
from .pipelines import (
    OFFICIAL_NEGATIVE_PROMPT,
    VincieEditingSession,
    VincieInContextPipeline,
    VincieInContextPipelineOutput,
    official_scheduler,
)

__version__ = "0.1.0"

# diffusers resolves the `_class_name` of model_index.json and of a model's config.json on its own namespace
for _class in (VincieInContextPipeline, VincieAutoencoderKL, VincieAutoencoderKL7B):
    setattr(_diffusers, _class.__name__, _class)

__all__ = [
    "DEFAULT_MODEL",
    "OFFICIAL_NEGATIVE_PROMPT",
    "VincieAutoencoderKL",
    "VincieAutoencoderKL7B",
    "VincieContextCache",
    "VincieEditingSession",
    "VincieInContextPipeline",
    "VincieInContextPipelineOutput",
    "VincieTransformer",
    "load_default_pipeline",
    "official_scheduler",
]
