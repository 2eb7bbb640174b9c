"""Atomic writes: a file or folder appears under its final name only once it is complete.

Everything the project writes for a user (images, JSON, parquet shards, safetensors, pipeline folders, training
checkpoints) goes through these helpers, so a crash or ``kill -9`` leaves either the old content or the new one,
never a half-written file under the real name. Temporaries are hidden siblings (``.<name>.<token>.tmp<suffix>``) in
the same folder, so the final ``os.replace`` is a rename on one file system.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

# Globs (fnmatch, as ``huggingface_hub`` uses them) that match every temporary of this module, in a folder or below.
TEMPORARY_GLOBS = (".*.tmp*", "*/.*.tmp*")


def temporary_sibling(path: str | os.PathLike) -> Path:
    """A fresh hidden name next to ``path`` that keeps its suffix (writers that pick a format by extension, e.g.
    ``PIL.Image.save``, still see ``.png``)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{path.suffix}")


def _fsync_folder(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # some file systems do not open folders; the rename is still atomic
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def commit(temporary: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Flushes the finished file ``temporary`` to disk and renames it onto ``path`` (atomic on POSIX)."""
    temporary, path = Path(temporary), Path(path)
    if temporary.is_file():
        with open(temporary, "rb+") as stream:
            os.fsync(stream.fileno())
    os.replace(temporary, path)
    _fsync_folder(path.parent)
    return path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path for a writer that takes a file name; on success it replaces ``path``, on error it
    is removed and ``path`` is left as it was.

    Example::

        with atomic_path("grid.png") as temporary:
            image.save(temporary)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(path)
    try:
        yield temporary
        if not temporary.exists():
            raise FileNotFoundError(f"nothing was written to {temporary} (the temporary of {path})")
        commit(temporary, path)
    except BaseException:
        _remove(temporary)
        raise


@contextmanager
def atomic_write(
    path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8", newline: str | None = None
) -> Iterator[IO[Any]]:
    """``open(path, mode)`` whose content appears under ``path`` only when the block finishes without error.

    Args:
        path: final file.
        mode: ``"w"`` (text) or ``"wb"`` (bytes).
        encoding: text encoding (ignored in binary mode).
        newline: as for ``open`` (``""`` for the ``csv`` module).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}.")
    text = "b" not in mode
    with (
        atomic_path(path) as temporary,
        open(temporary, mode, encoding=encoding if text else None, newline=newline if text else None) as stream,
    ):
        yield stream


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Writes ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write(path) as stream:
        stream.write(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, data: Any, indent: int | None = 2) -> Path:
    """Writes ``data`` as JSON (UTF-8, non-ASCII kept, trailing newline) to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(data, indent=indent, ensure_ascii=False) + "\n")


def commit_directory(temporary: str | os.PathLike, path: str | os.PathLike, replace: bool = False) -> Path:
    """Renames the finished folder ``temporary`` onto ``path``; an existing ``path`` is replaced only when
    ``replace`` (moved aside first, deleted once the new folder is in place), else ``FileExistsError``."""
    temporary, path = Path(temporary), Path(path)
    old = None
    if path.exists():
        if not replace:
            raise FileExistsError(f"{path} already exists; remove it or ask for it to be replaced.")
        old = temporary_sibling(path)
        os.replace(path, old)
    os.replace(temporary, path)
    _fsync_folder(path.parent)
    if old is not None:
        _remove(old)
    return path


@contextmanager
def atomic_directory(path: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """Yields an empty temporary folder; on success it becomes ``path``.

    Args:
        path: final folder.
        replace: an existing ``path`` is replaced only when ``True``; otherwise an existing ``path`` raises
            ``FileExistsError`` before any work.
    """
    path = Path(path)
    if path.exists() and not replace:
        raise FileExistsError(f"{path} already exists; remove it or ask for it to be replaced.")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(path)
    temporary.mkdir()
    try:
        yield temporary
        commit_directory(temporary, path, replace=replace)
    except BaseException:
        _remove(temporary)
        raise


def merge_directory(
    temporary: str | os.PathLike, folder: str | os.PathLike, owned: Callable[[str], bool], last: str
) -> Path:
    """Moves the files of the finished folder ``temporary`` into the existing ``folder``, leaving every other entry
    of ``folder`` in place; then deletes the files of ``folder`` that ``owned(name)`` claims and the new set lacks.

    For a writer that shares its folder with the user's own files (notes, renders): only the writer's files are
    replaced. Each file is one rename; ``last`` (the record that names the others) is renamed after all of them, so
    a reader that checks the record against its files sees a complete old or new state, or a mismatch it reports.
    """
    temporary, folder = Path(temporary), Path(folder)
    try:
        names = sorted(p.name for p in temporary.iterdir())
        for name in sorted(names, key=lambda name: name == last):
            commit(temporary / name, folder / name)
        for path in folder.iterdir():
            if path.name not in names and owned(path.name) and (path.is_file() or path.is_symlink()):
                path.unlink()
    finally:
        _remove(temporary)
    _fsync_folder(folder)
    return folder


# ---------------------------------------------------------------------------------------------------------------------
# Paths taken from data
# ---------------------------------------------------------------------------------------------------------------------


class UnsafePathError(ValueError):
    """A path taken from data (a dataset field, a JSON entry, a saved file's record) that would leave its folder."""


def check_plain_name(name: Any, what: str) -> str:
    """Returns ``name`` when it is one plain file-name component (no separator, not ``.``/``..``, no NUL, not
    empty), else raises :class:`UnsafePathError` naming ``what``: such a value becomes part of a file name."""
    text = str(name) if isinstance(name, (str, int)) and not isinstance(name, bool) else None
    if not text or text in (".", "..") or any(c in text for c in "/\\\0"):
        raise UnsafePathError(f"{what} {name!r} is not a plain file name (no '/', '\\', '..' or empty names).")
    return text


def resolve_inside(folder: str | os.PathLike, relative: Any, what: str) -> Path:
    """The path ``folder / relative`` when it stays inside ``folder`` once every symlink is followed.

    Every path read or written from a value found in data goes through here, so an entry such as
    ``"../../outside.png"``, an absolute path, or a file that is a symlink to somewhere outside ``folder`` is refused
    (:class:`UnsafePathError`, naming ``what``) instead of being read or overwritten. Symlinks that stay inside
    ``folder`` are allowed.
    """
    if not isinstance(relative, (str, os.PathLike)) or not str(relative) or "\0" in str(relative):
        raise UnsafePathError(f"{what} {relative!r} is not a relative file name.")
    if Path(relative).is_absolute():
        raise UnsafePathError(f"{what} {str(relative)!r} is an absolute path; it must name a file inside {folder}.")
    root = Path(folder).resolve()
    resolved = (root / relative).resolve()
    if resolved != root and root not in resolved.parents:
        raise UnsafePathError(
            f"{what} {str(relative)!r} leads outside {folder} (to {resolved}); paths from data must stay inside "
            "their folder, symlinks included."
        )
    return Path(folder) / relative


# ---------------------------------------------------------------------------------------------------------------------
# One writer per output
# ---------------------------------------------------------------------------------------------------------------------


class OutputLockedError(RuntimeError):
    """Another live process is writing the same output."""


# The lock files this process holds. A forked child (a DataLoader worker, say) would share each open file and with
# it the lock, which then outlives a parent killed with ``kill -9`` until the child notices and exits; every forked
# child closes its copies at once, so the lock stays the parent's alone.
_HELD_LOCK_FILES: set[IO] = set()


def _close_inherited_lock_files() -> None:
    for handle in _HELD_LOCK_FILES:
        handle.close()
    _HELD_LOCK_FILES.clear()


os.register_at_fork(after_in_child=_close_inherited_lock_files)


@contextmanager
def exclusive_lock(path: str | os.PathLike, what: str) -> Iterator[Path]:
    """Holds an exclusive ``flock`` on ``path`` (created if needed) for the block; a second holder is refused at
    once with :class:`OutputLockedError` naming ``what`` and the holder's pid.

    The lock belongs to the open file, which no forked child keeps, so the kernel drops it when its process dies:
    a build killed with ``kill -9`` never blocks the next one, even while its DataLoader workers wind down. The
    file stays (deleting it would let a third process lock a new file while the second still holds the old one).
    """
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise OutputLockedError(
            f"{what} is being written by another process (pid {holder}, lock {path}); wait for it to finish or "
            "choose another output."
        ) from None
    _HELD_LOCK_FILES.add(handle)
    try:
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        yield path
    finally:
        _HELD_LOCK_FILES.discard(handle)
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        handle.close()


__all__ = [
    "OutputLockedError",
    "TEMPORARY_GLOBS",
    "UnsafePathError",
    "atomic_directory",
    "atomic_path",
    "atomic_write",
    "commit",
    "check_plain_name",
    "commit_directory",
    "exclusive_lock",
    "merge_directory",
    "resolve_inside",
    "temporary_sibling",
    "write_json_atomic",
    "write_text_atomic",
]
