"""The training data a run's flags name: the shapes world drawn on the fly, a sessions dataset (map-style or
streamed) or another layout converted by the data adapters; a missing, bad or too small dataset is a
:class:`UsageError`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..utils.cli import UsageError
from .data import SessionRowsDataset, ShapesSessionsDataset
from .sequences import SequenceConfig


def shapes_world(args):
    """The shapes world of ``--synthetic_world_config`` (the default world without it): the world the sessions
    are drawn from with ``--synthetic_world``; with ``--dataset_name`` only the instruction-sensitivity probe
    draws from it."""
    from ..data.shapes.world import ShapesWorld

    world_kwargs = {}
    if args.synthetic_world_config:
        text = args.synthetic_world_config
        world_kwargs = json.loads(Path(text).read_text() if os.path.isfile(text) else text)
    if args.resolution:
        world_kwargs.setdefault("resolution", args.resolution)
    return ShapesWorld(**world_kwargs)


def build_dataset(args, config: SequenceConfig):
    if args.synthetic_world:
        return ShapesSessionsDataset(
            shapes_world(args),
            args.synthetic_num_sessions,
            args.synthetic_num_turns,
            config,
            seed=args.seed,
            world_seed=args.synthetic_world_seed,
            group_turns=not args.no_group_turns,
        )
    from ..data.loaders import (
        PairwiseEditAdapter,
        Vincie10MAdapter,
        load_sessions,
        records_to_dataset,
    )

    if args.streaming:
        from .streaming import StreamingSessions

        return StreamingSessions.from_source(
            args.dataset_name,
            args.dataset_split,
            config,
            seed=args.seed,
            resolution=args.resolution,
            group_turns=not args.no_group_turns,
            interpolation=args.image_interpolation_mode,
        )
    if args.dataset_format == "sessions":
        rows = load_sessions(args.dataset_name, split=args.dataset_split)
    else:  # other layouts are converted to session rows in memory by the data adapters
        adapter_cls = PairwiseEditAdapter if args.dataset_format == "pairwise" else Vincie10MAdapter
        rows = records_to_dataset(adapter_cls.from_path(args.dataset_name, split=args.dataset_split))
    if args.max_train_samples is not None:
        rows = rows.select(range(min(args.max_train_samples, len(rows))))
    return SessionRowsDataset(
        rows,
        config,
        seed=args.seed,
        resolution=args.resolution,
        group_turns=not args.no_group_turns,
        interpolation=args.image_interpolation_mode,
    )


def load_data(args, config: SequenceConfig, num_processes: int) -> torch.utils.data.Dataset:
    """The dataset of ``config``'s sequences; a missing, bad or too small dataset is a :class:`UsageError`."""
    flag = "--synthetic_world_config" if args.synthetic_world else "--dataset_name"
    try:
        dataset = build_dataset(args, config)
    except (FileNotFoundError, ValueError, TypeError) as error:
        raise UsageError(f"{flag}: {type(error).__name__}: {error}") from error
    if len(dataset) < args.train_batch_size * num_processes:
        raise UsageError(
            f"{flag}: {len(dataset)} sessions, fewer than one global batch (--train_batch_size "
            f"{args.train_batch_size} x {num_processes} processes); lower --train_batch_size or add data."
        )
    return dataset


def streaming_batches(args, accelerator, sessions, checkpoint):
    """This process's stream of planned batches, at the resumed checkpoint's position; saved with every checkpoint."""
    from .streaming import StreamingBatches

    try:
        batches = StreamingBatches(
            sessions,
            args.train_batch_size,
            accelerator.num_processes,
            accelerator.process_index,
            args.dataloader_num_workers,
        )
        if checkpoint is not None:
            batches.load(checkpoint)
    except ValueError as error:
        raise UsageError(f"--streaming: {error}") from error
    accelerator.register_save_state_pre_hook(lambda models, weights, folder: batches.save(folder))
    return batches


__all__ = ["build_dataset", "load_data", "streaming_batches"]
