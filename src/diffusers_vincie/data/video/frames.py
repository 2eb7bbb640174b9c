"""Frame sampling from video files: where to look (timestamps) and how to get there (PyAV with seeking).

VINCIE mines editing sessions from video by sampling a handful of frames per clip. The paper uses two
strategies, both available here, plus a hybrid of the two:

* ``equal_interval``: one frame every ``interval`` seconds (e.g. every 3 s);
* ``fixed_count``: ``n`` frames spread uniformly over the clip, with ``n`` drawn in
  ``[min_frames, max_frames]`` (2..6 in the paper) from a per-video seeded generator;
* ``hybrid``: equal-interval when that gives between ``min_frames`` and ``max_frames`` frames,
  otherwise fixed-count with ``n`` clamped into that range.

Clips can optionally be split at scene cuts first (a session never spans a cut). Frames are decoded
with PyAV by seeking to the key frame before each target time and decoding forward, so the cost is
proportional to the number of sampled frames, not to the length of the video.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Literal

import av
import numpy as np
from PIL import Image

SamplingStrategy = Literal["equal_interval", "fixed_count", "hybrid"]
SAMPLING_STRATEGIES: tuple[str, ...] = ("equal_interval", "fixed_count", "hybrid")


# ------------------------------------------------------------------------------------------------
# Errors and metadata
# ------------------------------------------------------------------------------------------------


class VideoDecodeError(RuntimeError):
    """A video file could not be opened or decoded; ``reason`` is a short human-readable cause."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"cannot decode video {str(path)!r}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class VideoInfo:
    """What a sampler needs to know about a video stream.

    Args:
        path: The video file.
        duration: Length of the video stream in seconds.
        fps: Average frame rate (frames per second).
        width: Frame width in pixels.
        height: Frame height in pixels.
    """

    path: str
    duration: float
    fps: float
    width: int
    height: int


@dataclass(frozen=True)
class SampledFrame:
    """One decoded frame.

    Args:
        image: The RGB frame.
        timestamp: Presentation time of the decoded frame in seconds from the first frame of the stream
            (the nearest frame to the requested time).
        frame_index: Index of the frame in the stream, ``round(timestamp * fps)``.
    """

    image: Image.Image
    timestamp: float
    frame_index: int


def _av_error_reason(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _start_time(stream: av.video.stream.VideoStream) -> float:
    """Presentation time of the stream's first frame; all times in this module are relative to it
    (MPEG-TS and edited mp4 files do not start at 0)."""
    if stream.start_time is None or stream.time_base is None:
        return 0.0
    return float(stream.start_time * stream.time_base)


def probe_video(path: str | Path) -> VideoInfo:
    """Read duration, frame rate and size of the first video stream of ``path`` (no decoding).

    Args:
        path: A video file readable by FFmpeg.

    Raises:
        VideoDecodeError: When the file is missing, unreadable or has no usable video stream.
    """
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoDecodeError(path, "no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0)
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / av.time_base
            else:
                duration = 0.0
            width, height = stream.codec_context.width, stream.codec_context.height
    except VideoDecodeError:
        raise
    except (av.FFmpegError, OSError, ValueError) as error:
        raise VideoDecodeError(path, _av_error_reason(error)) from error
    if fps <= 0 or duration <= 0 or width <= 0 or height <= 0:
        raise VideoDecodeError(path, f"unusable stream (fps={fps}, duration={duration}, size={width}x{height})")
    return VideoInfo(path=str(path), duration=duration, fps=fps, width=width, height=height)


# ------------------------------------------------------------------------------------------------
# Where to sample: timestamps
# ------------------------------------------------------------------------------------------------


def frame_sampling_seed(video_id: str, seed: int) -> int:
    """A per-video seed that does not depend on which process handles the video (stable across runs)."""
    digest = hashlib.sha256(f"{seed}:{video_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _fixed_count_times(start: float, end: float, count: int) -> list[float]:
    # centres of `count` equal bins: never the very first or very last (often black/fading) frame
    span = end - start
    return [start + span * (i + 0.5) / count for i in range(count)]


def _equal_interval_times(start: float, end: float, interval: float) -> list[float]:
    count = math.floor((end - start) / interval + 1e-9)
    if count <= 0:
        return []
    # centre the grid inside the clip so both ends are treated the same
    offset = start + ((end - start) - (count - 1) * interval) / 2
    return [offset + i * interval for i in range(count)]


def sample_timestamps(
    start: float,
    end: float,
    *,
    strategy: SamplingStrategy = "hybrid",
    interval: float = 3.0,
    min_frames: int = 2,
    max_frames: int = 6,
    rng: np.random.Generator | None = None,
) -> list[float]:
    """Choose the times (seconds) at which to sample frames of the clip ``[start, end)``.

    Args:
        start: Clip start in seconds.
        end: Clip end in seconds (exclusive).
        strategy: ``"equal_interval"``, ``"fixed_count"`` or ``"hybrid"`` (see the module docstring).
        interval: Seconds between frames for equal-interval sampling.
        min_frames: Fewest frames a session may have (at least 2: one transition).
        max_frames: Most frames a session may have.
        rng: Generator used to draw the frame count of fixed-count sampling; when ``None`` the count is
            ``max_frames``.

    Returns:
        Sorted timestamps. Equal-interval sampling may return fewer than ``min_frames`` (a clip too short
        for the interval) or more than ``max_frames``; callers drop or split such clips.
    """
    if strategy not in SAMPLING_STRATEGIES:
        raise ValueError(f"strategy={strategy!r} is not supported; use one of {SAMPLING_STRATEGIES}")
    if not 2 <= min_frames <= max_frames:
        raise ValueError(f"need 2 <= min_frames <= max_frames, got min_frames={min_frames}, max_frames={max_frames}")
    if interval <= 0:
        raise ValueError(f"interval must be > 0 seconds, got interval={interval}")
    if end <= start:
        return []

    def fixed_count() -> list[float]:
        count = max_frames if rng is None else int(rng.integers(min_frames, max_frames + 1))
        return _fixed_count_times(start, end, count)

    if strategy == "fixed_count":
        return fixed_count()
    times = _equal_interval_times(start, end, interval)
    if strategy == "equal_interval" or min_frames <= len(times) <= max_frames:
        return times
    count = min(max(len(times), min_frames), max_frames)
    return _fixed_count_times(start, end, count)


# ------------------------------------------------------------------------------------------------
# How to get there: decoding with seeking
# ------------------------------------------------------------------------------------------------


def _to_image(frame: av.VideoFrame, max_side: int | None) -> Image.Image:
    if max_side is not None and max(frame.width, frame.height) > max_side:
        scale = max_side / max(frame.width, frame.height)
        width, height = max(1, round(frame.width * scale)), max(1, round(frame.height * scale))
        return frame.to_image(width=width, height=height)
    return frame.to_image()


def _next_frame(decoded: Iterator[av.VideoFrame]) -> av.VideoFrame | None:
    return next((frame for frame in decoded if frame.time is not None), None)


def _decode_until(
    decoded: Iterator[av.VideoFrame], threshold: float, latest: av.VideoFrame | None
) -> av.VideoFrame | None:
    """Decodes forward to the first frame at or after ``threshold`` (the last frame at end of stream)."""
    for frame in decoded:
        if frame.time is None:
            continue
        latest = frame
        if frame.time >= threshold:
            break
    return latest


#: How far before a target time a stream may end (the last frame of a well-formed file) before it counts as cut.
END_TOLERANCE_SECONDS = 0.5


def decode_frames_at(
    path: str | Path,
    timestamps: Sequence[float],
    *,
    max_side: int | None = None,
    seek_threshold: float = 1.0,
) -> list[SampledFrame]:
    """Decode the frames on screen at ``timestamps`` (seconds), seeking instead of decoding everything.

    For each target time the decoder seeks to the key frame before it and decodes forward to the first
    frame within half a frame of the target; when the next target is less than ``seek_threshold``
    seconds ahead it simply keeps decoding.

    Args:
        path: The video file.
        timestamps: Target times in seconds, in any order; the result follows the sorted order.
        max_side: When set, frames larger than this (longest side, pixels) are downscaled by the decoder.
        seek_threshold: Seconds ahead of the current decode position beyond which a seek is cheaper
            than decoding forward.

    Raises:
        VideoDecodeError: When the file cannot be opened, no frame can be decoded near a target, or the frames
            end well before a target (a truncated file whose header states a longer duration).
    """
    targets = sorted(float(t) for t in timestamps)
    frames: list[SampledFrame] = []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            fps = float(stream.average_rate or stream.guessed_rate)
            half_frame, start = 0.5 / fps, _start_time(stream)
            decoded = None  # iterator over decoded frames, None until the first seek
            latest: av.VideoFrame | None = None  # most recently decoded frame
            for target in (t + start for t in targets):
                threshold = target - half_frame
                if decoded is None or latest is None or target - latest.time > seek_threshold:
                    container.seek(max(0, int(target / stream.time_base)), stream=stream, backward=True)
                    decoded, latest = container.decode(stream), None
                    first = _next_frame(decoded)
                    if first is None or first.time > target + half_frame:
                        # containers without a seek index (MPEG-TS) can land past the target or nowhere:
                        # decode from the beginning instead
                        container.seek(0)
                        decoded, first = container.decode(stream), None
                    latest = first
                if latest is None or latest.time < threshold:
                    latest = _decode_until(decoded, threshold, latest)
                if latest is None:
                    raise VideoDecodeError(path, f"no frame could be decoded near t={target:.3f}s")
                if float(latest.time) < target - max(END_TOLERANCE_SECONDS, 3 / fps):
                    # a faststart file cut short: the header promises frames the data no longer holds
                    raise VideoDecodeError(
                        path,
                        f"truncated: the frames end at t={float(latest.time) - start:.2f}s, before "
                        f"t={target - start:.2f}s within the duration its header states",
                    )
                # `latest` is the first frame at/after the target, or the last frame at end of stream
                image = _to_image(latest, max_side)
                time = float(latest.time) - start
                frames.append(SampledFrame(image, time, round(time * fps)))
    except VideoDecodeError:
        raise
    except (av.FFmpegError, OSError, ValueError, IndexError) as error:
        raise VideoDecodeError(path, _av_error_reason(error)) from error
    return frames


# ------------------------------------------------------------------------------------------------
# Scene cuts
# ------------------------------------------------------------------------------------------------


def detect_scene_cuts(
    path: str | Path,
    *,
    threshold: float = 0.3,
    probe_fps: float = 4.0,
    thumbnail_side: int = 32,
) -> list[float]:
    """Find hard cuts: times where consecutive probe thumbnails differ by more than ``threshold``.

    This needs one sequential decoding pass (content changes cannot be found by seeking), but only
    ``probe_fps`` frames per second are converted to small grey thumbnails, so it stays cheap; it is
    optional in the build pipeline.

    Args:
        path: The video file.
        threshold: Mean absolute grey-level difference (0..1) between consecutive thumbnails that
            counts as a cut.
        probe_fps: Thumbnails per second to compare.
        thumbnail_side: Side of the square thumbnails in pixels.

    Returns:
        Sorted cut times in seconds (the time of the first frame after each cut).
    """
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got threshold={threshold}")
    cuts: list[float] = []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            next_probe, previous, start = -math.inf, None, _start_time(stream)
            for frame in container.decode(stream):
                if frame.time is None or frame.time < next_probe:
                    continue
                next_probe = frame.time + 1.0 / probe_fps
                thumb = frame.to_ndarray(width=thumbnail_side, height=thumbnail_side, format="gray")
                thumb = thumb.astype(np.float32) / 255.0
                if previous is not None and float(np.abs(thumb - previous).mean()) > threshold:
                    cuts.append(float(frame.time) - start)
                previous = thumb
    except (av.FFmpegError, OSError, ValueError, IndexError) as error:
        raise VideoDecodeError(path, _av_error_reason(error)) from error
    return cuts


def split_at_cuts(duration: float, cuts: Sequence[float], *, min_length: float = 0.0) -> list[tuple[float, float]]:
    """Split ``[0, duration)`` at ``cuts`` into clips, dropping clips shorter than ``min_length`` seconds."""
    bounds = [0.0, *sorted(c for c in cuts if 0.0 < c < duration), duration]
    return [(a, b) for a, b in pairwise(bounds) if b - a >= min_length and b > a]
