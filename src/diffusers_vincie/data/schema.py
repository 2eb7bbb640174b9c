"""The session schema: one row of a VINCIE sessions dataset = one multi-turn editing session.

A *session* is a short sequence of key frames taken from one video (or one multi-turn edit dataset), with one
text instruction per transition between consecutive frames and the region of editing (RoE) of each
transition in both its source and its target frame. Every producer in this package (the video build
pipeline, the synthetic world, the dataset adapters) writes sessions through :class:`SessionRecord`, and every
consumer (training, evaluation) reads them back through it, so the rules below hold everywhere.

Columns of :data:`SESSION_FEATURES` (``n`` = number of frames, ``n >= 2``; transition ``i`` goes from frame
``i`` to frame ``i + 1``):

- ``session_id`` (string): unique id of the session inside a dataset, e.g. ``"<video_id>/<k>"`` when one video
  yields several sessions (scene cuts). Build pipelines use it to de-duplicate rows on resume.
- ``video_id`` (string): id of the source video (file stem, URL or dataset id); shared by all sessions cut
  from the same video.
- ``frames`` (list of ``n`` images): the key frames, RGB, all of the same size, in time order.
- ``timestamps`` (list of ``n`` float64): time of each frame in seconds from the start of the video,
  non-decreasing. Image-only datasets (no video) store the turn index (``0.0, 1.0, ...``).
- ``instructions`` (list of ``n - 1`` strings): the edit instruction of each transition, non-empty.
- ``source_masks`` (list of ``n - 1`` images or nulls): RoE of transition ``i`` in its *source* frame ``i``
  (the pixels of the objects that the edit touches, before the edit), mode ``"L"``, 0 or 255, same size as the
  frames. ``None`` when the producer does not know the region (e.g. an adapter of a dataset without masks).
- ``target_masks`` (list of ``n - 1`` images or nulls): RoE of transition ``i`` in its *target* frame
  ``i + 1`` (the same objects after the edit), same format as ``source_masks``.
- ``camera_motion`` (list of ``n - 1`` strings): camera motion during each transition, free text from the
  annotator; ``"static"`` when the camera does not move (see :data:`STATIC_CAMERA`).
- ``annotator`` (string): JSON object describing how the session was annotated, at least ``{"name": ...}``
  (e.g. ``"ground_truth"``, ``"vlm"``, ``"magicbrush"``), plus any producer metadata (model id, prompt
  version, sampling strategy, ...). Stored as a JSON string so producers can add keys without a schema change.
"""

from __future__ import annotations

import functools
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import PIL.Image

__all__ = [
    "SESSION_FEATURES",  # noqa: F822 (built on first use by __getattr__)
    "STATIC_CAMERA",
    "SessionRecord",
    "SessionValidationError",
    "decode_stored_image",
    "mask_to_array",
]

# =====================================================================================================
# Features
# =====================================================================================================


@functools.cache
def _session_features() -> Any:
    from datasets import Features, Image, List, Value

    return Features(
        {
            "session_id": Value("string"),
            "video_id": Value("string"),
            "frames": List(Image()),
            "timestamps": List(Value("float64")),
            "instructions": List(Value("string")),
            "source_masks": List(Image()),
            "target_masks": List(Image()),
            "camera_motion": List(Value("string")),
            "annotator": Value("string"),
        }
    )


def __getattr__(name: str) -> Any:
    # SESSION_FEATURES needs the optional ``datasets`` (extra "data"), so it is built on first use (PEP 562): the
    # record type and STATIC_CAMERA need only numpy and PIL, and the shapes world (training on the fly) uses them.
    if name == "SESSION_FEATURES":
        return _session_features()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# The ``camera_motion`` value of a transition where the camera does not move.
STATIC_CAMERA = "static"


class SessionValidationError(ValueError):
    """A session violates the schema; the message names the field and how to fix it."""


# =====================================================================================================
# Image coercion helpers
# =====================================================================================================


def _to_rgb_image(value: Any, where: str) -> PIL.Image.Image:
    """Returns ``value`` (PIL image or uint8 ``(H, W, 3)`` array) as an RGB PIL image."""
    if isinstance(value, PIL.Image.Image):
        return value if value.mode == "RGB" else value.convert("RGB")
    if isinstance(value, np.ndarray):
        if value.dtype != np.uint8 or value.ndim != 3 or value.shape[2] != 3:
            raise SessionValidationError(
                f"{where}: expected a uint8 array of shape (H, W, 3), got dtype {value.dtype} and shape "
                f"{value.shape}; convert frames with `np.asarray(img.convert('RGB'))`."
            )
        return PIL.Image.fromarray(value, mode="RGB")
    raise SessionValidationError(f"{where}: expected a PIL image or a uint8 (H, W, 3) array, got {type(value)}.")


def decode_stored_image(value: Any, where: str) -> Any:
    """A stored image of a sessions row (``datasets.Image`` undecoded: ``{"bytes", "path"}``) as a PIL image, decoded
    as ``datasets`` decodes it (EXIF orientation applied); anything else is returned for the record's own checks.

    A row that holds only a ``path`` is refused: a sessions dataset embeds its images, and a path stored in data
    could name any file (``/etc/...``, ``../../x.png``) or a URL, which ``datasets`` would open or download.
    """
    if not isinstance(value, dict):
        return value
    if value.get("bytes") is None:
        raise SessionValidationError(
            f"{where}: the image holds no bytes, only the path {value.get('path')!r}; sessions datasets embed their "
            "images and paths stored in rows are not followed; rebuild the dataset with the image bytes in its rows."
        )
    import PIL.ImageOps

    image = PIL.Image.open(io.BytesIO(value["bytes"]))
    image.load()
    return (
        PIL.ImageOps.exif_transpose(image)
        if image.getexif().get(PIL.Image.ExifTags.Base.Orientation) is not None
        else image
    )


def _to_mask_image(value: Any, where: str) -> PIL.Image.Image | None:
    """Returns ``value`` (None, PIL image, bool/uint8 ``(H, W)`` array: 0/1 or 0..255, above 127 inside) as a binary
    ``"L"`` image (0/255)."""
    if value is None:
        return None
    if isinstance(value, PIL.Image.Image):
        array = np.asarray(value.convert("L")) > 127
    elif isinstance(value, np.ndarray):
        if value.ndim != 2 or value.dtype not in (np.bool_, np.uint8):
            raise SessionValidationError(
                f"{where}: expected a bool or uint8 array of shape (H, W), got dtype {value.dtype} and shape "
                f"{value.shape}."
            )
        # uint8: a 0/255 mask image, or a 0/1 mask (its 1s are not "dark": read as 0/255 it would be empty)
        binary = value.dtype == np.uint8 and value.max(initial=0) <= 1
        array = (value > 0 if binary else value > 127) if value.dtype == np.uint8 else value
    else:
        raise SessionValidationError(
            f"{where}: expected None, a PIL image or an (H, W) bool array, got {type(value)}."
        )
    return PIL.Image.fromarray(array.astype(np.uint8) * 255, mode="L")


def mask_to_array(mask: PIL.Image.Image | None, size: tuple[int, int] | None = None) -> np.ndarray | None:
    """Converts a stored mask image to a bool ``(H, W)`` array (``None`` stays ``None``).

    Args:
        mask: a mask image as stored in a session (any mode; values above 127 count as inside).
        size: optional ``(width, height)``; the mask is resized with nearest-neighbour first.
    """
    if mask is None:
        return None
    if size is not None and mask.size != tuple(size):
        mask = mask.resize(tuple(size), PIL.Image.NEAREST)
    return np.asarray(mask.convert("L")) > 127


# =====================================================================================================
# SessionRecord
# =====================================================================================================


@dataclass
class SessionRecord:
    """One multi-turn editing session, validated on construction (see the module docstring for each field).

    Frames may be given as PIL images or uint8 ``(H, W, 3)`` arrays and masks as PIL images, bool/uint8
    ``(H, W)`` arrays or ``None``; they are stored as RGB and binary ``"L"`` PIL images. ``source_masks``,
    ``target_masks`` and ``camera_motion`` default to "unknown" (``None`` masks, static camera) when omitted.

    Raises:
        SessionValidationError: when a field is missing, has the wrong length, type or size.
    """

    session_id: str
    video_id: str
    frames: list[PIL.Image.Image]
    instructions: list[str]
    timestamps: list[float] | None = None
    source_masks: list[PIL.Image.Image | None] | None = None
    target_masks: list[PIL.Image.Image | None] | None = None
    camera_motion: list[str] | None = None
    annotator: dict[str, Any] = field(default_factory=lambda: {"name": "unknown"})

    def __post_init__(self) -> None:
        for name in ("session_id", "video_id"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise SessionValidationError(f"{name}: must be a non-empty string, got {getattr(self, name)!r}.")

        # Frames: >= 2, RGB, one size.
        if not isinstance(self.frames, Sequence) or isinstance(self.frames, (str, bytes)) or len(self.frames) < 2:
            raise SessionValidationError(
                f"frames: a session needs a list of at least 2 frames, got {type(self.frames).__name__} "
                f"of length {len(self.frames) if hasattr(self.frames, '__len__') else 'n/a'}."
            )
        self.frames = [_to_rgb_image(frame, f"frames[{i}]") for i, frame in enumerate(self.frames)]
        size = self.frames[0].size
        for i, frame in enumerate(self.frames):
            if frame.size != size:
                raise SessionValidationError(
                    f"frames[{i}]: size {frame.size} differs from frames[0] size {size}; resize all frames "
                    "of a session to one size."
                )
        num_transitions = len(self.frames) - 1

        # Instructions: one non-empty string per transition.
        self._check_length("instructions", self.instructions, num_transitions)
        for i, text in enumerate(self.instructions):
            if not isinstance(text, str) or not text.strip():
                raise SessionValidationError(f"instructions[{i}]: must be a non-empty string, got {text!r}.")
        self.instructions = list(self.instructions)

        # Timestamps: one float per frame, non-decreasing, finite. Default: the turn index.
        if self.timestamps is None:
            self.timestamps = [float(i) for i in range(len(self.frames))]
        self._check_length("timestamps", self.timestamps, len(self.frames))
        try:
            self.timestamps = [float(t) for t in self.timestamps]
        except (TypeError, ValueError) as error:
            raise SessionValidationError(f"timestamps: must be numbers (seconds), got {self.timestamps!r}.") from error
        for i, (earlier, later) in enumerate(zip(self.timestamps, self.timestamps[1:])):
            if not (math.isfinite(earlier) and math.isfinite(later)) or later < earlier:
                raise SessionValidationError(
                    f"timestamps: must be finite and non-decreasing, got {earlier} then {later} at index {i + 1}."
                )

        # Masks: one per transition (None = unknown), same size as the frames.
        for name in ("source_masks", "target_masks"):
            masks = getattr(self, name)
            if masks is None:
                masks = [None] * num_transitions
            self._check_length(name, masks, num_transitions)
            masks = [_to_mask_image(mask, f"{name}[{i}]") for i, mask in enumerate(masks)]
            for i, mask in enumerate(masks):
                if mask is not None and mask.size != size:
                    raise SessionValidationError(
                        f"{name}[{i}]: size {mask.size} differs from the frame size {size}; masks must have "
                        "the size of the frames."
                    )
            setattr(self, name, masks)

        # Camera motion: one string per transition.
        if self.camera_motion is None:
            self.camera_motion = [STATIC_CAMERA] * num_transitions
        self._check_length("camera_motion", self.camera_motion, num_transitions)
        for i, motion in enumerate(self.camera_motion):
            if not isinstance(motion, str) or not motion:
                raise SessionValidationError(
                    f"camera_motion[{i}]: must be a non-empty string (use {STATIC_CAMERA!r}), got {motion!r}."
                )
        self.camera_motion = list(self.camera_motion)

        # Annotator: a JSON-serializable dict with a name.
        if isinstance(self.annotator, str):
            try:
                self.annotator = json.loads(self.annotator)
            except json.JSONDecodeError as error:
                raise SessionValidationError(f"annotator: not valid JSON: {error}.") from error
        if not isinstance(self.annotator, dict) or "name" not in self.annotator:
            raise SessionValidationError(
                f"annotator: must be a dict with at least a 'name' key, got {self.annotator!r}."
            )
        try:
            json.dumps(self.annotator)
        except TypeError as error:
            raise SessionValidationError(f"annotator: must be JSON-serializable: {error}.") from error

    @staticmethod
    def _check_length(name: str, values: Any, expected: int) -> None:
        if not isinstance(values, Sequence) or isinstance(values, (str, bytes)):
            raise SessionValidationError(f"{name}: must be a list, got {type(values).__name__}.")
        if len(values) != expected:
            raise SessionValidationError(
                f"{name}: expected {expected} entries (one per {'frame' if name == 'timestamps' else 'transition'}),"
                f" got {len(values)}."
            )

    # -------------------------------------------------------------------------------------------------
    # Convenience
    # -------------------------------------------------------------------------------------------------

    @property
    def num_turns(self) -> int:
        """Number of transitions (edits) in the session: ``len(frames) - 1``."""
        return len(self.frames) - 1

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` of the frames."""
        return self.frames[0].size

    def frame_arrays(self) -> list[np.ndarray]:
        """The frames as uint8 ``(H, W, 3)`` arrays."""
        return [np.asarray(frame) for frame in self.frames]

    # -------------------------------------------------------------------------------------------------
    # Rows
    # -------------------------------------------------------------------------------------------------

    def to_row(self) -> dict[str, Any]:
        """Returns the session as a row matching :data:`SESSION_FEATURES` (images stay PIL; ``datasets`` encodes)."""
        return {
            "session_id": self.session_id,
            "video_id": self.video_id,
            "frames": list(self.frames),
            "timestamps": list(self.timestamps),
            "instructions": list(self.instructions),
            "source_masks": list(self.source_masks),
            "target_masks": list(self.target_masks),
            "camera_motion": list(self.camera_motion),
            "annotator": json.dumps(self.annotator, sort_keys=True),
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "SessionRecord":
        """Builds a record from a dataset row (decoded PIL images, or ``{"bytes": ...}`` dicts when not decoded).

        Raises:
            SessionValidationError: when a required column is missing or a value is invalid.
        """
        missing = [name for name in ("session_id", "video_id", "frames", "instructions") if name not in row]
        if missing:
            raise SessionValidationError(
                f"row: missing required column(s) {missing}; expected the columns of SESSION_FEATURES "
                f"{list(_session_features())}."
            )
        masks = {
            name: [decode_stored_image(mask, f"{name}[{i}]") for i, mask in enumerate(row[name])]
            if row.get(name) is not None
            else None
            for name in ("source_masks", "target_masks")
        }
        return cls(
            session_id=row["session_id"],
            video_id=row["video_id"],
            frames=[decode_stored_image(frame, f"frames[{i}]") for i, frame in enumerate(row["frames"])],
            instructions=row["instructions"],
            timestamps=row.get("timestamps"),
            camera_motion=row.get("camera_motion"),
            annotator=row.get("annotator") or {"name": "unknown"},
            **masks,
        )
