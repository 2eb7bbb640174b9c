#!/usr/bin/env bash
# Runs diffusers' own model and pipeline tester mixins (ModelTesterMixin, PipelineTesterMixin and the memory,
# LoRA, attention, cache and compile mixins) against VincieTransformer and VincieInContextPipeline.
#
#   scripts/run_diffusers_conformance.sh <path-to-diffusers-source-checkout> [extra pytest args]
#
# The checkout's tests/ package provides the mixins; the installed diffusers (pip) is the library under test.
# Exits nonzero when a test fails. See docs/diffusers_conventions.md ("Conformance with diffusers' test mixins").
set -euo pipefail

if [[ $# -lt 1 || ! -f "$1/tests/pipelines/test_pipelines_common.py" || ! -d "$1/tests/models/testing_utils" ]]; then
    echo "run_diffusers_conformance.sh: error: give a diffusers source checkout (a folder with tests/models/testing_utils and tests/pipelines/test_pipelines_common.py), e.g. scripts/run_diffusers_conformance.sh ~/src/diffusers" >&2
    exit 2
fi
DIFFUSERS_CHECKOUT="$(cd "$1" && pwd)"
shift
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Their `tests` package first; our package from this checkout's src/. `python -P` keeps the working directory off
# sys.path, so this repository's own tests/ is never imported as `tests`; -c picks conformance/pytest.ini (not
# pyproject.toml, whose testpaths is tests/).
export PYTHONPATH="$DIFFUSERS_CHECKOUT:$REPO/src"
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
cd "$REPO"
echo "diffusers installed: $(python -P -c 'import diffusers; print(diffusers.__version__)'); mixins from: $DIFFUSERS_CHECKOUT ($(git -C "$DIFFUSERS_CHECKOUT" rev-parse HEAD 2>/dev/null || echo 'not a git checkout'))"
exec python -P -m pytest -c conformance/pytest.ini --rootdir conformance -q conformance "$@"
