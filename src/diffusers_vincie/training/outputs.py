"""What a training run writes into its ``--output_dir``, so that ``--overwrite_output_dir`` deletes only that.

A run's own files are known by name (``checkpoint-<step>/``, the hidden ``.checkpoint-<step>.tmp/`` of an interrupted
save, the step log, ``validation/step-<step>.png``) or, for the final results whose names a user may also choose
(``pipeline/``, the LoRA weights file), by the run record ``run_outputs.json``, which a run updates before it writes
one of them. Anything else in the folder (notes, a ``pipeline/`` or ``validation/`` file of the user's own) is never
deleted; a final result the run would replace but did not write is refused before any work.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from ..utils.cli import UsageError
from ..utils.io import OutputLockedError, exclusive_lock, write_json_atomic, write_text_atomic

LOG_FILE = "train_log.jsonl"
RUN_RECORD = "run_outputs.json"
RUN_LOCK = ".train.lock"
VALIDATION_DIR = "validation"
_CHECKPOINT_FOLDER = re.compile(r"^(checkpoint-\d+|\.checkpoint-\d+\.tmp)$")
_VALIDATION_GRID = re.compile(r"^(step-\d+\.png|\.step-\d+\.png\..*\.tmp\.png)$")


def recorded_outputs(output_dir: str | os.PathLike) -> set[str]:
    """Names of the final results an earlier run of ``output_dir`` recorded as its own."""
    path = Path(output_dir) / RUN_RECORD
    try:
        record = json.loads(path.read_text())
        return {name for name in record["written"] if isinstance(name, str)}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def record_output(output_dir: str | os.PathLike, name: str) -> None:
    """Records ``name`` (a top-level entry of ``output_dir``) as written by the run, before it is written."""
    written = sorted(recorded_outputs(output_dir) | {name})
    write_json_atomic(Path(output_dir) / RUN_RECORD, {"written": written})


def check_final_output(output_dir: str | os.PathLike, name: str | None, flag: str) -> None:
    """Refuses a run whose final result ``name`` (``pipeline`` or the LoRA weights file; ``None`` when the run
    saves none) would replace an entry of ``output_dir`` that no run recorded.

    Raises:
        UsageError: naming the entry and what to do.
    """
    if name is None:
        return
    path = Path(output_dir) / name
    if (path.exists() or path.is_symlink()) and name not in recorded_outputs(output_dir):
        raise UsageError(
            f"--output_dir {output_dir} holds {name}, which no training run wrote (not in {RUN_RECORD}); {flag} would "
            f"replace it with this run's result. Move it away or choose another --output_dir."
        )


def check_output_dir(args) -> None:
    """A fresh run never writes into another run's folder: it would replace some of its checkpoints, keep the
    others (a later ``latest`` resume would mix two runs) and interleave the logs."""
    output_dir = Path(args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise UsageError(f"--output_dir {output_dir} is a file; give a folder.")
    if args.resume_from_checkpoint and args.overwrite_output_dir:
        raise UsageError(
            "--resume_from_checkpoint and --overwrite_output_dir are exclusive: continue the run or start it over."
        )
    if args.resume_from_checkpoint or args.overwrite_output_dir or not output_dir.is_dir():
        return
    entries = sorted(p.name for p in output_dir.iterdir() if p.name != RUN_LOCK)
    if entries:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise UsageError(
            f"--output_dir {output_dir} is not empty ({shown}); pass --resume_from_checkpoint latest to continue "
            f"that run, --overwrite_output_dir to start over, or give an empty folder."
        )


def truncate_log(output_dir: str | os.PathLike, step: int) -> None:
    """Keeps the log records of steps <= ``step`` (the resumed one; 0 for a fresh start), so that the log of a
    resumed run has each step once; a torn last line (a kill mid-append) is dropped."""
    path = Path(output_dir) / LOG_FILE
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line + "\n")
    write_text_atomic(path, "".join(kept))


def write_log(output_dir: str | os.PathLike, record: dict) -> None:
    with open(Path(output_dir) / LOG_FILE, "a") as f:
        f.write(json.dumps(record) + "\n")


def clear_run_outputs(output_dir: str | os.PathLike, log_file: str = LOG_FILE) -> list[Path]:
    """``--overwrite_output_dir``: deletes what earlier runs wrote and nothing else; returns the deleted paths.

    Checkpoints and the log by name, validation grids by name (``validation/`` itself only once empty), the final
    results only when the run record lists them. Tracker logs stay: each run writes its own event files.
    """
    root = Path(output_dir)
    if not root.is_dir():
        return []
    recorded = recorded_outputs(root)
    doomed = [p for p in root.iterdir() if _CHECKPOINT_FOLDER.match(p.name) and p.is_dir() and not p.is_symlink()]
    doomed += [root / name for name in sorted(recorded | {log_file}) if (root / name).exists()]
    validation = root / VALIDATION_DIR
    if validation.is_dir() and not validation.is_symlink():
        doomed += [p for p in validation.iterdir() if _VALIDATION_GRID.match(p.name) and p.is_file()]
    for path in doomed:
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    if validation.is_dir() and not validation.is_symlink() and not any(validation.iterdir()):
        validation.rmdir()
        doomed.append(validation)
    (root / RUN_RECORD).unlink(missing_ok=True)
    return doomed


@contextmanager
def run_lock(output_dir: str | os.PathLike) -> Iterator[None]:
    """One run writes ``output_dir`` at a time: the launcher's main process (``RANK`` 0) holds an ``flock`` on
    ``<output_dir>/.train.lock`` for the run (dropped by the kernel if the run dies); a second run gets a
    :class:`UsageError` before any work, instead of interleaving its checkpoints and log with the first's."""
    with ExitStack() as stack:
        if int(os.environ.get("RANK", "0")) == 0:
            try:
                stack.enter_context(exclusive_lock(Path(output_dir) / RUN_LOCK, f"--output_dir {output_dir}"))
            except OutputLockedError as error:
                raise UsageError(str(error)) from None
        yield


__all__ = [
    "LOG_FILE",
    "RUN_LOCK",
    "RUN_RECORD",
    "check_final_output",
    "check_output_dir",
    "clear_run_outputs",
    "record_output",
    "recorded_outputs",
    "run_lock",
    "truncate_log",
    "write_log",
]
