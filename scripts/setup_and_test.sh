#!/usr/bin/env bash
# Sets up a fresh machine (CPU torch, the package with its test extras, Debian's chromium) and runs the whole
# test suite.
# The official parity fixtures of both families must be present (../shared/fixtures/official or
# $VINCIE_OFFICIAL_FIXTURES for VINCIE-3B, ../shared/fixtures/official-7b or $VINCIE_OFFICIAL_7B_FIXTURES for
# VINCIE-7B): their absence is a failure here, not a skip.
set -euo pipefail
cd "$(dirname "$0")/.."

export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export VINCIE_OFFICIAL_FIXTURES="${VINCIE_OFFICIAL_FIXTURES:-$(cd .. && pwd)/shared/fixtures/official}"
export VINCIE_OFFICIAL_7B_FIXTURES="${VINCIE_OFFICIAL_7B_FIXTURES:-$(cd .. && pwd)/shared/fixtures/official-7b}"

python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[test]" --constraint <(echo "torch==2.13.0")
bash scripts/install_chromium.sh  # Debian's chromium for the Space's real-browser test
python -m pip install --quiet "ruff==0.17.6"
python -m ruff check .  # lint as diffusers (pyproject.toml [tool.ruff])
python -m ruff format --check .  # formatted as diffusers (ruff format, line length 119)

for fixtures in "$VINCIE_OFFICIAL_FIXTURES" "$VINCIE_OFFICIAL_7B_FIXTURES"; do
    if [ ! -f "$fixtures/dit_official.safetensors" ]; then
        echo "ERROR: official parity fixtures not found at $fixtures" >&2
        exit 1
    fi
    python -m diffusers_vincie.parity "$fixtures" | tail -n 1
done

# one worker per core (PYTEST_WORKERS overrides), a test file per worker so that its module fixtures are built once
python -m pytest -q -p no:cacheprovider --timeout=900 -n "${PYTEST_WORKERS:-$(nproc)}" --dist loadfile tests "$@"
