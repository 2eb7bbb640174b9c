"""Loading sessions: our parquet session folders, VINCIE-10M and pairwise (MagicBrush-style) edit datasets.

Everything here yields :class:`~diffusers_vincie.data.schema.SessionRecord` (or, for :func:`load_sessions`, a
``datasets`` dataset whose rows convert to one with ``SessionRecord.from_row``), so training and evaluation
read every source the same way.

- :func:`load_sessions`: a folder written by the sessions build pipeline (parquet shards + dataset card), a
  parquet file or glob, or a Hub repository with the same columns; map-style or streaming.
- :class:`Vincie10MAdapter`: VINCIE-10M rows -> sessions. **Assumption**: the public layout of VINCIE-10M was
  not available to us; we assume one row per session with a list of frames and a list of instructions (one per
  transition). The column names are a :class:`Vincie10MColumns` mapping that callers override to match the
  real release; nothing else is assumed.
- :class:`PairwiseEditAdapter`: datasets with one row per edit turn (source image, instruction, target image,
  turn index, session id), such as MagicBrush, grouped into multi-turn sessions (the frames are the first
  turn's source followed by every turn's target).
"""

from __future__ import annotations

import io
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

import numpy as np
import PIL.Image
import PIL.ImageOps
from datasets import Dataset, Features, Image, IterableDataset, List, load_dataset

from ..utils.io import UnsafePathError, resolve_inside
from .schema import SESSION_FEATURES, SessionRecord, SessionValidationError, decode_stored_image

__all__ = [
    "MAGICBRUSH_COLUMNS",
    "PairwiseEditAdapter",
    "PairwiseEditColumns",
    "Vincie10MAdapter",
    "Vincie10MColumns",
    "iter_session_records",
    "load_sessions",
    "records_to_dataset",
]

logger = logging.getLogger(__name__)

# Columns a sessions dataset must have; the other SESSION_FEATURES columns default when absent.
_REQUIRED_COLUMNS = ("session_id", "video_id", "frames", "instructions")

OnInvalid = Literal["raise", "skip"]


# =====================================================================================================
# Our session folders
# =====================================================================================================


def load_sessions(
    path_or_repo: str | os.PathLike,
    split: str = "train",
    streaming: bool = False,
    **load_dataset_kwargs: Any,
) -> Dataset | IterableDataset:
    """Loads a sessions dataset (columns of :data:`~diffusers_vincie.data.schema.SESSION_FEATURES`).

    Args:
        path_or_repo: a dataset folder (with a dataset card or ``*.parquet`` shards), a ``.parquet`` file or glob,
            or a Hub dataset id.
        split: split to load.
        streaming: return an ``IterableDataset`` that reads shards lazily.
        **load_dataset_kwargs: passed to ``datasets.load_dataset`` (e.g. ``cache_dir``).

    Returns:
        The dataset; convert rows with ``SessionRecord.from_row`` or iterate :func:`iter_session_records`.

    Raises:
        FileNotFoundError: when a local path does not exist.
        ValueError: when required session columns are missing.
    """
    source = str(path_or_repo)
    local = Path(source).expanduser()
    is_glob = any(char in source for char in "*?[")
    if source.endswith(".parquet") or is_glob:
        if not is_glob and not local.is_file():
            raise FileNotFoundError(f"path_or_repo: no parquet file at {source!r}.")
        shards = sorted(local.parent.glob(local.name)) if is_glob else [local]
        dataset = _load_local(
            shards, "parquet", data_files={split: str(local)}, split=split, streaming=streaming, **load_dataset_kwargs
        )
        dataset = _without_image_decoding(dataset)
    elif local.exists():
        if not local.is_dir():
            raise FileNotFoundError(
                f"path_or_repo: {source!r} is not a folder; give a sessions folder, a .parquet file or a Hub id."
            )
        dataset = _load_local(
            _local_shards(local), str(local), split=split, streaming=streaming, **load_dataset_kwargs
        )
        dataset = _without_image_decoding(dataset)
    elif source.startswith(("/", ".", "~")) or source.count("/") > 1:
        raise FileNotFoundError(f"path_or_repo: no folder at {source!r} (and it is not a Hub id 'owner/name').")
    else:
        dataset = _without_image_decoding(
            load_dataset(source, split=split, streaming=streaming, **load_dataset_kwargs)
        )

    columns = dataset.column_names or (list(dataset.features) if dataset.features else None)
    if columns is not None:
        missing = [name for name in _REQUIRED_COLUMNS if name not in columns]
        if missing:
            raise ValueError(
                f"path_or_repo: {source!r} has no column(s) {missing} (found {columns}); it is not a sessions "
                "dataset. Use Vincie10MAdapter or PairwiseEditAdapter for other layouts."
            )
    return dataset


def _without_image_decoding(dataset: Dataset | IterableDataset) -> Dataset | IterableDataset:
    """``dataset`` (fresh from ``load_dataset``) whose images stay ``{"bytes", "path"}`` dicts, decoded by our code.

    ``datasets`` would open the ``path`` of an image stored without bytes wherever it points (an absolute path,
    ``../..``, a URL) as soon as a row is read; ``SessionRecord.from_row`` decodes only the bytes and refuses
    path-only images, the adapters resolve paths inside ``image_root``. Streaming datasets switch decoding off; a
    map-style dataset gets the same table with image features that do not decode (same Arrow types: nothing is
    rewritten; no indices mapping to keep, as the dataset was just loaded).
    """
    if isinstance(dataset, IterableDataset):
        return dataset.decode(False)
    if not any(_undecoded(feature) != feature for feature in dataset.features.values()):
        return dataset
    info = dataset.info.copy()
    info.features = Features({name: _undecoded(feature) for name, feature in dataset.features.items()})
    return Dataset(dataset.data, info=info, split=dataset.split)


def _undecoded(feature: Any) -> Any:
    """``feature`` with every ``datasets.Image`` in it (at the top or in a list) not decoded."""
    if isinstance(feature, Image):
        return Image(mode=feature.mode, decode=False)
    if isinstance(feature, List):
        return List(_undecoded(feature.feature), length=feature.length)
    return feature


def _load_local(shards: list[Path], *args: Any, **kwargs: Any) -> Dataset | IterableDataset:
    """``load_dataset(*args, **kwargs)`` of local parquet ``shards``; a damaged shard is named (its footer is read
    first, so that streaming also fails at once, and a shard that fails later is found by reading each)."""
    import pyarrow.parquet as pq

    def damaged(shard: Path, error: Exception) -> ValueError:
        return ValueError(
            f"path_or_repo: shard {shard} is damaged ({type(error).__name__}: {error}); rebuild or remove it."
        )

    for shard in shards:
        try:
            pq.ParquetFile(shard).metadata
        except Exception as error:  # pyarrow reports a torn or foreign file in several ways
            raise damaged(shard, error) from None
    try:
        return load_dataset(*args, **kwargs)
    except Exception as error:  # find the shard behind the builder's generic error
        for shard in shards:
            try:
                pq.read_table(shard)
            except Exception as shard_error:
                raise damaged(shard, shard_error) from None
        raise error


def _local_shards(folder: Path) -> list[Path]:
    """The parquet files of a dataset folder; hidden ones (e.g. an interrupted writer's temporary) are not part of
    the dataset."""
    shards = sorted(folder.rglob("*.parquet"))
    return [shard for shard in shards if not any(part.startswith(".") for part in shard.relative_to(folder).parts)]


def _load_any(path_or_repo: str | os.PathLike, **kwargs: Any) -> Dataset | IterableDataset:
    """``load_dataset(path_or_repo)`` with images left undecoded; a local folder's or file's damaged parquet shard
    is named."""
    local = Path(str(path_or_repo)).expanduser()
    if local.is_dir():
        dataset = _load_local(_local_shards(local), str(local), **kwargs)
    elif local.is_file() and local.suffix == ".parquet":
        dataset = _load_local([local], "parquet", data_files=str(local), **kwargs)
    else:
        dataset = load_dataset(str(path_or_repo), **kwargs)
    return _without_image_decoding(dataset)


def iter_session_records(dataset: Iterable[dict[str, Any]]) -> Iterator[SessionRecord]:
    """Yields a :class:`SessionRecord` per row of a sessions dataset (map-style or streaming)."""
    for row in dataset:
        yield SessionRecord.from_row(row)


def records_to_dataset(records: Iterable[SessionRecord]) -> Dataset:
    """Builds an in-memory ``datasets.Dataset`` with :data:`SESSION_FEATURES` from records (e.g. an adapter's
    output), ready for ``to_parquet`` or ``push_to_hub``."""
    return Dataset.from_list([record.to_row() for record in records], features=SESSION_FEATURES)


# =====================================================================================================
# Value coercion shared by the adapters
# =====================================================================================================


def _to_image(value: Any, where: str, image_root: Path | None) -> PIL.Image.Image | None:
    """PIL image from a decoded image, a ``{"bytes", "path"}`` dict, raw bytes, a file path or an array."""
    if value is None or isinstance(value, PIL.Image.Image):
        return value
    if isinstance(value, np.ndarray):
        return PIL.Image.fromarray(value)
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return decode_stored_image(value, where)  # as ``datasets`` decodes it (EXIF orientation applied)
        if value.get("path"):
            value = value["path"]
        else:
            raise SessionValidationError(f"{where}: image dict has neither 'bytes' nor 'path'.")
    if isinstance(value, (bytes, bytearray)):
        return PIL.Image.open(io.BytesIO(value))
    if isinstance(value, (str, os.PathLike)):
        try:  # a path from data stays inside image_root (default: the working folder), symlinks included
            path = resolve_inside(image_root if image_root is not None else Path.cwd(), value, "image path")
        except UnsafePathError as error:
            raise SessionValidationError(
                f"{where}: {error} Set image_root to the folder holding the images."
            ) from None
        if not path.exists():
            raise SessionValidationError(f"{where}: image file {str(path)!r} not found; set image_root.")
        with PIL.Image.open(path) as image:
            image.load()
            return PIL.ImageOps.exif_transpose(image)  # as ``datasets`` decodes images: EXIF orientation applied
    raise SessionValidationError(f"{where}: cannot read an image from {type(value).__name__}.")


def _to_list(value: Any, where: str) -> list:
    """A list from a list/tuple/array or a JSON-encoded list."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise SessionValidationError(
                f"{where}: expected a list or a JSON list, got the string {value[:80]!r}."
            ) from error
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise SessionValidationError(f"{where}: expected a list, got {type(value).__name__}.")
    return list(value)


def _resize_all(images: list, size: tuple[int, int] | None, resample: int) -> list:
    if size is None:
        return images
    return [image if image is None or image.size == size else image.resize(size, resample) for image in images]


def _check_columns(dataset: Any, mapping: dict[str, str | None], adapter: str, columns_class: str) -> None:
    """Raises a clear error when a mapped column is not in the dataset (when the dataset knows its columns)."""
    available = getattr(dataset, "column_names", None)
    if available is None and isinstance(dataset, (list, tuple)) and dataset and isinstance(dataset[0], dict):
        available = list(dataset[0])
    if not available:
        return
    missing = {field: column for field, column in mapping.items() if column is not None and column not in available}
    if missing:
        raise ValueError(
            f"columns: {adapter} expects column(s) {missing} (field -> column) but the dataset has {list(available)};"
            f" pass columns={columns_class}(...) naming the dataset's columns."
        )


# =====================================================================================================
# VINCIE-10M
# =====================================================================================================


@dataclass(frozen=True)
class Vincie10MColumns:
    """Which column holds each session field in a VINCIE-10M-style dataset (one row per session).

    The defaults are an **unverified assumption** about the release; override any of them. Optional fields set
    to ``None`` are filled with schema defaults (turn-index timestamps, unknown masks, static camera).

    Attributes:
        frames: list of images (decoded, ``{"bytes", "path"}`` dicts, bytes or file paths).
        instructions: list of ``len(frames) - 1`` strings (or a JSON string of that list).
        session_id: unique session id (``None``: ``"<video_id>/<row index>"``).
        video_id: source video id (``None``: the session id, or the row index).
        timestamps: list of frame times in seconds.
        source_masks / target_masks: lists of RoE mask images, one per transition.
        camera_motion: list of strings, one per transition.
    """

    frames: str = "images"
    instructions: str = "instructions"
    session_id: str | None = "id"
    video_id: str | None = None
    timestamps: str | None = None
    source_masks: str | None = None
    target_masks: str | None = None
    camera_motion: str | None = None


class Vincie10MAdapter:
    """Yields :class:`SessionRecord` from VINCIE-10M-style rows (one session per row).

    Args:
        dataset: any iterable of row dicts (``datasets.Dataset``, ``IterableDataset``, list).
        columns: the column mapping (see :class:`Vincie10MColumns`; its defaults are an assumption).
        image_root: folder that image paths in the data are resolved inside (default: the working folder); a
            path leading out of it (``..``, absolute, a symlink out) makes the row invalid.
        image_size: ``(width, height)`` to resize every frame (bicubic) and mask (nearest) to; ``None`` keeps
            the sizes (frames of a session must then share one size).
        on_invalid: ``"raise"`` (default) or ``"skip"`` (log and drop) rows that do not make a valid session.
    """

    name = "vincie10m"

    def __init__(
        self,
        dataset: Iterable[dict[str, Any]],
        columns: Vincie10MColumns = Vincie10MColumns(),
        image_root: str | os.PathLike | None = None,
        image_size: tuple[int, int] | None = None,
        on_invalid: OnInvalid = "raise",
    ) -> None:
        if on_invalid not in ("raise", "skip"):
            raise ValueError(f"on_invalid: must be 'raise' or 'skip', got {on_invalid!r}.")
        _check_columns(dataset, asdict(columns), type(self).__name__, "Vincie10MColumns")
        self.dataset = dataset
        self.columns = columns
        self.image_root = Path(image_root) if image_root is not None else None
        self.image_size = tuple(image_size) if image_size is not None else None
        self.on_invalid = on_invalid
        self.num_skipped = 0

    @classmethod
    def from_path(
        cls, path_or_repo: str, split: str = "train", streaming: bool = False, **kwargs: Any
    ) -> "Vincie10MAdapter":
        """Loads ``path_or_repo`` with ``datasets.load_dataset`` and wraps it (``kwargs`` go to the adapter)."""
        return cls(_load_any(path_or_repo, split=split, streaming=streaming), **kwargs)

    def __iter__(self) -> Iterator[SessionRecord]:
        for index, row in enumerate(self.dataset):
            try:
                yield self.convert(row, index)
            except SessionValidationError as error:
                if self.on_invalid == "raise":
                    raise
                self.num_skipped += 1
                logger.warning("Vincie10MAdapter: skipping row %d: %s", index, error)

    def convert(self, row: dict[str, Any], index: int = 0) -> SessionRecord:
        """Converts one row. Raises :class:`SessionValidationError` naming the column when the row is invalid."""
        columns = self.columns

        def value(field_name: str) -> Any:
            column = getattr(columns, field_name)
            if column is None:
                return None
            if column not in row:
                raise SessionValidationError(f"row {index}: no column {column!r} (Vincie10MColumns.{field_name}).")
            return row[column]

        def as_list(field_name: str) -> list | None:
            raw = value(field_name)
            return None if raw is None else _to_list(raw, f"row {index} column {getattr(columns, field_name)!r}")

        def images(field_name: str, resample: int) -> list | None:
            raw = as_list(field_name)
            if raw is None:
                return None
            where = f"row {index} column {getattr(columns, field_name)!r}"
            loaded = [_to_image(item, f"{where}[{i}]", self.image_root) for i, item in enumerate(raw)]
            return _resize_all(loaded, self.image_size, resample)

        video_id, session_id = value("video_id"), value("session_id")
        if session_id is None:
            session_id = f"{video_id if video_id is not None else 'row'}/{index}"
        return SessionRecord(
            session_id=str(session_id),
            video_id=str(video_id if video_id is not None else session_id),
            frames=images("frames", PIL.Image.BICUBIC),
            instructions=[str(text) for text in as_list("instructions")],
            timestamps=as_list("timestamps"),
            source_masks=images("source_masks", PIL.Image.NEAREST),
            target_masks=images("target_masks", PIL.Image.NEAREST),
            camera_motion=as_list("camera_motion"),
            annotator={"name": self.name, "columns": asdict(columns)},
        )


# =====================================================================================================
# Pairwise / multi-turn edit datasets (MagicBrush-style)
# =====================================================================================================


@dataclass(frozen=True)
class PairwiseEditColumns:
    """Which column holds each field of a one-row-per-turn edit dataset.

    Attributes:
        session_id: groups the turns of one session (MagicBrush: ``img_id``).
        turn_index: orders the turns of a session (any integers, consecutive).
        source_image: the image before the turn's edit.
        instruction: the turn's instruction.
        target_image: the image after the edit.
        mask: optional RoE mask of the turn, used as both its source and target mask (``None``: unknown).
    """

    session_id: str = "img_id"
    turn_index: str = "turn_index"
    source_image: str = "source_img"
    instruction: str = "instruction"
    target_image: str = "target_img"
    mask: str | None = None


# MagicBrush (``osunlp/MagicBrush``) column names. Its ``mask_img`` column is not mapped: the polarity of those
# masks was not verified here; map it with ``replace(MAGICBRUSH_COLUMNS, mask="mask_img")`` after checking.
MAGICBRUSH_COLUMNS = PairwiseEditColumns()


class PairwiseEditAdapter:
    """Groups one-row-per-turn edit datasets into multi-turn :class:`SessionRecord` s.

    A session's frames are the source image of its first turn followed by the target image of every turn;
    timestamps are the turn indices (relative to the first). Turns must be consecutive integers.

    Map-style datasets (``datasets.Dataset``, lists) are grouped by reading the session-id column first, so rows
    of a session need not be adjacent. Streaming datasets are grouped on the fly and must list the rows of each
    session next to each other (a session seen again later raises).

    Args:
        dataset: rows (``datasets.Dataset``, ``IterableDataset`` or a list of dicts).
        columns: the column mapping (default: MagicBrush's).
        name: dataset name, used as the session-id prefix and the annotator name.
        image_root: folder that image paths in the data are resolved inside (default: the working folder); a
            path leading out of it (``..``, absolute, a symlink out) makes the row invalid.
        image_size: ``(width, height)`` to resize every frame (bicubic) and mask (nearest) to; ``None`` keeps
            sizes (then the frames of a session must share one size).
        min_turns: sessions with fewer turns are dropped (1 keeps single-turn pairs).
        on_invalid: ``"raise"`` (default) or ``"skip"`` (log and drop) sessions that are not valid.
    """

    def __init__(
        self,
        dataset: Iterable[dict[str, Any]],
        columns: PairwiseEditColumns = MAGICBRUSH_COLUMNS,
        name: str = "magicbrush",
        image_root: str | os.PathLike | None = None,
        image_size: tuple[int, int] | None = None,
        min_turns: int = 1,
        on_invalid: OnInvalid = "raise",
    ) -> None:
        if on_invalid not in ("raise", "skip"):
            raise ValueError(f"on_invalid: must be 'raise' or 'skip', got {on_invalid!r}.")
        if not isinstance(min_turns, int) or min_turns < 1:
            raise ValueError(f"min_turns: must be an int >= 1, got {min_turns!r}.")
        if not name:
            raise ValueError("name: must be a non-empty string (it prefixes the session ids).")
        _check_columns(dataset, asdict(columns), type(self).__name__, "PairwiseEditColumns")
        self.dataset = dataset
        self.columns = columns
        self.name = name
        self.image_root = Path(image_root) if image_root is not None else None
        self.image_size = tuple(image_size) if image_size is not None else None
        self.min_turns = min_turns
        self.on_invalid = on_invalid
        self.num_skipped = 0

    @classmethod
    def from_path(
        cls, path_or_repo: str, split: str = "train", streaming: bool = False, **kwargs: Any
    ) -> "PairwiseEditAdapter":
        """Loads ``path_or_repo`` with ``datasets.load_dataset`` and wraps it (``kwargs`` go to the adapter)."""
        return cls(_load_any(path_or_repo, split=split, streaming=streaming), **kwargs)

    # -------------------------------------------------------------------------------------------------
    # Grouping
    # -------------------------------------------------------------------------------------------------

    def _groups(self) -> Iterator[tuple[Any, list[dict[str, Any]]]]:
        """(session id, rows) in order of first appearance."""
        key = self.columns.session_id
        if isinstance(self.dataset, Dataset) or isinstance(self.dataset, (list, tuple)):
            ids = self.dataset[key] if isinstance(self.dataset, Dataset) else [row[key] for row in self.dataset]
            groups: dict[Any, list[int]] = {}
            for position, session_id in enumerate(ids):
                groups.setdefault(session_id, []).append(position)
            for session_id, positions in groups.items():
                yield session_id, [self.dataset[position] for position in positions]
            return
        # Streaming: adjacent rows only.
        finished: set[Any] = set()
        current_id, current_rows = None, []
        for row in self.dataset:
            session_id = row[key]
            if current_rows and session_id != current_id:
                finished.add(current_id)
                yield current_id, current_rows
                current_rows = []
            if session_id in finished:
                raise ValueError(
                    f"dataset: rows of session {session_id!r} are not adjacent; a streaming dataset must list each "
                    "session's turns together (sort it, or pass a map-style Dataset)."
                )
            current_id = session_id
            current_rows.append(row)
        if current_rows:
            yield current_id, current_rows

    def __iter__(self) -> Iterator[SessionRecord]:
        for session_id, rows in self._groups():
            if len(rows) < self.min_turns:
                continue
            try:
                yield self.convert(session_id, rows)
            except SessionValidationError as error:
                if self.on_invalid == "raise":
                    raise
                self.num_skipped += 1
                logger.warning("PairwiseEditAdapter: skipping session %r: %s", session_id, error)

    # -------------------------------------------------------------------------------------------------
    # Conversion
    # -------------------------------------------------------------------------------------------------

    def convert(self, session_id: Any, rows: list[dict[str, Any]]) -> SessionRecord:
        """Builds one session from the rows of its turns (any order).

        Raises:
            SessionValidationError: turns not consecutive, a missing image, or an invalid session.
        """
        columns = self.columns
        where = f"session {session_id!r}"
        try:
            rows = sorted(rows, key=lambda row: int(row[columns.turn_index]))
        except (TypeError, ValueError) as error:
            raise SessionValidationError(
                f"{where}: column {columns.turn_index!r} must hold integers: {error}."
            ) from error
        turns = [int(row[columns.turn_index]) for row in rows]
        if turns != list(range(turns[0], turns[0] + len(turns))):
            raise SessionValidationError(
                f"{where}: turn indices (column {columns.turn_index!r}) must be consecutive, got {turns}."
            )
        first_source = _to_image(
            rows[0][columns.source_image], f"{where} turn {turns[0]} {columns.source_image!r}", self.image_root
        )
        if first_source is None:
            raise SessionValidationError(f"{where}: turn {turns[0]} has no source image ({columns.source_image!r}).")
        frames = [first_source]
        for turn, row in zip(turns, rows):
            target_where = f"{where} turn {turn} {columns.target_image!r}"
            target = _to_image(row[columns.target_image], target_where, self.image_root)
            if target is None:
                raise SessionValidationError(f"{where}: turn {turn} has no target image ({columns.target_image!r}).")
            frames.append(target)
        size = self.image_size or frames[0].size
        frames = _resize_all(frames, self.image_size, PIL.Image.BICUBIC)
        masks = None
        if columns.mask is not None:
            masks = [
                _to_image(row[columns.mask], f"{where} turn {turn} {columns.mask!r}", self.image_root)
                for turn, row in zip(turns, rows)
            ]
            masks = _resize_all(masks, size, PIL.Image.NEAREST)
        return SessionRecord(
            session_id=f"{self.name}/{session_id}",
            video_id=str(session_id),
            frames=frames,
            instructions=[str(row[columns.instruction]).strip() for row in rows],
            source_masks=masks,
            target_masks=masks,
            annotator={"name": self.name, "columns": asdict(columns), "first_turn": turns[0]},
        )
