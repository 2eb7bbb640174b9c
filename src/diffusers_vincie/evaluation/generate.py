"""Run an editor over a benchmark, turn by turn with the history, like the official MSE-Bench generator.

Turn ``t`` (0-based) of a session gives the editor the images ``[source, out_0, ..., out_{t-1}]`` and the
instructions ``1..t+1``; it must return the edit of the *last* image. As in the official ``generate.py``, the
previous outputs are read back from the PNG files written to disk, which also makes the run resumable at any
turn: a session whose outputs all exist is skipped, a partly finished one restarts at its first missing turn.

Distributed: under ``accelerate launch`` the sessions are split across processes with
``PartialState.split_between_processes``; every process writes its own files, so no gathering is needed.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import PIL.Image
from tqdm.auto import tqdm

from ..utils.io import atomic_write
from .sessions import BenchmarkSession, _as_rgb, output_path, session_seed

__all__ = [
    "Editor",
    "GenerationSummary",
    "PipelineEditor",
    "export_results_dataset",
    "generate_outputs",
    "process_state",
    "save_image_atomic",
]

logger = logging.getLogger(__name__)


def process_state() -> Any:
    """The accelerate ``PartialState`` of this process (split of the sessions, device).

    A multi-process run without CUDA (``torchrun`` on CPU, or ``ACCELERATE_USE_CPU=1``) must ask for the CPU
    (gloo) process group explicitly, otherwise every process believes it is alone and does all the work.
    """
    import torch
    from accelerate import PartialState

    multi_process = int(os.environ.get("WORLD_SIZE", "1")) > 1
    cpu_requested = os.environ.get("ACCELERATE_USE_CPU", "").lower() in {"1", "true", "yes"}
    return PartialState(cpu=cpu_requested or (multi_process and not torch.cuda.is_available()))


# =====================================================================================================
# Editors
# =====================================================================================================


class Editor(Protocol):
    """Anything that edits the last image of a history: ``(images, instructions, seed) -> edited image``.

    ``images`` are ``[source, out_1, ..., out_{k-1}]`` and ``instructions`` the ``k`` instructions so far.
    """

    def __call__(self, images: list[PIL.Image.Image], instructions: list[str], seed: int) -> PIL.Image.Image: ...


# Call arguments the editor sets itself (or whose change would make ``.images[-1]`` another image than the edit).
RESERVED_CALL_KWARGS = (
    "image",
    "prompt",
    "generator",
    "output_type",
    "return_dict",
    "prompt_embeds",
    "num_images_per_prompt",
    "latents",
)


def check_call_kwargs(call_kwargs: dict[str, Any], pipeline: Any = None) -> None:
    """Extra call arguments of a :class:`PipelineEditor`: none that the editor sets itself, and (given the
    ``pipeline``) only arguments of its ``__call__``."""
    reserved = sorted(set(call_kwargs) & set(RESERVED_CALL_KWARGS))
    if reserved:
        raise ValueError(
            f"call arguments {reserved} are set by the editor itself (images, instructions, seed, one PIL image per "
            "turn); leave them out."
        )
    if pipeline is not None:
        parameters = inspect.signature(pipeline.__call__).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            unknown = sorted(set(call_kwargs) - set(parameters))
            if unknown:
                raise ValueError(
                    f"{type(pipeline).__name__} takes no argument(s) {unknown}; its call arguments are "
                    f"{sorted(set(parameters) - set(RESERVED_CALL_KWARGS))}."
                )


class PipelineEditor:
    """Adapter from a diffusers pipeline with the in-context calling convention to an :class:`Editor`.

    The pipeline is called as ``pipe(image=images, prompt=instructions, generator=..., output_type="pil")`` with
    the whole history and must return ``.images`` with one image per turn; the last one is the new edit.

    Args:
        pipeline: The loaded pipeline.
        generator_device: Device of the seeded ``torch.Generator`` (the pipeline's device by default).
        call_kwargs: Extra keyword arguments of every call (``num_inference_steps``, ``guidance_scale``, ...).
    """

    def __init__(self, pipeline: Any, generator_device: str | None = None, **call_kwargs: Any):
        check_call_kwargs(call_kwargs, pipeline)
        self.pipeline = pipeline
        self.generator_device = generator_device or str(getattr(pipeline, "device", "cpu"))
        self.call_kwargs = call_kwargs

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, device: str = "cpu", torch_dtype: Any = None, **call_kwargs: Any
    ) -> PipelineEditor:
        """Load a pipeline folder with ``DiffusionPipeline.from_pretrained`` and move it to ``device``."""
        from diffusers import DiffusionPipeline

        dtype_kwargs = {} if torch_dtype is None else {"torch_dtype": torch_dtype}
        pipeline = DiffusionPipeline.from_pretrained(str(path), **dtype_kwargs).to(device)
        pipeline.set_progress_bar_config(disable=True)
        return cls(pipeline, generator_device=device, **call_kwargs)

    def __call__(self, images: list[PIL.Image.Image], instructions: list[str], seed: int) -> PIL.Image.Image:
        import torch

        generator = torch.Generator(device=self.generator_device).manual_seed(seed)
        result = self.pipeline(
            image=images, prompt=instructions, generator=generator, output_type="pil", **self.call_kwargs
        )
        return result.images[-1]


# =====================================================================================================
# Generation loop
# =====================================================================================================


@dataclass
class GenerationSummary:
    """What one process did: sessions fully skipped, sessions (re)generated and images written."""

    sessions_skipped: int = 0
    sessions_generated: int = 0
    images_written: int = 0


def save_image_atomic(image: PIL.Image.Image, path: Path) -> None:
    """Write a PNG through a temporary file in the same folder, so a killed run never leaves a half file."""
    with atomic_write(path, "wb") as stream:
        image.save(stream, format="PNG")


def read_output(path: Path) -> PIL.Image.Image | None:
    """The RGB image of an output file, or ``None`` when it cannot be decoded (truncated, not an image)."""
    try:
        with PIL.Image.open(path) as stored:
            return stored.convert("RGB")
    except (OSError, SyntaxError, ValueError):  # UnidentifiedImageError and "image file is truncated" are OSErrors
        return None


def _generate_session(
    editor: Editor, session: BenchmarkSession, seed: int, output_dir: Path, max_turns: int | None
) -> int:
    """Generate the missing turns of one session; returns the number of images written."""
    num_turns = session.num_turns if max_turns is None else min(max_turns, session.num_turns)
    history = [session.source]
    written = 0
    regenerate = False  # once a turn is redone, the later turns saw another history: redo them too
    for turn in range(num_turns):
        path = output_path(output_dir, session.index, turn, seed)
        stored = None if regenerate or not path.exists() else read_output(path)
        if stored is not None:  # resume: read the earlier output back, as the official loop does
            history.append(stored)
            continue
        if path.exists() and not regenerate:
            logger.warning("%s is unreadable (truncated or not an image): generating it again", path)
        regenerate = regenerate or path.exists()
        edited = editor(list(history), session.instructions[: turn + 1], seed)
        if not isinstance(edited, PIL.Image.Image):
            raise TypeError(
                f"The editor must return a PIL image, got {type(edited).__name__} (session {session.index})."
            )
        save_image_atomic(edited.convert("RGB"), path)
        written += 1
        with PIL.Image.open(path) as stored:  # feed back the uint8 PNG, not the in-memory image
            history.append(stored.convert("RGB"))
    return written


def generate_outputs(
    editor: Editor,
    sessions: Sequence[BenchmarkSession],
    output_dir: str | os.PathLike,
    seed_offset: int = 0,
    max_turns: int | None = None,
    show_progress: bool = True,
) -> GenerationSummary:
    """Edit every session turn by turn and write ``{index}_turn{t}_rep0_seed{seed}.png`` into ``output_dir``.

    Args:
        editor: The editor (see :class:`Editor`; :class:`PipelineEditor` wraps a diffusers pipeline).
        sessions: The benchmark (see :func:`~diffusers_vincie.evaluation.sessions.load_benchmark_sessions`).
        output_dir: Folder of the outputs; created if missing; existing outputs are reused (resume).
        seed_offset: Seed of session ``index`` is ``seed_offset + index`` (official: 0).
        max_turns: Generate at most this many turns per session (all by default).
        show_progress: Show a tqdm bar on the main process.

    Returns:
        The :class:`GenerationSummary` of this process.
    """
    if max_turns is not None and max_turns < 1:
        raise ValueError(f"`max_turns` must be at least 1 (or None for all turns), got {max_turns}.")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    state = process_state()
    summary = GenerationSummary()
    with state.split_between_processes(list(range(len(sessions)))) as positions:
        bar = tqdm(
            positions, desc=f"generate [{state.process_index}]", disable=not (show_progress and state.is_main_process)
        )
        for position in bar:
            session = sessions[position]
            seed = session_seed(session.index, position, seed_offset)
            written = _generate_session(editor, session, seed, output_dir, max_turns)
            summary.images_written += written
            if written:
                summary.sessions_generated += 1
            else:
                summary.sessions_skipped += 1
    state.wait_for_everyone()
    return summary


# =====================================================================================================
# Published outputs
# =====================================================================================================


def export_results_dataset(
    results: Any, sessions: Sequence[BenchmarkSession], output_dir: str | os.PathLike, seed_offset: int = 0
) -> int:
    """Write the outputs of a results dataset (``leigangqu/MSE-Bench-results`` format) in the ``generate`` layout.

    Row ``i`` of ``results`` holds the outputs of session ``i`` (same order as ``sessions``) in columns ``turn_{t}_image`` (0-based ``t``),
    as released for the published models; existing files are kept. Judging them reproduces the paper's table
    with your judge.

    Args:
        results: A ``datasets.Dataset`` (one split = one model) with ``turn_{t}_image`` columns.
        sessions: The benchmark sessions, in the same order.
        output_dir: Folder to write ``{index}_turn{t}_rep0_seed{seed}.png`` into.
        seed_offset: Seed offset of the naming (official: 0).

    Returns:
        The number of images written.
    """
    turn_columns = sorted(
        (c for c in results.column_names if re.fullmatch(r"turn_\d+_image", c.strip())),
        key=lambda c: int(c.strip().split("_")[1]),
    )
    if not turn_columns:
        raise ValueError(f"`results` has no turn_{{t}}_image columns (columns: {results.column_names}).")
    if len(results) < len(sessions):
        raise ValueError(
            f"`results` has {len(results)} rows but the benchmark has {len(sessions)} sessions; "
            "pass the results of the same benchmark."
        )
    results = results.select(range(len(sessions)))  # --limit keeps the first sessions
    import datasets

    for column in turn_columns:  # decoded by ``_as_rgb``: a path stored in a row stays inside the working folder
        feature = results.features.get(column)
        if isinstance(feature, datasets.Image) and feature.decode:
            results = results.cast_column(column, datasets.Image(mode=feature.mode, decode=False))
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    for position, row in enumerate(tqdm(results, desc="export results")):
        index = sessions[position].index
        seed = session_seed(index, position, seed_offset)
        for column in turn_columns:
            path = output_path(output_dir, index, int(column.strip().split("_")[1]), seed)
            if row[column] is not None and not path.exists():
                save_image_atomic(_as_rgb(row[column], f"results row {position} `{column}`"), path)
                written += 1
    return written
