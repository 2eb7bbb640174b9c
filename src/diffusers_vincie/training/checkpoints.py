"""Training checkpoints: atomic ``accelerator.save_state`` folders ``checkpoint-<step>``, rotation and resume lookup.

A checkpoint is written to a hidden temporary folder and renamed into place only once every process has
finished writing, so a hard kill never leaves a partial ``checkpoint-<step>`` for ``--resume_from_checkpoint
latest`` to pick up.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Optional

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found)]


def find_checkpoint(output_dir: str | os.PathLike, resume_from_checkpoint: Optional[str]) -> Optional[Path]:
    """The folder to resume from: ``None`` (no resume), ``"latest"`` (newest of ``output_dir``, ``None`` when
    there is none yet) or a path (``None`` when it does not exist)."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    path = Path(resume_from_checkpoint)
    if not path.is_absolute() and not path.exists():
        path = Path(output_dir) / path
    if path.is_dir() and not _CHECKPOINT.match(path.name):
        raise ValueError(f"--resume_from_checkpoint {path} must be a 'checkpoint-<step>' folder.")
    return path if path.is_dir() else None


def rotate_checkpoints(output_dir: str | os.PathLike, keep: int) -> list[Path]:
    """Deletes the oldest checkpoints so that at most ``keep`` remain; returns the deleted folders."""
    checkpoints = list_checkpoints(output_dir)
    removed = checkpoints[: max(0, len(checkpoints) - keep)]
    for path in removed:
        shutil.rmtree(path)
    return removed


def save_checkpoint_atomically(accelerator, output_dir: str | os.PathLike, step: int) -> Path:
    """``accelerator.save_state`` into ``.checkpoint-<step>.tmp`` then rename to ``checkpoint-<step>``.

    Must be called on every process (each saves its RNG state; the main process renames).
    """
    final = Path(output_dir) / f"checkpoint-{step}"
    tmp = Path(output_dir) / f".checkpoint-{step}.tmp"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)  # left by a killed run
    accelerator.wait_for_everyone()
    tmp.mkdir(parents=True, exist_ok=True)
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    accelerator.wait_for_everyone()
    return final


__all__ = ["find_checkpoint", "list_checkpoints", "rotate_checkpoints", "save_checkpoint_atomically"]
