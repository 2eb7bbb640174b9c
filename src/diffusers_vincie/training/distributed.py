"""Data-parallel layouts of the training scripts: FSDP2 on GPUs and on CPU processes, and DTensor-safe weights.

* :func:`create_accelerator` builds the ``Accelerator`` and checks that the layout the launcher asked for is the one
  that runs. accelerate's CPU state (``ACCELERATE_USE_CPU=1``: gloo, ``MULTI_CPU``) drops the FSDP plugin its launcher
  configured from an FSDP config file and would train plain data-parallel; here that plugin (FSDP2 only) is made to
  take effect, so the same config shards on GPUs and on CPU processes. FSDP asked for but not active (FSDP1 on CPU,
  one process, ``accelerate launch --cpu``, which starts a single process whatever ``--num_processes`` says) is an
  error, never a silent fall-back. :func:`check_fsdp_support` and :func:`check_deepspeed_config` refuse, before any
  heavy work, what cannot run under the active layout.
* Under FSDP2 every parameter is a ``DTensor`` shard. :func:`full_state_dict` gathers full weights (every rank takes
  part, the main process keeps them), :func:`shard_like` cuts a full tensor back into the local shard of a
  ``DTensor``, and :func:`unsharded_root` all-gathers the weights outside the transformer blocks for a forward that
  does not enter through the wrapped module (validation sampling).
* :func:`build_train_dataloader` gives accelerate a ``DataLoader`` with a ``batch_size`` (DeepSpeed reads its
  micro-batch size from it) whose prepared form hands every process exactly its part of each global batch.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import torch
from torch.utils.data import DataLoader, Sampler

from ..utils.cli import UsageError

_TRUE = ("1", "true", "yes")


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in _TRUE


def fsdp_requested() -> bool:
    """Whether ``accelerate launch`` was given an FSDP config (its launcher sets ``ACCELERATE_USE_FSDP``)."""
    return _env_flag("ACCELERATE_USE_FSDP")


def _single_process_cpu_launch() -> bool:
    """``accelerate launch --cpu --num_processes N>1`` runs its one-process launcher: it sets a rendezvous address
    for N processes but starts only this one (no ``WORLD_SIZE``), and drops any FSDP or DeepSpeed config."""
    return (
        _env_flag("ACCELERATE_USE_CPU")
        and "MASTER_PORT" in os.environ
        and not any(name in os.environ for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"))
    )


def create_accelerator(**kwargs):
    """An ``Accelerator(**kwargs)`` running the layout its launcher configured.

    Raises:
        UsageError: FSDP was asked for and cannot be active (FSDP1 on CPU processes, a single process), or
            ``accelerate launch --cpu`` was asked for several processes.
    """
    from accelerate import Accelerator, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if _single_process_cpu_launch():
        raise UsageError(
            "accelerate launch --cpu starts one process whatever --num_processes says, and ignores FSDP and "
            "DeepSpeed configs; launch CPU processes with: ACCELERATE_USE_CPU=1 accelerate launch --config_file "
            "<config> --num_processes <N> <script> ..."
        )
    accelerator = Accelerator(**kwargs)
    if not fsdp_requested():
        return accelerator
    state = accelerator.state
    if state.distributed_type == DistributedType.MULTI_CPU:
        plugin = FullyShardedDataParallelPlugin()  # the launcher's FSDP settings, read from the environment
        if plugin.fsdp_version != 2:
            raise UsageError(
                f"FSDP on CPU processes needs fsdp_version: 2 in the accelerate config (got {plugin.fsdp_version}; "
                "FSDP1 cannot shard over gloo): use training_scripts/configs/accelerate_fsdp2.yaml."
            )
        if state.mixed_precision != "no":
            plugin.set_mixed_precision(state.mixed_precision)
        state.fsdp_plugin = plugin
        state.distributed_type = DistributedType.FSDP
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    if state.distributed_type != DistributedType.FSDP:
        raise UsageError(
            f"The accelerate config asks for FSDP, but it is not active here ({state.distributed_type.value}, "
            f"{state.num_processes} process(es)): FSDP needs at least 2 processes; launch with --num_processes >= 2, "
            "or use a config without FSDP."
        )
    return accelerator


def check_deepspeed_config(accelerator, args) -> None:
    """Under DeepSpeed the engine clips gradients with its config's ``gradient_clipping`` (``--max_grad_norm`` is not
    applied), and ZeRO-3 partitions the weights that the EMA, validation and the final export read whole: a clip
    that differs from ``--max_grad_norm``, or ZeRO-3, is refused (FSDP2 shards the weights)."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    config = accelerator.state.deepspeed_plugin.deepspeed_config
    stage = config.get("zero_optimization", {}).get("stage", 0)
    if stage >= 3:
        raise UsageError(
            "DeepSpeed ZeRO-3 is not supported (it partitions the weights the EMA, validation and the export read); "
            "use ZeRO-2 (training_scripts/configs/accelerate_deepspeed_zero2.yaml) or FSDP2 to shard the weights."
        )
    clip = config.get("gradient_clipping", 0.0)
    if clip != "auto" and float(clip) != float(args.max_grad_norm):
        raise UsageError(
            f"DeepSpeed clips gradients at {clip} (gradient_clipping of its config), --max_grad_norm is "
            f"{args.max_grad_norm}: make them equal (accelerate launch --gradient_clipping {args.max_grad_norm})."
        )


def is_fsdp(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def check_fsdp_support(accelerator, args) -> None:
    """Refuses, before any heavy work, what cannot run sharded: FSDP1 (the script's DTensor paths are FSDP2's), a
    trained text encoder (its prompts are encoded outside the wrapped module, so it would not be sharded), the
    instruction-sensitivity probe (main process only)."""
    if not is_fsdp(accelerator):
        return
    if accelerator.state.fsdp_plugin.fsdp_version != 2:
        raise UsageError(
            "This script trains under FSDP2 only (fsdp_version: 2): use training_scripts/configs/accelerate_fsdp2.yaml."
        )
    if args.train_text_encoder:
        raise UsageError(
            "--train_text_encoder is not supported under FSDP (the text encoder runs outside the sharded module); "
            "train it in one process, or leave it frozen."
        )
    if args.sensitivity_steps:
        raise UsageError(
            "--sensitivity_steps is not supported under FSDP (it samples on the main process only); measure the "
            "saved pipeline with benchmarks/instruction_sensitivity.py instead."
        )


# =====================================================================================================
#                                           DTensor weights
# =====================================================================================================


def is_dtensor(tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor: a ``DTensor`` is all-gathered (a collective: every rank must call it), anything else is
    returned as is."""
    return tensor.full_tensor() if is_dtensor(tensor) else tensor


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``full`` laid out as ``like``: this rank's shard when ``like`` is a ``DTensor`` (cut locally, no
    communication: every rank holds ``full``), else ``full`` on ``like``'s device and dtype."""
    if is_dtensor(like):
        from torch.distributed.tensor import distribute_tensor

        full = full.to(device=like.device, dtype=like.dtype)
        return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None)
    return full.to(device=like.device, dtype=like.dtype)


def full_state_dict(
    model: torch.nn.Module,
    is_main_process: bool,
    replace: Optional[dict] = None,
    include: Optional[Callable[[str], bool]] = None,
) -> dict:
    """``{name: full CPU tensor}`` of ``model``'s parameters and persistent buffers; empty off the main process.

    Every rank must call it (each ``DTensor`` is all-gathered in turn, so only one full tensor at a time is in
    flight). ``replace`` maps parameter names to tensors taken instead (an EMA's shadow weights); ``include`` keeps
    only the names it accepts.
    """
    replace = replace or {}
    state = {}
    for name, tensor in model.state_dict().items():
        if include is not None and not include(name):
            continue
        tensor = full_tensor(replace.get(name, tensor)).detach()
        if is_main_process:
            state[name] = tensor.cpu().clone()
    return state


def ema_replacements(model: torch.nn.Module, ema) -> dict:
    """``{parameter name: EMA shadow}`` for the trainable parameters of ``model`` (the EMA's parameter order)."""
    if ema is None:
        return {}
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    if len(names) != len(ema.shadow_params):
        raise ValueError(f"The EMA holds {len(ema.shadow_params)} tensors, the model {len(names)} trainable ones.")
    return dict(zip(names, ema.shadow_params))


@contextmanager
def unsharded_root(module: torch.nn.Module) -> Iterator[None]:
    """For a forward that does not enter through ``module`` (sampling the transformer inside it): under FSDP2 the
    root's own weights (everything outside the wrapped transformer blocks, which gather themselves) are
    all-gathered for the block and resharded after. Every rank must run the same forwards inside it."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(module, FSDPModule):
        yield
        return
    module.unshard()
    try:
        yield
    finally:
        module.reshard()


# =====================================================================================================
#                                             Data order
# =====================================================================================================


class GlobalOrderSampler(Sampler):
    """Flattens a batch sampler of *global* batches into one stream of items, global batch after global batch.

    A ``DataLoader(batch_size=b)`` over it cuts each global batch of ``b x num_processes`` items into per-process
    micro-batches in process order, and accelerate's prepared loader gives process ``p`` every ``num_processes``-th
    one starting at ``p``: exactly its part of each global batch, as the unprepared per-process order would.
    """

    def __init__(self, global_batches: Sampler):
        self.global_batches = global_batches

    def __iter__(self):
        for batch in self.global_batches:
            yield from batch


def build_train_dataloader(dataset, args, num_processes: int, start_step: int) -> DataLoader:
    """The training ``DataLoader``, to pass to ``accelerator.prepare``: the global batches of
    :class:`ResumableBatchSampler` (a pure function of ``args.seed`` and the micro-step, so a resume at micro-step
    ``start_step`` continues the order exactly) cut into ``args.train_batch_size`` samples per process."""
    from .data import ResumableBatchSampler, collate_planned

    global_batches = ResumableBatchSampler(
        len(dataset), args.train_batch_size * num_processes, seed=args.seed, start_step=start_step
    )
    return DataLoader(
        dataset,
        batch_size=args.train_batch_size,
        sampler=GlobalOrderSampler(global_batches),
        collate_fn=collate_planned,
        num_workers=args.dataloader_num_workers,
        persistent_workers=args.dataloader_num_workers > 0,
    )


__all__ = [
    "GlobalOrderSampler",
    "build_train_dataloader",
    "check_deepspeed_config",
    "check_fsdp_support",
    "create_accelerator",
    "ema_replacements",
    "fsdp_requested",
    "full_state_dict",
    "full_tensor",
    "is_dtensor",
    "is_fsdp",
    "shard_like",
    "unsharded_root",
]
