"""Safe loading of official ``.pth`` checkpoints (flat ``name -> tensor`` mappings)."""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping

import torch

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
