"""Loading the frozen components of a training run and saving its result as a pipeline folder.

The final folder has the diffusers layout (``model_index.json``, ``transformer/``, ``text_encoder/``,
``tokenizer/``, ``scheduler/``, optional ``vae/``) so ``VincieInContextPipeline.from_pretrained(folder)`` loads
it; without a VAE the pipeline runs in pixel space (images in [-1, 1] are the latents).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

from ..models.transformer_vincie import VincieTransformer
from ..utils.cli import UsageError
from ..utils.io import atomic_directory

logger = logging.getLogger(__name__)


def _subfolder(root: Optional[str], name: str) -> Optional[str]:
    if root is None:
        return None
    path = Path(root) / name
    return str(path) if path.is_dir() else None


def pipeline_default_resolution(root: Optional[str]) -> Optional[int]:
    """The ``default_resolution`` of a local pipeline folder's ``model_index.json`` (the size its model samples at,
    hence the training size of a fine-tuning run), or ``None`` without one."""
    if root is None or not (Path(root) / "model_index.json").is_file():
        return None
    value = json.loads((Path(root) / "model_index.json").read_text()).get("default_resolution")
    return value if isinstance(value, int) and value > 0 else None


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
        components["transformer"] = VincieTransformer.from_pretrained(root, subfolder="transformer")
    return components


def gather_trained_transformer(module, ema, is_main_process: bool, adapters_only: bool = False):
    """The trained weights of a (possibly sharded) ``VincieTrainingModule``, whole, on the main process.

    Every rank must call it: under FSDP2 each weight is all-gathered in turn. With an EMA its shadow weights are
    taken instead of the trained ones.

    Args:
        module: the unwrapped training module (``accelerator.unwrap_model``).
        ema: the ``EMAModel`` of its trainable parameters, or ``None``.
        is_main_process: whether this rank keeps the result.
        adapters_only: return only the LoRA adapter weights.

    Returns:
        On the main process, a new unsharded ``VincieTransformer`` holding the weights, or with ``adapters_only``
        the ``{name: tensor}`` of the adapter weights (names relative to the transformer); ``None`` elsewhere.
    """
    from accelerate import init_empty_weights

    from .distributed import ema_replacements, full_state_dict

    state = full_state_dict(
        module,
        is_main_process,
        replace=ema_replacements(module, ema),
        include=(lambda name: "lora_" in name) if adapters_only else None,
    )
    if not is_main_process:
        return None
    prefix = "transformer."
    state = {name[len(prefix) :]: tensor for name, tensor in state.items()}
    if adapters_only:
        return state
    with init_empty_weights():  # no second copy of the weights: the gathered tensors are assigned
        transformer = VincieTransformer.from_config(module.transformer.config)
    transformer.load_state_dict(state, strict=True, assign=True)
    return transformer


def build_transformer(args, components: dict):
    """The model to train; its config's ``attention_layout`` is the trained one (the saved pipeline samples with it)."""
    if args.transformer_config:
        config = json.loads(Path(args.transformer_config).read_text())
        config = {k: v for k, v in config.items() if not k.startswith("_")}
        if config.get("attention_layout", args.attention_layout) != args.attention_layout:
            logger.warning(
                f"--attention_layout {args.attention_layout} overrides the config's {config['attention_layout']!r}."
            )
        try:
            transformer = VincieTransformer(**{**config, "attention_layout": args.attention_layout})
        except (TypeError, ValueError) as error:
            raise UsageError(f"--transformer_config {args.transformer_config}: {error}") from error
        transformer.initialize_weights(zero_modulation=args.zero_modulation_init)  # the documented initialisation
        return transformer
    transformer = components["transformer"]
    if transformer.config.attention_layout != args.attention_layout:
        raise UsageError(
            f"--attention_layout {args.attention_layout}, but the pretrained transformer uses "
            f"{transformer.config.attention_layout!r}; pass --attention_layout {transformer.config.attention_layout}."
        )
    return transformer


def export_trained(args, accelerator, module, ema, components: dict, lora=None) -> None:
    """The result of a run: the trained transformer (EMA weights with an EMA) gathered on every rank and written
    once by the main process, as ``<output_dir>/pipeline`` or, with ``lora`` (the LoRA script's hooks), as the
    adapter weights. Every rank must call it."""
    if lora is None and args.no_save_pipeline:
        return
    inner = accelerator.unwrap_model(module)
    final = gather_trained_transformer(inner, ema, accelerator.is_main_process, adapters_only=lora is not None)
    if not accelerator.is_main_process:
        return
    if lora is not None:
        lora.save(args, inner.transformer, final)
        return
    sampling = dict(
        default_num_inference_steps=args.validation_inference_steps,
        default_guidance_scale=args.validation_guidance_scale,
    )
    if args.resolution:
        sampling["default_resolution"] = args.resolution
    save_final_pipeline(
        args.output_dir,
        final,
        components,
        args.scheduler_shift,
        args.negative_prompt,
        args.frame_index,
        sampling_defaults=sampling,
    )


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


__all__ = [
    "build_transformer",
    "export_trained",
    "gather_trained_transformer",
    "load_components",
    "pipeline_default_resolution",
    "save_final_pipeline",
]
