"""How the Space serves many users: each user's editing state and its views, admission to the sampler (busy
answers instead of unbounded waits) and the ZeroGPU time budget of a call. Used by ``app.py``."""

from __future__ import annotations

import functools
import json
import math
import os
import threading
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import gradio as gr
import numpy as np
import PIL.Image

from diffusers_vincie import VincieEditingSession

# =====================================================================================================
#                                       Admission to the sampler
# =====================================================================================================

SAMPLER_CONCURRENCY = 1  # sampling calls that run at once (one GPU)
MAX_WAITING = int(os.environ.get("VINCIE_SPACE_MAX_WAITING", "4"))  # calls that may wait for the sampler
MAX_WAIT_SECONDS = float(os.environ.get("VINCIE_SPACE_MAX_WAIT_SECONDS", "15"))  # below common client timeouts (20 s)


class SamplerGate:
    """Admission of sampling calls: ``slots`` run at once, at most ``max_waiting`` wait, each at most
    ``max_wait_seconds``; any other call is answered at once that the Space is busy.

    So every request ends within ``max_wait_seconds`` plus its own run, however many users arrive: a busy message
    rather than a client timeout. The handlers that do not sample (undo, download, ...) never pass here.
    """

    def __init__(self, slots: int, max_waiting: int, max_wait_seconds: float):
        self.max_waiting, self.max_wait_seconds = max_waiting, max_wait_seconds
        self._slots = threading.BoundedSemaphore(slots)
        self._count = threading.Lock()
        self.waiting = 0

    def busy(self, waiting: int) -> gr.Error:
        return gr.Error(
            f"The Space is busy ({waiting} edit(s) waiting for the model, one running); try again in a minute. "
            "Undo, restore and download still work meanwhile.",
            title="Busy",
        )

    @contextmanager
    def admitted(self) -> Iterator[None]:
        with self._count:
            if self.waiting >= self.max_waiting:
                raise self.busy(self.waiting)
            self.waiting += 1
        try:
            acquired = self._slots.acquire(timeout=self.max_wait_seconds)
        finally:
            with self._count:
                self.waiting -= 1
        if not acquired:
            raise self.busy(self.waiting)
        try:
            yield
        finally:
            self._slots.release()

    def gated(self, handler: Callable) -> Callable:
        """``handler`` run once admitted (its signature kept, for Gradio's progress and request arguments)."""

        @functools.wraps(handler)
        def run(*args, **kwargs):
            with self.admitted():
                return handler(*args, **kwargs)

        return run


# =====================================================================================================
#                                      ZeroGPU (optional)
# =====================================================================================================

GPU_SECONDS_BASE = 15.0
GPU_SECONDS_PER_FRAME_STEP = 0.08  # estimate: one sampler step over one frame of context at resolution 256
GPU_SECONDS_MAX = 300.0


def gpu_seconds(steps: float, frames: int, resolution: float, passes: int) -> int:
    """ZeroGPU budget of one generation: grows with the frames in context (the number of turns)."""
    area = (float(resolution) / 256.0) ** 2
    return int(min(GPU_SECONDS_MAX, GPU_SECONDS_BASE + GPU_SECONDS_PER_FRAME_STEP * steps * frames * area * passes))


def on_gpu(duration: Callable) -> Callable:
    """``@spaces.GPU(duration=duration)`` when the `spaces` package is importable (Hugging Face Spaces); else a no-op."""
    try:
        import spaces
    except ImportError:
        return lambda fn: fn
    return spaces.GPU(duration=duration)


# =====================================================================================================
#                                      Per-user editing state
# =====================================================================================================


@dataclass
class EditorState:
    """One user's work: every branch of the session (restoring a turn starts a branch; none is lost)."""

    branches: list = field(default_factory=list)  # [VincieEditingSession]
    active: int = 0
    busy: threading.Lock = field(default_factory=threading.Lock, repr=False)  # held while a handler changes it

    @property
    def session(self) -> VincieEditingSession:
        return self.branches[self.active]


def same_source(session: VincieEditingSession, image: PIL.Image.Image) -> bool:
    source = session.sources[0].image
    return source.size == image.size and np.array_equal(np.asarray(source), np.asarray(image.convert("RGB")))


def history_items(session: VincieEditingSession) -> list:
    """Gallery items ``(image, caption)``: the source, then one per turn."""
    return [
        (image, "0 · source" if k == 0 else f"{k} · {instruction}")
        for k, (instruction, image) in enumerate(session.history)
    ]


def mask_items(session: VincieEditingSession) -> list:
    """The predicted RoE masks (chain of editing) of every turn that has them."""
    items = []
    for k, turn in enumerate(session.turns, start=1):
        for which, mask in zip(("current", "next"), turn.masks or ()):
            items.append((mask, f"{k} · {which} region"))
    return items


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' * (count != 1)}"


def branch_choices(state: Optional[EditorState]) -> gr.Dropdown:
    if state is None:
        return gr.Dropdown(choices=[], value=None)
    choices = [(f"branch {i + 1} · {plural(len(s.turns), 'turn')}", i) for i, s in enumerate(state.branches)]
    return gr.Dropdown(choices=choices, value=state.active)


REGION_CANVAS_SIDE = 256


def region_canvas(image: Optional[PIL.Image.Image]) -> dict:
    """The region editor's value: ``image`` (the image the next edit changes) to paint on, no strokes yet.

    The image is enlarged by a whole factor of at least 2 (to about `REGION_CANVAS_SIDE` px): small outputs are
    easier to paint on, and the editor's file differs from the result's. Gradio names cached images by their
    content and rewrites the file for every output that holds it, so the same image in two components makes the
    browser read a file while it is rewritten, and the editor stops loading.
    """
    if image is not None:
        factor = max(2, math.ceil(REGION_CANVAS_SIDE / max(image.size)))
        image = image.resize((image.width * factor, image.height * factor), PIL.Image.NEAREST)
    return {"background": image, "layers": [], "composite": image}


def render(state: Optional[EditorState], note: str = "") -> tuple:
    """Values of ``[state, result, history, masks, branch, turn, status]`` for ``state``."""
    if state is None:
        return None, None, [], [], branch_choices(None), 0, note or "Upload an image and type an instruction."
    session = state.session
    turns = len(session.turns)
    status = f"Branch {state.active + 1} of {len(state.branches)} · {plural(turns, 'turn')}. {note}".strip()
    return (
        state,
        session.history[-1][1],
        history_items(session),
        mask_items(session),
        branch_choices(state),
        turns,
        status,
    )


def current_canvas(state: Optional[EditorState]) -> dict:
    """The region editor's value after a change of ``state``: the image the next edit changes, no strokes."""
    return region_canvas(state.session.history[-1][1] if state is not None else None)


@contextmanager
def claimed(state: Optional[EditorState]) -> Iterator[EditorState]:
    """The user's state, held for one handler: an undo cannot land in the middle of that user's running edit."""
    if state is None:
        raise gr.Error("There is no session yet: upload an image and make a first edit.")
    if not state.busy.acquire(blocking=False):
        raise gr.Error("An edit of this session is still running: wait for it to finish.")
    try:
        yield state
    finally:
        state.busy.release()


def write_session_zip(session: VincieEditingSession, path: Path, model_name: str) -> Path:
    """Zip with ``source.png``, ``turn_<k>.png`` (+ masks) and ``session.json`` (instructions); written atomically."""
    record = {"model": model_name, "resolution": session.resolution, "source": "source.png", "turns": []}
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w") as archive:

        def add(image: PIL.Image.Image, name: str) -> str:
            with archive.open(name, "w") as f:
                image.save(f, format="PNG")
            return name

        add(session.sources[0].image, "source.png")
        for k, turn in enumerate(session.turns, start=1):
            masks = [add(m, f"turn_{k}_mask_{w}.png") for w, m in zip(("current", "next"), turn.masks or ())]
            record["turns"].append(
                {"turn": k, "instruction": turn.instruction, "image": add(turn.image, f"turn_{k}.png"), "masks": masks}
            )
        archive.writestr("session.json", json.dumps(record, indent=2))
    os.replace(tmp, path)
    return path
