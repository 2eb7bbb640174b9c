#!/usr/bin/env bash
# VINCIE-Shapes, the curriculum recipe of issue 13 (docs/default_model.md, "From scratch with the early
# experiment's configuration"): the configuration that learned to read its instructions, then the method's
# three proxy tasks.
#
#   bash training_scripts/recipes/vincie_shapes_curriculum.sh [RUN_DIR] [extra train_vincie.py flags...]
#
# 1. text side: learned word embeddings (a 0-layer T5, trained with the transformer) over a word-level
#    tokenizer; the tokenizer drops the template's boilerplate ("Based on <IMGk>, ... Output <IMGk+1>: ").
# 2. phase 1 (RUN_DIR/phase1): from scratch, 4 MM blocks (vincie_shapes_allmm_transformer.json), next image only
#    (no mask frames), batch 16 sessions from world seed 1,000,000, AdamW lr 1e-3 constant after 200 warm-up
#    steps, EMA 0.999, modulation offsets started at zero (the init the study measured). Without the mask tasks
#    it reads the colour word by step 1,000; with them from step 0 (arm M) it was still text-blind there.
# 3. phase 1's EMA weights are exported to RUN_DIR/phase1_export and phase 2 (RUN_DIR/phase2) continues them on new
#    sessions (world seed 4,000,000) with all three tasks (next image, current- and next-frame RoE masks), so
#    chain-of-editing works. Mask frames are in a sequence with probability 0.1: with the recipe's 0.25 (arm C) the
#    next-image quality fell further and recovered slower (arm C2). The pipeline is RUN_DIR/phase2/pipeline.
#
# PHASE1_STEPS (default 5000) and PHASE2_STEPS (default 2500) set the lengths (the shipped model: arm E = phase 1,
# arm C3 = phase 2). Re-running the same command resumes
# whichever phase is unfinished from its latest checkpoint (every 250 steps); the extra flags go to both phases
# (e.g. --mixed_precision bf16 --train_batch_size 128 --dataloader_num_workers 8 on a GPU).
set -euo pipefail
RUN_DIR=${1:-runs/vincie_shapes_curriculum}
shift || true
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
export HF_HUB_OFFLINE=1
PHASE1_STEPS=${PHASE1_STEPS:-5000}
PHASE2_STEPS=${PHASE2_STEPS:-2500}
COMMON=(--train_text_encoder --train_batch_size 16 --learning_rate 1e-3 --lr_scheduler constant_with_warmup
        --ema_decay 0.999 --checkpointing_steps 250 --checkpoints_total_limit 8 --sensitivity_steps 250)

TEXT="$RUN_DIR/phase1/text"
if [ ! -d "$TEXT/text_encoder" ]; then
  python "$ROOT/training_scripts/build_shapes_text_encoder.py" --output_dir "$TEXT" \
    --world_config "$ROOT/training_scripts/configs/vincie_shapes_world.json" \
    --tokenizer word_level --strip_template --num_layers 0 --dropout_rate 0 --d_model 64 --seed 0
fi

bash "$HERE/vincie_shapes.sh" "$RUN_DIR/phase1" "${COMMON[@]}" \
  --transformer_config "$HERE/vincie_shapes_allmm_transformer.json" --zero_modulation_init \
  --task_weights 1,0,0 --mask_probability 0 --lr_warmup_steps 200 \
  --synthetic_world_seed 1000000 --seed 1 --max_train_steps "$PHASE1_STEPS" "$@"

# phase 2 starts from the export of phase 1's last step; an export of another step (PHASE1_STEPS changed) is kept,
# not replaced: move it away to export the new step.
if [ -f "$RUN_DIR/phase1_export/checkpoint.json" ] &&
   ! grep -q "\"checkpoint-$PHASE1_STEPS\"" "$RUN_DIR/phase1_export/checkpoint.json"; then
  echo "vincie_shapes_curriculum.sh: $RUN_DIR/phase1_export is not phase 1's step $PHASE1_STEPS; move it away to re-export" >&2
  exit 2
fi
if [ ! -f "$RUN_DIR/phase1_export/model_index.json" ]; then
  python "$HERE/export_checkpoint.py" --run_dir "$RUN_DIR/phase1" --checkpoint "$PHASE1_STEPS" \
    --output "$RUN_DIR/phase1_export" --transformer_config "$HERE/vincie_shapes_allmm_transformer.json"
fi

INIT_FROM="$RUN_DIR/phase1_export" bash "$HERE/vincie_shapes.sh" "$RUN_DIR/phase2" "${COMMON[@]}" \
  --mask_probability 0.1 --lr_warmup_steps 100 --synthetic_world_seed 4000000 --seed 4 \
  --max_train_steps "$PHASE2_STEPS" "$@"
