"""Safe loading of official ``.pth`` checkpoints (flat ``name -> tensor`` mappings) and streaming safetensors
writing (one tensor held at a time)."""

from __future__ import annotations

import json
import os
import pickle
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..utils.io import commit, temporary_sibling

SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}

# ----------------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------------


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a ``torch.save``-d flat state dict without executing arbitrary pickled code.

    The file is memory-mapped (``mmap=True``), so tensors are read from disk lazily and the whole checkpoint is
    never resident at once.

    Args:
        path: a ``.pth`` file holding a flat ``{name: tensor}`` mapping, as the official VINCIE release ships.

    Returns:
        The mapping, with tensors still backed by the memory-mapped file.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the pickle holds objects other than tensors (refused by ``weights_only=True``), is not a flat
            mapping of string keys to tensors, is truncated, or is in the legacy (pre-zip) format.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist; pass the file from the official release")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"checkpoint {path!r} holds objects other than tensors and was refused (weights_only=True); "
            "re-save it as a plain state dict {name: tensor} with torch.save(model.state_dict(), path)"
        ) from error
    except (RuntimeError, EOFError) as error:  # torch's zip reader and mmap refusals
        if "mmap can only be used" in str(error):
            reason = (
                "is empty or in the legacy (pre-zip) torch.save format, which cannot be memory-mapped; "
                "re-save it once with torch.save(torch.load(path, weights_only=True), path)"
            )
        else:
            reason = (
                f"cannot be read ({str(error).splitlines()[0][:120]}): the file is truncated or corrupt; "
                "download it again"
            )
        raise ValueError(f"checkpoint {path!r} {reason}") from error
    return validate_state_dict(loaded, source=path)


def validate_state_dict(loaded: object, source: str) -> dict[str, torch.Tensor]:
    """Check that ``loaded`` is a flat ``{str: Tensor}`` mapping and return it as a dict.

    Args:
        loaded: the unpickled object.
        source: where it came from, used in error messages.
    """
    if not isinstance(loaded, Mapping):
        raise ValueError(
            f"checkpoint {source!r} holds a {type(loaded).__name__}, not a state dict; "
            "expected a flat mapping {name: tensor}"
        )
    bad = [key for key, value in loaded.items() if not isinstance(key, str) or not isinstance(value, torch.Tensor)]
    if bad:
        shown = ", ".join(repr(key) for key in bad[:5])
        raise ValueError(
            f"checkpoint {source!r} is not a flat state dict: entries {shown} are not tensors "
            "(a nested 'state_dict'/'ema' wrapper must be unwrapped before conversion)"
        )
    return dict(loaded)


# ----------------------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------------------


class StreamingSafetensorsWriter:
    """Write a safetensors file tensor by tensor, given every name, shape and dtype up front.

    The header (which needs all offsets) is written first; each tensor's bytes follow in the planned order, so only
    one tensor is ever held. The file appears under its final name only when complete (``utils.io.commit``).

    Args:
        path: final file path.
        entries: ``(name, shape)`` in write order.
        dtype: dtype of every tensor.
    """

    def __init__(self, path: Path, entries: list[tuple[str, tuple[int, ...]]], dtype: torch.dtype):
        self.path = path
        self.dtype = dtype
        self._temporary = temporary_sibling(path)
        self._pending = list(entries)
        item_size = torch.empty((), dtype=dtype).element_size()
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, shape in entries:
            size = item_size * int(torch.Size(shape).numel())
            header[name] = {
                "dtype": SAFETENSORS_DTYPES[dtype],
                "shape": list(shape),
                "data_offsets": [offset, offset + size],
            }
            offset += size
        encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
        encoded += b" " * (-len(encoded) % 8)  # data must start 8-byte aligned
        self._handle = open(self._temporary, "wb")
        self._handle.write(struct.pack("<Q", len(encoded)) + encoded)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        expected_name, expected_shape = self._pending.pop(0)
        if name != expected_name or tuple(tensor.shape) != expected_shape:
            raise RuntimeError(f"writer expected {expected_name} {expected_shape}, got {name} {tuple(tensor.shape)}")
        data = tensor.to(self.dtype).contiguous().view(-1).view(torch.uint8)
        self._handle.write(memoryview(data.numpy()))  # no intermediate bytes copy

    def close(self) -> None:
        if self._pending:
            raise RuntimeError(f"{len(self._pending)} tensors of {self.path.name} were never written")
        self._handle.close()
        commit(self._temporary, self.path)
