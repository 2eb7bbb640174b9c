"""Evaluation of multi-turn editors: MSE-Bench (generate + VLM judge), MagicBrush metrics, offline session bench.

Command line: ``python -m diffusers_vincie.evaluation {generate,judge,metrics,session-bench} --help``;
see ``docs/evaluation.md``.
"""

from .generate import Editor, GenerationSummary, PipelineEditor, generate_outputs
from .judge import (
    DEFAULT_JUDGE_MODEL,
    DEFAULT_SUCCESS_THRESHOLD,
    JudgeClient,
    JudgeError,
    JudgeReplyError,
    SessionJudgement,
    TurnVerdict,
    build_judge_prompt,
    judge_benchmark,
    judge_session,
    parse_judge_reply,
)
from .report import TurnSummary, summarize, write_report
from .sessions import BenchmarkSession, load_benchmark_sessions, output_filename

__all__ = [
    "DEFAULT_JUDGE_MODEL",
    "DEFAULT_SUCCESS_THRESHOLD",
    "BenchmarkSession",
    "Editor",
    "GenerationSummary",
    "JudgeClient",
    "JudgeError",
    "JudgeReplyError",
    "PipelineEditor",
    "SessionJudgement",
    "TurnSummary",
    "TurnVerdict",
    "build_judge_prompt",
    "generate_outputs",
    "judge_benchmark",
    "judge_session",
    "load_benchmark_sessions",
    "output_filename",
    "parse_judge_reply",
    "summarize",
    "write_report",
]
