"""The videos a session build reads: files, folders and ``.txt`` lists expanded into ``(video_id, path)``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v")


def list_videos(inputs: Sequence[str | Path], extensions: Sequence[str] = VIDEO_EXTENSIONS) -> list[tuple[str, Path]]:
    """Expands ``inputs`` into ``(video_id, path)`` pairs, sorted by id.

    Args:
        inputs: Video files, folders (searched recursively for ``extensions``) and list files (``.txt``:
            one path per line, relative paths resolved against the list file's folder, ``#`` comments).
        extensions: File suffixes that count as video inside folders.

    The id is the path relative to the folder it was found in (without suffix, ``/``-separated) or the
    file stem for files given directly or through a list.

    Raises:
        FileNotFoundError: When an input does not exist.
        ValueError: When two different videos would get the same id.
    """
    found: dict[str, Path] = {}

    def add(video_id: str, path: Path) -> None:
        path = path.resolve()
        if video_id in found and found[video_id] != path:
            raise ValueError(
                f"inputs: videos {found[video_id]} and {path} both get the id {video_id!r}; pass their common "
                "parent folder instead so ids keep the sub-folder, or rename one of them"
            )
        found[video_id] = path

    suffixes = tuple(ext.lower() for ext in extensions)
    for item in map(Path, inputs):
        if item.is_dir():
            for path in sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in suffixes):
                add(path.relative_to(item).with_suffix("").as_posix(), path)
        elif item.is_file() and item.suffix.lower() == ".txt":
            for line in item.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    path = Path(line) if Path(line).is_absolute() else item.parent / line
                    add(path.stem, path)
        elif item.is_file():
            add(item.stem, item)
        else:
            raise FileNotFoundError(
                f"inputs: {str(item)!r} is neither a video file, a folder nor a .txt list of videos"
            )
    return sorted(found.items())
