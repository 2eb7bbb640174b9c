#!/usr/bin/env python
"""Training throughput on CPU: tokens/s, share of step time waiting for data, and padding waste.

Runs the training library's loop (the same functions as ``training_scripts/train_vincie.py``) on the small
VINCIE-Shapes transformer (``training_scripts/configs/vincie_shapes_transformer.json``, pixel space 32x32,
patch 4) with sessions of the synthetic world drawn on the fly, in fp32 and in bf16 autocast, and reports:

* tokens/s: real (unpadded) video + text tokens through forward + backward + AdamW per second;
* data share: time spent producing the batch (sessions, plans, text, packing) / step time (goal <= 10%);
* padding waste: packed per-token layers pay none; attention pads each sample to the longest of the batch,
  reported with one number of turns and mask inclusion per batch (``group_turns``, default) and per sample
  (goal <= 10%).

With ``--streaming`` it measures instead the streamed sessions path of ``train_vincie.py --streaming``: parquet
shards of sessions stored at ``--stored_resolution`` (the synthetic videos' 128 px by default), decoded and resized
to the model's 32 px in ``--num_workers`` dataloader workers (``StreamingBatches``), and reports the time the
training loop waits for the next batch (data stall) and the main process's batch building (plans, text, packing),
each as a share of step time (goal: stall <= 10%).

Usage::

    OMP_NUM_THREADS=2 python benchmarks/bench_train.py --steps 20 --batch_size 8
    OMP_NUM_THREADS=1 python benchmarks/bench_train.py --streaming --num_workers 2 --steps 30 --batch_size 4
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from torch.utils.data import DataLoader

from diffusers_vincie.data.shapes.world import ShapesWorld
from diffusers_vincie.models.transformer_vincie import VincieTransformer
from diffusers_vincie.testing import write_tiny_components
from diffusers_vincie.training import (
    PromptEmbeddingCache,
    ResumableBatchSampler,
    SequenceConfig,
    ShapesSessionsDataset,
    VincieTrainingModule,
    build_training_batch,
    collate_planned,
    encode_plan_frames,
    padding_report,
    training_loss,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "training_scripts" / "configs"


def make_loader(args, config, group_turns: bool, seed: int = 0):
    world = ShapesWorld(**json.loads((CONFIG / "vincie_shapes_world.json").read_text()))
    dataset = ShapesSessionsDataset(world, 100_000, 4, config, seed=seed, group_turns=group_turns)
    sampler = ResumableBatchSampler(len(dataset), args.batch_size, seed=seed)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_planned, num_workers=args.num_workers)


def measure(args, components: Path, precision: str) -> dict:
    from transformers import AutoTokenizer, T5EncoderModel

    config = SequenceConfig(layout=args.layout, max_turns=4, frame_index="slots")
    torch.manual_seed(0)
    transformer = VincieTransformer(**json.loads((CONFIG / "vincie_shapes_transformer.json").read_text()))
    module = VincieTrainingModule(transformer, args.layout).train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)
    text = PromptEmbeddingCache(
        T5EncoderModel.from_pretrained(components / "text_encoder").eval(),
        AutoTokenizer.from_pretrained(components / "tokenizer"),
    )
    data = iter(make_loader(args, config, group_turns=True))
    tokens = data_time = total = 0.0
    patch = transformer.config.patch_size
    for step in range(args.warmup + args.steps):
        start = time.perf_counter()
        planned = next(data)
        batch = build_training_batch(planned, encode_plan_frames(planned), text, config, seed=0)
        fetched = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = training_loss(module, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        end = time.perf_counter()
        if step >= args.warmup:
            tokens += padding_report([batch], patch)["real_tokens"]
            data_time += fetched - start
            total += end - start
    return {"tokens_per_s": tokens / total, "step_s": total / args.steps, "data_share": data_time / total}


def write_sessions(folder: Path, count: int, resolution: int, shards: int) -> Path:
    """``count`` synthetic sessions (4 edits, exact masks) at ``resolution`` px as ``shards`` parquet shards."""
    from diffusers_vincie.data.loaders import records_to_dataset

    world_config = json.loads((CONFIG / "vincie_shapes_world.json").read_text())
    world = ShapesWorld(**{**world_config, "resolution": resolution})
    records = [world.sample_session(seed, num_turns=4).to_record() for seed in range(count)]
    bounds = [round(i * count / shards) for i in range(shards + 1)]
    for shard in range(shards):
        rows = records_to_dataset(records[bounds[shard] : bounds[shard + 1]])
        rows.to_parquet(str(folder / "data" / f"train-{shard:05d}-of-{shards:05d}.parquet"))
    return folder


def measure_streaming(args, components: Path, sessions_folder: Path) -> dict:
    """fp32 steps of the VINCIE-Shapes transformer fed by ``StreamingBatches``; times of the wait for the next
    batch, of the batch building in the main process, and of the whole step."""
    from transformers import AutoTokenizer, T5EncoderModel

    from diffusers_vincie.training.streaming import StreamingBatches, StreamingSessions

    config = SequenceConfig(layout=args.layout, max_turns=4, frame_index="slots")
    torch.manual_seed(0)
    transformer = VincieTransformer(**json.loads((CONFIG / "vincie_shapes_transformer.json").read_text()))
    module = VincieTrainingModule(transformer, args.layout).train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)
    text = PromptEmbeddingCache(
        T5EncoderModel.from_pretrained(components / "text_encoder").eval(),
        AutoTokenizer.from_pretrained(components / "tokenizer"),
    )
    sessions = StreamingSessions.from_source(str(sessions_folder), "train", config, resolution=32)
    data = iter(StreamingBatches(sessions, args.batch_size, num_workers=args.num_workers))
    wait = build = total = 0.0
    for step in range(args.warmup + args.steps):
        start = time.perf_counter()
        planned = next(data)
        fetched = time.perf_counter()
        batch = build_training_batch(planned, encode_plan_frames(planned), text, config, seed=0)
        built = time.perf_counter()
        loss = training_loss(module, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= args.warmup:  # the warm-up steps include the workers' start
            wait, build, total = wait + fetched - start, build + built - fetched, total + time.perf_counter() - start
    return {"step_s": total / args.steps, "stall": wait / total, "build": build / total}


def padding(args, group_turns: bool) -> dict:
    config = SequenceConfig(layout=args.layout, max_turns=4, frame_index="slots")
    data = iter(make_loader(args, config, group_turns))
    patch = json.loads((CONFIG / "vincie_shapes_transformer.json").read_text())["patch_size"]
    batches = []
    for _ in range(args.padding_batches):
        planned = next(data)
        latents = encode_plan_frames(planned)
        fake_text = lambda prompts: [torch.zeros(12, 64) for _ in prompts]  # noqa: E731 (lengths only)
        batches.append(build_training_batch(planned, latents, fake_text, config, seed=0))
    return padding_report(batches, patch)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--layout", choices=("full", "block_causal"), default="block_causal")
    parser.add_argument("--num_workers", type=int, default=0)
    parser.add_argument("--padding_batches", type=int, default=100)
    parser.add_argument("--padding_only", action="store_true", help="Skip the (slow) throughput runs.")
    parser.add_argument("--streaming", action="store_true", help="Measure the streamed sessions path only.")
    parser.add_argument("--num_sessions", type=int, default=400, help="Sessions written for --streaming.")
    parser.add_argument("--num_shards", type=int, default=8, help="Parquet shards written for --streaming.")
    parser.add_argument("--stored_resolution", type=int, default=128, help="Frame size stored for --streaming.")
    args = parser.parse_args()
    print(f"threads={torch.get_num_threads()} layout={args.layout} batch={args.batch_size} steps={args.steps}")
    if args.streaming:
        with tempfile.TemporaryDirectory() as tmp:
            components = write_tiny_components(Path(tmp) / "components", text_embed_dim=64)
            folder = write_sessions(Path(tmp) / "sessions", args.num_sessions, args.stored_resolution, args.num_shards)
            r = measure_streaming(args, components, folder)
        print(
            f"streaming, {args.num_workers} workers, frames stored at {args.stored_resolution} px: "
            f"{r['step_s'] * 1000:.1f} ms/step, data stall {100 * r['stall']:.1f}% of step time, "
            f"batch building in the main process {100 * r['build']:.1f}%"
        )
        return
    if not args.padding_only:
        with tempfile.TemporaryDirectory() as tmp:
            components = write_tiny_components(tmp, text_embed_dim=64)
            results = {p: measure(args, components, p) for p in ("fp32", "bf16")}
        for precision, r in results.items():
            print(
                f"{precision:>5}: {r['tokens_per_s']:8.0f} tokens/s  {r['step_s'] * 1000:7.1f} ms/step  "
                f"data share {100 * r['data_share']:.1f}%"
            )
        print(f"bf16 / fp32 throughput: {results['bf16']['tokens_per_s'] / results['fp32']['tokens_per_s']:.2f}x")
    grouped, ungrouped = padding(args, True), padding(args, False)
    print(
        f"attention padding waste: {100 * grouped['attention_padding_waste']:.1f}% with turns and masks drawn per "
        "batch, "
        f"{100 * ungrouped['attention_padding_waste']:.1f}% per sample; per-token layers (packed): 0.0%; "
        f"a padded (B, max_len) layout would waste the per-sample figure in every layer"
    )


if __name__ == "__main__":
    main()
