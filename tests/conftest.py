import importlib.util
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # one thread per worker and per process it starts: the workers already fill the cores, and oversubscribed
    # OpenMP threads wait on each other
    os.environ["OMP_NUM_THREADS"] = "1"

REPO = Path(__file__).resolve().parents[1]


def load_script(path: Path, name: str, register: bool = False):
    """Imports a repository script (a file outside the package) as module ``name``; ``register`` also puts it in
    ``sys.modules`` (for code that looks its module up by name, e.g. Gradio callbacks)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    if register:
        sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def official_fixtures_dir() -> Path:
    return Path(os.environ.get("VINCIE_OFFICIAL_FIXTURES", REPO.parent / "shared" / "fixtures" / "official"))


def official_7b_fixtures_dir() -> Path:
    return Path(os.environ.get("VINCIE_OFFICIAL_7B_FIXTURES", REPO.parent / "shared" / "fixtures" / "official-7b"))


def _required_fixtures(folder: Path, env_var: str) -> Path:
    """``folder`` if it holds the official parity fixtures. Under CI a missing set fails the test (a parity run
    that silently skips would hide a broken checkout); elsewhere it skips, naming the variable that points to it."""
    if not (folder / "dit_official.safetensors").is_file():
        message = f"official parity fixtures not found at {folder} (set {env_var})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return folder


@pytest.fixture(scope="session")
def official_7b_fixtures() -> Path:
    return _required_fixtures(official_7b_fixtures_dir(), "VINCIE_OFFICIAL_7B_FIXTURES")


@pytest.fixture(scope="session")
def official_fixtures() -> Path:
    return _required_fixtures(official_fixtures_dir(), "VINCIE_OFFICIAL_FIXTURES")


@pytest.fixture(scope="module")
def pipe():
    """A tiny random pipeline (latent space, full attention) with its progress bars off."""
    from diffusers_vincie.testing import tiny_pipeline

    p = tiny_pipeline()
    p.set_progress_bar_config(disable=True)
    return p


def one_error_line(err: str) -> str:
    """The single ``<prog>: error: ...`` line of a command's stderr (asserted: no traceback, no second error); the
    first heavy import of a process may log unrelated library warnings before it."""
    lines = [line for line in err.strip().splitlines() if "error:" in line]
    assert "Traceback" not in err and len(lines) == 1 and lines[0] == err.strip().splitlines()[-1], err
    return lines[0]


def one_line_exit_2(call, capsys, *words: str) -> str:
    """Runs a CLI ``call`` that must exit with status 2 and print one error line holding every word of ``words``;
    returns that line."""
    with pytest.raises(SystemExit) as exit_info:
        call()
    assert exit_info.value.code == 2
    line = one_error_line(capsys.readouterr().err)
    assert all(word in line for word in words), line
    return line


def toy_recipe_env(phase_steps: int, **extra: str) -> dict:
    """The environment of a default-model recipe at a toy length: every curriculum phase ``phase_steps`` steps
    (phase 4 stopped half-way down its cosine), one thread, offline; ``extra`` adds or overrides variables."""
    steps = str(phase_steps)
    return dict(
        os.environ,
        PHASE1_STEPS=steps,
        PHASE2_STEPS=steps,
        PHASE3_STEPS=steps,
        PHASE4_STEPS=steps,
        PHASE4_DECAY_STEPS=str(2 * phase_steps),
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        **extra,
    )


def assert_masks_and_drag(pipe, image):
    """Chain-of-editing masks, a user mask (controllable editing) and a drag on a tiny pipeline: mask sizes, the
    mask frames a turn keeps, and the dragged mask moved by the translation. Returns the session."""
    import numpy as np

    out = pipe(image, ["remove the red circle"], chain_of_editing=True, num_inference_steps=2, resolution=32)
    current, nxt = out.masks[0]
    assert current.size == nxt.size == out.images[0].size
    session = pipe.start_session(image, resolution=32)
    user_mask = np.zeros((40, 56), bool)
    user_mask[10:20, 10:30] = True
    session.edit("make it blue", current_mask=user_mask, num_inference_steps=2)
    assert len(session.turns[-1].mask_frames) == 2  # user mask + predicted next mask
    session.drag("move it", translate=(8, 0), current_mask=user_mask, num_inference_steps=2)
    moved = np.asarray(session.turns[-1].mask_frames[1].image.convert("L")) > 127
    assert np.array_equal(moved[:, 18:38], user_mask[:, 10:30]) and not moved[:, 10:18].any()
    return session
