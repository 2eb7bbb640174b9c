#!/usr/bin/env bash
# The README's main command: sets up a fresh machine (CPU torch + the package) and runs a 5-turn editing session
# on the package's default model (VINCIE-Shapes, shipped inside the package), offline.
#
#   bash scripts/setup_and_run.sh [demo flags...]     e.g. --image my.png --output outputs/mine
#
# Writes turn_0_source.png .. turn_5.png and contact_sheet.png to outputs/demo/ (or --output).
set -euo pipefail
cd "$(dirname "$0")/.."

export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e . --constraint <(echo "torch==2.13.0")

args=("$@")
if [[ " ${args[*]-} " != *" --output "* ]]; then
    args+=(--output outputs/demo)
fi
time python -m diffusers_vincie.demo "${args[@]}"
