"""Videos of shapes-world sessions with an exact ground-truth sidecar (for the video -> sessions build).

:func:`render_video` writes a session as an mp4 (smooth motion between held key states) plus a JSON sidecar
with the exact instructions, RoE masks and key-frame times; :func:`read_ground_truth` reads the sidecar back and
:func:`make_synthetic_videos` writes a resumable, seeded set of them. Needs ``av`` (extra ``data``).
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ...utils.io import commit, temporary_sibling
from .shots import sample_composition_session, sample_story_session, shot_edit_masks
from .world import SceneState, ShapesSession, ShapesWorld, changed_pixels

__all__ = [
    "decode_mask",
    "encode_mask",
    "make_synthetic_videos",
    "read_ground_truth",
    "render_video",
    "video_session_seed",
]


# =====================================================================================================
# Mask encoding for JSON sidecars
# =====================================================================================================


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """Encodes a bool ``(H, W)`` mask as ``{"shape": [H, W], "packbits": <base64>}`` for JSON."""
    mask = np.asarray(mask, dtype=bool)
    return {"shape": list(mask.shape), "packbits": base64.b64encode(np.packbits(mask, axis=None)).decode("ascii")}


def decode_mask(encoded: dict[str, Any]) -> np.ndarray:
    """Inverse of :func:`encode_mask`."""
    height, width = encoded["shape"]
    bits = np.frombuffer(base64.b64decode(encoded["packbits"]), dtype=np.uint8)
    return np.unpackbits(bits, count=height * width).reshape(height, width).astype(bool)


# =====================================================================================================
# Videos and their sidecars
# =====================================================================================================


def render_video(
    world: ShapesWorld,
    session: ShapesSession,
    path: str | os.PathLike,
    fps: int = 8,
    seconds_per_turn: float = 1.0,
    resolution: int | None = None,
    transition_fraction: float = 0.5,
    crf: int = 12,
    video_id: str | None = None,
) -> dict[str, Any]:
    """Writes the session as an H.264 mp4 with a JSON ground-truth sidecar, both atomically.

    Each key state is shown for ``seconds_per_turn`` seconds: the first ``transition_fraction`` of that time
    animates from the previous state (nothing to animate for the first state), the rest holds the state
    exactly. The sidecar (``<path>.json`` with the ``.mp4`` suffix replaced) holds the instructions, ops,
    camera motion, exact RoE and changed masks at the video resolution (:func:`encode_mask`), the time of
    each key state (middle of its hold) and its hold interval; read it with :func:`read_ground_truth`.

    Args:
        world: the world that drew the session (renders its states at the video resolution).
        session: a session of ``world``.
        path: output ``.mp4`` path; parent folders are created.
        fps: frames per second.
        seconds_per_turn: time each key state occupies in the video.
        resolution: video side in pixels (even; default: the world resolution, rounded up to even).
        transition_fraction: part of each turn spent animating, in ``[0, 1)``; the hold must keep >= 1 frame.
        crf: H.264 quality (0 = best); low values keep palette colours close at key states.
        video_id: id stored in the sidecar (default: the file stem).

    Returns:
        The ground-truth dict written to the sidecar.
    """
    import av  # optional dependency (extra "data")

    path = Path(path)
    if path.suffix != ".mp4":
        raise ValueError(f"path: must end with .mp4, got {str(path)!r}.")
    resolution = resolution or world.resolution + world.resolution % 2
    if resolution % 2 or resolution < 16:
        raise ValueError(f"resolution: must be an even number >= 16 (H.264 with yuv420p), got {resolution}.")
    if not 0 <= transition_fraction < 1:
        raise ValueError(f"transition_fraction: must lie in [0, 1), got {transition_fraction}.")
    frames_per_turn = int(round(fps * seconds_per_turn))
    transition_frames = int(round(transition_fraction * frames_per_turn))
    hold_frames = frames_per_turn - transition_frames
    if fps < 1 or hold_frames < 1:
        raise ValueError(
            f"fps/seconds_per_turn/transition_fraction: each state needs >= 1 held frame, got fps={fps}, "
            f"seconds_per_turn={seconds_per_turn}, transition_fraction={transition_fraction}."
        )

    key_frames = [world.render(state, resolution) for state in session.states]
    key_indices, hold_intervals = [], []
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(path)
    container = av.open(str(temporary), mode="w", format="mp4")
    try:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = resolution
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        index = 0
        for k, key_frame in enumerate(key_frames):
            animated = transition_frames if k > 0 else 0
            for f in range(animated):
                t = (f + 1) / (animated + 1)
                _encode(
                    container, stream, world.render_between(session.states[k - 1], session.states[k], t, resolution)
                )
                index += 1
            held = frames_per_turn - animated
            hold_intervals.append([index / fps, (index + held) / fps])
            key_indices.append(index + held // 2)
            for _ in range(held):
                _encode(container, stream, key_frame)
                index += 1
        for packet in stream.encode():
            container.mux(packet)
    except BaseException:
        container.close()
        temporary.unlink(missing_ok=True)
        raise
    container.close()

    source_masks, target_masks = [], []
    for t, edit in enumerate(session.edits):
        source, target = shot_edit_masks(world, edit, session.states[t], session.states[t + 1], resolution)
        source_masks.append(encode_mask(source))
        target_masks.append(encode_mask(target))
    ground_truth = {
        "format": "vincie-synthetic-video/1",
        "video_id": video_id or path.stem,
        "video_file": path.name,
        "fps": fps,
        "num_frames": index,
        "width": resolution,
        "height": resolution,
        "seconds_per_turn": seconds_per_turn,
        "seed": session.seed,
        "world": world.config,
        "key_frame_indices": key_indices,
        "key_timestamps": [i / fps for i in key_indices],
        "hold_intervals": hold_intervals,
        "instructions": list(session.instructions),
        "ops": session.ops,
        "camera_motion": session.camera_motion,
        "source_masks": source_masks,
        "target_masks": target_masks,
        "changed_masks": [encode_mask(changed_pixels(a, b)) for a, b in zip(key_frames, key_frames[1:])],
        "states": [_state_to_json(state) for state in session.states],
    }
    sidecar = path.with_suffix(".json")
    temporary_json = temporary_sibling(sidecar)
    temporary_json.write_text(json.dumps(ground_truth))
    commit(temporary, path)  # a crash before the next line leaves a sidecar-less video: a build reject, retried
    commit(temporary_json, sidecar)
    return ground_truth


def _encode(container: Any, stream: Any, image: np.ndarray) -> None:
    import av

    for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
        container.mux(packet)


def video_session_seed(seed: int, index: int) -> int:
    """The session seed of video ``index`` of a set drawn with ``seed`` (independent streams per video)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


def make_synthetic_videos(
    output_dir: str | os.PathLike,
    num_videos: int,
    seed: int = 0,
    world: ShapesWorld | None = None,
    num_turns: int = 5,
    fps: int = 8,
    seconds_per_turn: float = 1.0,
    resolution: int | None = None,
    transition_fraction: float = 0.5,
    crf: int = 12,
    progress: bool = True,
    composition_fraction: float = 0.0,
    story_fraction: float = 0.0,
    shard: tuple[int, int] = (0, 1),
) -> list[Path]:
    """Writes ``num_videos`` synthetic clips ``synth_<index>.mp4`` with their ``.json`` ground-truth sidecars.

    Deterministic by ``seed`` (video ``i`` is drawn with :func:`video_session_seed`), resumable: a video whose mp4 and
    sidecar both exist is skipped (both are written atomically, so an interrupted run leaves no partial file).

    Args:
        output_dir: folder to write to (created).
        num_videos: number of videos.
        seed: base seed.
        world: the world to draw from (default: ``ShapesWorld(op_weights={"pan": 0.5})``, with camera pans).
        num_turns, fps, seconds_per_turn, resolution, transition_fraction, crf: see
            :meth:`ShapesWorld.sample_session` and :func:`render_video`.
        progress: show a tqdm progress bar.
        composition_fraction: share of the videos that are composition shots (objects introduced one by one,
            then a scene with them; :func:`~.shots.sample_composition_session`) instead of an editing session.
        story_fraction: share of the videos that film one scene with camera moves only
            (:func:`~.shots.sample_story_session`). With both at 0 (default) every video is an editing session.
        shard: ``(index, count)``: write only the videos whose index is ``index`` modulo ``count`` (the same files
            the whole set has), so ``count`` processes can share one set.

    Returns:
        The mp4 paths of the shard, in index order.
    """
    from tqdm.auto import tqdm

    if not isinstance(num_videos, int) or num_videos < 0:
        raise ValueError(f"num_videos: must be an int >= 0, got {num_videos!r}.")
    if not (0 <= composition_fraction and 0 <= story_fraction and composition_fraction + story_fraction <= 1):
        raise ValueError(
            "composition_fraction/story_fraction: need shares >= 0 with a sum <= 1, got "
            f"{composition_fraction} and {story_fraction}."
        )
    shard_index, num_shards = shard
    if not (isinstance(num_shards, int) and isinstance(shard_index, int) and 0 <= shard_index < num_shards):
        raise ValueError(f"shard: needs (index, count) with 0 <= index < count, got {shard!r}.")
    world = world or ShapesWorld(op_weights={"pan": 0.5})
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    width = max(6, len(str(num_videos - 1)))
    paths = []
    for index in tqdm(range(shard_index, num_videos, num_shards), desc="synthetic videos", disable=not progress):
        path = output_dir / f"synth_{index:0{width}d}.mp4"
        paths.append(path)
        if path.exists() and path.with_suffix(".json").exists():
            continue
        session_seed = video_session_seed(seed, index)
        kind = np.random.default_rng([seed, index, 1]).random() if composition_fraction or story_fraction else 1.0
        if kind < composition_fraction:
            session = sample_composition_session(world, session_seed)
        elif kind < composition_fraction + story_fraction:
            session = sample_story_session(world, session_seed, num_turns=num_turns)
        else:
            session = world.sample_session(session_seed, num_turns=num_turns)
        render_video(
            world,
            session,
            path,
            fps=fps,
            seconds_per_turn=seconds_per_turn,
            resolution=resolution,
            transition_fraction=transition_fraction,
            crf=crf,
        )
    return paths


def _state_to_json(state: SceneState) -> dict[str, Any]:
    return {
        "background": state.background,
        "camera": list(state.camera),
        "objects": [asdict(obj) for obj in state.objects],
        "removed": [asdict(obj) for obj in state.removed],
    }


def read_ground_truth(path: str | os.PathLike) -> dict[str, Any]:
    """Reads the sidecar of :func:`render_video` (give the ``.json`` or the ``.mp4`` path).

    Masks are decoded to bool ``(H, W)`` arrays; all other keys are as written (see ``render_video``).

    Raises:
        ValueError: when the file is not a synthetic-video sidecar.
    """
    path = Path(path)
    if path.suffix == ".mp4":
        path = path.with_suffix(".json")
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or data.get("format") != "vincie-synthetic-video/1":
        raise ValueError(f"path: {str(path)!r} is not a synthetic-video ground-truth sidecar (no matching 'format').")
    for name in ("source_masks", "target_masks", "changed_masks"):
        data[name] = [decode_mask(mask) for mask in data[name]]
    return data
