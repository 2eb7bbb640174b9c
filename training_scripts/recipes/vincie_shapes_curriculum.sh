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
#    next-image quality fell further and recovered slower (arm C2).
# 4. phase 2's EMA weights are exported to RUN_DIR/phase3_init with the per-turn text positions
#    (vincie_shapes_allmm_per_turn_transformer.json: text_rope_mode "per_turn", so an instruction's place words meet
#    the image grid at the same offsets at every turn; under the official (j, j, j) positions "add" placed the new
#    object right in a session's first turn and wrong later). Phase 3 (RUN_DIR/phase3) continues them on new
#    sessions (world seed 5,000,000) with phase 2's tasks and a cosine decay of the lr to 0. The pipeline is
#    RUN_DIR/phase3/pipeline, whose call defaults sample with guidance 2 (--validation_guidance_scale; the shipped
#    DEFAULT_SAMPLING, chosen on validation sessions).
# 5. phase 4 (RUN_DIR/phase4) continues phase 3's pipeline on new sessions (world seed 6,000,000) with training times
#    shifted to the high-noise end (--timestep_shift 3: t -> 3t / (1 + 2t), where a sampler starting at t = 1 decides
#    where an object goes) and "move" three times as frequent (vincie_shapes_world_move3.json: 43% of the edits),
#    lr 5e-4 on a cosine over PHASE4_DECAY_STEPS, stopped after PHASE4_STEPS. The pipeline is RUN_DIR/phase4/pipeline.
#
# SESSIONS=<sessions dataset> makes every phase train on that dataset (streamed; phase 4 on PHASE4_SESSIONS if set,
# e.g. sessions of videos where "move" is three times as frequent) instead of sessions the world draws, with a
# tokenizer of the words of SESSIONS_WORLD (the videos' world.json) and of composition shots; see
# vincie_shapes_video.sh.
# MASK_TASKS=0 trains phases 2-4 on the next image only (no segmentation tasks), for the comparison with them;
# MASK_PROBABILITY (default 0.1) is the share of their sequences with mask frames otherwise. LAST_PHASE=N (default 4)
# stops after phase N: its pipeline is RUN_DIR/phaseN/pipeline (a shorter budget for a comparison, e.g. of data size).
# Every setting is checked before any work (curriculum_settings.sh).
# PHASE1_STEPS (default 5000), PHASE2_STEPS (default 2500), PHASE3_STEPS (default 5000), PHASE4_STEPS (default 1500)
# and PHASE4_DECAY_STEPS (default 3000) set the lengths (the shipped model: arm E = phase 1, arm C3 = phase 2, arm
# C5 = phase 3, arm P5c = phase 4; all at these defaults, so RUN_DIR/phase4/pipeline).
# Re-running the same command resumes whichever phase is unfinished from its latest checkpoint (every 250 steps);
# the extra flags go to every phase (e.g. --mixed_precision bf16 --train_batch_size 128 --dataloader_num_workers 8
# on a GPU).
set -euo pipefail
RUN_DIR=${1:-runs/vincie_shapes_curriculum}
shift || true
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
export HF_HUB_OFFLINE=1
source "$HERE/curriculum_settings.sh"
check_curriculum_settings vincie_shapes_curriculum.sh
# phases 2-4 train the three proxy tasks (mask frames in MASK_PROBABILITY of the sequences); MASK_TASKS=0 trains
# the next image only there (the comparison without the segmentation tasks)
if [ "$MASK_TASKS" = 0 ]; then MASKS=(--task_weights 1,0,0 --mask_probability 0); else MASKS=(--mask_probability "$MASK_PROBABILITY"); fi
COMMON=(--train_text_encoder --train_batch_size 16 --learning_rate 1e-3 --lr_scheduler constant_with_warmup
        --ema_decay 0.999 --checkpointing_steps 250 --checkpoints_total_limit 8 --sensitivity_steps 250)

# world_data SEED [WORLD_CONFIG]: a phase's sessions drawn from the world from seed SEED; nothing when the phases
# train on the SESSIONS dataset instead (vincie_shapes.sh streams it).
world_data() {
  if [ -n "${SESSIONS:-}" ]; then DATA=(); else DATA=(--synthetic_world_seed "$1" ${2:+--synthetic_world_config "$2"}); fi
}

TEXT="$RUN_DIR/phase1/text"
if [ ! -d "$TEXT/text_encoder" ]; then  # with SESSIONS: the words of their world and of its composition shots
  python "$ROOT/training_scripts/build_shapes_text_encoder.py" --output_dir "$TEXT" \
    --world_config "${SESSIONS_WORLD:-$ROOT/training_scripts/configs/vincie_shapes_world.json}" ${SESSIONS:+--shot_words} \
    --tokenizer word_level --strip_template --num_layers 0 --dropout_rate 0 --d_model 64 --seed 0
fi

world_data 1000000
bash "$HERE/vincie_shapes.sh" "$RUN_DIR/phase1" "${COMMON[@]}" \
  --transformer_config "$HERE/vincie_shapes_allmm_transformer.json" --zero_modulation_init \
  --task_weights 1,0,0 --mask_probability 0 --lr_warmup_steps 200 \
  "${DATA[@]}" --seed 1 --max_train_steps "$PHASE1_STEPS" "$@"

# export PHASE STEP OUT CONFIG [TEXT_DIR]: the EMA weights of the phase's last step, the start of the next phase. An
# export of another step (a *_STEPS changed) is kept, not replaced: move it away to export the new step.
export_phase() {
  if [ -f "$RUN_DIR/$3/checkpoint.json" ] && ! grep -q "\"checkpoint-$2\"" "$RUN_DIR/$3/checkpoint.json"; then
    echo "vincie_shapes_curriculum.sh: $RUN_DIR/$3 is not $1's step $2; move it away to re-export" >&2
    exit 2
  fi
  if [ ! -f "$RUN_DIR/$3/model_index.json" ]; then
    python "$HERE/export_checkpoint.py" --run_dir "$RUN_DIR/$1" --checkpoint "$2" --output "$RUN_DIR/$3" \
      --transformer_config "$HERE/$4" ${5:+--text_dir "$5"}
  fi
}

[ "$LAST_PHASE" -gt 1 ] || exit 0
export_phase phase1 "$PHASE1_STEPS" phase1_export vincie_shapes_allmm_transformer.json
world_data 4000000
INIT_FROM="$RUN_DIR/phase1_export" bash "$HERE/vincie_shapes.sh" "$RUN_DIR/phase2" "${COMMON[@]}" \
  "${MASKS[@]}" --lr_warmup_steps 100 "${DATA[@]}" --seed 4 \
  --max_train_steps "$PHASE2_STEPS" "$@"

[ "$LAST_PHASE" -gt 2 ] || exit 0
export_phase phase2 "$PHASE2_STEPS" phase3_init vincie_shapes_allmm_per_turn_transformer.json "$RUN_DIR/phase1_export"
world_data 5000000
INIT_FROM="$RUN_DIR/phase3_init" bash "$HERE/vincie_shapes.sh" "$RUN_DIR/phase3" "${COMMON[@]}" \
  "${MASKS[@]}" --lr_scheduler cosine --lr_warmup_steps 100 "${DATA[@]}" --seed 5 \
  --max_train_steps "$PHASE3_STEPS" --validation_guidance_scale 2 "$@"

[ "$LAST_PHASE" -gt 3 ] || exit 0
world_data 6000000 "$ROOT/training_scripts/configs/vincie_shapes_world_move3.json"
SESSIONS=${PHASE4_SESSIONS:-${SESSIONS:-}} INIT_FROM="$RUN_DIR/phase3/pipeline" \
  bash "$HERE/vincie_shapes.sh" "$RUN_DIR/phase4" "${COMMON[@]}" \
  --learning_rate 5e-4 "${MASKS[@]}" --lr_scheduler cosine --lr_warmup_steps 100 --timestep_shift 3 \
  "${DATA[@]}" --seed 6 --max_train_steps "$PHASE4_STEPS" --lr_decay_steps "$PHASE4_DECAY_STEPS" \
  --validation_guidance_scale 2 "$@"
