#!/usr/bin/env bash
# The prepared GPU check: one command, about 8 minutes on one H100/H200 (see benchmarks/gpu_check.py for what it
# measures). Results go to $OUT (default outputs/gpu_check): gpu_check.json, gpu_check.md and gpu_check.log.
#
#   bash benchmarks/gpu_check.sh           # on a CUDA machine
#   bash benchmarks/gpu_check.sh --tiny    # tiny random model on the CPU, in seconds (the suite runs this)
#   bash benchmarks/gpu_check.sh --7b      # VINCIE-7B sizes instead of 3B (combines with --tiny)
#
# The lent GPU machines have torch, transformers, accelerate, peft and safetensors but no diffusers and no
# network: carry a wheels/ folder (git-ignored) made here with
#   pip download "diffusers==$(python -c 'import diffusers; print(diffusers.__version__)')" --no-deps -d wheels/
# and this script installs it from there when diffusers is missing. The package itself runs from src/.
set -euo pipefail
cd "$(dirname "$0")/.."

TINY=""
FAMILY="3b"
for arg in "$@"; do
    case "$arg" in
        --tiny) TINY="--tiny" ;;
        --7b) FAMILY="7b" ;;
        *) echo "gpu_check.sh: unknown argument '$arg' (the options are --tiny and --7b)" >&2; exit 2 ;;
    esac
done
OUT="${OUT:-outputs/gpu_check}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ -n "$TINY" ]; then export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"; fi

if ! python -c "import diffusers" 2>/dev/null; then
    wheel=$(ls wheels/diffusers-*.whl 2>/dev/null | head -n 1 || true)
    if [ -z "$wheel" ]; then
        echo "gpu_check.sh: diffusers is not installed and wheels/ holds no diffusers wheel (see the header)" >&2
        exit 2
    fi
    python -m pip install --quiet --no-index --no-deps "$wheel"
fi

# 8 minutes for the measurements, then whatever was measured is already in $OUT (written after each section)
timeout 480 python benchmarks/gpu_check.py --out "$OUT" --family "$FAMILY" $TINY 2>&1 | tee "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
