"""Transition annotation: what changed between two key frames, as one edit instruction.

One interface, :class:`TransitionAnnotator`, three back-ends:

* :class:`VLMAnnotator`: any transformers image-text-to-text chat model (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, ...)
  loaded with ``AutoProcessor`` + ``AutoModelForImageTextToText`` and prompted with the chain of thought of
  the VINCIE paper: describe both frames, list the differences, summarize them as one instruction. The
  model answers with a JSON object (:data:`ANNOTATION_KEYS`); malformed answers are retried with sampling
  and, after ``max_attempts``, the transition is rejected with a logged reason.
* :class:`GroundTruthAnnotator`: reads the exact transitions that the synthetic video world
  (:mod:`diffusers_vincie.data.shapes.video`) writes next to each video, including exact masks.
* :class:`ShapesPixelAnnotator`: the VLM's stand-in for videos of the shapes world: it reads only the frames'
  pixels (:mod:`diffusers_vincie.data.shapes.pixels`) and words each transition in the world's language, with
  the regions of editing; it never reads the sidecar.

Annotators raise :class:`AnnotationRejected` for a transition they cannot annotate; the build pipeline then
splits the session at that transition instead of failing the video.
"""

from __future__ import annotations

import json
import logging
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..schema import STATIC_CAMERA
from .frames import SampledFrame

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------
# Interface
# ------------------------------------------------------------------------------------------------


class AnnotationRejected(Exception):
    """A transition could not be annotated; ``reason`` says why (logged and kept in the build stats)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Transition:
    """Two consecutive key frames of one clip.

    Args:
        video_path: The video file the frames come from.
        video_id: Id of the video in the dataset.
        source: The earlier frame.
        target: The later frame.
    """

    video_path: str
    video_id: str
    source: SampledFrame
    target: SampledFrame


@dataclass
class TransitionAnnotation:
    """What an annotator says about one transition.

    Args:
        instruction: The edit instruction that turns the source frame into the target frame.
        source_objects: Short phrases naming the changed objects as they appear in the source frame.
        target_objects: Short phrases naming the changed objects as they appear in the target frame.
        camera_motion: Camera motion during the transition (``"static"`` when none).
        source_mask: Exact region of editing in the source frame (bool ``(H, W)``) when the annotator knows
            it (ground truth); ``None`` lets the region stage ground ``source_objects`` instead.
        target_mask: Same for the target frame.
        details: Extra annotator output kept in the dataset's annotator metadata (descriptions, ...).
    """

    instruction: str
    source_objects: list[str] = field(default_factory=list)
    target_objects: list[str] = field(default_factory=list)
    camera_motion: str = STATIC_CAMERA
    source_mask: np.ndarray | None = None
    target_mask: np.ndarray | None = None
    details: dict[str, Any] = field(default_factory=dict)


class TransitionAnnotator(ABC):
    """Turns a :class:`Transition` into a :class:`TransitionAnnotation`, or raises :class:`AnnotationRejected`."""

    #: Stored in the ``annotator`` column of every session this annotator produced.
    name: str = "annotator"

    def metadata(self) -> dict[str, Any]:
        """JSON-serializable description of the annotator (name, model id, prompt version, ...)."""
        return {"name": self.name}

    @abstractmethod
    def annotate(self, transition: Transition) -> TransitionAnnotation:
        """Annotates one transition.

        Raises:
            AnnotationRejected: When the transition cannot be annotated (the reason is kept).
        """

    def annotate_many(self, transitions: list[Transition]) -> list[TransitionAnnotation | AnnotationRejected]:
        """Annotates several transitions (back-ends override this to batch); rejections are returned, not raised."""
        results: list[TransitionAnnotation | AnnotationRejected] = []
        for transition in transitions:
            try:
                results.append(self.annotate(transition))
            except AnnotationRejected as rejected:
                results.append(rejected)
        return results


class BatchTransitionAnnotator(TransitionAnnotator):
    """An annotator that works on several transitions at once (:meth:`annotate_many`); one is a batch of one."""

    @abstractmethod
    def annotate_many(self, transitions: list[Transition]) -> list[TransitionAnnotation | AnnotationRejected]:
        """Annotates several transitions; rejections are returned, not raised."""

    def annotate(self, transition: Transition) -> TransitionAnnotation:
        (result,) = self.annotate_many([transition])
        if isinstance(result, AnnotationRejected):
            raise result
        return result


# ------------------------------------------------------------------------------------------------
# Parsing the structured answer of a chat model
# ------------------------------------------------------------------------------------------------

#: Keys of the JSON object the VLM is asked to produce (the first three are its chain of thought).
ANNOTATION_KEYS: tuple[str, ...] = (
    "source_description",
    "target_description",
    "differences",
    "instruction",
    "source_objects",
    "target_objects",
    "camera_motion",
)
_REQUIRED_KEYS = ("instruction", "source_objects", "target_objects", "camera_motion")
_STATIC_SYNONYMS = {"", "none", "no", "no motion", "still", "static", "fixed", "stationary", "no camera motion"}
_FENCED_JSON = re.compile(r"```(?:json)?\s*(\{.*?\})\s*```", re.DOTALL)


def _json_objects(text: str) -> list[dict[str, Any]]:
    """Every JSON object found in ``text``: fenced ```json blocks first, then bare ``{...}`` spans."""
    found: list[dict[str, Any]] = []
    for block in _FENCED_JSON.findall(text):
        try:
            value = json.loads(block)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            found.append(value)
    decoder = json.JSONDecoder()
    for start in (i for i, char in enumerate(text) if char == "{"):
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            found.append(value)
    return found


def _phrase_list(value: Any, key: str) -> list[str]:
    if isinstance(value, str):
        value = [value] if value.strip() else []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise AnnotationRejected(f"'{key}' must be a list of strings, got {value!r}")
    return [item.strip() for item in value if item.strip()]


def parse_annotation(text: str) -> TransitionAnnotation:
    """Parses a chat model's answer into a :class:`TransitionAnnotation`.

    The last JSON object in ``text`` that has an ``"instruction"`` key is used (models often think aloud
    before answering). Object lists may be given as a single string; camera-motion synonyms of "none" are
    normalized to ``"static"``.

    Raises:
        AnnotationRejected: When no JSON object is found, a required key is missing or has the wrong type,
            or the instruction is empty.
    """
    candidates = [obj for obj in _json_objects(text) if "instruction" in obj]
    if not candidates:
        raise AnnotationRejected(f"no JSON object with an 'instruction' key in the model output {text[:200]!r}")
    answer = candidates[-1]
    missing = [key for key in _REQUIRED_KEYS if key not in answer]
    if missing:
        raise AnnotationRejected(f"model output is missing key(s) {missing}")
    instruction, camera_motion = answer["instruction"], answer["camera_motion"]
    if not isinstance(instruction, str) or not instruction.strip():
        raise AnnotationRejected(f"'instruction' must be a non-empty string, got {instruction!r}")
    if not isinstance(camera_motion, str):
        raise AnnotationRejected(f"'camera_motion' must be a string, got {camera_motion!r}")
    camera_motion = camera_motion.strip().lower()
    details = {
        key: answer[key] for key in ("source_description", "target_description", "differences") if key in answer
    }
    return TransitionAnnotation(
        instruction=instruction.strip(),
        source_objects=_phrase_list(answer["source_objects"], "source_objects"),
        target_objects=_phrase_list(answer["target_objects"], "target_objects"),
        camera_motion=STATIC_CAMERA if camera_motion in _STATIC_SYNONYMS else camera_motion,
        details=details,
    )


# ------------------------------------------------------------------------------------------------
# Back-end (a): a transformers vision-language chat model
# ------------------------------------------------------------------------------------------------

PROMPT_VERSION = "vincie-cot-v1"

CHAIN_OF_THOUGHT_PROMPT = """\
The first image is a frame of a video (the SOURCE) and the second image is a later frame of the same video \
(the TARGET). Think step by step:
1. Describe the SOURCE image: the objects, their colours, sizes, positions and the background.
2. Describe the TARGET image in the same way.
3. List every difference between them: objects that appeared, disappeared, moved, or changed colour, size, \
pose, expression or action; changes of background, light or style; and how the camera moved.
4. Summarize the differences as ONE imperative editing instruction that turns the SOURCE into the TARGET \
(e.g. "make the man raise his left hand and turn the car red").
Answer with one JSON object and nothing after it, with these keys:
{"source_description": str, "target_description": str, "differences": [str], "instruction": str, \
"source_objects": [short noun phrases of the changed objects as seen in the SOURCE], \
"target_objects": [short noun phrases of the changed objects as seen in the TARGET], \
"camera_motion": "static" or a short phrase such as "pan left", "zoom in"}"""


class VLMAnnotator(BatchTransitionAnnotator):
    """Annotates transitions with a transformers image-text-to-text chat model.

    Args:
        model: An ``AutoModelForImageTextToText`` model (e.g. Qwen2.5-VL) in eval mode.
        processor: Its ``AutoProcessor`` (with a chat template that accepts ``{"type": "image"}`` content).
        model_id: Name stored in the dataset's annotator metadata.
        max_attempts: Tries per transition; the first is greedy, the retries sample with ``temperature``.
        max_new_tokens: Generation budget per try (the chain of thought needs a few hundred tokens).
        batch_size: Transitions per ``generate`` call (all transitions of a clip are annotated together). The
            tokenizer is switched to left padding, which batched generation needs.
        temperature: Sampling temperature of the retries.
        prompt: The instruction given to the model (default: :data:`CHAIN_OF_THOUGHT_PROMPT`).
    """

    name = "vlm"

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        model_id: str | None = None,
        max_attempts: int = 3,
        max_new_tokens: int = 512,
        batch_size: int = 8,
        temperature: float = 0.7,
        prompt: str = CHAIN_OF_THOUGHT_PROMPT,
    ):
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got max_attempts={max_attempts}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got batch_size={batch_size}")
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.padding_side = "left"
        self.model = model
        self.processor = processor
        self.model_id = (
            model_id or getattr(getattr(model, "config", None), "_name_or_path", None) or type(model).__name__
        )
        self.max_attempts = max_attempts
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.temperature = temperature
        self.prompt = prompt

    @classmethod
    def from_pretrained(
        cls,
        model_id: str,
        *,
        device: str | None = None,
        dtype: Any = "auto",
        **kwargs: Any,
    ) -> VLMAnnotator:
        """Loads ``model_id`` (Hub id or local folder) with ``AutoProcessor`` + ``AutoModelForImageTextToText``.

        Args:
            model_id: E.g. ``"Qwen/Qwen2.5-VL-7B-Instruct"``.
            device: Where to run the model (default: CUDA when available, else CPU).
            dtype: Model dtype (``"auto"`` uses the checkpoint's).
            **kwargs: Passed to :class:`VLMAnnotator` (``max_attempts``, ``max_new_tokens``, ...).
        """
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        processor = AutoProcessor.from_pretrained(model_id)
        model = AutoModelForImageTextToText.from_pretrained(model_id, dtype=dtype).to(device).eval()
        return cls(model, processor, model_id=model_id, **kwargs)

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model_id, "prompt_version": PROMPT_VERSION}

    @staticmethod
    def _conversation(transition: Transition, prompt: str) -> list[dict[str, Any]]:
        content = [
            {"type": "image", "image": transition.source.image},
            {"type": "image", "image": transition.target.image},
            {"type": "text", "text": prompt},
        ]
        return [{"role": "user", "content": content}]

    def _generate(self, transitions: list[Transition], sample: bool) -> list[str]:
        """One batched ``generate`` call; returns the decoded answer of each transition."""
        import torch

        inputs = self.processor.apply_chat_template(
            [self._conversation(transition, self.prompt) for transition in transitions],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            padding=True,
        ).to(self.model.device)
        sampling = {"do_sample": True, "temperature": self.temperature} if sample else {"do_sample": False}
        with torch.inference_mode():
            output_ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, **sampling)
        new_tokens = output_ids[:, inputs["input_ids"].shape[1] :]  # (batch, generated); prompts are left-padded
        return self.processor.batch_decode(new_tokens, skip_special_tokens=True)

    def annotate_many(self, transitions: list[Transition]) -> list[TransitionAnnotation | AnnotationRejected]:
        results: list[TransitionAnnotation | AnnotationRejected | None] = [None] * len(transitions)
        reasons: list[list[str]] = [[] for _ in transitions]
        pending = list(range(len(transitions)))
        for attempt in range(self.max_attempts):
            if not pending:
                break
            failed = []
            for start in range(0, len(pending), self.batch_size):
                batch = pending[start : start + self.batch_size]
                texts = self._generate([transitions[i] for i in batch], sample=attempt > 0)
                for i, text in zip(batch, texts):
                    try:
                        results[i] = parse_annotation(text)
                        results[i].details["attempts"] = attempt + 1
                    except AnnotationRejected as rejected:
                        reasons[i].append(rejected.reason)
                        failed.append(i)
                        logger.info(
                            "%s t=%.2f->%.2f attempt %d/%d: malformed answer: %s",
                            transitions[i].video_id,
                            transitions[i].source.timestamp,
                            transitions[i].target.timestamp,
                            attempt + 1,
                            self.max_attempts,
                            rejected.reason,
                        )
            pending = failed
        for i in pending:
            reason = f"malformed model output after {self.max_attempts} attempt(s); last: {reasons[i][-1]}"
            logger.warning(
                "rejected transition %s t=%.2f->%.2f: %s",
                transitions[i].video_id,
                transitions[i].source.timestamp,
                transitions[i].target.timestamp,
                reason,
            )
            results[i] = AnnotationRejected(reason)
        return results


# ------------------------------------------------------------------------------------------------
# Back-end (b): ground truth of the synthetic video world
# ------------------------------------------------------------------------------------------------


class GroundTruthAnnotator(TransitionAnnotator):
    """Annotates synthetic videos exactly from the JSON sidecar written by ``shapes.video.render_video``.

    Each sampled frame is matched to the key state whose hold interval contains it; a transition from key
    state ``k`` to ``k + 1`` gets that edit's instruction, camera motion and exact RoE masks (resized with
    nearest neighbour when frames were downscaled; a mask whose size is not the video's ``width`` x ``height``
    rejects the transition instead of being stretched). Transitions whose frames fall inside an animation, lie
    on the same key state or span several edits are rejected with that reason: sample synthetic videos at
    the world's ``seconds_per_turn`` (e.g. ``equal_interval`` with ``interval=seconds_per_turn``).
    """

    name = "ground_truth"

    def __init__(self) -> None:
        self._cached_path: str | None = None
        self._cached: dict[str, Any] | None = None

    def _ground_truth(self, video_path: str) -> dict[str, Any]:
        from ..shapes.video import read_ground_truth

        if self._cached_path != video_path:
            try:
                self._cached = read_ground_truth(video_path)
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:  # missing, torn, mistyped
                raise AnnotationRejected(f"no usable ground-truth sidecar for {video_path}: {error}") from error
            self._cached_path = video_path
        return self._cached

    @staticmethod
    def _key_state(truth: dict[str, Any], frame: SampledFrame) -> int:
        for k, (start, end) in enumerate(truth["hold_intervals"]):
            if start - 1e-6 <= frame.timestamp < end - 1e-6:
                return k
        raise AnnotationRejected(f"frame at t={frame.timestamp:.3f}s is inside an animation, not on a key state")

    @staticmethod
    def _resize(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        if mask.shape[::-1] == size:
            return mask
        from PIL import Image

        return np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST))

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "world": "synthetic-shapes"}

    def annotate(self, transition: Transition) -> TransitionAnnotation:
        truth = self._ground_truth(transition.video_path)
        try:
            return self._annotate(truth, transition)
        except (KeyError, TypeError, IndexError, ValueError) as error:  # a sidecar edited or written by another tool
            raise AnnotationRejected(
                f"corrupt ground-truth sidecar for {transition.video_path}: {type(error).__name__}: {error}"
            ) from error

    def _annotate(self, truth: dict[str, Any], transition: Transition) -> TransitionAnnotation:
        source_state, target_state = (
            self._key_state(truth, transition.source),
            self._key_state(truth, transition.target),
        )
        if target_state != source_state + 1:
            raise AnnotationRejected(
                f"frames are on key states {source_state} and {target_state}; the ground truth annotates exactly "
                "one edit per transition (sample at the world's seconds_per_turn)"
            )
        size = transition.source.image.size
        video_size = (truth["width"], truth["height"])
        for name in ("source_masks", "target_masks"):  # resized only from the video's size, never guessed
            if truth[name][source_state].shape[::-1] != video_size:
                raise ValueError(
                    f"{name}[{source_state}] is {truth[name][source_state].shape[1]}x"
                    f"{truth[name][source_state].shape[0]} but the video is {video_size[0]}x{video_size[1]}"
                )
        return TransitionAnnotation(
            instruction=truth["instructions"][source_state],
            camera_motion=truth["camera_motion"][source_state],
            source_mask=self._resize(truth["source_masks"][source_state], size),
            target_mask=self._resize(truth["target_masks"][source_state], size),
            details={"op": truth["ops"][source_state], "edit_index": source_state},
        )


# ------------------------------------------------------------------------------------------------
# Back-end (c): the pixels of a shapes-world video
# ------------------------------------------------------------------------------------------------


class ShapesPixelAnnotator(BatchTransitionAnnotator):
    """Annotates videos of the shapes world from their pixels alone, as a VLM would: instruction in the world's
    words, camera motion, and the regions of editing in both frames. It knows the world's configuration
    (palette, shapes, sizes, grid, backgrounds, camera step), never a video's ground-truth sidecar.

    The transitions of one ``annotate_many`` call are read as one clip, in order: an object that reappears where
    it was removed is "brought back", and a colour change that undoes the object's last one is "the colour it
    was before", as the world words them. A transition it cannot word as one edit of the world (no change,
    several changes, a frame inside an animation) is rejected with the reason.

    Args:
        world: the world the videos were rendered from (default ``ShapesWorld()``, the video maker's geometry);
            e.g. ``ShapesWorld(**json.load(open("videos/world.json")))``.
    """

    name = "pixels"

    def __init__(self, world: Any = None) -> None:
        from ..shapes.pixels import PixelSceneReader
        from ..shapes.world import ShapesWorld

        self.world = world if world is not None else ShapesWorld()
        self.reader = PixelSceneReader(self.world)

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "world": "synthetic-shapes", "world_config": self.world.config}

    def _read_frames(self, transitions: list[Transition]) -> dict:
        """Each distinct frame's scene (or why it has none), keyed by frame; a transition's target frame is
        read with its source frame's scene settling what the pixels leave open. All frames' pixel work is done
        at once."""
        from ..shapes.pixels import ReadScene

        keys: dict = {}  # frame key -> index into frames, in the order they are first needed
        frames: list[SampledFrame] = []
        previous: list[int | None] = []
        for transition in transitions:
            for frame, before in ((transition.source, None), (transition.target, transition.source)):
                key = (frame.frame_index, frame.timestamp)
                if key not in keys:
                    keys[key] = len(frames)
                    frames.append(frame)
                    previous.append(None if before is None else keys[(before.frame_index, before.timestamp)])
        images = [f.image if f.image.mode == "RGB" else f.image.convert("RGB") for f in frames]
        scenes = {}
        for (key, index), read in zip(keys.items(), self.reader.read_many(images, previous)):
            reason = (
                None if isinstance(read, ReadScene) else f"frame at t={frames[index].timestamp:.3f}s: {read.reason}"
            )
            scenes[key] = read if reason is None else AnnotationRejected(reason)
        return scenes

    def annotate_many(self, transitions: list[Transition]) -> list[TransitionAnnotation | AnnotationRejected]:
        from ..shapes.pixels import SceneTrack, UnreadableTransition, describe_transition

        scenes = self._read_frames(transitions)
        track = SceneTrack()
        results: list[TransitionAnnotation | AnnotationRejected] = []
        for transition in transitions:
            before = scenes[(transition.source.frame_index, transition.source.timestamp)]
            after = scenes[(transition.target.frame_index, transition.target.timestamp)]
            rejected = next((x for x in (before, after) if isinstance(x, AnnotationRejected)), None)
            if rejected is None:
                try:
                    width, height = transition.source.image.size
                    reading = describe_transition(self.world, before, after, width, track)
                    results.append(
                        TransitionAnnotation(
                            instruction=reading.instruction,
                            source_objects=reading.source_objects,
                            target_objects=reading.target_objects,
                            camera_motion=reading.camera_motion,
                            source_mask=reading.source_mask,
                            target_mask=reading.target_mask,
                            details={"op": reading.op},
                        )
                    )
                    continue
                except UnreadableTransition as error:
                    rejected = AnnotationRejected(error.reason)
            logger.info(
                "rejected transition %s t=%.2f->%.2f: %s",
                transition.video_id,
                transition.source.timestamp,
                transition.target.timestamp,
                rejected.reason,
            )
            results.append(rejected)
        return results
