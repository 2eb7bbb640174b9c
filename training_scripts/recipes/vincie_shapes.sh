#!/usr/bin/env bash
# VINCIE-Shapes: the recipe of the package's default model (docs/default_model.md).
#
#   bash training_scripts/recipes/vincie_shapes.sh [RUN_DIR] [extra train_vincie.py flags...]
#
# 1. builds the text side (sentencepiece tokenizer trained on the world's prompts + a small frozen T5 encoder),
# 2. trains a pixel-space, block-causal VincieTransformer on synthetic shapes sessions drawn on the fly
#    (all three proxy tasks: next image, current-frame RoE mask, next-frame RoE mask),
# 3. exports the pipeline folder to RUN_DIR/pipeline (EMA weights).
# Re-running the same command resumes from the latest checkpoint (every 500 steps, 25 kept for the
# success-vs-steps curve). Extra flags go last and override the recipe's (e.g. --max_train_steps 20000 for a
# longer run, --mixed_precision bf16 on a CPU with AMX/avx512_bf16 or a GPU).
# LAUNCH=<launcher> runs the training script under another launcher, e.g. data parallel on two CPU processes:
#   ACCELERATE_USE_CPU=1 OMP_NUM_THREADS=1 LAUNCH="accelerate launch --multi_gpu --num_processes 2" bash ...
# SESSIONS=<sessions dataset folder> trains on that dataset (build_sessions.py's output, streamed) instead of
# sessions of the world drawn on the fly; SESSIONS_WORLD=<world.json> names the world its videos were filmed in
# (read only by the instruction-sensitivity probe, --sensitivity_steps).
# INIT_FROM=<pipeline folder> starts a new run from a pipeline's weights, text encoder and tokenizer instead of
# from scratch, e.g. INIT_FROM=src/diffusers_vincie/default_model to continue training the shipped model.
set -euo pipefail
RUN_DIR=${1:-runs/vincie_shapes}
shift || true
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
export HF_HUB_OFFLINE=1
# Two threads on an idle 2-core machine (1.7x the steps/s of one thread); on a loaded machine use one
# (OMP_NUM_THREADS=1: two threads spinning against other jobs were measured 10-15x slower per step).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
WORLD="$ROOT/training_scripts/configs/vincie_shapes_world.json"
if [ -n "${SESSIONS:-}" ]; then
  DATA_ARGS=(--dataset_name "$SESSIONS" --streaming --synthetic_world_config "${SESSIONS_WORLD:-$WORLD}")
else
  DATA_ARGS=(--synthetic_world --synthetic_world_config "$WORLD" --synthetic_num_turns 5 --synthetic_world_seed 0)
fi

if [ -n "${INIT_FROM:-}" ]; then
  MODEL_ARGS=(--pretrained_model_name_or_path "$INIT_FROM")
else
  if [ ! -d "$RUN_DIR/text/text_encoder" ]; then
    python "$ROOT/training_scripts/build_shapes_text_encoder.py" --output_dir "$RUN_DIR/text" \
      --world_config "$WORLD" --d_model 64 --num_layers 2 --seed 0
  fi
  MODEL_ARGS=(--transformer_config "$HERE/vincie_shapes_transformer.json"
              --text_encoder_name_or_path "$RUN_DIR/text/text_encoder"
              --tokenizer_name_or_path "$RUN_DIR/text/tokenizer")
fi

${LAUNCH:-python} "$ROOT/training_scripts/train_vincie.py" "${MODEL_ARGS[@]}" \
  --vae_name_or_path none \
  "${DATA_ARGS[@]}" --resolution 32 \
  --attention_layout block_causal --frame_index slots --min_turns 1 --max_turns 5 \
  --mask_probability 0.25 --task_weights 1,1,1 --text_dropout 0.1 --negative_prompt "" \
  --drop_current_frame 0 \
  --cache_text_embeddings \
  --train_batch_size 4 --learning_rate 2e-3 --lr_scheduler cosine --lr_warmup_steps 300 \
  --max_grad_norm 1.0 --use_ema --ema_decay 0.995 --mixed_precision no \
  --max_train_steps 10000 --checkpointing_steps 500 --checkpoints_total_limit 25 \
  --scheduler_shift 1.0 --seed 0 \
  --output_dir "$RUN_DIR" --resume_from_checkpoint latest \
  "$@"
