"""Streaming sessions for training: parquet shards read lazily, split across processes and dataloader workers, and
resumed exactly in the middle of an epoch.

* :class:`StreamingSessions`: a ``torch`` ``IterableDataset`` over the parquet shards of a sessions dataset
  (``dataset_scripts/build_sessions.py`` output, a parquet glob or a Hub dataset). Epoch ``e`` reads the shards in
  an order drawn from ``(seed, e)`` through ``datasets``' streaming parquet reader; ``split_dataset_by_node`` gives
  each process its part (whole shards when the shard count is a multiple of the process count, else every
  ``num_processes``-th session) and ``datasets`` splits a process's shards across its dataloader workers, so over
  all processes and workers every session is read exactly once per epoch. Each worker streams epoch after epoch
  without end: processes never run out of batches at different steps. Sessions keep their stored order inside a
  shard (a shuffle buffer would be lost at a resume); the shard order changes every epoch.
* :class:`StreamingBatches`: batches of planned samples, drawn in the main process from the micro-step and the
  session id (the same plans whatever the worker layout), through ``torchdata``'s ``StatefulDataLoader``, whose
  state (each worker's shard and row position, the next worker to read from) is saved in every checkpoint as
  ``data_state_<process>.json``. A resumed run reads exactly the batches the uninterrupted run would have read.

Map-style datasets (``SessionRowsDataset`` with ``ResumableBatchSampler``) shuffle every session each epoch but
load the whole dataset into an Arrow cache first; streaming starts at once and needs no disk beyond the shards.
"""

from __future__ import annotations

import glob
import json
import os
import zlib
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch

from ..data.schema import SessionRecord
from ..utils.io import write_json_atomic
from .data import PlannedSample, TrainingSession, _PlanningDataset, check_interpolation
from .sequences import SequenceConfig

DATA_STATE_FORMAT = "vincie-streaming-data/1"


def data_state_file(process_index: int) -> str:
    """Name of a process's data-order state inside a checkpoint folder."""
    return f"data_state_{process_index}.json"


def session_key(session_id: str) -> int:
    """A stable integer of a session id (seeds its sequence plans; the same in every process and run)."""
    return zlib.crc32(session_id.encode("utf-8"))


def session_data_files(path_or_repo: str, split: str = "train") -> list[str]:
    """The parquet shards of a sessions dataset: a folder of the build pipeline (its dataset card lists them), a
    ``.parquet`` file or glob, or a Hub dataset id.

    Raises:
        FileNotFoundError: nothing at a local path, or a glob that matches no file.
        ValueError: not a sessions dataset (checked by ``load_sessions``), no such split, or non-parquet files.
    """
    from datasets import load_dataset_builder

    from ..data.loaders import load_sessions

    load_sessions(path_or_repo, split=split, streaming=True)  # checks the path and the session columns
    source = str(path_or_repo)
    if source.endswith(".parquet") or any(char in source for char in "*?["):
        files = sorted(glob.glob(os.path.expanduser(source)))
        if not files:
            raise FileNotFoundError(f"no parquet file matches {source!r}.")
    else:
        data_files = load_dataset_builder(source).config.data_files or {}
        if split not in data_files:
            raise ValueError(f"{source!r} has no split {split!r} (it has {sorted(data_files)}).")
        files = [str(f) for f in data_files[split]]
    other = [f for f in files if not f.endswith(".parquet")]
    if other or not files:
        raise ValueError(f"streaming reads parquet shards; {source!r} split {split!r} has {other[:3] or 'none'}.")
    return files


def _num_rows(path: str) -> int:
    import fsspec
    import pyarrow.parquet as pq

    with fsspec.open(path, "rb") as handle:
        return pq.read_metadata(handle).num_rows


class StreamingSessions(_PlanningDataset, torch.utils.data.IterableDataset):
    """Sessions streamed from parquet shards, epoch after epoch without end; yields ``(session key, epoch,
    TrainingSession)`` (decoded and resized in the dataloader workers).

    Args:
        data_files: the parquet shards (:func:`session_data_files`).
        config: sequence configuration (plans are drawn by :meth:`plan`, in the main process).
        seed: seed of the shard order of every epoch and of the sequence plans.
        resolution: optional square size every frame is resized to.
        group_turns: one number of turns per micro-step (less attention padding).
        num_processes, process_index: data-parallel layout (set by :class:`StreamingBatches`).
        interpolation: the filter frames are resized with (a key of :data:`~.data.INTERPOLATION_MODES`).
    """

    def __init__(
        self,
        data_files: list[str],
        config: SequenceConfig,
        seed: int = 0,
        resolution: Optional[int] = None,
        group_turns: bool = True,
        num_processes: int = 1,
        process_index: int = 0,
        interpolation: str = "bicubic",
    ):
        super().__init__(config, seed, group_turns)
        if not data_files:
            raise ValueError("`data_files` is empty; give the parquet shards of a sessions dataset.")
        self.data_files, self.resolution = list(data_files), resolution
        self.interpolation = check_interpolation(interpolation)
        self.num_processes, self.process_index = num_processes, process_index
        self._epoch, self._rows, self._resume_rows = 0, None, None
        self._num_sessions: Optional[int] = None
        self._head: list[TrainingSession] = []

    @classmethod
    def from_source(cls, path_or_repo: str, split: str, config: SequenceConfig, **kwargs: Any) -> "StreamingSessions":
        """From a sessions folder, parquet file or glob, or Hub id (see :func:`session_data_files`)."""
        return cls(session_data_files(path_or_repo, split), config, **kwargs)

    def __len__(self) -> int:
        """Sessions per epoch over all processes (from the shards' parquet metadata)."""
        if self._num_sessions is None:
            self._num_sessions = sum(_num_rows(f) for f in self.data_files)
        return self._num_sessions

    def shards_per_process(self) -> int:
        """Shards each process reads: its own share when the shard count divides evenly, else all of them."""
        shards = len(self.data_files)
        return shards // self.num_processes if shards % self.num_processes == 0 else shards

    def session(self, index: int) -> TrainingSession:
        """Session ``index`` in the stored order (read from the start of the stream; for validation grids)."""
        if index >= len(self._head):
            from datasets import load_dataset

            rows = load_dataset("parquet", data_files={"train": self.data_files}, split="train", streaming=True)
            rows = rows.decode(False)  # images reach SessionRecord.from_row as stored (path-only ones refused)
            self._head = [self._decode(row) for row in rows.take(index + 1)]
        return self._head[index]

    def _decode(self, row: dict) -> TrainingSession:
        return TrainingSession.from_record(SessionRecord.from_row(row), self.resolution, self.interpolation)

    def _epoch_rows(self, epoch: int):
        from datasets import load_dataset
        from datasets.distributed import split_dataset_by_node

        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.data_files))
        files = [self.data_files[i] for i in order]
        rows = load_dataset("parquet", data_files={"train": files}, split="train", streaming=True).decode(False)
        return split_dataset_by_node(rows, rank=self.process_index, world_size=self.num_processes)

    def __iter__(self) -> Iterator[tuple[int, int, TrainingSession]]:
        while True:
            self._rows = self._epoch_rows(self._epoch)
            resumed = self._resume_rows is not None
            if resumed:
                self._rows.load_state_dict(self._resume_rows)
                self._resume_rows = None
            empty = True
            for row in self._rows:
                empty = False
                yield session_key(row["session_id"]), self._epoch, self._decode(row)
            if empty and not resumed:
                worker = torch.utils.data.get_worker_info()
                raise RuntimeError(
                    f"Process {self.process_index} (dataloader worker {worker.id if worker else 0}) got no session "
                    f"in epoch {self._epoch}: {len(self.data_files)} shards are too few for this layout; use fewer "
                    "--dataloader_num_workers or rebuild the dataset with a smaller --shard-size."
                )
            self._epoch += 1

    # ``StatefulDataLoader`` calls these in each worker (or in the main process without workers)
    def state_dict(self) -> dict:
        rows = self._rows.state_dict() if self._rows is not None else self._resume_rows
        return {"epoch": self._epoch, "rows": rows}

    def load_state_dict(self, state: dict) -> None:
        self._epoch, self._resume_rows, self._rows = int(state["epoch"]), state["rows"], None


def _collate(items: list) -> list:
    return list(items)


class StreamingBatches:
    """The per-process batches of planned samples of a :class:`StreamingSessions`, resumable from a checkpoint.

    Iterating yields ``[PlannedSample, ...]`` lists (``batch_size`` each) for micro-steps ``start_step, start_step +
    1, ...``; :meth:`save` writes this process's position into a checkpoint folder and :meth:`load` restores it
    (before iterating).

    Args:
        sessions: the streamed sessions.
        batch_size: sessions per process per micro-step.
        num_processes, process_index: data-parallel layout.
        num_workers: dataloader worker processes (each reads its own shards).
        start_step: micro-step of the first batch (overridden by :meth:`load`).
    """

    def __init__(
        self,
        sessions: StreamingSessions,
        batch_size: int,
        num_processes: int = 1,
        process_index: int = 0,
        num_workers: int = 0,
        start_step: int = 0,
    ):
        try:
            from torchdata.stateful_dataloader import StatefulDataLoader
        except ImportError as error:
            raise ImportError(
                "Streaming needs torchdata's StatefulDataLoader: pip install torchdata (the [train] extra)."
            ) from error
        sessions.num_processes, sessions.process_index = num_processes, process_index
        readers = max(1, num_workers)
        if sessions.shards_per_process() < readers:
            raise ValueError(
                f"{len(sessions.data_files)} shards give each of the {num_processes} process(es) "
                f"{sessions.shards_per_process()}, fewer than its {readers} reader(s) (--dataloader_num_workers "
                f"{num_workers}); use fewer workers, or rebuild the dataset with a smaller --shard-size."
            )
        self.sessions, self.step = sessions, start_step
        self.layout = {"num_processes": num_processes, "process_index": process_index, "num_workers": num_workers}
        self.loader = StatefulDataLoader(
            sessions,
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=_collate,
            persistent_workers=num_workers > 0,
        )
        self.epochs_seen: list[int] = []  # epoch of each session of the last batch (tests and logs)

    def __iter__(self) -> Iterator[list[PlannedSample]]:
        for batch in self.loader:
            step, self.step = self.step, self.step + 1  # the saved state names the next micro-step
            self.epochs_seen = [epoch for _, epoch, _ in batch]
            yield [self.sessions.plan(sample, key, step) for key, _, sample in batch]

    def state_dict(self) -> dict:
        return {"format": DATA_STATE_FORMAT, "step": self.step, **self.layout, "loader": self.loader.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != DATA_STATE_FORMAT:
            raise ValueError(f"not a streaming data state (format {state.get('format')!r}).")
        saved = {name: state.get(name) for name in self.layout}
        if saved != self.layout:
            raise ValueError(
                f"the checkpoint's data order was saved with {saved}, this run has {self.layout}; resume with the "
                "same number of processes and --dataloader_num_workers."
            )
        self.step = int(state["step"])
        self.loader.load_state_dict(state["loader"])

    def save(self, folder: str | os.PathLike) -> Path:
        """Writes this process's ``data_state_<process>.json`` into a checkpoint folder (JSON only)."""
        return write_json_atomic(Path(folder) / data_state_file(self.layout["process_index"]), self.state_dict())

    def load(self, folder: str | os.PathLike) -> None:
        """Restores the position saved by :meth:`save` in ``folder``.

        Raises:
            ValueError: the file is missing (a checkpoint of a run without streaming) or of another layout.
        """
        path = Path(folder) / data_state_file(self.layout["process_index"])
        if not path.is_file():
            raise ValueError(f"{path} is missing: the checkpoint was not saved by a streaming run (--streaming).")
        self.load_state_dict(json.loads(path.read_text()))


__all__ = [
    "StreamingBatches",
    "StreamingSessions",
    "data_state_file",
    "session_data_files",
    "session_key",
]
