import importlib.util
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

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
