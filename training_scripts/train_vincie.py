#!/usr/bin/env python
"""Pretrain or continue training a VINCIE transformer on editing sessions with 🤗 Accelerate.

Sequences are drawn from sessions (a random number of turns, RoE masks with probability 0.8, per-turn context
dropout) with targets from the paper's three proxy tasks (next image, current-frame mask, next-frame mask), in
one of two formulations (``--attention_layout``):

* ``full``: the released checkpoints' conditioning, one target at the end of the sequence;
* ``block_causal``: the paper's multi-target form, clean context + one noisy copy per target in one sequence.

Flow matching with the official conventions (noise at t = 1, velocity = noise - data, logit-normal t), text
dropout for CFG, EMA, gradient checkpointing, mixed precision, gradient accumulation, AdamW + LR schedule,
atomic checkpoints with exact resume, validation grids, and a final pipeline folder. See ``docs/training.md``.

Example (tiny synthetic run on CPU)::

    accelerate launch training_scripts/train_vincie.py \\
        --transformer_config training_scripts/configs/vincie_shapes_transformer.json \\
        --text_encoder_name_or_path <t5 folder> --synthetic_world --resolution 32 \\
        --attention_layout block_causal --mixed_precision bf16 --output_dir runs/shapes
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import time
import typing
from pathlib import Path

import torch
from accelerate.logging import get_logger
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed
from tqdm.auto import tqdm

from diffusers_vincie.image_latents import latent_channels, spatial_factor
from diffusers_vincie.models.transformer_vincie import VincieTransformer
from diffusers_vincie.training import (
    TASKS,
    PromptEmbeddingCache,
    SequenceConfig,
    VincieTrainingModule,
    build_training_batch,
    encode_plan_frames,
    training_loss,
)
from diffusers_vincie.training.checkpoints import (
    TEXT_EMA_FILE,
    checkpoint_step,
    find_checkpoint,
    load_checkpoint,
    load_ema,
    rotate_checkpoints,
    save_checkpoint_atomically,
    save_ema,
)
from diffusers_vincie.training.data import INTERPOLATION_MODES
from diffusers_vincie.training.distributed import (
    build_train_dataloader,
    check_deepspeed_config,
    check_fsdp_support,
    create_accelerator,
    is_fsdp,
    unsharded_root,
)
from diffusers_vincie.training.export import (
    build_transformer,
    export_trained,
    load_components,
    pipeline_default_resolution,
)
from diffusers_vincie.training.flow import TIMESTEP_SAMPLINGS
from diffusers_vincie.training.guards import (
    check_finite_loss,
    check_finite_weights,
    check_json_object,
    check_number_flags,
    check_resolution,
)
from diffusers_vincie.training.memory import peak_memory_bytes
from diffusers_vincie.training.optimization import build_optimizer
from diffusers_vincie.training.outputs import (
    LOG_FILE,
    check_final_output,
    check_output_dir,
    clear_run_outputs,
    record_output,
    run_lock,
    truncate_log,
    write_log,
)
from diffusers_vincie.training.sources import load_data, shapes_world, streaming_batches
from diffusers_vincie.training.validation import log_instruction_sensitivity, log_validation
from diffusers_vincie.utils.cli import UsageError, check_number, run_cli

logger = get_logger(__name__)


# =====================================================================================================
#                                              Arguments
# =====================================================================================================


def add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--pretrained_model_name_or_path",
        type=str,
        default=None,
        help="Pipeline folder (transformer/, text_encoder/, tokenizer/, optional vae/) to start from.",
    )
    group.add_argument(
        "--transformer_config",
        type=str,
        default=None,
        help="JSON config of a VincieTransformer trained from scratch (overrides the pipeline's).",
    )
    group.add_argument(
        "--zero_modulation_init",
        action="store_true",
        help="From scratch: every modulation offset starts at 0, scales included (the initialisation "
        "before 2026-12-01, for the issue-13 ablations); default: the official AdaSingle draw.",
    )
    group.add_argument(
        "--text_encoder_name_or_path",
        type=str,
        default=None,
        help="transformers text encoder folder (default: <pretrained>/text_encoder).",
    )
    group.add_argument(
        "--tokenizer_name_or_path",
        type=str,
        default=None,
        help="Tokenizer folder (default: <pretrained>/tokenizer, else the text encoder folder).",
    )
    group.add_argument(
        "--vae_name_or_path",
        type=str,
        default=None,
        help="VAE folder, loaded by the class its config.json names (default: <pretrained>/vae if present); "
        "'none' = pixel space.",
    )
    group.add_argument(
        "--train_text_encoder",
        action="store_true",
        help="Train the text encoder with the transformer (one process; default: frozen). Its "
        "embeddings then change, so --cache_text_embeddings is ignored.",
    )
    group.add_argument(
        "--text_encoder_learning_rate",
        type=float,
        default=None,
        help="Learning rate of the text encoder with --train_text_encoder (default: --learning_rate).",
    )


def add_data_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument(
        "--dataset_name",
        type=str,
        default=None,
        help="Sessions dataset: a folder of the build pipeline, a parquet glob or a dataset name.",
    )
    group.add_argument("--dataset_split", type=str, default="train")
    group.add_argument(
        "--dataset_format",
        choices=("sessions", "pairwise", "vincie10m"),
        default="sessions",
        help="'sessions' = SESSION_FEATURES rows (build_sessions.py output); 'pairwise' = one row "
        "per edit turn (MagicBrush columns); 'vincie10m' = VINCIE-10M rows.",
    )
    group.add_argument("--max_train_samples", type=int, default=None, help="Use only the first N sessions.")
    group.add_argument(
        "--streaming",
        action="store_true",
        help="Stream the sessions' parquet shards (split across processes and dataloader workers, each session once "
        "per epoch, exact resume) instead of loading the dataset into an Arrow cache; needs torchdata.",
    )
    group.add_argument(
        "--synthetic_world",
        action="store_true",
        help="Train on sessions of the synthetic shapes world drawn on the fly (no dataset on disk).",
    )
    group.add_argument(
        "--synthetic_world_config",
        type=str,
        default=None,
        help="JSON file or string of ShapesWorld arguments (resolution defaults to --resolution); with "
        "--dataset_name, the world the sessions were filmed in, read only by --sensitivity_steps.",
    )
    group.add_argument("--synthetic_num_sessions", type=int, default=1_000_000)
    group.add_argument("--synthetic_num_turns", type=int, default=4)
    group.add_argument(
        "--synthetic_world_seed",
        type=int,
        default=0,
        help="Seed of synthetic session 0 (keep evaluation sessions outside the training range).",
    )
    group.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="Square frame size (resize); default: the model's own, the pretrained pipeline's default_resolution "
        "(a transformer trained from scratch: the stored frame size).",
    )
    group.add_argument(
        "--image_interpolation_mode",
        choices=sorted(INTERPOLATION_MODES),
        default="bicubic",
        help="Filter that resizes a dataset's frames to --resolution (masks: always nearest). 'nearest' keeps the "
        "hard edges of a world drawn without anti-aliasing and filmed at a multiple of --resolution.",
    )
    group.add_argument("--dataloader_num_workers", type=int, default=0)


def _sequence_flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag", f.name)


def add_sequence_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sequences")
    types = typing.get_type_hints(SequenceConfig)
    for f in dataclasses.fields(SequenceConfig):  # one flag per field: names, types, defaults and help from there
        if f.name == "task_weights":
            default = ",".join(str(w) for w in SequenceConfig().task_weights.values())
            group.add_argument(f"--{_sequence_flag(f)}", type=str, default=default, help=f.metadata["help"])
            continue
        kind = types[f.name]
        kind = str if kind == typing.Optional[str] else kind
        model_default = f.name == "layout"  # the model's own layout unless the flag is given (see model_layout)
        group.add_argument(
            f"--{_sequence_flag(f)}",
            type=kind,
            default=None if model_default else f.default,
            choices=f.metadata.get("choices"),
            help=f.metadata["help"]
            + (
                " Default: the pretrained transformer's, else the --transformer_config's, else 'full'." * model_default
            ),
        )
    group.add_argument(
        "--no_group_turns",
        action="store_true",
        help="Draw the number of turns per sample instead of per micro-step (more attention padding).",
    )
    group.add_argument("--max_text_length", type=int, default=150)
    group.add_argument(
        "--cache_text_embeddings",
        action="store_true",
        help="Keep prompt embeddings in memory (frozen text encoder; ignored with --train_text_encoder).",
    )
    group.add_argument("--text_dropout", type=float, default=0.1, help="P(instructions -> negative prompt), for CFG.")
    group.add_argument("--negative_prompt", type=str, default="", help="Text of dropped instructions.")
    group.add_argument(
        "--text_dropout_with_masks",
        type=float,
        default=None,
        help="--text_dropout of the sequences that hold RoE masks (default: --text_dropout); the masks alone then "
        "tell the edits of the dropped ones.",
    )
    group.add_argument(
        "--timestep_sampling",
        choices=TIMESTEP_SAMPLINGS,
        default="logit_normal",
        help="Training time distribution: 'logit_normal' (official, --logit_mean/--logit_std), "
        "'uniform' or 'mode' (--mode_scale < 0: heavier ends); see training/flow.py.",
    )
    group.add_argument("--logit_mean", type=float, default=0.0)
    group.add_argument("--logit_std", type=float, default=1.0)
    group.add_argument("--mode_scale", type=float, default=-0.5, help="Scale of --timestep_sampling mode.")
    group.add_argument(
        "--timestep_shift",
        type=float,
        default=1.0,
        help="Shift of the training times, s t / (1 + (s - 1) t); > 1 trains more at high noise, "
        "where a sampler starting at t = 1 decides an edit's content (1: none).",
    )


def add_optimization_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("optimization")
    group.add_argument("--train_batch_size", type=int, default=4, help="Sessions per process per micro-step.")
    group.add_argument("--max_train_steps", type=int, default=1000, help="Optimizer steps.")
    group.add_argument("--gradient_accumulation_steps", type=int, default=1)
    group.add_argument("--gradient_checkpointing", action="store_true")
    group.add_argument("--learning_rate", type=float, default=1e-4)
    group.add_argument(
        "--scale_lr", action="store_true", help="Multiply the LR by accumulation steps x batch size x processes."
    )
    group.add_argument(
        "--lr_scheduler",
        type=str,
        default="constant_with_warmup",
        help='One of "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup".',
    )
    group.add_argument("--lr_warmup_steps", type=int, default=0)
    group.add_argument(
        "--lr_decay_steps",
        type=int,
        default=None,
        help="Length of the LR schedule (default --max_train_steps); larger stops a run part-way "
        "down its decay, e.g. the shipped model's phase 4 (step 1,500 of a 3,000-step cosine).",
    )
    group.add_argument("--adam_beta1", type=float, default=0.9)
    group.add_argument("--adam_beta2", type=float, default=0.999)
    group.add_argument("--adam_weight_decay", type=float, default=0.0)
    group.add_argument("--adam_epsilon", type=float, default=1e-8)
    group.add_argument("--max_grad_norm", type=float, default=1.0)
    group.add_argument("--use_ema", action="store_true", help="Keep an EMA of the weights (saved as the final model).")
    group.add_argument("--ema_decay", type=float, default=0.999)
    group.add_argument(
        "--mixed_precision",
        choices=("no", "fp16", "bf16"),
        default=None,
        help="Overrides the accelerate config; bf16 autocast also runs on CPU (fast with AMX).",
    )
    group.add_argument("--allow_tf32", action="store_true")
    group.add_argument("--seed", type=int, default=0)


def add_output_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output")
    group.add_argument(
        "--output_dir",
        type=str,
        required=True,
        help="Run folder: must be empty or missing unless resuming or --overwrite_output_dir.",
    )
    group.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="Start over in a used --output_dir: deletes its checkpoints, log, validation grids and "
        "pipeline (other files stay).",
    )
    group.add_argument("--logging_dir", type=str, default="logs")
    group.add_argument("--report_to", type=str, default="none", help='"tensorboard", "wandb" or "none".')
    group.add_argument("--checkpointing_steps", type=int, default=500)
    group.add_argument("--checkpoints_total_limit", type=int, default=None)
    group.add_argument(
        "--resume_from_checkpoint",
        type=str,
        default=None,
        help='A checkpoint folder, or "latest" (the newest complete one; a fresh start when the output dir has none).',
    )
    group.add_argument(
        "--validation_steps", type=int, default=0, help="Sample validation grids every N steps (0: off)."
    )
    group.add_argument("--num_validation_sessions", type=int, default=4)
    group.add_argument("--validation_inference_steps", type=int, default=10)
    group.add_argument("--validation_guidance_scale", type=float, default=1.0)
    group.add_argument(
        "--sensitivity_steps",
        type=int,
        default=0,
        help="Measure instruction sensitivity every N steps on sessions of the shapes world (--synthetic_world, or "
        "--synthetic_world_config with --dataset_name) into <output_dir>/sensitivity.jsonl (0: off; ~15 s for 20 "
        "sessions at 32 px).",
    )
    group.add_argument("--num_sensitivity_sessions", type=int, default=20)
    group.add_argument(
        "--scheduler_shift",
        type=float,
        default=1.0,
        help="shift of the FlowMatchEulerDiscreteScheduler saved with the final pipeline.",
    )
    group.add_argument("--no_save_pipeline", action="store_true", help="Skip the final pipeline folder.")


def build_parser(description: str = __doc__.splitlines()[0]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    for add in (add_model_args, add_data_args, add_sequence_args, add_optimization_args, add_output_args):
        add(parser)
    return parser


def validate_args(args: argparse.Namespace) -> argparse.Namespace:
    """Checks flag combinations and fills layout-dependent defaults; errors name the flag and the fix."""
    if not args.synthetic_world and args.dataset_name is None:
        raise UsageError("Give training data: --dataset_name <sessions dataset> or --synthetic_world.")
    if args.synthetic_world and args.dataset_name is not None:
        raise UsageError("--synthetic_world and --dataset_name are exclusive; pick one data source.")
    if args.pretrained_model_name_or_path is None and args.transformer_config is None:
        raise UsageError("Give a model: --pretrained_model_name_or_path <pipeline> or --transformer_config <json>.")
    if args.pretrained_model_name_or_path is None and args.text_encoder_name_or_path is None:
        raise UsageError("Without --pretrained_model_name_or_path, --text_encoder_name_or_path is required.")
    if args.transformer_config is not None:
        check_json_object("--transformer_config", args.transformer_config, file_only=True)
    if args.synthetic_world_config is not None:
        check_json_object("--synthetic_world_config", args.synthetic_world_config, file_only=False)
    from diffusers.optimization import SchedulerType

    schedulers = [kind.value for kind in SchedulerType]
    if args.lr_scheduler not in schedulers:
        raise UsageError(f"--lr_scheduler {args.lr_scheduler!r} is not one of {', '.join(schedulers)}.")
    from accelerate.utils import LoggerType

    trackers = ["none"] + [kind.value for kind in LoggerType]
    if args.report_to not in trackers:
        raise UsageError(f"--report_to {args.report_to!r} is not one of {', '.join(trackers)}.")
    for flag in (
        "pretrained_model_name_or_path",
        "text_encoder_name_or_path",
        "tokenizer_name_or_path",
        "vae_name_or_path",
        "dataset_name",
    ):
        value = getattr(args, flag)
        # a path (absolute or relative to here) must exist; anything else may be a Hub id, resolved when loaded
        if (
            value
            and value.startswith(("/", "./", "../", "~"))
            and not any(c in value for c in "*?[")
            and not os.path.exists(os.path.expanduser(value))
        ):
            raise UsageError(f"--{flag} {value} does not exist.")
    check_pipeline_folder(args)
    check_number_flags(args)
    if args.resolution is None and not args.transformer_config:  # the pretrained model's own, not the stored size
        args.resolution = pipeline_default_resolution(args.pretrained_model_name_or_path)
    try:
        weights = [float(w) for w in args.task_weights.split(",")]
    except ValueError:
        weights = []
    if len(weights) != len(TASKS) or not all(w >= 0 for w in weights) or not any(w > 0 for w in weights):
        raise UsageError(
            f"--task_weights needs {len(TASKS)} comma-separated numbers >= 0, not all 0 "
            f"({','.join(TASKS)}), got {args.task_weights!r}."
        )
    args.task_weight_dict = dict(zip(TASKS, weights))
    if args.attention_layout is None:
        args.attention_layout = model_layout(args)
    args.frame_index = sequence_config(args).frame_index  # the config's layout-dependent default
    if args.frame_index == "compact" and args.mask_probability > 0 and (weights[1] > 0 or weights[2] > 0):
        logging.getLogger(__name__).warning(
            "Mask tasks with --frame_index compact: a mask target and a next-image target can get identical inputs "
            "(see docs/training.md); use --frame_index slots, or --task_weights 1,0,0 / --mask_probability 0."
        )
    if args.checkpoints_total_limit is not None and args.checkpoints_total_limit < 1:
        raise UsageError("--checkpoints_total_limit must be >= 1 (or left out to keep every checkpoint).")
    if args.text_encoder_learning_rate is not None:
        if not args.train_text_encoder:
            raise UsageError("--text_encoder_learning_rate needs --train_text_encoder.")
        check_number("--text_encoder_learning_rate", args.text_encoder_learning_rate, 0, None, strict_minimum=True)
    check_streaming_args(args)
    if args.sensitivity_steps and not (args.synthetic_world or args.synthetic_world_config):
        raise UsageError(
            "--sensitivity_steps draws its sessions from a shapes world: give --synthetic_world, or with "
            "--dataset_name the world the sessions were filmed in (--synthetic_world_config, e.g. the videos' "
            "world.json)."
        )
    check_output_dir(args)
    return args


def check_streaming_args(args: argparse.Namespace) -> None:
    """``--streaming`` reads the parquet shards of a sessions dataset, whole epochs at a time."""
    if not args.streaming:
        return
    if args.dataset_name is None or args.dataset_format != "sessions":
        raise UsageError("--streaming reads a sessions dataset: give --dataset_name with --dataset_format sessions.")
    if args.max_train_samples is not None:
        raise UsageError("--max_train_samples does not apply to --streaming (every shard is read); drop one of them.")


def model_layout(args: argparse.Namespace) -> str:
    """The attention layout of the model to train: the pretrained transformer's (unless a --transformer_config
    replaces it), else the config's, else ``"full"``."""
    if args.transformer_config is not None:
        return json.loads(Path(args.transformer_config).read_text()).get("attention_layout", "full")
    try:
        config = VincieTransformer.load_config(args.pretrained_model_name_or_path, subfolder="transformer")
    except (OSError, ValueError) as error:
        raise UsageError(
            f"--pretrained_model_name_or_path {args.pretrained_model_name_or_path}: cannot read its transformer "
            f"config ({error}); give a pipeline folder, or --attention_layout."
        ) from error
    return config.get("attention_layout", "full")


def check_pipeline_folder(args: argparse.Namespace) -> None:
    """A local ``--pretrained_model_name_or_path`` holds what the run reads from it (checked before loading)."""
    root = args.pretrained_model_name_or_path
    if root is None or not os.path.isdir(root):
        return  # missing local paths are refused below; anything else may be a Hub id
    needed = [] if args.transformer_config else ["transformer"]
    needed += [] if args.text_encoder_name_or_path else ["text_encoder"]
    missing = [name for name in needed if not os.path.isdir(os.path.join(root, name))]
    if missing:
        raise UsageError(
            f"--pretrained_model_name_or_path {root} is not a pipeline folder: no "
            f"{', '.join(name + '/' for name in missing)} (give a saved VincieInContextPipeline folder)."
        )


def parse_args(argv=None) -> argparse.Namespace:
    return validate_args(build_parser().parse_args(argv))


# =====================================================================================================
#                                               Setup
# =====================================================================================================


def sequence_config(args) -> SequenceConfig:
    values = {f.name: getattr(args, _sequence_flag(f)) for f in dataclasses.fields(SequenceConfig)}
    try:
        return SequenceConfig(**{**values, "task_weights": args.task_weight_dict})
    except ValueError as error:  # its checks name the field; the flag has the same name
        raise UsageError(f"bad sequence flags: {error}") from error


# =====================================================================================================
#                                                Main
# =====================================================================================================


def main(args: argparse.Namespace, lora=None) -> dict:
    """Runs training; returns ``{"global_step", "last_loss", "output_dir"}``.

    Args:
        args: parsed flags.
        lora: the ``LoraSetup`` of ``train_vincie_lora.py`` (``prepare_transformer`` adds the adapters,
            ``save`` writes them); ``None`` trains every weight.

    One run writes an ``--output_dir`` at a time: a second one is refused (``run_lock``).
    """
    logging_dir = Path(args.output_dir, args.logging_dir)
    accelerator = create_accelerator(  # FSDP2 from the launcher's config also on CPU processes; never silently off
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=str(logging_dir)),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    check_fsdp_support(accelerator, args)  # before the lock: a refused run writes nothing
    check_deepspeed_config(accelerator, args)
    with run_lock(args.output_dir):
        return _train(args, accelerator, lora)


def _train(args: argparse.Namespace, accelerator, lora=None) -> dict:
    set_seed(args.seed)
    if args.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
    checkpoint = find_checkpoint(args.output_dir, args.resume_from_checkpoint)  # before any heavy work
    final_output = lora.weight_name if lora is not None else None if args.no_save_pipeline else "pipeline"
    check_final_output(
        args.output_dir, final_output, "--overwrite_output_dir" if args.overwrite_output_dir else "this run"
    )
    if accelerator.is_main_process:
        if args.overwrite_output_dir:
            clear_run_outputs(args.output_dir, LOG_FILE)
        os.makedirs(args.output_dir, exist_ok=True)

    config = sequence_config(args)
    dataset = load_data(args, config, accelerator.num_processes)  # before the models: a bad dataset fails at once
    if args.resolution is None:  # from scratch, at the stored size: the saved pipeline samples at it
        frames = dataset.session(0).frames
        args.resolution = frames.shape[1] if frames.shape[1] == frames.shape[2] else None
    probe_world = shapes_world(args) if args.sensitivity_steps else None  # at the training resolution

    # ---- components
    components = load_components(args)
    text_encoder, tokenizer, vae = components["text_encoder"], components["tokenizer"], components["vae"]
    transformer = build_transformer(args, components)
    if transformer.config.latent_channels != latent_channels(vae):
        raise UsageError(
            f"The transformer has latent_channels={transformer.config.latent_channels}, but "
            + (
                f"the VAE's latents have {latent_channels(vae)} channels; give a matching --vae_name_or_path or fix "
                "the config."
                if vae is not None
                else "pixel-space training (no VAE) needs latent_channels=3; give --vae_name_or_path or fix the config."
            )
        )
    check_resolution(args.resolution, transformer.config.patch_size, spatial_factor(vae))
    if args.train_text_encoder and accelerator.num_processes > 1:
        raise UsageError("--train_text_encoder runs in one process (prompts are encoded outside the wrapped module).")
    for frozen in (vae,) if args.train_text_encoder else (text_encoder, vae):
        if frozen is not None:
            frozen.requires_grad_(False).eval().to(accelerator.device)
    if args.train_text_encoder:
        text_encoder.requires_grad_(True).train().to(accelerator.device)
    if lora is not None:
        transformer = lora.prepare_transformer(args, transformer)
    if args.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    transformer.train()

    text_params = [p for p in text_encoder.parameters() if p.requires_grad] if args.train_text_encoder else []
    module = VincieTrainingModule(transformer, args.attention_layout)
    optimizer, lr_scheduler = build_optimizer(args, module, text_params, accelerator.num_processes)
    # the order of the data is a pure function of the seed and the micro-step, so a resume continues it exactly
    global_step = checkpoint_step(checkpoint) if checkpoint is not None else 0
    # a streamed loader is this process's part already (built after the resume, which sets its position) and is
    # not prepared: accelerate would split it again
    loader = (
        None
        if args.streaming
        else build_train_dataloader(
            dataset, args, accelerator.num_processes, start_step=global_step * args.gradient_accumulation_steps
        )
    )
    # everything in one prepare: DeepSpeed reads the micro-batch size from the loader (set explicitly when
    # streaming); the loader hands each process its part of every global batch
    prepared = [module] + ([text_encoder] if args.train_text_encoder else []) + [optimizer]
    prepared += ([loader] if loader is not None else []) + [lr_scheduler]
    if loader is None and accelerator.state.deepspeed_plugin is not None:
        accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = args.train_batch_size
    prepared = list(accelerator.prepare(*prepared))  # the text encoder is prepared so checkpoints hold its weights
    module = prepared.pop(0)
    if args.train_text_encoder:
        text_encoder = prepared.pop(0)
    optimizer = prepared.pop(0)
    if loader is not None:
        loader = prepared.pop(0)
    lr_scheduler = prepared.pop(0)
    # built after prepare: under FSDP2 these are the DTensor shards the optimizer updates, and the EMA is sharded
    # like them
    trained = [p for p in accelerator.unwrap_model(module).parameters() if p.requires_grad]
    params = trained + text_params  # everything the gradient clip sees
    ema = text_ema = None
    if args.use_ema:  # saved as ema.safetensors by save_checkpoint_atomically (nothing pickled)
        from diffusers.training_utils import EMAModel

        ema = EMAModel(trained, decay=args.ema_decay)
        if text_params:  # saved as text_ema.safetensors inside accelerate's save_state (nothing pickled)
            text_ema = EMAModel(text_params, decay=args.ema_decay)
            accelerator.register_save_state_pre_hook(
                lambda models, weights, folder: save_ema(text_ema, Path(folder) / TEXT_EMA_FILE)
            )

    # ---- resume
    if checkpoint is not None:
        accelerator.print(f"Resuming from {checkpoint}")
        global_step = load_checkpoint(accelerator, checkpoint, ema)
        if text_ema is not None:
            load_ema(text_ema, Path(checkpoint) / TEXT_EMA_FILE)
    if accelerator.is_main_process:
        truncate_log(args.output_dir, global_step)

    if args.streaming:  # the stream's position is saved with every checkpoint (data_state_<process>.json)
        loader = streaming_batches(args, accelerator, dataset, checkpoint)
    text_cache = PromptEmbeddingCache(
        text_encoder,
        tokenizer,
        args.max_text_length,
        enabled=args.cache_text_embeddings and not args.train_text_encoder,
    )

    if accelerator.is_main_process and args.report_to != "none":
        accelerator.init_trackers(
            "vincie", config={k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
        )
    logger.info(
        f"***** Training: {args.max_train_steps} steps, {accelerator.num_processes} process(es), "
        f"batch {args.train_batch_size} x accumulation {args.gradient_accumulation_steps} *****"
    )

    progress = tqdm(
        range(args.max_train_steps), initial=global_step, desc="steps", disable=not accelerator.is_local_main_process
    )
    data_iter = iter(loader)
    accumulated, last_loss, data_time, step_start = 0.0, float("nan"), 0.0, time.perf_counter()
    batch = None
    while global_step < args.max_train_steps:
        wait_start = time.perf_counter()
        planned = next(data_iter)
        latents = encode_plan_frames(planned, vae, accelerator.device if vae is not None else None)
        batch = build_training_batch(
            planned,
            latents,
            text_cache,
            config,
            seed=args.seed,
            text_dropout=args.text_dropout,
            negative_prompt=args.negative_prompt,
            text_dropout_with_masks=args.text_dropout_with_masks,
            logit_mean=args.logit_mean,
            logit_std=args.logit_std,
            timestep_sampling=args.timestep_sampling,
            timestep_shift=args.timestep_shift,
            mode_scale=args.mode_scale,
        ).to(accelerator.device)
        data_time += time.perf_counter() - wait_start
        with accelerator.accumulate(module):
            loss = training_loss(module, batch)
            accelerator.backward(loss)
            if accelerator.sync_gradients and args.max_grad_norm > 0:
                accelerator.clip_grad_norm_(params, args.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        accumulated += accelerator.gather(loss.detach().reshape(1)).mean().item() / args.gradient_accumulation_steps
        if not accelerator.sync_gradients:
            continue
        check_finite_loss(accumulated, global_step + 1, args.output_dir)  # a diverged run stops, saving nothing

        # ---- one optimizer step done
        if ema is not None:
            ema.step(trained)
        if text_ema is not None:
            text_ema.step(text_params)
        global_step += 1
        last_loss, accumulated = accumulated, 0.0
        step_time = time.perf_counter() - step_start
        record = {
            "step": global_step,
            "loss": last_loss,
            "lr": lr_scheduler.get_last_lr()[0],
            "step_time": step_time,
            "data_time": data_time,
            "peak_memory_gb": peak_memory_bytes(accelerator.device) / 2**30,
        }
        data_time = 0.0
        progress.update(1)
        progress.set_postfix(loss=f"{last_loss:.4f}", lr=f"{record['lr']:.2e}")
        if accelerator.is_main_process:
            write_log(args.output_dir, record)
        accelerator.log({"loss": last_loss, "lr": record["lr"]}, step=global_step)

        if global_step % args.checkpointing_steps == 0 or global_step == args.max_train_steps:
            check_finite_weights(module.parameters(), global_step, args.output_dir, accelerator)
            save_checkpoint_atomically(accelerator, args.output_dir, global_step, ema)
            if accelerator.is_main_process and args.checkpoints_total_limit is not None:  # once the new one is whole
                rotate_checkpoints(args.output_dir, args.checkpoints_total_limit)
        if args.validation_steps and global_step % args.validation_steps == 0:
            if is_fsdp(accelerator):  # every rank samples with the sharded weights; the main process writes
                gathered = unsharded_root(module)
                log_validation(args, accelerator, transformer, ema, text_cache, vae, dataset, global_step, gathered)
            elif accelerator.is_main_process:
                log_validation(args, accelerator, transformer, ema, text_cache, vae, dataset, global_step)
        if args.sensitivity_steps and global_step % args.sensitivity_steps == 0 and accelerator.is_main_process:
            log_instruction_sensitivity(args, transformer, ema, components, probe_world, global_step, text_ema)
        step_start = time.perf_counter()  # checkpointing and validation are not step time

    # ---- final weights: checked finite, gathered on every rank (EMA weights with --use_ema), written once
    if batch is not None:  # the last update may have left finite weights whose outputs overflow
        with torch.no_grad():
            final_loss = accelerator.gather(training_loss(module, batch).detach().reshape(1)).mean().item()
        check_finite_loss(final_loss, global_step, args.output_dir)
    accelerator.wait_for_everyone()
    if text_ema is not None:
        text_ema.copy_to(text_params)
    ema_weights = ema.shadow_params if ema is not None else []
    check_finite_weights([*module.parameters(), *ema_weights, *text_params], global_step, args.output_dir, accelerator)
    if args.train_text_encoder:
        text_encoder.requires_grad_(False).eval()
    if final_output is not None and accelerator.is_main_process:  # recorded before it is written
        record_output(args.output_dir, final_output)
    export_trained(args, accelerator, module, ema, components, lora)
    accelerator.end_training()
    return {"global_step": global_step, "last_loss": last_loss, "output_dir": args.output_dir}


if __name__ == "__main__":
    run_cli(lambda: main(parse_args()), "train_vincie.py")
