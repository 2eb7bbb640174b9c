#!/usr/bin/env python
"""ShapesBench: exact multi-turn editing benchmark of a pixel-space VINCIE model on held-out synthetic sessions.

The command line of :mod:`diffusers_vincie.evaluation.shapes_bench` (sessions, protocols, scoring and summary live
there). Sessions come from the synthetic shapes world (``ShapesWorld``, the training world's config) with seeds
far from the training range (the recipes draw world seeds below 8,000,000, the video recipe hashed seeds that miss
10,000,000-50,000,000; the bench starts at 10,000,000). Every output is
scored against the exact ground truth (:mod:`diffusers_vincie.data.shapes.score`).

Protocols (``--protocols``, all by default): **chained** (MSE-Bench: each output is the next turn's input, a
session stops at its first failure; the table gives the fraction of sessions whose turns 1..k all succeeded) in the
modes ``full``, ``no_context``, ``chain_of_editing`` and ``copy`` (the copy-input baseline); **ground-truth
context** (teacher forcing: each turn edits the true previous frame, with the true earlier frames and instructions
as context, ``full``, or none, ``no_context``): per-turn success over all turns and over the history-dependent
turns ("bring back ...", "... the colour it was before"), where context must help; **drag** (first-turn move
edits with the true mask and offset), **composition** (the composed scene from 2-3 reference frames) and
**story** (camera pans, consistency and the asked camera change), each on its own held-out sessions
(:mod:`diffusers_vincie.evaluation.shapes_bench_modes`). Every protocol counts its near-black or constant outputs.

Usage::

    python benchmarks/shapes_bench.py --num_sessions 200 --output_dir runs/shapes_bench   # the shipped model
    python benchmarks/shapes_bench.py --model runs/eval/step-800 --label 800 --curve runs/curve.jsonl
    python benchmarks/shapes_bench.py --protocols composition --composition_objects 3 --num_sessions 40

Writes ``results.json``, ``results.md`` (the tables) and ``shapes_bench.png`` to ``--output_dir``; with
``--curve`` also appends one line to that file and plots ``success_vs_steps.png`` beside it.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from diffusers_vincie.data.shapes.score import EDIT_TESTS
from diffusers_vincie.data.shapes.world import ShapesSession
from diffusers_vincie.default_model import DEFAULT_SAMPLING, load_default_pipeline
from diffusers_vincie.evaluation.shapes_bench import (
    BENCH_SEED,
    CHAINED_MODES,
    GROUND_TRUTH_MODES,
    TRUE_MASK_MODES,
    ChainedEditor,
    DegenerateOutputs,
    build_bench_sessions,
    run_chained,
    run_ground_truth,
    summarize,
)
from diffusers_vincie.evaluation.shapes_bench_modes import (
    COMPOSITION_SEED,
    DRAG_SEED,
    MODE_PROTOCOLS,
    STORY_SEED,
    build_composition_sessions,
    build_drag_sessions,
    build_story_sessions,
    modes_markdown,
    run_composition,
    run_drag,
    run_story,
    summarize_modes,
)
from diffusers_vincie.utils.io import atomic_path, write_text_atomic

REPO = Path(__file__).resolve().parents[1]
WORLD_CONFIG = REPO / "training_scripts" / "configs" / "vincie_shapes_world.json"
PROTOCOLS = ("chained", "ground_truth", *MODE_PROTOCOLS)


def measure_context_cache(pipe, sessions: list[ShapesSession], sampling: dict, repeats: int = 3) -> dict:
    """Seconds per 5-turn session with the block-causal context cache (encoded once per turn) vs recomputing the
    context at every sampler step (same outputs); best of ``repeats``, and the largest output difference. Timed
    without CFG (``sampling``'s steps, guidance 1): the recomputing variant has no negative pass."""
    from diffusers_vincie.pipelines import sampling as sampling_module

    sampling = dict(sampling, guidance_scale=1.0)

    class RecomputedContextVelocity(sampling_module.CachedContextVelocity):
        """The same velocity, re-encoding the context at every call (what the cache saves)."""

        def __call__(self, *args, **kwargs):
            self.__post_init__()
            return super().__call__(*args, **kwargs)

    def run() -> tuple[float, list[np.ndarray]]:
        best, outputs = float("inf"), []
        for _ in range(repeats):
            start, outputs = time.perf_counter(), []
            for index, session in enumerate(sessions):
                editor = ChainedEditor(pipe, "full", session, sampling, seed=index)
                for turn in range(session.num_turns):
                    outputs.append(editor.edit(session.frames[turn], turn))
            best = min(best, (time.perf_counter() - start) / len(sessions))
        return best, outputs

    cached_seconds, cached = run()
    original = sampling_module.CachedContextVelocity
    sampling_module.CachedContextVelocity = RecomputedContextVelocity  # what frame_velocity builds
    try:
        recomputed_seconds, recomputed = run()
    finally:
        sampling_module.CachedContextVelocity = original
    difference = max(int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()) for a, b in zip(cached, recomputed))
    return {
        "cached_s_per_session": cached_seconds,
        "recomputed_s_per_session": recomputed_seconds,
        "speedup": recomputed_seconds / cached_seconds,
        "max_output_difference": difference,
        "sessions": len(sessions),
        "threads": torch.get_num_threads(),
        "guidance_scale": 1.0,
    }


# =====================================================================================================
#                                               Report
# =====================================================================================================


def markdown_tables(summary: dict, num_sessions: int) -> str:
    turns = len(next(iter(summary["chained"].values()))["cumulative_success"]) if summary["chained"] else 0
    if summary["ground_truth"]:
        turns = len(next(iter(summary["ground_truth"].values()))["per_turn_success"])
    lines = []
    if summary["chained"]:
        lines += [
            f"Chained turns (MSE-Bench protocol, stop at first failure), {num_sessions} sessions: fraction of "
            "sessions with turns 1..k all successful.",
            "",
            "| mode | " + " | ".join(f"turn {k + 1}" for k in range(turns)) + " | history turns reached (success/n) |",
            "|---|" + "---|" * (turns + 1),
        ]
    for mode, row in summary["chained"].items():
        history = row["history_turns_reached"]
        lines.append(
            f"| {mode} | "
            + " | ".join(f"{v:.3f}" for v in row["cumulative_success"])
            + f" | {history['success']:.3f} / {history['n']} |"
        )
    if summary["ground_truth"]:
        lines += [
            "",
            "Ground-truth context (each turn edits the true previous frame): per-turn success.",
            "",
            "| context | "
            + " | ".join(f"turn {k + 1}" for k in range(turns))
            + " | all turns | history-dependent turns | other turns |",
            "|---|" + "---|" * (turns + 3),
        ]
        for mode, row in summary["ground_truth"].items():
            lines.append(
                f"| {mode} | "
                + " | ".join(f"{v:.3f}" for v in row["per_turn_success"])
                + "".join(
                    f" | {row[k]['success']:.3f} (n={row[k]['n']})"
                    for k in ("all_turns", "history_turns", "other_turns")
                )
                + " |"
            )
        lines += [
            "",
            "Ground-truth context, mean scores (success needs changed-region IoU >= 0.5, object >= 0.5 and "
            "preserved >= 0.95 in the same turn):",
            "",
            "| context | changed-region IoU | object score | preserved |",
            "|---|---|---|---|",
        ]
        for mode, row in summary["ground_truth"].items():
            lines.append(
                f"| {mode} | {row['mean_changed_iou']:.3f} | {row['mean_object_score']:.3f} | "
                f"{row['mean_preserved']:.3f} |"
            )
        test_names = [test.replace("_", " ") for test in EDIT_TESTS]
        lines += [
            "",
            "Ground-truth context, what fails the failed turns (a turn can miss several tests):",
            "",
            "| context | failed turns | "
            + " | ".join(f"{name} missed" for name in test_names)
            + " | "
            + " | ".join(f"{name} only" for name in test_names)
            + " |",
            "|---|---|" + "---|" * (2 * len(EDIT_TESTS)),
        ]
        for mode, row in summary["ground_truth"].items():
            tests = row["failed_tests"]
            lines.append(
                f"| {mode} | {tests['failed']} | "
                + " | ".join(str(tests[test]) for test in EDIT_TESTS)
                + " | "
                + " | ".join(str(tests[f"only_{test}"]) for test in EDIT_TESTS)
                + " |"
            )
        ops = sorted({op for row in summary["ground_truth"].values() for op in row["per_op"]})
        lines += [
            "",
            "Ground-truth context, success per op:",
            "",
            "| context | " + " | ".join(ops) + " |",
            "|---|" + "---|" * len(ops),
        ]
        for mode, row in summary["ground_truth"].items():
            lines.append(
                f"| {mode} | "
                + " | ".join(
                    f"{row['per_op'][op]['success']:.2f} (n={row['per_op'][op]['n']})" if op in row["per_op"] else "-"
                    for op in ops
                )
                + " |"
            )
    modes = modes_markdown(summary)
    return "\n".join(lines) + "\n" + ("\n" + modes if modes else "")


def plot(summary: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    for mode, row in summary["chained"].items():
        values = row["cumulative_success"]
        axes[0].plot(range(1, len(values) + 1), values, marker="o", label=mode)
    axes[0].set(xlabel="turn", ylabel="cumulative success", title="chained turns", ylim=(0, 1))
    if summary["chained"]:
        axes[0].legend()
    groups = ("all_turns", "history_turns", "other_turns")
    width = 0.8 / max(1, len(summary["ground_truth"]))
    for i, (mode, row) in enumerate(summary["ground_truth"].items()):
        axes[1].bar(np.arange(len(groups)) + i * width, [row[g]["success"] for g in groups], width, label=mode)
    axes[1].set_xticks(np.arange(len(groups)) + width * (len(summary["ground_truth"]) - 1) / 2, groups)
    axes[1].set(ylabel="per-turn success", title="ground-truth context", ylim=(0, 1))
    if summary["ground_truth"]:
        axes[1].legend()
    bars = {}
    if "drag" in summary:
        bars.update(
            {"drag": summary["drag"]["success"], "move by\ninstruction": summary["drag"]["instruction_success"]}
        )
    if "composition" in summary:
        bars["composition"] = summary["composition"]["success"]
    if "story" in summary:
        bars.update(
            {
                "story: camera\nchange": summary["story"]["camera_change"],
                "story: pixels\nkept": summary["story"]["preserved"],
            }
        )
    axes[2].bar(range(len(bars)), list(bars.values()))
    axes[2].set_xticks(range(len(bars)), list(bars), fontsize=8)
    axes[2].set(ylabel="rate", title="other modes", ylim=(0, 1))
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as temporary:
        fig.savefig(temporary, dpi=100)
    plt.close(fig)


_MEAN_SUFFIXES = ("_changed_iou", "_object_score", "_preserved")


def append_curve(curve: Path, label: str, summary: dict) -> None:
    """Appends one point of the success-vs-training-steps curve and re-plots it beside the file."""
    point = {"label": label}
    if "full" in summary["chained"]:
        point["full_turn1"], point["full_turn5"] = (
            summary["chained"]["full"]["cumulative_success"][i] for i in (0, -1)
        )
    for mode, row in summary["ground_truth"].items():
        point[f"gt_{mode}_all"] = row["all_turns"]["success"]
        point[f"gt_{mode}_history"] = row["history_turns"]["success"]
        for name in ("changed_iou", "object_score", "preserved"):
            point[f"gt_{mode}_{name}"] = row[f"mean_{name}"]
    with open(curve, "a") as f:
        f.write(json.dumps(point) + "\n")
    points = [json.loads(line) for line in curve.read_text().splitlines() if line.strip()]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [float(p["label"]) for p in points]
    keys = sorted({k for p in points for k in p} - {"label"})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, chosen, title in (
        (axes[0], [k for k in keys if not k.endswith(_MEAN_SUFFIXES)], "success"),
        (axes[1], [k for k in keys if k.endswith(_MEAN_SUFFIXES)], "mean scores (ground truth)"),
    ):
        for key in chosen:
            ax.plot(steps, [p.get(key, float("nan")) for p in points], marker="o", label=key)
        ax.set(xlabel="training steps", title=title, ylim=(0, 1))
        ax.legend(fontsize=7)
    fig.suptitle("ShapesBench vs training steps")
    fig.tight_layout()
    with atomic_path(curve.with_name("success_vs_steps.png")) as temporary:
        fig.savefig(temporary, dpi=100)
    plt.close(fig)


# =====================================================================================================
#                                                 Main
# =====================================================================================================


def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="Pipeline folder (default: the shipped default model).")
    parser.add_argument("--num_sessions", type=int, default=200)
    parser.add_argument("--num_turns", type=int, default=5)
    parser.add_argument(
        "--seed",
        type=int,
        default=BENCH_SEED,
        help="Seed of session 0 (held out from training); drag, composition and story sessions shift by as much.",
    )
    parser.add_argument(
        "--protocols",
        default=",".join(PROTOCOLS),
        help=f"Protocols to run, from {PROTOCOLS} (drag, composition and story use their own seeds).",
    )
    parser.add_argument(
        "--composition_objects",
        type=int,
        default=0,
        help="Reference images per composition session, 2 or 3 (0: each session draws 2 or 3).",
    )
    parser.add_argument(
        "--modes",
        default=",".join(m for m in CHAINED_MODES if m not in TRUE_MASK_MODES),
        help=f"Chained modes, from {CHAINED_MODES}.",
    )
    parser.add_argument(
        "--ground_truth_modes", default=",".join(GROUND_TRUTH_MODES), help="Ground-truth-context modes ('' to skip)."
    )
    parser.add_argument("--num_inference_steps", type=int, default=DEFAULT_SAMPLING["num_inference_steps"])
    parser.add_argument(
        "--guidance_scale",
        type=float,
        default=DEFAULT_SAMPLING["guidance_scale"],
        help="CFG scale (default: the shipped model's; 1 skips the negative pass).",
    )
    parser.add_argument(
        "--consensus_samples",
        type=int,
        default=DEFAULT_SAMPLING["consensus_samples"],
        help="Samples per output image, the one closest to the others kept (default: the shipped model's).",
    )
    parser.add_argument("--output_dir", type=Path, default=Path("runs/shapes_bench"))
    parser.add_argument("--label", default=None, help="Name of this run (training step for --curve).")
    parser.add_argument("--curve", type=Path, default=None, help="JSONL file to append a success-vs-steps point to.")
    parser.add_argument(
        "--context_cache_timing",
        type=int,
        default=0,
        help="Also time N sessions with the context cache vs recomputing the context each step.",
    )
    args = parser.parse_args(argv)
    protocols = [p for p in args.protocols.split(",") if p]
    for protocol in protocols:
        if protocol not in PROTOCOLS:
            raise ValueError(f"--protocols: unknown protocol {protocol!r}; choose from {PROTOCOLS}.")
    if args.composition_objects not in (0, 2, 3):
        raise ValueError(f"--composition_objects must be 2, 3 or 0 (2 or 3 drawn), got {args.composition_objects}.")
    modes = [m for m in args.modes.split(",") if m] if "chained" in protocols else []
    gt_modes = [m for m in args.ground_truth_modes.split(",") if m] if "ground_truth" in protocols else []
    for mode in modes:
        if mode not in CHAINED_MODES:
            raise ValueError(f"--modes: unknown mode {mode!r}; choose from {CHAINED_MODES}.")
    for mode in gt_modes:
        if mode not in GROUND_TRUTH_MODES:
            raise ValueError(f"--ground_truth_modes: unknown mode {mode!r}; choose from {GROUND_TRUTH_MODES}.")
    if args.num_sessions < 1:
        raise ValueError(f"--num_sessions must be >= 1, got {args.num_sessions}.")
    if args.consensus_samples < 1:
        raise ValueError(f"--consensus_samples must be >= 1 (1: one sample per image), got {args.consensus_samples}.")
    if args.curve is not None:
        try:
            float(args.label or "0")
        except ValueError:
            raise ValueError(f"--label must be the training step (a number) with --curve, got {args.label!r}.")

    world_kwargs = json.loads(WORLD_CONFIG.read_text())
    world_kwargs.pop("resolution", None)
    sessions = build_bench_sessions(args.num_sessions, args.num_turns, args.seed, image_size=32, **world_kwargs)
    pipe = load_default_pipeline(args.model)
    sampling = {
        "num_inference_steps": args.num_inference_steps,
        "guidance_scale": args.guidance_scale,
        "consensus_samples": args.consensus_samples,
    }
    start = time.perf_counter()
    degenerate = {f"chained/{mode}": DegenerateOutputs() for mode in modes}
    degenerate.update({f"ground_truth/{mode}": DegenerateOutputs() for mode in gt_modes})
    degenerate.update({protocol: DegenerateOutputs() for protocol in MODE_PROTOCOLS if protocol in protocols})
    chained = {mode: run_chained(pipe, sessions, mode, sampling, degenerate[f"chained/{mode}"]) for mode in modes}
    ground_truth = {
        mode: run_ground_truth(pipe, sessions, mode, sampling, degenerate[f"ground_truth/{mode}"]) for mode in gt_modes
    }
    modes_results, shift = {}, args.seed - BENCH_SEED
    if "drag" in protocols:
        drag_sessions = build_drag_sessions(args.num_sessions, DRAG_SEED + shift, image_size=32, **world_kwargs)
        modes_results["drag"] = run_drag(pipe, drag_sessions, sampling, degenerate["drag"])
    if "composition" in protocols:
        composition_sessions = build_composition_sessions(
            args.num_sessions, COMPOSITION_SEED + shift, args.composition_objects or None, 32, **world_kwargs
        )
        modes_results["composition"] = run_composition(pipe, composition_sessions, sampling, degenerate["composition"])
    if "story" in protocols:
        story_sessions = build_story_sessions(
            args.num_sessions, args.num_turns, STORY_SEED + shift, 32, **world_kwargs
        )
        modes_results["story"] = run_story(pipe, story_sessions, sampling, degenerate["story"])
    summary = summarize(chained, ground_truth, args.num_turns)
    modes_summary = summarize_modes(**modes_results)
    summary["turns"] = {
        f"{protocol}/{mode}": [[asdict(score) for score in scores] for scores in results]
        for protocol, runs in (("chained", chained), ("ground_truth", ground_truth))
        for mode, results in runs.items()
    }
    summary["turns"].update(modes_summary.pop("turns"))
    summary.update(modes_summary)
    summary["degenerate_outputs"] = {name: counter.as_dict() for name, counter in degenerate.items()}
    summary["first_seeds"] = {
        "chained_and_ground_truth": args.seed,
        **{name: seed + shift for name, seed in zip(MODE_PROTOCOLS, (DRAG_SEED, COMPOSITION_SEED, STORY_SEED))},
    }
    if args.context_cache_timing:
        summary["context_cache"] = measure_context_cache(pipe, sessions[: args.context_cache_timing], sampling)
    summary["config"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    summary["seconds"] = time.perf_counter() - start

    args.output_dir.mkdir(parents=True, exist_ok=True)
    tables = markdown_tables(summary, args.num_sessions)
    for name, text in (("results.json", json.dumps(summary, indent=2)), ("results.md", tables)):
        write_text_atomic(args.output_dir / name, text)
    plot(
        summary,
        args.output_dir / "shapes_bench.png",
        f"ShapesBench, {args.num_sessions} sessions" + (f" ({args.label})" if args.label else ""),
    )
    if args.curve is not None:
        append_curve(args.curve, args.label or "0", summary)
    print(tables)
    if "context_cache" in summary:
        print("context cache:", json.dumps(summary["context_cache"]))
    print(f"{summary['seconds']:.0f} s")
    return summary


if __name__ == "__main__":
    main()
