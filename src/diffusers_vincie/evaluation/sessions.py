"""Benchmark sessions: loading MSE-Bench- and MagicBrush-format datasets, and the output file naming.

An evaluation *session* is one source image plus an ordered list of editing instructions (one per turn), and,
for benchmarks with ground truth (MagicBrush), one reference image per turn. Two on-disk formats are read:

- **MSE-Bench** (``leigangqu/MSE-Bench``, split ``train``): one row per session with the columns ``image``
  (source), ``index`` (int), ``context`` (list of instructions), ``operation`` (edit category per turn) and
  optional ``summary``, ``description_source``, ``description_target``.
- **MagicBrush** (``osunlp/MagicBrush``, split ``dev``/``test``): one row per *turn* with the columns
  ``img_id``, ``turn_index`` (1-based), ``source_img``, ``target_img``, ``instruction``; rows are grouped into
  sessions by ``img_id`` and ordered by ``turn_index``. The MagicBrush *test* split (a zip, not on the Hub) is
  read from its unzipped folder: ``edit_sessions.json`` (``{img_id: [{"input", "mask", "output",
  "instruction"}, ...]}``) next to ``images/{img_id}/{img_id}-input.png``, ``...-output{k}.png``.

Generated images are named like the official distributed generator: ``{index}_turn{t}_rep0_seed{seed}.png``
with ``t`` the 0-based turn and ``seed = seed_offset + index`` (the official runs use offset 0).
"""

from __future__ import annotations

import io
import json
import os
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import PIL.Image
import PIL.ImageOps

from ..utils.io import check_plain_name, resolve_inside

__all__ = [
    "BenchmarkSession",
    "SessionList",
    "load_benchmark_sessions",
    "output_filename",
    "output_path",
    "session_seed",
]

MSE_BENCH_REQUIRED_COLUMNS = ("image", "index", "context")
MAGICBRUSH_REQUIRED_COLUMNS = ("img_id", "turn_index", "source_img", "target_img", "instruction")


# =====================================================================================================
# Session record and naming
# =====================================================================================================


@dataclass
class BenchmarkSession:
    """One multi-turn editing session of a benchmark.

    Args:
        index: Session id used in file names (MSE-Bench ``index``, MagicBrush ``img_id``).
        source: The source image (RGB).
        instructions: One editing instruction per turn, in order.
        operations: Edit category per turn (MSE-Bench ``operation``), empty when unknown.
        references: Ground-truth image per turn (MagicBrush), empty when the benchmark has none.
        extras: Any other column of the row (captions, descriptions), untouched.
    """

    index: str
    source: PIL.Image.Image
    instructions: list[str]
    operations: list[str] = field(default_factory=list)
    references: list[PIL.Image.Image] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index = check_plain_name(self.index, "session index")  # it becomes part of output file names

    @property
    def num_turns(self) -> int:
        return len(self.instructions)


def session_seed(index: str, position: int, seed_offset: int = 0) -> int:
    """Seed of a session: ``seed_offset + index`` when the index is an integer (official), else the position."""
    return seed_offset + (int(index) if str(index).isdigit() else position)


def output_filename(index: str, turn: int, seed: int) -> str:
    """File name of the output of 0-based ``turn``, as written by the official generator."""
    return f"{index}_turn{turn}_rep0_seed{seed}.png"


def output_path(output_dir: str | os.PathLike, index: str, turn: int, seed: int) -> Path:
    """The output file of a session's turn, inside ``output_dir`` (an index that would lead out is refused)."""
    name = output_filename(check_plain_name(index, "session index"), turn, seed)
    return resolve_inside(output_dir, name, "output file")


# =====================================================================================================
# Loading
# =====================================================================================================


class SessionList(Sequence[BenchmarkSession]):
    """Lazy view of a dataset as :class:`BenchmarkSession` objects (images are decoded on access).

    Args:
        rows: A ``datasets.Dataset`` (or any sequence of dict rows) in MSE-Bench format, or a list of
            MagicBrush-format row groups (one list of turn rows per session).
        kind: ``"mse-bench"`` or ``"magicbrush"``.
    """

    def __init__(self, rows: Sequence[Any], kind: str):
        self.rows = rows
        self.kind = kind

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, position: int) -> BenchmarkSession:  # type: ignore[override]
        if isinstance(position, slice):
            raise TypeError("SessionList does not support slicing; index one session at a time.")
        row = self.rows[position]
        reader = {
            "mse-bench": _mse_bench_session,
            "magicbrush": _magicbrush_session,
            "magicbrush-folder": _magicbrush_folder_session,
        }[self.kind]
        return reader(row)

    def __iter__(self) -> Iterator[BenchmarkSession]:
        for position in range(len(self)):
            yield self[position]

    def check_indexes(self) -> None:
        """Raises ``UnsafePathError`` (a ``ValueError``) for an index that is not a plain file name, before any
        session is generated or judged: indexes name the output files. Reads the index column only."""
        if self.kind == "mse-bench":
            column = self.rows["index"] if hasattr(self.rows, "column_names") else [r["index"] for r in self.rows]
            indexes = list(column)
        elif self.kind == "magicbrush":
            ids = self.rows[0].dataset["img_id"] if self.rows else []
            indexes = [ids[group.positions[0]] for group in self.rows]
        else:
            indexes = [index for _, index, _ in self.rows]
        for position, index in enumerate(indexes):
            check_plain_name(index, f"session {position}: index")


def load_benchmark_sessions(
    source: str | os.PathLike | Any, split: str = "train", limit: int | None = None
) -> SessionList:
    """Load a benchmark as a list of sessions.

    Args:
        source: A Hugging Face Hub dataset id (``leigangqu/MSE-Bench``, ``osunlp/MagicBrush``), a local
            ``.parquet``/``.jsonl`` file, a folder of such files or an image folder (anything
            ``datasets.load_dataset`` reads), a folder written by ``Dataset.save_to_disk``, the unzipped
            MagicBrush test folder (with ``edit_sessions.json``), or an already loaded ``datasets.Dataset``.
            The format (MSE-Bench or MagicBrush) is detected from the columns.
        split: Split to read (MSE-Bench: ``train``; MagicBrush: ``dev`` or ``test``).
        limit: Keep only the first ``limit`` sessions (quick runs).
    """
    if limit is not None and limit < 1:
        raise ValueError(f"`limit` must be a positive number of sessions, got {limit}.")
    if isinstance(source, (str, os.PathLike)) and (Path(source) / "edit_sessions.json").is_file():
        folder = Path(source)
        groups = [
            (folder, img_id, turns)
            for img_id, turns in json.loads((folder / "edit_sessions.json").read_text()).items()
        ]
        sessions = SessionList(groups[:limit] if limit else groups, "magicbrush-folder")
        sessions.check_indexes()
        return sessions
    dataset = _load_dataset(source, split)
    columns = set(dataset.column_names)
    if set(MSE_BENCH_REQUIRED_COLUMNS) <= columns:
        rows: Sequence[Any] = dataset
        kind = "mse-bench"
    elif set(MAGICBRUSH_REQUIRED_COLUMNS) <= columns:
        rows = _group_magicbrush_turns(dataset)
        kind = "magicbrush"
    else:
        raise ValueError(
            f"`source` {source!r} has columns {sorted(columns)}, which match no known benchmark format: "
            f"MSE-Bench needs {list(MSE_BENCH_REQUIRED_COLUMNS)}, MagicBrush needs "
            f"{list(MAGICBRUSH_REQUIRED_COLUMNS)}. Rename the columns or convert the dataset."
        )
    if limit is not None:
        rows = rows.select(range(min(limit, len(rows)))) if hasattr(rows, "select") else rows[:limit]
    sessions = SessionList(rows, kind)
    sessions.check_indexes()
    return sessions


def _load_dataset(source: Any, split: str) -> Any:
    """The benchmark dataset, its image columns not decoded by ``datasets`` (which would open a path stored in a
    row wherever it points): ``_as_rgb`` decodes the bytes and resolves a path inside the working folder."""
    import datasets

    if isinstance(source, datasets.Dataset):
        dataset = source
    else:
        path = Path(source)
        if path.is_file():
            builder = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}.get(path.suffix)
            if builder is None:
                raise ValueError(f"`source` file {path} must be a .parquet, .jsonl, .json or .csv file.")
            dataset = datasets.load_dataset(builder, data_files=str(path), split="train")
        elif path.is_dir() and (path / "dataset_info.json").exists() and (path / "state.json").exists():
            loaded = datasets.load_from_disk(str(path))
            dataset = loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
        elif not path.exists() and str(source).count("/") != 1:
            raise FileNotFoundError(
                f"`source` {source!r} is neither an existing file/folder nor a Hub dataset id like "
                "'leigangqu/MSE-Bench'."
            )
        else:
            dataset = datasets.load_dataset(str(source), split=split)
    for name, feature in dataset.features.items():  # benchmark images are top-level columns: a cheap cast
        if isinstance(feature, datasets.Image) and feature.decode:
            dataset = dataset.cast_column(name, datasets.Image(mode=feature.mode, decode=False))
    return dataset


def _as_rgb(image: Any, what: str) -> PIL.Image.Image:
    if isinstance(image, dict) and image.get("bytes") is not None:  # undecoded datasets.Image
        image = PIL.ImageOps.exif_transpose(PIL.Image.open(io.BytesIO(image["bytes"])))
    elif isinstance(image, dict) and image.get("path") is not None:  # a path from data: inside the working folder
        image = PIL.ImageOps.exif_transpose(PIL.Image.open(resolve_inside(Path.cwd(), image["path"], f"{what} path")))
    if not isinstance(image, PIL.Image.Image):
        raise TypeError(
            f"{what} must be an image, got {type(image).__name__}; store it with a datasets.Image feature."
        )
    return image.convert("RGB")


def _mse_bench_session(row: dict[str, Any]) -> BenchmarkSession:
    context = row["context"]
    if isinstance(context, str) or not context:
        raise ValueError(
            f"Session {row['index']}: `context` must be a non-empty list of instructions, got {context!r}."
        )
    known = {"image", "index", "context", "operation"}
    return BenchmarkSession(
        index=str(row["index"]),
        source=_as_rgb(row["image"], f"session {row['index']} `image`"),
        instructions=[str(text) for text in context],
        operations=list(row.get("operation") or []),
        extras={key: value for key, value in row.items() if key not in known},
    )


def _group_magicbrush_turns(dataset: Any) -> list[_MagicBrushGroup]:
    """Positions of each session's rows, sessions in first-appearance order, turns sorted by ``turn_index``."""
    positions: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for position, (img_id, turn) in enumerate(zip(dataset["img_id"], dataset["turn_index"])):
        positions[str(img_id)].append((int(turn), position))
    return [_MagicBrushGroup(dataset, [p for _, p in sorted(turns)]) for turns in positions.values()]


@dataclass
class _MagicBrushGroup:
    dataset: Any
    positions: list[int]


def _magicbrush_session(group: _MagicBrushGroup) -> BenchmarkSession:
    rows = [group.dataset[p] for p in group.positions]
    index = str(rows[0]["img_id"])
    return BenchmarkSession(
        index=index,
        source=_as_rgb(rows[0]["source_img"], f"session {index} `source_img`"),
        instructions=[str(row["instruction"]) for row in rows],
        references=[_as_rgb(row["target_img"], f"session {index} `target_img`") for row in rows],
    )


def _magicbrush_folder_session(group: tuple[Path, str, list[dict[str, str]]]) -> BenchmarkSession:
    folder, index, turns = group
    index = check_plain_name(index, "edit_sessions.json session id")
    images = folder / "images" / index if (folder / "images" / index).is_dir() else folder / index

    def read(name: str) -> PIL.Image.Image:  # a file name from edit_sessions.json: it stays in the session's folder
        with PIL.Image.open(resolve_inside(images, name, f"edit_sessions.json session {index}: image")) as image:
            return image.convert("RGB")

    return BenchmarkSession(
        index=str(index),
        source=read(turns[0]["input"]),
        instructions=[str(turn["instruction"]) for turn in turns],
        references=[read(turn["output"]) for turn in turns],
    )
