"""The run folder of a training script (``--output_dir``): what a run writes there, the checks that keep a fresh run
out of another run's folder, and the per-step log that a resume cuts back to the resumed step."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

from ..utils.cli import UsageError
from ..utils.io import write_text_atomic

LOG_FILE = "train_log.jsonl"
# What a run writes into --output_dir (deleted by --overwrite_output_dir; anything else there is left alone).
RUN_OUTPUTS = (
    "checkpoint-*",
    ".checkpoint-*.tmp",
    LOG_FILE,
    "pipeline",
    "validation",
    "pytorch_lora_weights.safetensors",
)


def check_output_dir(args: argparse.Namespace) -> None:
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
    entries = sorted(p.name for p in output_dir.iterdir())
    if entries:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise UsageError(
            f"--output_dir {output_dir} is not empty ({shown}); pass --resume_from_checkpoint latest to continue "
            f"that run, --overwrite_output_dir to start over, or give an empty folder."
        )


def clear_run_outputs(output_dir: str) -> None:
    """``--overwrite_output_dir``: deletes what an earlier run wrote (``RUN_OUTPUTS``; tracker logs stay, each run
    writes its own event files)."""
    for pattern in RUN_OUTPUTS:
        for path in Path(output_dir).glob(pattern):
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def truncate_log(output_dir: str, step: int) -> None:
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


def write_log(output_dir: str, record: dict) -> None:
    with open(os.path.join(output_dir, LOG_FILE), "a") as f:
        f.write(json.dumps(record) + "\n")


__all__ = ["LOG_FILE", "RUN_OUTPUTS", "check_output_dir", "clear_run_outputs", "truncate_log", "write_log"]
