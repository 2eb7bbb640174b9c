"""Training data: session sources, a resumable sharded batch order, and frame encoding.

* :class:`TrainingSession`: one session as arrays (frames, RoE masks, instructions), whatever its source.
* Sources: :class:`SessionRowsDataset` (a ``datasets.Dataset`` of ``SESSION_FEATURES`` rows, e.g. the parquet
  output of ``dataset_scripts/build_sessions.py``) and :class:`ShapesSessionsDataset` (sessions of the
  synthetic shapes world drawn on the fly by seed: nothing is cached to disk).
* :class:`ResumableBatchSampler`: the batch order is a pure function of ``(seed, micro-step, process)``, so a run
  resumed at micro-step ``s`` reads exactly the batches the uninterrupted run would have read; every item
  carries its micro-step, which seeds its sequence plan (:func:`item_generator`).
* :func:`encode_frames`: images / masks in [-1, 1] -> channel-last latents (VAE, or the pixels themselves in
  pixel-space mode, ``vae=None``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np
import PIL.Image
import torch
from torch.utils.data import Dataset, Sampler

from ..data.schema import SessionRecord, mask_to_array
from ..image_latents import encode_images
from ..sequence import CURRENT_MASK, IMAGE, Frame
from .sequences import SequenceConfig, SequencePlan, plan_sequence

# The filters a frame can be resized with (``--image_interpolation_mode``). Bicubic suits photographs and video;
# nearest keeps the hard edges of a world drawn without anti-aliasing (the shapes world) when its video is filmed
# at a multiple of the training size.
INTERPOLATION_MODES = {
    "nearest": PIL.Image.NEAREST,
    "box": PIL.Image.BOX,
    "bilinear": PIL.Image.BILINEAR,
    "hamming": PIL.Image.HAMMING,
    "bicubic": PIL.Image.BICUBIC,
    "lanczos": PIL.Image.LANCZOS,
}


def check_interpolation(interpolation: str) -> str:
    if interpolation not in INTERPOLATION_MODES:
        raise ValueError(f"`interpolation` must be one of {sorted(INTERPOLATION_MODES)}, got {interpolation!r}.")
    return interpolation


# =====================================================================================================
#                                            Samples
# =====================================================================================================


@dataclass
class TrainingSession:
    """One session as arrays (``n`` edits).

    Attributes:
        frames: ``(n + 1, H, W, 3)`` uint8.
        instructions: ``n`` strings.
        source_masks: ``(n, H, W)`` bool RoE in the source frames, or ``None`` when unknown.
        target_masks: ``(n, H, W)`` bool RoE in the target frames, or ``None`` when unknown.
        session_id: for logs.
    """

    frames: np.ndarray
    instructions: list[str]
    source_masks: Optional[np.ndarray]
    target_masks: Optional[np.ndarray]
    session_id: str = ""

    @property
    def num_turns(self) -> int:
        return len(self.instructions)

    @classmethod
    def from_record(
        cls, record: SessionRecord, resolution: Optional[int] = None, interpolation: str = "bicubic"
    ) -> "TrainingSession":
        """Arrays of a validated record; ``resolution`` resizes frames (with ``interpolation``, a key of
        :data:`INTERPOLATION_MODES`) and masks (nearest) to a square."""
        size = (resolution, resolution) if resolution else record.size
        resample = INTERPOLATION_MODES[check_interpolation(interpolation)]
        frames = np.stack([np.asarray(f.resize(size, resample) if f.size != size else f) for f in record.frames])
        masks = {}
        for name in ("source_masks", "target_masks"):
            values = getattr(record, name)
            masks[name] = (
                None if any(m is None for m in values) else np.stack([mask_to_array(m, size) for m in values])
            )
        return cls(frames, list(record.instructions), masks["source_masks"], masks["target_masks"], record.session_id)

    def frame_image(self, item: Frame, start: int) -> np.ndarray:
        """The ``(H, W, 3)`` float32 image in [-1, 1] of a sequence item (masks: +1 inside, -1 outside)."""
        turn = start + item.turn
        if item.kind == IMAGE:
            return self.frames[turn].astype(np.float32) / 127.5 - 1.0
        masks = self.source_masks if item.kind == CURRENT_MASK else self.target_masks
        if masks is None:
            raise ValueError(f"Session {self.session_id!r} has no RoE masks but the plan asks for {item}.")
        return np.repeat(masks[turn][..., None].astype(np.float32) * 2.0 - 1.0, 3, axis=-1)


@dataclass
class PlannedSample:
    """A session with the sequence drawn from it and the micro-step it belongs to."""

    sample: TrainingSession
    plan: SequencePlan
    step: int
    index: int

    def instructions(self) -> list[str]:
        return self.sample.instructions[self.plan.start : self.plan.start + self.plan.num_prompts]

    def images(self) -> dict[Frame, np.ndarray]:
        return {item: self.sample.frame_image(item, self.plan.start) for item in self.plan.frames}


def item_generator(seed: int, step: int, index: int, stream: int = 0) -> np.random.Generator:
    """A numpy generator that depends only on ``(seed, micro-step, dataset index, stream)``."""
    return np.random.default_rng([seed, step, index, stream])


# =====================================================================================================
#                                            Sources
# =====================================================================================================


class _PlanningDataset(Dataset):
    """Base: ``dataset[(index, step)]`` -> :class:`PlannedSample` with a plan drawn from ``(seed, step, index)``.

    With ``group_turns`` every sample of a micro-step gets the same number of turns and the same mask inclusion
    (drawn from ``(seed, step)``), so the sequences of a batch have similar lengths and attention pads little
    (see ``padding_report``); over many steps each sample still sees the configured distributions.
    """

    def __init__(self, config: SequenceConfig, seed: int, group_turns: bool = True):
        self.config, self.seed, self.group_turns = config, seed, group_turns

    def session(self, index: int) -> TrainingSession:
        raise NotImplementedError

    def __getitem__(self, key: tuple[int, int]) -> PlannedSample:
        index, step = key
        return self.plan(self.session(index), index, step)

    def plan(self, sample: TrainingSession, index: int, step: int) -> PlannedSample:
        """The sequence drawn from ``sample`` at micro-step ``step``; ``index`` identifies the session in the draw."""
        has_masks = sample.source_masks is not None and sample.target_masks is not None
        num_turns = with_masks = None
        if self.group_turns:
            shared = item_generator(self.seed, step, 0, stream=4)  # the same draws for every sample of the micro-step
            num_turns = int(shared.integers(self.config.min_turns, self.config.max_turns + 1))
            with_masks = bool(shared.random() < self.config.mask_probability)
        plan = plan_sequence(
            sample.num_turns,
            has_masks,
            self.config,
            item_generator(self.seed, step, index),
            num_turns=num_turns,
            with_masks=with_masks,
        )
        return PlannedSample(sample, plan, step, index)


class SessionRowsDataset(_PlanningDataset):
    """Sessions from a ``datasets.Dataset`` with the ``SESSION_FEATURES`` columns.

    Args:
        rows: the dataset (e.g. ``load_dataset("parquet", data_files=...)["train"]``).
        config: sequence configuration.
        seed: base seed of the sequence plans.
        resolution: optional square size every frame is resized to.
        group_turns: one number of turns per micro-step (less attention padding).
        interpolation: the filter frames are resized with (a key of :data:`INTERPOLATION_MODES`).
    """

    def __init__(
        self,
        rows,
        config: SequenceConfig,
        seed: int = 0,
        resolution: Optional[int] = None,
        group_turns: bool = True,
        interpolation: str = "bicubic",
    ):
        super().__init__(config, seed, group_turns)
        missing = {"frames", "instructions"} - set(rows.column_names)
        if missing:
            raise ValueError(f"The dataset lacks the columns {sorted(missing)}; expected SESSION_FEATURES rows.")
        self.rows, self.resolution, self.interpolation = rows, resolution, check_interpolation(interpolation)
        # Rows are read as stored: images reach SessionRecord.from_row undecoded, which decodes their bytes and
        # refuses a path-only image (``datasets`` would open such a path wherever it points).
        self._stored_rows = rows.with_format("arrow")

    def __len__(self) -> int:
        return len(self.rows)

    def session(self, index: int) -> TrainingSession:
        row = self._stored_rows[int(index)].to_pylist()[0]
        return TrainingSession.from_record(SessionRecord.from_row(row), self.resolution, self.interpolation)


class ShapesSessionsDataset(_PlanningDataset):
    """Sessions of a :class:`~diffusers_vincie.data.shapes.world.ShapesWorld`, drawn on the fly: index ``i`` is the
    session of seed ``world_seed + i``.

    Args:
        world: the synthetic world.
        num_sessions: dataset length (distinct sessions).
        num_turns: edits per session.
        config: sequence configuration.
        seed: base seed of the sequence plans.
        world_seed: seed of session 0 (held-out evaluation sessions should use another range).
        group_turns: one number of turns per micro-step (less attention padding).
    """

    def __init__(
        self,
        world,
        num_sessions: int,
        num_turns: int,
        config: SequenceConfig,
        seed: int = 0,
        world_seed: int = 0,
        group_turns: bool = True,
    ):
        super().__init__(config, seed, group_turns)
        if num_sessions < 1:
            raise ValueError(f"`num_sessions` must be >= 1, got {num_sessions}.")
        self.world, self.num_sessions, self.num_turns, self.world_seed = world, num_sessions, num_turns, world_seed

    def __len__(self) -> int:
        return self.num_sessions

    def session(self, index: int) -> TrainingSession:
        s = self.world.sample_session(self.world_seed + int(index), num_turns=self.num_turns)
        return TrainingSession(
            np.stack(s.frames),
            list(s.instructions),
            np.stack(s.source_masks),
            np.stack(s.target_masks),
            f"synthetic-{self.world_seed + int(index)}",
        )


def collate_planned(items: Sequence[PlannedSample]) -> list[PlannedSample]:
    """Keeps the samples as a list (sizes differ; tensors are packed later by ``collate_samples``)."""
    return list(items)


# =====================================================================================================
#                                          Batch order
# =====================================================================================================


class ResumableBatchSampler(Sampler):
    """Infinite, sharded, resumable batch order: yields ``[(index, micro_step), ...]`` lists.

    Global batch ``s`` (micro-step ``s``) is slice ``s mod E`` of the permutation of epoch ``s // E``
    (``E = len(dataset) // (batch_size * num_processes)``, the last partial batch dropped); process ``p`` takes
    its ``p``-th part. The permutation of an epoch is drawn from ``seed + epoch``.

    Args:
        num_samples: dataset length.
        batch_size: samples per process per micro-step.
        num_processes, process_index: data-parallel layout.
        seed: shuffling seed.
        start_step: first micro-step (resume point).
        shuffle: ``False`` keeps the dataset order in every epoch.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        num_processes: int = 1,
        process_index: int = 0,
        seed: int = 0,
        start_step: int = 0,
        shuffle: bool = True,
    ):
        self.global_batch = batch_size * num_processes
        if num_samples < self.global_batch:
            raise ValueError(
                f"The dataset has {num_samples} sessions, fewer than one global batch ({batch_size} per process x "
                f"{num_processes} processes); lower --train_batch_size or add data."
            )
        self.num_samples, self.batch_size, self.process_index = num_samples, batch_size, process_index
        self.seed, self.start_step, self.shuffle = seed, start_step, shuffle
        self.batches_per_epoch = num_samples // self.global_batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step, epoch, order = self.start_step, None, None
        while True:
            e, b = divmod(step, self.batches_per_epoch)
            if e != epoch:
                epoch = e
                order = (
                    torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(self.seed + e))
                    if self.shuffle
                    else torch.arange(self.num_samples)
                )
            first = b * self.global_batch + self.process_index * self.batch_size
            yield [(int(i), step) for i in order[first : first + self.batch_size]]
            step += 1


# =====================================================================================================
#                                         Frame encoding
# =====================================================================================================


@torch.no_grad()
def encode_frames(images: torch.Tensor, vae=None) -> torch.Tensor:
    """``(N, H, W, 3)`` images in [-1, 1] -> ``(N, h, w, C)`` float32 channel-last latents, normalised for the
    transformer by `image_latents.encode_images` with the posterior mode (deterministic targets).

    Args:
        images: float images, channel-last.
        vae: a diffusers VAE; ``None`` = pixel space (the images are the latents, ``C = 3``).
    """
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"`images` must be (N, H, W, 3) in [-1, 1]; got {tuple(images.shape)}.")
    return encode_images(vae, images.permute(0, 3, 1, 2), posterior="mode").float()


def encode_plan_frames(samples: Sequence[PlannedSample], vae=None, device=None) -> list[dict[Frame, torch.Tensor]]:
    """Encodes every frame each sample's plan needs; returns one ``Frame -> (h, w, C)`` dict per sample."""
    out = []
    for s in samples:
        images = s.images()
        keys = list(images)
        stacked = torch.from_numpy(np.stack([images[k] for k in keys])).to(device)
        latents = encode_frames(stacked, vae)
        out.append(dict(zip(keys, latents)))
    return out


__all__ = [
    "PlannedSample",
    "ResumableBatchSampler",
    "SessionRowsDataset",
    "TrainingSession",
    "ShapesSessionsDataset",
    "collate_planned",
    "encode_frames",
    "encode_plan_frames",
    "item_generator",
]
