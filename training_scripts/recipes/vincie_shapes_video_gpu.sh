#!/usr/bin/env bash
# vincie_shapes_video.sh on one GPU machine, one command: videos and sessions on every CPU core (JOBS), then the four
# phases at batch 64 in bf16 with 8 data-loading workers and the instruction-sensitivity probe every 1,000 steps.
#
#   bash training_scripts/recipes/vincie_shapes_video_gpu.sh [RUN_DIR] [extra train_vincie.py flags...]
#
# Re-running the same command resumes. The pipeline is RUN_DIR/train/phase4/pipeline.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
RUN_DIR=${1:-runs/vincie_shapes_video_gpu}
shift || true
JOBS=${JOBS:-$(nproc)} exec bash "$HERE/vincie_shapes_video.sh" "$RUN_DIR" --train_batch_size 64 \
  --mixed_precision bf16 --dataloader_num_workers 8 --sensitivity_steps 1000 "$@"
