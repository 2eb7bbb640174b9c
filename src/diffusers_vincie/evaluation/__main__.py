"""Command line: ``python -m diffusers_vincie.evaluation {generate,judge,metrics,session-bench} ...``.

Examples (see ``docs/evaluation.md``)::

    accelerate launch -m diffusers_vincie.evaluation generate --dataset leigangqu/MSE-Bench \\
        --pipeline ./vincie-3b --output-dir runs/mse/vincie
    OPENAI_API_KEY=... python -m diffusers_vincie.evaluation judge --dataset leigangqu/MSE-Bench \\
        --outputs runs/mse/vincie --model gpt-4o
    python -m diffusers_vincie.evaluation metrics --dataset osunlp/MagicBrush --split test \\
        --outputs runs/magicbrush/vincie --captions global_descriptions.json
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..utils.cli import UsageError, check_number, print_usage_error
from ..utils.io import write_text_atomic
from .judge import DEFAULT_JUDGE_MODEL, DEFAULT_SUCCESS_THRESHOLD

__all__ = ["build_parser", "main"]


# =====================================================================================================
# Arguments
# =====================================================================================================


def _add_dataset_arguments(parser: argparse.ArgumentParser, default_split: str = "train") -> None:
    parser.add_argument(
        "--dataset",
        required=True,
        help="Hub id (leigangqu/MSE-Bench, osunlp/MagicBrush), local parquet/jsonl file or folder",
    )
    parser.add_argument("--split", default=default_split, help="dataset split")
    parser.add_argument("--limit", type=int, default=None, help="only the first N sessions")
    parser.add_argument("--seed-offset", type=int, default=0, help="seed of session i is offset + i (official: 0)")
    parser.add_argument("--max-turns", type=int, default=None, help="at most this many turns per session")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m diffusers_vincie.evaluation", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="run an editor over a benchmark, turn by turn (resumable)")
    _add_dataset_arguments(generate)
    source = generate.add_mutually_exclusive_group(required=True)
    source.add_argument("--pipeline", help="diffusers pipeline folder (DiffusionPipeline.from_pretrained)")
    source.add_argument(
        "--editor", help="'module:attr': a callable (images, instructions, seed) -> image, or a class building one"
    )
    generate.add_argument("--output-dir", required=True, help="folder of {index}_turn{t}_rep0_seed{seed}.png")
    generate.add_argument("--device", default=None, help="pipeline device (default: the accelerate process device)")
    generate.add_argument(
        "--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="pipeline dtype (default: as saved)"
    )
    generate.add_argument("--num-inference-steps", type=int, default=None)
    generate.add_argument("--guidance-scale", type=float, default=None)
    generate.add_argument(
        "--pipeline-kwargs",
        default=None,
        help='JSON of extra pipeline call arguments, e.g. \'{"resolution": 512, "posterior": "mode"}\'',
    )

    judge = commands.add_parser("judge", help="MSE-Bench judging with an OpenAI-compatible VLM")
    _add_dataset_arguments(judge)
    judge.add_argument("--outputs", required=True, help="folder written by `generate`")
    judge.add_argument("--report-dir", default=None, help="report and cache folder (default: <outputs>/judge-<model>)")
    judge.add_argument(
        "--base-url",
        default=os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1"),
        help="API root (env OPENAI_BASE_URL)",
    )
    judge.add_argument(
        "--model",
        default=os.environ.get("VINCIE_JUDGE_MODEL", DEFAULT_JUDGE_MODEL),
        help="judge model (env VINCIE_JUDGE_MODEL; official: gpt-5-nano)",
    )
    judge.add_argument(
        "--api-key-env", default="OPENAI_API_KEY", help="name of the environment variable holding the key"
    )
    judge.add_argument(
        "--threshold", type=float, default=DEFAULT_SUCCESS_THRESHOLD, help="success iff both scores > threshold"
    )
    judge.add_argument("--num-workers", type=int, default=8, help="sessions judged concurrently")
    judge.add_argument("--max-retries", type=int, default=5, help="retries of a request after HTTP 429/5xx/timeouts")
    judge.add_argument("--max-attempts", type=int, default=5, help="replies asked per turn until one parses")
    judge.add_argument("--backoff-seconds", type=float, default=2.0, help="first backoff, doubled at every retry")
    judge.add_argument(
        "--timeout", type=float, default=120.0, help="total deadline of one request in seconds (connect to last byte)"
    )
    judge.add_argument(
        "--extra-body", default=None, help="JSON merged into every request, e.g. '{\"temperature\": 0}'"
    )
    judge.add_argument("--title", default=None, help="report title (default: the outputs folder name)")
    judge.add_argument(
        "--results-dataset",
        default=None,
        help="first export published outputs into --outputs (e.g. leigangqu/MSE-Bench-results)",
    )
    judge.add_argument(
        "--results-split", default=None, help="model of --results-dataset (its split name; not for a parquet file)"
    )

    metrics = commands.add_parser(
        "metrics", help="MagicBrush L1, L2, CLIP-I, CLIP-T, DINO (final turn, all turns, per turn)"
    )
    _add_dataset_arguments(metrics, default_split="test")
    metrics.add_argument("--outputs", required=True, help="folder written by `generate`")
    metrics.add_argument(
        "--metrics",
        default=None,
        help="comma-separated subset of l1,l2,clip-i,clip-t,dino (default: all; clip-t only with captions)",
    )
    metrics.add_argument(
        "--clip-model", default="openai/clip-vit-base-patch32", help="CLIP checkpoint (published: ViT-B/32)"
    )
    metrics.add_argument("--dino-model", default="facebook/dino-vits16", help="DINO checkpoint (published: ViT-S/16)")
    metrics.add_argument(
        "--captions",
        default=None,
        help="MagicBrush global_descriptions.json for clip-t (default: the one in the --dataset folder, if any)",
    )
    metrics.add_argument("--device", default="cpu")
    metrics.add_argument("--batch-size", type=int, default=16)
    metrics.add_argument(
        "--output-json", default=None, help="write the results here (default: <outputs>/magicbrush_metrics.json)"
    )

    bench = commands.add_parser("session-bench", help="offline bench on the synthetic world (exact success, no VLM)")
    bench.add_argument("--report-dir", required=True, help="folder of the sessions, outputs and report")
    bench.add_argument("--num-sessions", type=int, default=50)
    bench.add_argument("--num-turns", type=int, default=5)
    bench.add_argument("--seed", type=int, default=0, help="seed of the synthetic world")
    bench.add_argument("--image-size", type=int, default=256)
    source = bench.add_mutually_exclusive_group(required=True)
    source.add_argument("--pipeline", help="diffusers pipeline folder")
    source.add_argument("--editor", help="'module:attr' editor callable (see generate)")
    bench.add_argument("--device", default=None)
    bench.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    bench.add_argument("--num-inference-steps", type=int, default=None)
    bench.add_argument("--guidance-scale", type=float, default=None)
    bench.add_argument("--pipeline-kwargs", default=None, help="JSON of extra pipeline call arguments")
    bench.add_argument("--title", default=None)
    return parser


# =====================================================================================================
# Commands
# =====================================================================================================


def load_sessions(args: argparse.Namespace) -> Any:
    """The ``--dataset`` sessions; a missing or unusable dataset is a :class:`UsageError` naming it."""
    from .sessions import load_benchmark_sessions

    try:
        return load_benchmark_sessions(args.dataset, split=args.split, limit=args.limit)
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(f"--dataset {args.dataset}: {error}") from error


def build_editor(args: argparse.Namespace) -> Any:
    """The editor of ``--pipeline`` (a DiffusionPipeline folder) or ``--editor module:attr``."""
    if args.editor:
        module_name, _, attribute = args.editor.partition(":")
        if not attribute:
            raise UsageError(f"--editor {args.editor!r} must look like 'package.module:callable'.")
        try:
            editor = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as error:
            raise UsageError(f"--editor {args.editor!r}: {error}") from error
        return editor() if inspect.isclass(editor) else editor
    if args.pipeline.startswith(("/", "./", "../", "~")) and not Path(args.pipeline).expanduser().is_dir():
        raise UsageError(f"--pipeline {args.pipeline} is not a folder (a saved pipeline or a Hub id).")

    import torch

    from .generate import PipelineEditor, check_call_kwargs, process_state

    try:
        call_kwargs = json.loads(args.pipeline_kwargs) if args.pipeline_kwargs else {}
    except json.JSONDecodeError as error:
        raise UsageError(f"--pipeline-kwargs is not valid JSON: {error}") from None
    if not isinstance(call_kwargs, dict):
        raise UsageError(f"--pipeline-kwargs must be a JSON object, got {args.pipeline_kwargs!r}.")
    for key, flag in (("num_inference_steps", "--num-inference-steps"), ("guidance_scale", "--guidance-scale")):
        value = getattr(args, key)
        if value is None:
            continue
        if key in call_kwargs and call_kwargs[key] != value:
            raise UsageError(f"--pipeline-kwargs sets {key}={call_kwargs[key]!r} but {flag} is {value}; give it once.")
        call_kwargs[key] = value
    try:
        check_call_kwargs(call_kwargs)
    except ValueError as error:
        raise UsageError(f"--pipeline-kwargs: {error}") from None
    device = args.device or str(process_state().device)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    try:
        return PipelineEditor.from_pretrained(args.pipeline, device=device, torch_dtype=dtype, **call_kwargs)
    except ValueError as error:  # an argument the pipeline does not take (found once it is loaded)
        raise UsageError(f"--pipeline-kwargs: {error}") from None


def run_generate(args: argparse.Namespace) -> int:
    from .generate import generate_outputs

    if Path(args.output_dir).exists() and not Path(args.output_dir).is_dir():
        raise UsageError(f"--output-dir {args.output_dir} is a file; give a folder for the outputs.")
    sessions = load_sessions(args)
    summary = generate_outputs(
        build_editor(args), sessions, args.output_dir, seed_offset=args.seed_offset, max_turns=args.max_turns
    )
    print(
        f"generate: {summary.sessions_generated} session(s) generated, {summary.sessions_skipped} skipped, "
        f"{summary.images_written} image(s) written to {args.output_dir}"
    )
    return 0


def run_judge(args: argparse.Namespace) -> int:
    from .judge import JudgeClient, judge_benchmark
    from .report import summarize, write_report

    api_key = os.environ.get(args.api_key_env)
    if not api_key and "api.openai.com" in args.base_url:
        raise UsageError(f"No API key: set the environment variable {args.api_key_env} (or --api-key-env NAME).")
    try:
        extra_body = json.loads(args.extra_body) if args.extra_body else None
    except json.JSONDecodeError as error:
        raise UsageError(f"--extra-body is not valid JSON: {error}") from None
    if extra_body is not None and not isinstance(extra_body, dict):
        raise UsageError(f"--extra-body must be a JSON object, got {type(extra_body).__name__}.")
    report_dir = Path(args.report_dir or Path(args.outputs) / f"judge-{re.sub(r'[^A-Za-z0-9._-]+', '_', args.model)}")
    sessions = load_sessions(args)
    if args.results_dataset:
        export_published_outputs(args, sessions)
    client = JudgeClient(
        args.base_url,
        args.model,
        api_key,
        timeout=args.timeout,
        max_retries=args.max_retries,
        backoff_seconds=args.backoff_seconds,
        extra_body=extra_body,
    )
    try:
        judgements = judge_benchmark(
            client,
            sessions,
            args.outputs,
            report_dir / "cache",
            threshold=args.threshold,
            seed_offset=args.seed_offset,
            max_turns=args.max_turns,
            num_workers=args.num_workers,
            max_attempts=args.max_attempts,
        )
    finally:
        client.close()
    num_turns = max(session.num_turns for session in sessions)
    if args.max_turns is not None:
        num_turns = min(num_turns, args.max_turns)
    summary = summarize(judgements, num_turns, args.threshold)
    title = args.title or Path(args.outputs).resolve().name
    metadata = {
        "judge_model": args.model,
        "threshold": args.threshold,
        "sessions": len(sessions),
        "dataset": str(args.dataset),
        "outputs": str(args.outputs),
    }
    paths = write_report(summary, report_dir, title=title, metadata=metadata)
    print(paths["markdown"].read_text())
    print(f"report: {paths['csv']}, {paths['markdown']}, {paths['plot']}")
    return 0


def export_published_outputs(args: argparse.Namespace, sessions: Any) -> None:
    """``--results-dataset``: write a released model's outputs into ``--outputs`` before judging them."""
    import datasets

    from .generate import export_results_dataset

    source = Path(args.results_dataset)
    if source.is_file() and source.suffix == ".parquet":
        results = datasets.load_dataset("parquet", data_files=str(source), split="train")
    elif not args.results_split:
        raise UsageError("--results-dataset needs --results-split (the model name: one split of the results dataset).")
    else:
        results = datasets.load_dataset(args.results_dataset, split=args.results_split)
    written = export_results_dataset(results, sessions, args.outputs, seed_offset=args.seed_offset)
    print(f"judge: exported {written} published output image(s) of {args.results_dataset} into {args.outputs}")


def run_metrics(args: argparse.Namespace) -> int:
    from .magicbrush import METRIC_NAMES, evaluate_magicbrush

    sessions = load_sessions(args)
    captions_path = Path(args.captions) if args.captions else Path(args.dataset) / "global_descriptions.json"
    captions = json.loads(captions_path.read_text()) if captions_path.is_file() else None
    if args.metrics is None:
        names = list(METRIC_NAMES) if captions is not None else [name for name in METRIC_NAMES if name != "clip-t"]
        if captions is None:
            print("metrics: no captions (--captions global_descriptions.json), so clip-t is skipped")
    else:
        names = [name.strip() for name in args.metrics.split(",") if name.strip()]
        unknown = sorted(set(names) - set(METRIC_NAMES)) or ([] if names else ["(none)"])
        if unknown:
            raise UsageError(f"--metrics: unknown {unknown}; choose from {', '.join(METRIC_NAMES)}.")
    if not all(session.references for session in sessions):
        raise UsageError(
            f"--dataset {args.dataset} has no reference images: the metrics need a MagicBrush-format "
            "dataset (source, target per turn)."
        )
    results = evaluate_magicbrush(
        sessions,
        args.outputs,
        metrics=names,
        captions=captions,
        clip_model=args.clip_model,
        dino_model=args.dino_model,
        device=args.device,
        batch_size=args.batch_size,
        seed_offset=args.seed_offset,
        max_turns=args.max_turns,
    )
    output_json = Path(args.output_json or Path(args.outputs) / "magicbrush_metrics.json")
    write_text_atomic(output_json, json.dumps(results, indent=2))
    for setting in ("final_turn", "all_turn"):
        print(setting + ": " + ", ".join(f"{name}={value:.4f}" for name, value in results[setting].items()))
    print(f"results: {output_json}")
    return 0


def run_session_bench(args: argparse.Namespace) -> int:
    from .shapes_bench import run_session_bench as run

    paths = run(
        build_editor(args),
        args.report_dir,
        num_sessions=args.num_sessions,
        num_turns=args.num_turns,
        seed=args.seed,
        image_size=args.image_size,
        title=args.title,
    )
    print(paths["markdown"].read_text())
    return 0


# flag -> (minimum, maximum, minimum excluded); checked when the command has the flag and it is given
_NUMBER_FLAGS = {
    "limit": (1, None, False),
    "max_turns": (1, None, False),
    "threshold": (0, 10, False),
    "num_workers": (1, None, False),
    "max_retries": (0, None, False),
    "max_attempts": (1, None, False),
    "backoff_seconds": (0, None, False),
    "timeout": (0, None, True),
    "num_inference_steps": (1, None, False),
    "guidance_scale": (0, None, False),
    "batch_size": (1, None, False),
    "num_sessions": (1, None, False),
    "num_turns": (1, None, False),
    "image_size": (8, None, False),
}


def check_arguments(args: argparse.Namespace) -> None:
    """Every numeric flag finite and in range, before any dataset or model is loaded (``--threshold nan`` used to
    report 0 % success with exit status 0)."""
    for name, (minimum, maximum, strict) in _NUMBER_FLAGS.items():
        check_number(f"--{name.replace('_', '-')}", getattr(args, name, None), minimum, maximum, strict)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = {
        "generate": run_generate,
        "judge": run_judge,
        "metrics": run_metrics,
        "session-bench": run_session_bench,
    }[args.command]
    from .judge import JudgeError

    try:
        check_arguments(args)
        return command(args)
    except (UsageError, FileNotFoundError) as error:  # a bad flag, or an input that is not there
        return print_usage_error(f"{parser.prog} {args.command}", error)
    except JudgeError as error:  # the endpoint failed for good: no traceback, the message says what to do
        print(f"{parser.prog} {args.command}: {' '.join(str(error).split())}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
