"""The session build pipeline: videos -> key frames -> annotated transitions -> RoE masks -> parquet shards.

Output folder layout (a Hugging Face dataset: ``load_dataset(folder)`` and ``load_dataset(folder,
streaming=True)`` work as is)::

    out/
      README.md                      dataset card, ``configs:`` YAML pointing at data/*.parquet + features
      data/train-<run>-r<rank>-<n>.parquet   shards of SESSION_FEATURES rows, images embedded as PNG bytes
      manifest/rank-<rank>.jsonl     one line per finished video (done or rejected, with the reasons of the
                                     transitions the annotator rejected), appended per process
      rejects.jsonl                  rejected videos with the reason (merged from the manifests)

Scale and robustness:

* Under ``accelerate launch`` each process takes its share of the pending videos with
  ``PartialState().split_between_processes``; sampling is seeded per video, so the rows do not depend on
  the number of processes.
* Resumable: a video is in a manifest only after the shard holding all its sessions was atomically
  renamed into ``data/``. On start, build shards that no manifest references (a kill between the two steps)
  are deleted and their videos redone, so a rerun never duplicates or loses sessions; other files stay.
  One build writes a folder at a time (a lock in ``manifest/``); a second one is refused.
  A manifest line torn by a kill mid-append is dropped on start (its shard is then an orphan, redone).
* A video that gives no session (unreadable, truncated, too short, or with no annotatable transition, e.g. a
  missing or corrupt ground-truth sidecar) is rejected: listed in ``rejects.jsonl`` with the reason and retried
  by the next run. Transitions an annotator rejects split the session at that transition.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tqdm.auto import tqdm

from ...utils.io import OutputLockedError, atomic_path, exclusive_lock, write_text_atomic
from ..schema import SESSION_FEATURES, SessionRecord
from .annotate import AnnotationRejected, Transition, TransitionAnnotation, TransitionAnnotator
from .frames import (
    SAMPLING_STRATEGIES,
    SampledFrame,
    SamplingStrategy,
    VideoDecodeError,
    decode_frames_at,
    detect_scene_cuts,
    frame_sampling_seed,
    probe_video,
    sample_timestamps,
    split_at_cuts,
)
from .inputs import VIDEO_EXTENSIONS, list_videos

logger = logging.getLogger(__name__)

DATA_DIR, MANIFEST_DIR, REJECTS_FILE, CARD_FILE = "data", "manifest", "rejects.jsonl", "README.md"
LOCK_FILE = ".build.lock"  # in manifest/: held by the build writing the folder
# A shard written by a build, or the hidden temporary of one (``utils.io.temporary_sibling``).
_SHARD = r"train-[0-9a-f]{8}-r\d{3}-\d{5}\.parquet"
SHARD_NAME = re.compile(rf"{_SHARD}|\.{_SHARD}\.\d+-[0-9a-f]{{8}}\.tmp\.parquet")


# ------------------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------------------


@dataclass
class SamplingConfig:
    """How key frames are chosen in each video (see :mod:`diffusers_vincie.data.video.frames`).

    Args:
        strategy: ``"equal_interval"``, ``"fixed_count"`` or ``"hybrid"``.
        interval: Seconds between frames of equal-interval sampling.
        min_frames: Fewest frames per session (>= 2).
        max_frames: Most frames per session; longer equal-interval runs are split into several sessions.
        seed: Global seed; each video gets its own generator derived from it and its id.
        scene_cuts: Split videos at detected hard cuts first (costs one extra decoding pass).
        scene_threshold: Thumbnail difference (0..1) that counts as a cut.
        max_side: Downscale frames whose longest side exceeds this many pixels (``None``: keep size).
    """

    strategy: SamplingStrategy = "hybrid"
    interval: float = 3.0
    min_frames: int = 2
    max_frames: int = 6
    seed: int = 0
    scene_cuts: bool = False
    scene_threshold: float = 0.3
    max_side: int | None = None

    def __post_init__(self) -> None:
        if self.strategy not in SAMPLING_STRATEGIES:
            raise ValueError(f"strategy={self.strategy!r} is not supported; use one of {SAMPLING_STRATEGIES}")
        if not 2 <= self.min_frames <= self.max_frames:
            raise ValueError(
                f"need 2 <= min_frames <= max_frames, got min_frames={self.min_frames}, max_frames={self.max_frames}"
            )
        if not (math.isfinite(self.interval) and self.interval > 0):
            raise ValueError(f"interval must be a number of seconds > 0, got interval={self.interval}")
        if not 0 <= self.scene_threshold <= 1:
            raise ValueError(f"scene_threshold must be in [0, 1], got scene_threshold={self.scene_threshold}")
        if self.max_side is not None and self.max_side < 16:
            raise ValueError(f"max_side must be >= 16 pixels or None, got max_side={self.max_side}")


@dataclass
class VideoResult:
    """Outcome of one video: its sessions, or why it was rejected.

    Args:
        video_id: Id of the video.
        sessions: The sessions built from it (possibly none).
        rejected_transitions: Reasons of the transitions the annotator rejected.
        error: Why the whole video was rejected (no session from it), else ``None``.
    """

    video_id: str
    sessions: list[SessionRecord] = field(default_factory=list)
    rejected_transitions: list[str] = field(default_factory=list)
    error: str | None = None


# ------------------------------------------------------------------------------------------------
# One video -> sessions
# ------------------------------------------------------------------------------------------------


def _clip_frame_times(duration: float, path: Path, video_id: str, config: SamplingConfig) -> list[list[float]]:
    """Sampling times of each clip (scene-cut segment) of the video; one list per clip."""
    cuts = detect_scene_cuts(path, threshold=config.scene_threshold) if config.scene_cuts else []
    rng = np.random.default_rng(frame_sampling_seed(video_id, config.seed))
    clips = []
    for start, end in split_at_cuts(duration, cuts):
        times = sample_timestamps(
            start,
            end,
            strategy=config.strategy,
            interval=config.interval,
            min_frames=config.min_frames,
            max_frames=config.max_frames,
            rng=rng,
        )
        if len(times) >= 2:
            clips.append(times)
    return clips


def _runs(frames: list[SampledFrame], annotations: list[TransitionAnnotation | None], max_frames: int):
    """Splits a clip into sessions: at rejected transitions, and into windows of at most ``max_frames``."""
    start = 0
    for end in range(len(annotations) + 1):
        if end == len(annotations) or annotations[end] is None:
            # frames[start..end] with transitions start..end-1, all accepted
            for window in range(start, end, max_frames - 1):
                stop = min(window + max_frames - 1, end)
                yield frames[window : stop + 1], annotations[window:stop]
            start = end + 1


def sessions_from_video(
    path: str | Path,
    video_id: str,
    annotator: TransitionAnnotator,
    config: SamplingConfig | None = None,
    region_masker: Any | None = None,
) -> VideoResult:
    """Builds the sessions of one video.

    Args:
        path: The video file.
        video_id: Its id (prefix of the session ids ``"<video_id>/<k>"``).
        annotator: Annotates each transition (see :mod:`diffusers_vincie.data.video.annotate`).
        config: Frame sampling settings (default :class:`SamplingConfig`).
        region_masker: Object with ``mask(image, phrases) -> bool (H, W) array`` (e.g.
            :class:`~diffusers_vincie.data.video.regions.RegionMasker`) used when the annotator gives no exact
            masks; ``None`` stores unknown (null) masks in that case.

    Returns:
        A :class:`VideoResult`; a video that gives no session (unreadable, truncated, too short, or no transition
        could be annotated, e.g. a missing ground-truth sidecar) has ``error`` set, so that the build records it as
        a reject and retries it on the next run. Whatever a malformed video or sidecar raises (frames that change
        size, a sidecar of the wrong shape or types) makes that one video a reject with the error as its reason:
        one bad video never stops a build.
    """
    config = config or SamplingConfig()
    return _sessions_from_video(
        Path(path), video_id, annotator, config, region_masker, lambda: _decode_video(Path(path), video_id, config)
    )


@dataclass
class _DecodedVideo:
    """A video's sampled clips (timestamps) and their frames, decoded; ``error`` says why there are none."""

    clips: list[list[float]]
    frames: list[SampledFrame]
    duration: float
    error: str | None = None


def _decode_video(path: Path, video_id: str, config: SamplingConfig) -> _DecodedVideo:
    try:
        info = probe_video(path)
        clips = _clip_frame_times(info.duration, path, video_id, config)
        decoded = decode_frames_at(path, [t for clip in clips for t in clip], max_side=config.max_side)
    except VideoDecodeError as error:
        return _DecodedVideo([], [], 0.0, error.reason)
    return _DecodedVideo(clips, decoded, info.duration)


def _sessions_from_video(
    path: Path,
    video_id: str,
    annotator: TransitionAnnotator,
    config: SamplingConfig,
    region_masker: Any | None,
    decode: Callable[[], _DecodedVideo],
) -> VideoResult:
    """:func:`sessions_from_video` with the video's frames from ``decode`` (which may have run ahead)."""
    result = VideoResult(video_id=video_id)
    try:
        _add_video_sessions(path, decode(), video_id, annotator, config, region_masker, result)
    except Exception as error:  # any failure of one video is that video's reject reason
        result.sessions.clear()
        result.error = f"{type(error).__name__}: {error}"
    return result


def _add_video_sessions(
    path: Path,
    video: _DecodedVideo,
    video_id: str,
    annotator: TransitionAnnotator,
    config: SamplingConfig,
    region_masker: Any | None,
    result: VideoResult,
) -> None:
    if video.error is not None:
        result.error = video.error
        return
    clips, decoded = video.clips, video.frames
    if not clips:
        result.error = (
            f"too short: no clip of {config.min_frames}+ frames in {video.duration:.2f}s "
            f"(strategy {config.strategy}, interval {config.interval}s)"
        )
        return

    offset = 0
    for clip in clips:
        frames, offset = decoded[offset : offset + len(clip)], offset + len(clip)
        # two targets can land on one frame in very short clips: keep each frame once
        frames = [f for i, f in enumerate(frames) if i == 0 or f.frame_index != frames[i - 1].frame_index]
        annotations: list[TransitionAnnotation | None] = []
        transitions = [Transition(str(path), video_id, source, target) for source, target in pairwise(frames)]
        for annotation in annotator.annotate_many(transitions):
            if isinstance(annotation, AnnotationRejected):
                result.rejected_transitions.append(annotation.reason)
                annotations.append(None)
            else:
                annotations.append(annotation)
        for run_frames, run_annotations in _runs(frames, annotations, config.max_frames):
            if len(run_frames) < 2:
                continue
            result.sessions.append(
                _make_session(
                    f"{video_id}/{len(result.sessions)}",
                    video_id,
                    run_frames,
                    run_annotations,
                    annotator,
                    config,
                    region_masker,
                )
            )
    if not result.sessions and result.rejected_transitions:
        reasons = sorted(set(result.rejected_transitions))
        result.error = f"no transition could be annotated ({len(result.rejected_transitions)} rejected): " + "; ".join(
            reasons[:3]
        )


def _region(mask: np.ndarray | None, image: Any, phrases: list[str], region_masker: Any | None) -> np.ndarray | None:
    if mask is not None:
        return mask
    if region_masker is None:
        return None
    return region_masker.mask(image, phrases)


def _make_session(
    session_id: str,
    video_id: str,
    frames: list[SampledFrame],
    annotations: list[TransitionAnnotation],
    annotator: TransitionAnnotator,
    config: SamplingConfig,
    region_masker: Any | None,
) -> SessionRecord:
    source_masks, target_masks = [], []
    for source, target, annotation in zip(frames[:-1], frames[1:], annotations):
        source_masks.append(_region(annotation.source_mask, source.image, annotation.source_objects, region_masker))
        target_masks.append(_region(annotation.target_mask, target.image, annotation.target_objects, region_masker))
    metadata = {
        **annotator.metadata(),
        "sampling": {"strategy": config.strategy, "interval": config.interval, "seed": config.seed},
        "frame_indices": [frame.frame_index for frame in frames],
        "transitions": [
            {"source_objects": a.source_objects, "target_objects": a.target_objects, **a.details} for a in annotations
        ],
    }
    if region_masker is not None:
        metadata["regions"] = region_masker.metadata()
    return SessionRecord(
        session_id=session_id,
        video_id=video_id,
        frames=[frame.image for frame in frames],
        timestamps=[frame.timestamp for frame in frames],
        instructions=[a.instruction for a in annotations],
        source_masks=source_masks,
        target_masks=target_masks,
        camera_motion=[a.camera_motion for a in annotations],
        annotator=metadata,
    )


# ------------------------------------------------------------------------------------------------
# Output folder: shards, manifests, rejects, dataset card
# ------------------------------------------------------------------------------------------------


def _manifest_record(line: str) -> dict[str, Any] | None:
    """One manifest line, or ``None`` for a line torn by a kill mid-append (its videos are simply redone)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    videos = record.get("videos") if isinstance(record, dict) else None
    if not isinstance(videos, list) or not all(isinstance(v, dict) and "video_id" in v for v in videos):
        return None
    return record


def _repair_manifests(output_dir: Path) -> int:
    """Drops torn lines from the manifests (a crash mid-append leaves the last one without its newline, and the
    next append would be glued onto it); returns how many were dropped."""
    dropped = 0
    for path in sorted((output_dir / MANIFEST_DIR).glob("*.jsonl")):
        text = path.read_text()
        lines = text.splitlines()
        kept = [line for line in lines if _manifest_record(line) is not None]
        if len(kept) != len(lines) or (text and not text.endswith("\n")):
            dropped += len(lines) - len(kept)
            write_text_atomic(path, "".join(line + "\n" for line in kept))
    return dropped


def read_manifest(output_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Finished videos of an output folder, ``{video_id: entry}``, from all processes' manifests.

    Each manifest line records one shard and all the videos whose sessions it holds (or one video without
    rows), so a line torn by a kill loses the whole shard, never part of it. A video is ``"done"`` (never
    redone) or ``"rejected"`` (retried by the next run, which may then finish it, in any process's manifest).
    """
    entries: dict[str, dict[str, Any]] = {}
    for path in sorted((Path(output_dir) / MANIFEST_DIR).glob("*.jsonl")):
        for line in path.read_text().splitlines():
            record = _manifest_record(line)
            for entry in record["videos"] if record is not None else ():
                if entries.get(entry["video_id"], {}).get("status") != "done":
                    entries[entry["video_id"]] = {**entry, "shard": record["shard"]}
    return entries


def _remove_orphan_shards(output_dir: Path) -> list[str]:
    """Deletes the shards a build wrote (named ``train-<run>-r<rank>-<n>.parquet``, or their temporaries) that no
    manifest entry references; returns their names. Any other file in ``data/`` is left alone."""
    referenced = {entry.get("shard") for entry in read_manifest(output_dir).values()}
    removed = []
    for path in sorted((output_dir / DATA_DIR).glob("*")):
        if SHARD_NAME.fullmatch(path.name) and path.is_file() and path.name not in referenced:
            path.unlink()
            removed.append(path.name)
    return removed


#: zlib level of the embedded PNGs: about twice as fast to write as PIL's default (6), files somewhat larger.
PNG_COMPRESS_LEVEL = 1
FRAME_FORMATS: tuple[str, ...] = ("png", "jpeg")


def _encode_image(image: Any, frame_format: str = "png", jpeg_quality: int = 95) -> dict[str, Any] | None:
    if image is None:
        return None
    buffer = io.BytesIO()
    if frame_format == "jpeg":
        image.save(buffer, format="JPEG", quality=jpeg_quality, subsampling=0)  # 4:4:4 keeps colour edges
    else:
        image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return {"bytes": buffer.getvalue(), "path": None}


def _encode_session(session: SessionRecord, frame_format: str = "png", jpeg_quality: int = 95) -> dict[str, Any]:
    """A SESSION_FEATURES row with every image already encoded (what ``datasets`` stores).

    Masks are always PNG (lossless); frames are PNG or, with ``frame_format="jpeg"``, JPEG.
    """
    row = session.to_row()
    row["frames"] = [_encode_image(image, frame_format, jpeg_quality) for image in row["frames"]]
    for name in ("source_masks", "target_masks"):
        row[name] = [_encode_image(mask) for mask in row[name]]
    return row


def _write_shard_atomically(rows: list[dict[str, Any]], path: Path, row_group_size: int = 16) -> None:
    """Writes encoded rows as one parquet file atomically.

    The schema carries the ``huggingface`` features metadata, so ``datasets`` decodes the image columns;
    small row groups keep streaming reads fine-grained.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pydict(
        {name: [row[name] for row in rows] for name in SESSION_FEATURES}, schema=SESSION_FEATURES.arrow_schema
    )
    with atomic_path(path) as temporary:
        pq.write_table(table, temporary, row_group_size=row_group_size)


class _ShardWriter:
    """Buffers one process's sessions and writes them as parquet shards, then records their videos.

    Image encoding runs on background threads (zlib, libjpeg and PyAV all release the GIL), so it overlaps
    with decoding the next videos; a shard waits for its encodings only when it is written.
    """

    def __init__(self, output_dir: Path, rank: int, shard_size: int, encode_workers: int, frame_format: str):
        self.output_dir, self.rank, self.shard_size = output_dir, rank, shard_size
        self.frame_format = frame_format
        self.run_id = uuid.uuid4().hex[:8]
        self.manifest_path = output_dir / MANIFEST_DIR / f"rank-{rank:03d}.jsonl"
        self.encoder = ThreadPoolExecutor(max_workers=encode_workers, thread_name_prefix="image-encoder")
        self.rows: list[Future] = []  # encoded rows of the next shard
        self.pending: list[dict[str, Any]] = []  # manifest entries waiting for their shard
        self.count = 0

    def _append_manifest(self, shard: str | None, entries: list[dict[str, Any]]) -> None:
        with open(self.manifest_path, "a") as handle:
            handle.write(json.dumps({"shard": shard, "videos": entries}) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def add(self, path: Path, result: VideoResult) -> None:
        entry = {
            "video_id": result.video_id,
            "path": str(path),
            "sessions": len(result.sessions),
            "rejected_transitions": len(result.rejected_transitions),
            "rejected_transition_reasons": sorted(set(result.rejected_transitions)),
        }
        if result.error is not None:
            self._append_manifest(None, [{**entry, "status": "rejected", "reason": result.error}])
            return
        if not result.sessions:
            self._append_manifest(None, [{**entry, "status": "done"}])
            return
        self.rows.extend(
            self.encoder.submit(_encode_session, session, self.frame_format) for session in result.sessions
        )
        self.pending.append({**entry, "status": "done"})
        if len(self.rows) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        name = f"train-{self.run_id}-r{self.rank:03d}-{self.count:05d}.parquet"
        _write_shard_atomically([future.result() for future in self.rows], self.output_dir / DATA_DIR / name)
        self._append_manifest(name, self.pending)
        self.rows, self.pending, self.count = [], [], self.count + 1

    def close(self, *, completed: bool) -> None:
        """Writes the last shard when the run completed; otherwise drops it (its videos are redone)."""
        if completed:
            self.flush()
        self.encoder.shutdown(wait=completed, cancel_futures=not completed)


def write_dataset_card(output_dir: str | Path, *, description: str = "", extra: dict[str, Any] | None = None) -> Path:
    """Writes ``README.md`` with the ``configs:`` YAML and features so ``load_dataset(output_dir)`` just works.

    The YAML lists the shard files explicitly and records the number of sessions and bytes: ``datasets``
    derives its cache key from this card, not from the files, so a card that changes with the content
    keeps ``load_dataset`` from serving a stale cache after a resumed build (or for another folder of the
    same name).
    """
    output_dir = Path(output_dir)
    import pyarrow.parquet as pq

    shards = sorted(p for p in (output_dir / DATA_DIR).glob("train-*.parquet") if SHARD_NAME.fullmatch(p.name))
    if not shards:  # a card listing no file is one that load_dataset cannot read
        raise ValueError(f"output_dir: {output_dir / DATA_DIR} holds no parquet shard; no dataset card written.")
    num_sessions = sum(pq.read_metadata(shard).num_rows for shard in shards)  # the rows on disk, whatever happened
    dataset_size = sum(shard.stat().st_size for shard in shards)
    header = {
        "configs": [
            {
                "config_name": "default",
                "data_files": [{"split": "train", "path": [f"{DATA_DIR}/{shard.name}" for shard in shards]}],
            }
        ],
        "dataset_info": {
            "features": SESSION_FEATURES._to_yaml_list(),
            "splits": [{"name": "train", "num_bytes": dataset_size, "num_examples": num_sessions}],
            "dataset_size": dataset_size,
        },
        "tags": ["vincie", "image-editing", "multi-turn", "video"],
    }
    columns = "\n".join(f"- `{name}`: `{feature!r}`".replace("\n", " ") for name, feature in SESSION_FEATURES.items())
    body = f"""# VINCIE editing sessions

Multi-turn editing sessions mined from video with `diffusers_vincie.data.video.build`.
One row per session: key frames, one instruction per transition, the region-of-editing masks of each
transition in its source and target frame, camera motion, video id, timestamps and annotator metadata
(JSON). The schema is documented in `diffusers_vincie.data.schema`.

{description}

## Columns

{columns}

## Build

```json
{json.dumps(extra or {}, indent=2, sort_keys=True)}
```

## Loading

```python
from datasets import load_dataset
sessions = load_dataset("{output_dir.name}", split="train")            # or streaming=True
```
"""
    card = output_dir / CARD_FILE
    write_text_atomic(card, "---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n\n" + body)
    return card


def _write_rejects(output_dir: Path) -> int:
    rejects = [entry for entry in read_manifest(output_dir).values() if entry.get("status") == "rejected"]
    write_text_atomic(
        output_dir / REJECTS_FILE,
        "".join(
            json.dumps({"video_id": e["video_id"], "path": e["path"], "reason": e["reason"]}) + "\n" for e in rejects
        ),
    )
    return len(rejects)


# ------------------------------------------------------------------------------------------------
# Orchestration
# ------------------------------------------------------------------------------------------------


def distributed_state() -> Any:
    """The ``accelerate.PartialState`` of this process (one process when not launched by ``accelerate launch``).

    ``ACCELERATE_USE_CPU=1`` selects CPU processes (gloo), as it does for ``Accelerator``; without it a
    machine with no accelerator would run every launched process as an independent single process.
    """
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def check_output_dir(output_dir: Path) -> None:
    """The output is a new folder or a build's own (it has ``manifest/``): the card would replace a ``README.md``.

    Raises:
        ValueError: ``output_dir`` is a file, or a non-empty folder that no build wrote.
    """
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"output_dir: {output_dir} is a file; give a dataset folder to create or resume.")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not (output_dir / MANIFEST_DIR).is_dir():
        raise ValueError(
            f"output_dir: {output_dir} is a non-empty folder that no build wrote (no {MANIFEST_DIR}/); "
            "give a new folder (its README.md would be replaced by the dataset card)."
        )


@dataclass
class BuildSummary:
    """Counts of one build call, over all processes (read back from the manifests).

    Args:
        videos: Videos in the input.
        skipped: Videos already finished by an earlier run (resumed).
        processed: Videos finished by this run (done or rejected).
        rejected_videos: Rejected videos in the whole output folder (retried by the next run).
        sessions: Sessions in the whole output folder.
        seconds: Wall time of this call.
    """

    videos: int
    skipped: int
    processed: int
    rejected_videos: int
    sessions: int
    seconds: float


def build_sessions(
    inputs: Sequence[str | Path],
    output_dir: str | Path,
    annotator: TransitionAnnotator,
    *,
    config: SamplingConfig | None = None,
    region_masker: Any | None = None,
    shard_size: int = 64,
    encode_workers: int = 2,
    frame_format: str = "png",
    on_video_done: Callable[[str], None] | None = None,
) -> BuildSummary:
    """Turns videos into a sessions dataset folder (see the module docstring for its layout).

    Runs as one process or under ``accelerate launch`` (each process takes its share of the pending
    videos); safe to rerun on the same ``output_dir``: finished videos are skipped.

    Args:
        inputs: Video files, folders and ``.txt`` lists (see :func:`list_videos`).
        output_dir: Dataset folder to create or resume.
        annotator: Transition annotator (``GroundTruthAnnotator`` for synthetic video, ``VLMAnnotator``).
        config: Frame sampling settings.
        region_masker: Grounds the annotator's object phrases into masks when it has no exact masks.
        shard_size: Sessions per parquet shard (a shard is only written once it is full or the run ends,
            so a smaller value loses less work to a kill).
        encode_workers: Background threads encoding images while the next videos are decoded.
        frame_format: ``"png"`` (lossless, default) or ``"jpeg"`` (quality 95, 4:4:4, faster to
            write for large frames); masks are always PNG.
        on_video_done: Called with each finished video id (progress hooks, tests).
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got shard_size={shard_size}")
    if encode_workers < 1:
        raise ValueError(f"encode_workers must be >= 1, got encode_workers={encode_workers}")
    if frame_format not in FRAME_FORMATS:
        raise ValueError(f"frame_format={frame_format!r} is not supported; use one of {FRAME_FORMATS}")
    config = config or SamplingConfig()
    output_dir = Path(output_dir)
    check_output_dir(output_dir)
    state = distributed_state()
    started = time.perf_counter()
    videos = list_videos(inputs)
    if not videos:
        raise ValueError(f"inputs: no video files ({', '.join(VIDEO_EXTENSIONS)}) found in {[str(i) for i in inputs]}")
    with _build_lock(output_dir, state):
        return _build(
            videos,
            output_dir,
            annotator,
            config,
            region_masker,
            shard_size,
            encode_workers,
            frame_format,
            on_video_done,
            state,
            started,
        )


@contextmanager
def _build_lock(output_dir: Path, state: Any) -> Iterator[None]:
    """One build per output folder: the main process holds ``manifest/.build.lock`` (an ``flock``: a killed build
    never blocks the next one); a second build gets :class:`OutputLockedError` on every process before any work."""
    with ExitStack() as stack:
        refusal = None
        if state.is_main_process:
            try:
                stack.enter_context(exclusive_lock(output_dir / MANIFEST_DIR / LOCK_FILE, f"output_dir {output_dir}"))
            except OutputLockedError as error:
                refusal = str(error)
        if state.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            refusal = broadcast_object_list([refusal])[0]
        if refusal is not None:
            raise OutputLockedError(refusal)
        yield


def _build(
    videos: list[tuple[str, Path]],
    output_dir: Path,
    annotator: TransitionAnnotator,
    config: SamplingConfig,
    region_masker: Any | None,
    shard_size: int,
    encode_workers: int,
    frame_format: str,
    on_video_done: Callable[[str], None] | None,
    state: Any,
    started: float,
) -> BuildSummary:
    if state.is_main_process:
        (output_dir / DATA_DIR).mkdir(parents=True, exist_ok=True)
        (output_dir / MANIFEST_DIR).mkdir(parents=True, exist_ok=True)
        if dropped := _repair_manifests(output_dir):
            logger.warning(
                "dropped %d torn manifest line(s) left by an interrupted run (their videos are redone)", dropped
            )
        for name in _remove_orphan_shards(output_dir):
            logger.warning("removed shard %s left by an interrupted run (its videos are redone)", name)
    state.wait_for_everyone()
    finished = read_manifest(output_dir)
    pending = [(video_id, path) for video_id, path in videos if finished.get(video_id, {}).get("status") != "done"]
    state.wait_for_everyone()  # every process has read the manifests before anyone appends to them

    writer = _ShardWriter(output_dir, state.process_index, shard_size, encode_workers, frame_format)
    completed = False
    try:
        with (
            state.split_between_processes(pending) as share,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="video-decoder") as decoder,
        ):
            progress = tqdm(
                share,
                desc=f"sessions [rank {state.process_index}]",
                position=state.process_index,
                unit="video",
                disable=not share,
            )
            # the next video is decoded on a thread while this one is annotated (the decoder releases the GIL)
            ahead = [decoder.submit(_decode_video, Path(path), video_id, config) for video_id, path in share[:1]]
            for index, (video_id, path) in enumerate(progress):
                if index + 1 < len(share):
                    following_id, following = share[index + 1]
                    ahead.append(decoder.submit(_decode_video, Path(following), following_id, config))
                decoded = ahead.pop(0)
                result = _sessions_from_video(Path(path), video_id, annotator, config, region_masker, decoded.result)
                if result.error is not None:
                    logger.warning("rejected video %s (retried next run): %s", path, result.error)
                writer.add(path, result)
                progress.set_postfix(sessions=len(result.sessions), refresh=False)
                if on_video_done is not None:
                    on_video_done(video_id)
        completed = True
    finally:
        writer.close(completed=completed)
    state.wait_for_everyone()

    manifest = read_manifest(output_dir)
    summary = BuildSummary(
        videos=len(videos),
        skipped=len(videos) - len(pending),
        processed=sum(1 for video_id, _ in pending if video_id in manifest),
        rejected_videos=sum(1 for e in manifest.values() if e.get("status") == "rejected"),
        sessions=sum(e.get("sessions", 0) for e in manifest.values() if e.get("status") == "done"),
        seconds=time.perf_counter() - started,
    )
    if state.is_main_process:
        _write_rejects(output_dir)
        if any((output_dir / DATA_DIR).glob("*.parquet")):
            write_dataset_card(
                output_dir,
                extra={"annotator": annotator.metadata(), "sampling": vars(config), "frame_format": frame_format},
            )
        else:  # nothing to load: no card (an earlier build's card that listed no shard goes too)
            (output_dir / CARD_FILE).unlink(missing_ok=True)
    state.wait_for_everyone()
    return summary
