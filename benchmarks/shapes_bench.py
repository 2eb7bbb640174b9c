#!/usr/bin/env python
"""ShapesBench: exact multi-turn editing benchmark of a pixel-space VINCIE model on held-out synthetic sessions.

Sessions come from the synthetic shapes world (``SyntheticWorld``, the training world's config) with seeds far from
the training range (training draws seeds ``0 .. 999,999``; the bench starts at 10,000,000). Every turn is scored by
:func:`~diffusers_vincie.data.shapes.score.score_edit` against the exact ground truth: a turn succeeds when the
changed region matches the true one (IoU >= 0.5), the right colour/shape is there (IoU >= 0.5) and >= 95% of the
unchanged pixels are kept (per-channel tolerance 32).

Protocols:

* **chained** (MSE-Bench): each output is the next turn's input, a session stops at its first failure; the table
  gives the fraction of sessions whose turns 1..k all succeeded, for

  - ``full``: full context (the default use: one ``VincieEditingSession``, context encoded once per turn),
  - ``no_context``: only the last image and the last instruction (a fresh session per turn),
  - ``chain_of_editing``: full context, predicting the current- then next-frame RoE masks before each image,
  - ``copy``: the copy-input baseline (the output is the input);

* **ground-truth context** (teacher forcing): each turn edits the true previous frame, with the true earlier
  frames and instructions as context (``full``) or none (``no_context``); per-turn success over all turns, and
  over the history-dependent turns ("bring back ...", "... the colour it was before"), where context must help.

Usage::

    python benchmarks/shapes_bench.py --num_sessions 200 --output_dir runs/shapes_bench   # the shipped model
    python benchmarks/shapes_bench.py --model runs/eval/step-800 --label 800 --curve runs/curve.jsonl

Writes ``results.json``, ``results.md`` (the tables) and ``shapes_bench.png`` to ``--output_dir``; with
``--curve`` also appends one line to that file and plots ``success_vs_steps.png`` beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import PIL.Image
import torch
from tqdm.auto import tqdm

from diffusers_vincie.data.shapes.score import EditScore, score_edit
from diffusers_vincie.data.shapes.world import SyntheticSession
from diffusers_vincie.evaluation.shapes_bench import build_bench_sessions
from diffusers_vincie.default_model import load_default_pipeline

CHAINED_MODES = ("full", "no_context", "chain_of_editing", "copy")
GROUND_TRUTH_MODES = ("full", "no_context")
BENCH_SEED = 10_000_000
REPO = Path(__file__).resolve().parents[1]
WORLD_CONFIG = REPO / "training_scripts" / "configs" / "vincie_shapes_world.json"


# =====================================================================================================
#                                               Editors
# =====================================================================================================


def _rgb(image: PIL.Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


class ChainedEditor:
    """Runs one session's turns in one of the chained modes; ``edit(source, k)`` returns turn ``k``'s output.

    Args:
        pipe: a pixel-space ``VincieInContextPipeline`` (``None`` for ``copy``).
        mode: one of :data:`CHAINED_MODES`.
        session: the ground-truth session (its instructions are used).
        sampling: ``num_inference_steps`` / ``guidance_scale``.
        seed: noise seed of the session.
    """

    def __init__(self, pipe, mode: str, session: SyntheticSession, sampling: dict, seed: int):
        self.pipe, self.mode, self.session, self.sampling = pipe, mode, session, sampling
        self.generator = torch.Generator().manual_seed(seed)
        self.editing = None
        if mode in ("full", "chain_of_editing"):
            self.editing = pipe.start_session(PIL.Image.fromarray(session.frames[0]), resolution=_size(session),
                                              generator=self.generator)

    def edit(self, source: np.ndarray, turn: int) -> np.ndarray:
        instruction = self.session.instructions[turn]
        if self.mode == "copy":
            return source.copy()
        if self.mode == "no_context":
            fresh = self.pipe.start_session(PIL.Image.fromarray(source), resolution=_size(self.session),
                                            generator=self.generator)
            return _rgb(fresh.edit(instruction, generator=self.generator, **self.sampling))
        return _rgb(self.editing.edit(instruction, generator=self.generator,
                                      chain_of_editing=self.mode == "chain_of_editing", **self.sampling))


def _size(session: SyntheticSession) -> int:
    return session.frames[0].shape[0]


def ground_truth_edit(pipe, session: SyntheticSession, turn: int, mode: str, sampling: dict, seed: int) -> np.ndarray:
    """Turn ``turn`` edited from the true ``frames[turn]``: with the true earlier frames and instructions as context
    (``full``: the official loop's "earlier turns given as images") or alone (``no_context``)."""
    generator = torch.Generator().manual_seed(seed)
    if mode == "full":
        images = [PIL.Image.fromarray(frame) for frame in session.frames[: turn + 1]]
        editing = pipe.start_session(images, resolution=_size(session), generator=generator)
        for instruction in session.instructions[:turn]:
            editing.add_instruction(instruction)
    else:
        editing = pipe.start_session(PIL.Image.fromarray(session.frames[turn]), resolution=_size(session),
                                     generator=generator)
    return _rgb(editing.edit(session.instructions[turn], generator=generator, **sampling))


# =====================================================================================================
#                                               Protocols
# =====================================================================================================


def run_chained(pipe, sessions: list[SyntheticSession], mode: str, sampling: dict) -> list[list[EditScore]]:
    """Scores of the turns each session reached (the last one failed unless all succeeded)."""
    results = []
    for index, session in enumerate(tqdm(sessions, desc=f"chained {mode}", leave=False)):
        editor = ChainedEditor(pipe, mode, session, sampling, seed=index)
        source, scores = session.frames[0], []
        for turn in range(session.num_turns):
            prediction = editor.edit(source, turn)
            score = score_edit(prediction, session, turn, source_rgb=source)
            scores.append(score)
            if not score.success:
                break
            source = prediction
        results.append(scores)
    return results


def run_ground_truth(pipe, sessions: list[SyntheticSession], mode: str, sampling: dict) -> list[list[EditScore]]:
    """Scores of every turn of every session, each edited from the true previous frame."""
    return [
        [score_edit(ground_truth_edit(pipe, session, turn, mode, sampling, seed=1000 * index + turn), session, turn)
         for turn in range(session.num_turns)]
        for index, session in enumerate(tqdm(sessions, desc=f"ground truth {mode}", leave=False))
    ]


def cumulative_success(results: list[list[EditScore]], num_turns: int) -> list[float]:
    """Fraction of sessions whose turns ``1..k`` all succeeded, for ``k = 1..num_turns``."""
    return [
        float(np.mean([len(scores) > k and all(s.success for s in scores[: k + 1]) for scores in results]))
        for k in range(num_turns)
    ]


def rate(scores: list[EditScore], keep: Callable[[EditScore], bool] = lambda s: True) -> dict[str, float]:
    """Success rate (and count) of the scores that ``keep`` selects."""
    chosen = [s for s in scores if keep(s)]
    return {"success": float(np.mean([s.success for s in chosen])) if chosen else float("nan"), "n": len(chosen)}


def _means(scores: list[EditScore]) -> dict[str, float]:
    """Mean of each continuous score (success is all-or-nothing; these show how far a model is from it)."""
    return {f"mean_{name}": float(np.mean([getattr(s, name) for s in scores]))
            for name in ("changed_iou", "object_score", "preserved")}


def summarize(chained: dict, ground_truth: dict, num_turns: int) -> dict[str, Any]:
    """The numbers of the report (JSON-able)."""
    summary: dict[str, Any] = {"chained": {}, "ground_truth": {}}
    for mode, results in chained.items():
        flat = [s for scores in results for s in scores]
        summary["chained"][mode] = {
            "cumulative_success": cumulative_success(results, num_turns),
            "history_turns_reached": rate(flat, lambda s: s.uses_history),
            **_means(flat),
        }
    for mode, results in ground_truth.items():
        flat = [s for scores in results for s in scores]
        per_turn = [rate([scores[k] for scores in results])["success"] for k in range(num_turns)]
        per_op = {op: rate(flat, lambda s, op=op: s.op == op) for op in sorted({s.op for s in flat})}
        summary["ground_truth"][mode] = {
            "per_turn_success": per_turn,
            "all_turns": rate(flat),
            "history_turns": rate(flat, lambda s: s.uses_history),
            "other_turns": rate(flat, lambda s: not s.uses_history),
            "per_op": per_op,
            **_means(flat),
        }
    return summary


def measure_context_cache(pipe, sessions: list[SyntheticSession], sampling: dict, repeats: int = 3) -> dict:
    """Seconds per 5-turn session with the block-causal context cache (encoded once per turn) vs recomputing the
    context at every sampler step (same outputs); best of ``repeats``, and the largest output difference."""
    from diffusers_vincie.pipelines import pipeline_vincie
    from diffusers_vincie.pipelines.sampling import CachedContextVelocity

    class RecomputedContextVelocity(CachedContextVelocity):
        """The same velocity, re-encoding the context at every call (what the cache saves)."""

        def __call__(self, x: torch.Tensor, t: torch.Tensor):
            self.caches = [self._encode(self.items, self.text)]
            return super().__call__(x, t)

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

    if sampling.get("guidance_scale", 1.0) != 1.0:
        raise ValueError("measure_context_cache: use --guidance_scale 1 (the recomputing variant has no negative).")
    cached_seconds, cached = run()
    original = pipeline_vincie.CachedContextVelocity
    pipeline_vincie.CachedContextVelocity = RecomputedContextVelocity
    try:
        recomputed_seconds, recomputed = run()
    finally:
        pipeline_vincie.CachedContextVelocity = original
    difference = max(int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()) for a, b in zip(cached, recomputed))
    return {"cached_s_per_session": cached_seconds, "recomputed_s_per_session": recomputed_seconds,
            "speedup": recomputed_seconds / cached_seconds, "max_output_difference": difference,
            "sessions": len(sessions), "threads": torch.get_num_threads()}


# =====================================================================================================
#                                               Report
# =====================================================================================================


def markdown_tables(summary: dict, num_sessions: int) -> str:
    turns = len(next(iter(summary["chained"].values()))["cumulative_success"]) if summary["chained"] else 0
    lines = [f"Chained turns (MSE-Bench protocol, stop at first failure), {num_sessions} sessions: fraction of "
             "sessions with turns 1..k all successful.", "",
             "| mode | " + " | ".join(f"turn {k + 1}" for k in range(turns)) + " | history turns reached (success/n) |",
             "|---|" + "---|" * (turns + 1)]
    for mode, row in summary["chained"].items():
        history = row["history_turns_reached"]
        lines.append(f"| {mode} | " + " | ".join(f"{v:.3f}" for v in row["cumulative_success"])
                     + f" | {history['success']:.3f} / {history['n']} |")
    if summary["ground_truth"]:
        lines += ["", "Ground-truth context (each turn edits the true previous frame): per-turn success.", "",
                  "| context | " + " | ".join(f"turn {k + 1}" for k in range(turns))
                  + " | all turns | history-dependent turns | other turns |",
                  "|---|" + "---|" * (turns + 3)]
        for mode, row in summary["ground_truth"].items():
            lines.append(f"| {mode} | " + " | ".join(f"{v:.3f}" for v in row["per_turn_success"])
                         + "".join(f" | {row[k]['success']:.3f} (n={row[k]['n']})"
                                   for k in ("all_turns", "history_turns", "other_turns")) + " |")
        lines += ["", "Ground-truth context, mean scores (success needs changed-region IoU >= 0.5, object >= 0.5 and "
                  "preserved >= 0.95 in the same turn):", "",
                  "| context | changed-region IoU | object score | preserved |", "|---|---|---|---|"]
        for mode, row in summary["ground_truth"].items():
            lines.append(f"| {mode} | {row['mean_changed_iou']:.3f} | {row['mean_object_score']:.3f} | "
                         f"{row['mean_preserved']:.3f} |")
        ops = sorted({op for row in summary["ground_truth"].values() for op in row["per_op"]})
        lines += ["", "Ground-truth context, success per op:", "",
                  "| context | " + " | ".join(ops) + " |", "|---|" + "---|" * len(ops)]
        for mode, row in summary["ground_truth"].items():
            lines.append(f"| {mode} | " + " | ".join(
                f"{row['per_op'][op]['success']:.2f} (n={row['per_op'][op]['n']})" if op in row["per_op"] else "-"
                for op in ops) + " |")
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for mode, row in summary["chained"].items():
        values = row["cumulative_success"]
        axes[0].plot(range(1, len(values) + 1), values, marker="o", label=mode)
    axes[0].set(xlabel="turn", ylabel="cumulative success", title="chained turns", ylim=(0, 1))
    axes[0].legend()
    groups = ("all_turns", "history_turns", "other_turns")
    width = 0.8 / max(1, len(summary["ground_truth"]))
    for i, (mode, row) in enumerate(summary["ground_truth"].items()):
        axes[1].bar(np.arange(len(groups)) + i * width, [row[g]["success"] for g in groups], width, label=mode)
    axes[1].set_xticks(np.arange(len(groups)) + width * (len(summary["ground_truth"]) - 1) / 2, groups)
    axes[1].set(ylabel="per-turn success", title="ground-truth context", ylim=(0, 1))
    axes[1].legend()
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


_MEAN_SUFFIXES = ("_changed_iou", "_object_score", "_preserved")


def append_curve(curve: Path, label: str, summary: dict) -> None:
    """Appends one point of the success-vs-training-steps curve and re-plots it beside the file."""
    point = {"label": label}
    if "full" in summary["chained"]:
        point["full_turn1"], point["full_turn5"] = (summary["chained"]["full"]["cumulative_success"][i]
                                                    for i in (0, -1))
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
    for ax, chosen, title in ((axes[0], [k for k in keys if not k.endswith(_MEAN_SUFFIXES)],
                               "success"),
                              (axes[1], [k for k in keys if k.endswith(_MEAN_SUFFIXES)], "mean scores (ground truth)")):
        for key in chosen:
            ax.plot(steps, [p.get(key, float("nan")) for p in points], marker="o", label=key)
        ax.set(xlabel="training steps", title=title, ylim=(0, 1))
        ax.legend(fontsize=7)
    fig.suptitle("ShapesBench vs training steps")
    fig.tight_layout()
    fig.savefig(curve.with_name("success_vs_steps.png"), dpi=100)
    plt.close(fig)


# =====================================================================================================
#                                                 Main
# =====================================================================================================


def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="Pipeline folder (default: the shipped default model).")
    parser.add_argument("--num_sessions", type=int, default=200)
    parser.add_argument("--num_turns", type=int, default=5)
    parser.add_argument("--seed", type=int, default=BENCH_SEED, help="Seed of session 0 (held out from training).")
    parser.add_argument("--modes", default=",".join(CHAINED_MODES), help=f"Chained modes, from {CHAINED_MODES}.")
    parser.add_argument("--ground_truth_modes", default=",".join(GROUND_TRUTH_MODES),
                        help="Ground-truth-context modes ('' to skip).")
    parser.add_argument("--num_inference_steps", type=int, default=10)
    parser.add_argument("--guidance_scale", type=float, default=1.0)
    parser.add_argument("--output_dir", type=Path, default=Path("runs/shapes_bench"))
    parser.add_argument("--label", default=None, help="Name of this run (training step for --curve).")
    parser.add_argument("--curve", type=Path, default=None, help="JSONL file to append a success-vs-steps point to.")
    parser.add_argument("--context_cache_timing", type=int, default=0,
                        help="Also time N sessions with the context cache vs recomputing the context each step.")
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    gt_modes = [m for m in args.ground_truth_modes.split(",") if m]
    for mode in modes:
        if mode not in CHAINED_MODES:
            raise ValueError(f"--modes: unknown mode {mode!r}; choose from {CHAINED_MODES}.")
    for mode in gt_modes:
        if mode not in GROUND_TRUTH_MODES:
            raise ValueError(f"--ground_truth_modes: unknown mode {mode!r}; choose from {GROUND_TRUTH_MODES}.")
    if args.num_sessions < 1:
        raise ValueError(f"--num_sessions must be >= 1, got {args.num_sessions}.")
    if args.curve is not None:
        try:
            float(args.label or "0")
        except ValueError:
            raise ValueError(f"--label must be the training step (a number) with --curve, got {args.label!r}.")

    world_kwargs = json.loads(WORLD_CONFIG.read_text())
    world_kwargs.pop("resolution", None)
    sessions = build_bench_sessions(args.num_sessions, args.num_turns, args.seed, image_size=32, **world_kwargs)
    pipe = load_default_pipeline(args.model)
    sampling = {"num_inference_steps": args.num_inference_steps, "guidance_scale": args.guidance_scale}
    start = time.perf_counter()
    chained = {mode: run_chained(pipe, sessions, mode, sampling) for mode in modes}
    ground_truth = {mode: run_ground_truth(pipe, sessions, mode, sampling) for mode in gt_modes}
    summary = summarize(chained, ground_truth, args.num_turns)
    summary["turns"] = {f"{protocol}/{mode}": [[asdict(score) for score in scores] for scores in results]
                        for protocol, runs in (("chained", chained), ("ground_truth", ground_truth))
                        for mode, results in runs.items()}
    if args.context_cache_timing:
        summary["context_cache"] = measure_context_cache(pipe, sessions[: args.context_cache_timing], sampling)
    summary["config"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    summary["seconds"] = time.perf_counter() - start

    args.output_dir.mkdir(parents=True, exist_ok=True)
    tables = markdown_tables(summary, args.num_sessions)
    for name, text in (("results.json", json.dumps(summary, indent=2)), ("results.md", tables)):
        tmp = args.output_dir / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, args.output_dir / name)
    plot(summary, args.output_dir / "shapes_bench.png",
         f"ShapesBench, {args.num_sessions} sessions" + (f" ({args.label})" if args.label else ""))
    if args.curve is not None:
        append_curve(args.curve, args.label or "0", summary)
    print(tables)
    if "context_cache" in summary:
        print("context cache:", json.dumps(summary["context_cache"]))
    print(f"{summary['seconds']:.0f} s")
    return summary


if __name__ == "__main__":
    main()
