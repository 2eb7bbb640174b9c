#!/usr/bin/env bash
# Sets up a fresh machine (CPU torch, the package with its test extras, Debian's chromium) and runs the whole
# test suite.
# The official parity fixtures must be present (../shared/fixtures/official or $VINCIE_OFFICIAL_FIXTURES):
# their absence is a failure here, not a skip.
set -euo pipefail
cd "$(dirname "$0")/.."

export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export VINCIE_OFFICIAL_FIXTURES="${VINCIE_OFFICIAL_FIXTURES:-$(cd .. && pwd)/shared/fixtures/official}"

python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[test]" --constraint <(echo "torch==2.13.0")
bash scripts/install_chromium.sh  # Debian's chromium for the Space's real-browser test
python -m pip install --quiet "ruff==0.17.6"
python -m ruff check .  # lint as diffusers (pyproject.toml [tool.ruff])
python -m ruff format --check .  # formatted as diffusers (ruff format, line length 119)

if [ ! -f "$VINCIE_OFFICIAL_FIXTURES/dit_official.safetensors" ]; then
    echo "ERROR: official parity fixtures not found at $VINCIE_OFFICIAL_FIXTURES" >&2
    exit 1
fi
python -m diffusers_vincie.parity "$VINCIE_OFFICIAL_FIXTURES" | tail -n 1

python -m pytest -q -p no:cacheprovider --timeout=900 tests "$@"
