"""Memory of a training process: the formula from parameter counts, and the measurements that check it.

Per process, training holds for every trained parameter an fp32 weight, an fp32 gradient and AdamW's two fp32
moments (16 bytes), plus 4 bytes with an EMA; a frozen parameter holds its weight only (LoRA's base, in its dtype).
FSDP2 with full sharding divides all of it by the number of processes. Activations come on top: what autograd
saves for the backward pass, per token and per transformer block (:func:`saved_activation_bytes` measures it).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch

TRAINED_BYTES = 4 + 4 + 8  # fp32 weight, fp32 gradient, AdamW exp_avg and exp_avg_sq
EMA_BYTES = 4


def training_state_bytes(
    total_params: int,
    trainable_params: int,
    world_size: int = 1,
    ema: bool = False,
    frozen_bytes: int = 4,
) -> int:
    """Bytes per process of weights, gradients, optimizer states and EMA (activations excluded).

    Args:
        total_params: parameters of the trained model.
        trainable_params: those the optimizer updates (all of them for full fine-tuning, the adapters for LoRA).
        world_size: processes the state is fully sharded over (FSDP2); 1 without sharding.
        ema: whether an EMA of the trained parameters is kept.
        frozen_bytes: bytes per frozen parameter (2 for a bf16 LoRA base).
    """
    per_trained = TRAINED_BYTES + (EMA_BYTES if ema else 0)
    frozen = total_params - trainable_params
    return math.ceil((trainable_params * per_trained + frozen * frozen_bytes) / world_size)


def _local(tensor: torch.Tensor) -> torch.Tensor:
    from .distributed import is_dtensor

    return tensor.to_local() if is_dtensor(tensor) else tensor


def measured_state_bytes(parameters: list, optimizer: torch.optim.Optimizer, ema=None) -> int:
    """Bytes this process holds for ``parameters`` (its shards under FSDP2), their gradients, the optimizer's
    tensor states and the EMA's shadow weights: what :func:`training_state_bytes` predicts."""
    tensors = [_local(p) for p in parameters]
    tensors += [_local(p.grad) for p in parameters if p.grad is not None]
    for state in optimizer.state.values():
        tensors += [_local(v) for v in state.values() if torch.is_tensor(v) and v.dim() > 0]
    if ema is not None:
        tensors += [_local(s) for s in ema.shadow_params]
    return sum(t.numel() * t.element_size() for t in tensors)


@contextmanager
def saved_activation_bytes() -> Iterator[dict]:
    """Counts the bytes autograd saves for the backward pass inside the block (each storage once, parameters
    excluded): ``with saved_activation_bytes() as saved: loss = model(...)``, then ``saved["bytes"]``."""
    seen: set = set()
    result = {"bytes": 0}

    def pack(tensor):
        if not isinstance(tensor, torch.nn.Parameter):
            storage = tensor.untyped_storage()
            key = (storage.data_ptr(), storage.nbytes())
            if key not in seen:
                seen.add(key)
                result["bytes"] += storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield result


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory of this process so far: the CUDA caching allocator's maximum allocated bytes on a GPU, the
    resident set's high-water mark (``ru_maxrss``) on a CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


__all__ = [
    "EMA_BYTES",
    "TRAINED_BYTES",
    "measured_state_bytes",
    "peak_memory_bytes",
    "saved_activation_bytes",
    "training_state_bytes",
]
