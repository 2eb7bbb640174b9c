"""Training checkpoints: ``checkpoint-<step>`` folders that are complete, safe to load, and found again on resume.

* **Atomic.** A checkpoint is written to a hidden ``.checkpoint-<step>.tmp`` folder and renamed into place only once
  every process has finished writing; the last file written is ``checkpoint_complete.json``, which lists the size of
  every file. A folder without it, or whose files no longer match it (truncated by a copy, a file deleted), is
  *incomplete*: ``--resume_from_checkpoint latest`` skips it with a warning and takes the newest complete one.
* **Nothing unpickles.** The model is ``model.safetensors``; the EMA is ``ema.safetensors`` (written here, not by
  accelerate's ``register_for_checkpointing``, whose ``custom_checkpoint_<i>.pkl`` accelerate loads with
  ``weights_only=False``, i.e. by running any code the file names). The optimizer, scheduler and RNG files of
  ``accelerator.save_state`` are loaded by accelerate with ``torch.load(weights_only=True)`` (tensors and plain
  containers only); a file that needs more is refused with an error naming it, as is any ``*.pkl`` custom object.
  This covers the checkpoints of one process and of DDP; the sharded state of DeepSpeed or FSDP (sub-folders) is
  read by those engines themselves, and ``torch.distributed.checkpoint`` unpickles its ``.metadata`` (a warning says
  so at resume).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Optional

from ..utils.cli import UsageError
from ..utils.io import commit_directory, write_json_atomic

logger = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_CUSTOM_PICKLE = re.compile(r"^custom_checkpoint_\d+\.pkl$")
COMPLETE_FILE = "checkpoint_complete.json"
EMA_FILE = "ema.safetensors"
TEXT_EMA_FILE = "text_ema.safetensors"  # the EMA of a text encoder trained with the transformer
COMPLETE_FORMAT = "vincie-checkpoint/1"


class CheckpointError(UsageError):
    """A checkpoint that cannot be resumed from: incomplete, or holding something that would have to be unpickled."""


def checkpoint_step(path: str | os.PathLike, flag: str = "--resume_from_checkpoint") -> int:
    match = _CHECKPOINT.match(Path(path).name)
    if match is None:
        raise CheckpointError(f"{flag} {path} must be a 'checkpoint-<step>' folder.")
    return int(match.group(1))


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """``checkpoint-<step>`` folders of a run (complete or not), oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found)]


# ---------------------------------------------------------------------------------------------------------------------
# Completeness and safety
# ---------------------------------------------------------------------------------------------------------------------


def refuse_pickled_objects(folder: str | os.PathLike) -> None:
    """Raises :class:`CheckpointError` when ``folder`` holds a pickled custom object (accelerate's
    ``custom_checkpoint_<i>.pkl``, loaded with ``weights_only=False``): it is never loaded."""
    pickles = sorted(p.name for p in Path(folder).iterdir() if _CUSTOM_PICKLE.match(p.name))
    if pickles:
        raise CheckpointError(
            f"{folder} holds pickled objects ({', '.join(pickles)}); they are not loaded, since unpickling a file "
            f"can run any code in it. Checkpoints of this version keep the EMA in {EMA_FILE}. To convert a "
            f"checkpoint of an earlier version (its EMA read with torch.load(weights_only=True), which refuses code): "
            f"python -m diffusers_vincie.training.checkpoints --migrate {folder}"
        )


def incomplete_reason(folder: str | os.PathLike) -> Optional[str]:
    """Why ``folder`` is not a complete checkpoint (``None`` when it is): no completeness marker, or a file missing
    or of another size than when it was saved."""
    folder = Path(folder)
    marker = folder / COMPLETE_FILE
    if not marker.is_file():
        return f"no {COMPLETE_FILE} (the save did not finish)"
    try:
        record = json.loads(marker.read_text())
        files = dict(record["files"])
    except (ValueError, KeyError, TypeError) as error:
        return f"{COMPLETE_FILE} is unreadable ({error})"
    for name, size in sorted(files.items()):
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} when saved (truncated or replaced)"
    return None


def find_checkpoint(output_dir: str | os.PathLike, resume_from_checkpoint: Optional[str]) -> Optional[Path]:
    """The checkpoint to resume from.

    Args:
        output_dir: the run folder.
        resume_from_checkpoint: ``None`` (no resume), ``"latest"`` (the newest complete checkpoint of
            ``output_dir``, skipping incomplete ones with a warning; ``None`` when the run has none yet) or a
            checkpoint folder (absolute, or relative to the working directory or ``output_dir``).

    Raises:
        CheckpointError: a named checkpoint does not exist or is incomplete; ``latest`` finds checkpoints but
            none complete; a candidate holds pickled objects.
    """
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        skipped = []
        for path in reversed(checkpoints):
            refuse_pickled_objects(path)
            reason = incomplete_reason(path)
            if reason is None:
                return path
            logger.warning(f"Skipping incomplete checkpoint {path}: {reason}.")
            skipped.append(f"{path.name}: {reason}")
        interrupted = sorted(Path(output_dir).glob(".checkpoint-*.tmp")) if not checkpoints else []
        skipped += [f"{path.name}: a save that did not finish" for path in interrupted]
        if skipped:
            raise CheckpointError(
                f"--resume_from_checkpoint latest: no complete checkpoint in {output_dir} ({'; '.join(skipped)}). "
                f"Delete them to start from step 0, or pass --overwrite_output_dir to start the run over."
            )
        return None
    path = Path(resume_from_checkpoint)
    if not path.is_absolute() and not path.exists():
        path = Path(output_dir) / path
    if not path.is_dir():
        raise CheckpointError(
            f"--resume_from_checkpoint {resume_from_checkpoint} does not exist (nor under {output_dir})."
        )
    checkpoint_step(path)
    refuse_pickled_objects(path)
    reason = incomplete_reason(path)
    if reason is not None:
        raise CheckpointError(f"--resume_from_checkpoint {path} is incomplete: {reason}; use 'latest' or another one.")
    return path


# ---------------------------------------------------------------------------------------------------------------------
# EMA as safetensors
# ---------------------------------------------------------------------------------------------------------------------


def save_ema(ema, path: str | os.PathLike, is_main_process: bool = True) -> None:
    """Writes an ``EMAModel``'s shadow weights (``shadow.<i>``, full tensors) and its scalars (JSON metadata) as
    safetensors. Shadows sharded like an FSDP2 model (``DTensor``) are gathered: then every rank calls it and the main
    process writes."""
    from safetensors.torch import save_file

    from .distributed import full_tensor

    state = ema.state_dict()
    tensors = {}
    for i, shadow in enumerate(state.pop("shadow_params")):
        shadow = full_tensor(shadow).detach()
        if is_main_process:
            tensors[f"shadow.{i}"] = shadow.contiguous().cpu()
    if is_main_process:
        save_file(tensors, str(path), metadata={"ema": json.dumps(state)})


def load_ema_shadow(path: str | os.PathLike) -> tuple[list, dict]:
    """``(shadow tensors in parameter order, scalars)`` of an :func:`save_ema` file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as reader:
        scalars = json.loads((reader.metadata() or {}).get("ema", "{}"))
        shadow = [reader.get_tensor(f"shadow.{i}") for i in range(len(list(reader.keys())))]
    return shadow, scalars


def load_ema(ema, path: str | os.PathLike) -> None:
    shadow, scalars = load_ema_shadow(path)
    if len(shadow) != len(ema.shadow_params):
        raise CheckpointError(f"{path} holds {len(shadow)} EMA tensors, the model has {len(ema.shadow_params)}.")
    from .distributed import shard_like  # each rank keeps its shard of a sharded EMA

    ema.load_state_dict(
        {**scalars, "shadow_params": [shard_like(t, like) for t, like in zip(shadow, ema.shadow_params)]}
    )


# ---------------------------------------------------------------------------------------------------------------------
# Save, load, rotate
# ---------------------------------------------------------------------------------------------------------------------


def save_checkpoint_atomically(accelerator, output_dir: str | os.PathLike, step: int, ema=None) -> Path:
    """``accelerator.save_state`` (+ ``ema.safetensors``) into ``.checkpoint-<step>.tmp``, then the completeness
    marker, then the rename to ``checkpoint-<step>``.

    Must be called on every process (each saves its RNG state and its shards; the main process writes the EMA, the
    marker and renames).
    """
    final = Path(output_dir) / f"checkpoint-{step}"
    tmp = Path(output_dir) / f".checkpoint-{step}.tmp"  # one name every process agrees on
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)  # left by a killed run
    accelerator.wait_for_everyone()
    tmp.mkdir(parents=True, exist_ok=True)
    accelerator.save_state(str(tmp))
    if ema is not None:
        save_ema(ema, tmp / EMA_FILE, accelerator.is_main_process)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:  # sharded engine state lies in sub-folders: their files are listed too
        files = {p.relative_to(tmp).as_posix(): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        write_json_atomic(tmp / COMPLETE_FILE, {"format": COMPLETE_FORMAT, "step": step, "files": files})
        commit_directory(tmp, final, replace=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, folder: str | os.PathLike, ema=None) -> int:
    """Restores a checkpoint found by :func:`find_checkpoint`; returns its step.

    Raises:
        CheckpointError: a pickled custom object, a file that ``torch.load(weights_only=True)`` refuses, the
            process's RNG state unreadable, or an EMA missing or not matching the model.
    """
    from accelerate.utils import load as accelerate_load

    folder = Path(folder)
    refuse_pickled_objects(folder)
    sharded = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if sharded:  # not covered by the guarantee above: those engines read their own formats
        logger.warning(
            f"{folder} holds sharded engine state ({', '.join(sharded)}: DeepSpeed or FSDP); the engine "
            "reads it itself (torch.distributed.checkpoint unpickles its .metadata): resume only from "
            "checkpoints you trust."
        )
    rng_file = folder / f"random_states_{accelerator.process_index}.pkl"
    try:  # accelerate itself only logs "Could not load random states", and the resume would silently differ
        accelerate_load(rng_file)  # weights_only=True
    except Exception as error:
        raise CheckpointError(f"{rng_file} cannot be loaded safely ({type(error).__name__}: {error}).") from error
    try:
        accelerator.load_state(str(folder))
    except Exception as error:  # UnpicklingError of weights_only=True, a truncated file, a shape mismatch
        raise CheckpointError(f"{folder} cannot be loaded safely ({type(error).__name__}: {error}).") from error
    if ema is not None:
        if not (folder / EMA_FILE).is_file():
            raise CheckpointError(f"{folder / EMA_FILE} is missing: the checkpoint was saved without --use_ema.")
        load_ema(ema, folder / EMA_FILE)
    return checkpoint_step(folder)


def migrate_legacy_checkpoint(folder: str | os.PathLike) -> Path:
    """Converts a checkpoint of an earlier version in place: its EMA ``custom_checkpoint_0.pkl`` (read with
    ``torch.load(weights_only=True)``: tensors and plain values only, anything else refused) becomes
    ``ema.safetensors``, and the completeness marker is written."""
    import torch
    from diffusers.training_utils import EMAModel

    folder = Path(folder)
    checkpoint_step(folder, "--migrate")
    legacy = folder / "custom_checkpoint_0.pkl"
    extra = sorted(p.name for p in folder.iterdir() if _CUSTOM_PICKLE.match(p.name) and p != legacy)
    if extra:
        raise CheckpointError(f"{folder} holds custom objects other than the EMA ({', '.join(extra)}); not migrated.")
    if legacy.is_file():
        try:
            state = torch.load(legacy, map_location="cpu", weights_only=True)
        except Exception as error:
            raise CheckpointError(f"{legacy} is not a plain EMA state ({type(error).__name__}: {error}).") from error
        ema = EMAModel([torch.nn.Parameter(t.clone()) for t in state["shadow_params"]])
        ema.load_state_dict(state)
        save_ema(ema, folder / EMA_FILE)
        legacy.unlink()
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file() and p.name != COMPLETE_FILE}
    write_json_atomic(
        folder / COMPLETE_FILE,
        {"format": COMPLETE_FORMAT, "step": checkpoint_step(folder, "--migrate"), "files": files},
    )
    return folder


def rotate_checkpoints(output_dir: str | os.PathLike, keep: int) -> list[Path]:
    """Keeps the ``keep`` newest *complete* checkpoints and deletes the checkpoints older than them; returns the
    deleted folders.

    Called after a save has renamed its checkpoint into place, so the old checkpoints go only once the new one is
    complete: a kill or a full disk during the save leaves the previous checkpoints as they were. Incomplete
    checkpoints newer than the oldest kept one are left for ``latest`` to skip.
    """
    if keep < 1:
        raise ValueError(f"rotate_checkpoints keeps at least one complete checkpoint, got keep={keep}.")
    checkpoints = list_checkpoints(output_dir)
    complete = [path for path in checkpoints if incomplete_reason(path) is None]
    if len(complete) <= keep:
        return []
    oldest_kept = checkpoint_step(complete[-keep])
    removed = [path for path in checkpoints if checkpoint_step(path) < oldest_kept]
    for path in removed:
        shutil.rmtree(path)
    return removed


__all__ = [
    "COMPLETE_FILE",
    "EMA_FILE",
    "CheckpointError",
    "checkpoint_step",
    "find_checkpoint",
    "incomplete_reason",
    "list_checkpoints",
    "migrate_legacy_checkpoint",
    "load_checkpoint",
    "load_ema",
    "load_ema_shadow",
    "refuse_pickled_objects",
    "rotate_checkpoints",
    "save_checkpoint_atomically",
    "save_ema",
]


if __name__ == "__main__":
    import argparse

    from ..utils.cli import run_cli

    parser = argparse.ArgumentParser(description="Convert checkpoints of an earlier version (pickled EMA) in place.")
    parser.add_argument("--migrate", nargs="+", required=True, metavar="CHECKPOINT", help="checkpoint-<step> folders")
    parsed = parser.parse_args()
    for name in parsed.migrate:
        print(run_cli(lambda name=name: migrate_legacy_checkpoint(name), "diffusers_vincie.training.checkpoints"))
