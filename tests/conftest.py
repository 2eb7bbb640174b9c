import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


def official_fixtures_dir() -> Path:
    return Path(os.environ.get("VINCIE_OFFICIAL_FIXTURES", REPO.parent / "shared" / "fixtures" / "official"))


@pytest.fixture(scope="session")
def official_fixtures() -> Path:
    folder = official_fixtures_dir()
    if not (folder / "dit_official.safetensors").is_file():
        pytest.skip(f"official parity fixtures not found at {folder} (set VINCIE_OFFICIAL_FIXTURES)")
    return folder
