"""Loading the frozen components of a training run and saving its result as a pipeline folder.

The final folder has the diffusers layout (``model_index.json``, ``transformer/``, ``text_encoder/``,
``tokenizer/``, ``scheduler/``, optional ``vae/``) so ``VincieInContextPipeline.from_pretrained(folder)`` loads
it; without a VAE the pipeline runs in pixel space (images in [-1, 1] are the latents).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..utils.cli import UsageError
from ..utils.io import atomic_directory


def _subfolder(root: Optional[str], name: str) -> Optional[str]:
    if root is None:
        return None
    path = Path(root) / name
    return str(path) if path.is_dir() else None


def load_components(args) -> dict:
    """Text encoder, tokenizer, optional VAE and (with a pretrained pipeline) transformer named by the flags.

    Flags read: ``pretrained_model_name_or_path``, ``text_encoder_name_or_path``, ``tokenizer_name_or_path``,
    ``vae_name_or_path`` (``"none"`` forces pixel space), ``transformer_config``.
    """
    from transformers import AutoTokenizer

    from ..text_encoding import load_text_encoder

    root = args.pretrained_model_name_or_path
    text_path = args.text_encoder_name_or_path or _subfolder(root, "text_encoder")
    if text_path is None:
        raise UsageError(
            "No text encoder: pass --text_encoder_name_or_path or a pipeline with a text_encoder/ folder."
        )
    tokenizer_path = args.tokenizer_name_or_path or _subfolder(root, "tokenizer") or text_path
    components = {
        "text_encoder": load_text_encoder(text_path),
        "tokenizer": AutoTokenizer.from_pretrained(tokenizer_path),
        "vae": None,
        "transformer": None,
    }
    vae_path = args.vae_name_or_path or _subfolder(root, "vae")
    if vae_path and vae_path.lower() != "none":
        from ..image_latents import load_vae

        components["vae"] = load_vae(vae_path)
    if root is not None and not args.transformer_config:
        from ..models.transformer_vincie import VincieTransformer

        components["transformer"] = VincieTransformer.from_pretrained(root, subfolder="transformer")
    return components


def save_final_pipeline(
    output_dir: str,
    transformer,
    components: dict,
    scheduler_shift: float = 1.0,
    negative_prompt: str = "",
    frame_index: str = "compact",
    sampling_defaults: Optional[dict] = None,
) -> Path:
    """Writes ``<output_dir>/pipeline`` atomically (temp folder then rename) and returns its path.

    A ``VincieInContextPipeline`` whose ``default_negative_prompt`` is the text the model saw under CFG dropout and
    whose ``frame_index_mode`` is the frame RoPE index mode of training.

    Args:
        output_dir: run folder; the pipeline goes to ``<output_dir>/pipeline``.
        transformer: the trained transformer (EMA weights already copied in, if any).
        components: ``text_encoder``, ``tokenizer``, optional ``vae`` (``load_components``).
        scheduler_shift: static shift of the saved ``FlowMatchEulerDiscreteScheduler``.
        negative_prompt: the unconditional text of training.
        frame_index: ``"compact"`` or ``"slots"``.
        sampling_defaults: the model's native ``default_resolution`` / ``default_num_inference_steps`` /
            ``default_guidance_scale`` (the pipeline's call defaults; official 256 / 50 / 7.5 when left out).
    """
    from ..pipelines import VincieInContextPipeline, official_scheduler

    final = Path(output_dir) / "pipeline"
    pipe = VincieInContextPipeline(
        transformer=transformer,
        vae=components.get("vae"),
        text_encoder=components["text_encoder"],
        tokenizer=components["tokenizer"],
        scheduler=official_scheduler(shift=scheduler_shift),
        default_negative_prompt=negative_prompt,
        frame_index_mode=frame_index,
        **(sampling_defaults or {}),
    )
    with atomic_directory(final, replace=True) as temporary:  # this run's own folder: a resumed run rewrites it
        pipe.save_pretrained(temporary, safe_serialization=True)
    return final


__all__ = ["load_components", "save_final_pipeline"]
