# The settings of vincie_shapes_curriculum.sh, read from the environment and checked before any work: sourced by the
# curriculum and by the recipes that call it after hours of data building (vincie_shapes_video.sh), so a bad value
# stops them at once with one line and exit 2.
#
#   PHASE1_STEPS..PHASE4_STEPS, PHASE4_DECAY_STEPS  phase lengths in optimizer steps
#   MASK_TASKS        1: phases 2-4 train the three proxy tasks; 0: the next image only (the comparison without them)
#   MASK_PROBABILITY  share of phase 2-4 sequences with mask frames (with MASK_TASKS=1)
#   LAST_PHASE        the phase to stop after (1-4; a shorter curriculum at a fixed budget, e.g. for a scaling study)

PHASE1_STEPS=${PHASE1_STEPS:-5000}
PHASE2_STEPS=${PHASE2_STEPS:-2500}
PHASE3_STEPS=${PHASE3_STEPS:-5000}
PHASE4_STEPS=${PHASE4_STEPS:-1500}
PHASE4_DECAY_STEPS=${PHASE4_DECAY_STEPS:-3000}
MASK_TASKS=${MASK_TASKS:-1}
MASK_PROBABILITY=${MASK_PROBABILITY:-0.1}
LAST_PHASE=${LAST_PHASE:-4}

curriculum_settings_refused() {
  echo "$1: $2" >&2
  exit 2
}

check_curriculum_settings() {  # $1: the calling script's name, for the message
  local name
  for name in PHASE1_STEPS PHASE2_STEPS PHASE3_STEPS PHASE4_STEPS PHASE4_DECAY_STEPS; do
    [[ ${!name} =~ ^[1-9][0-9]*$ ]] || curriculum_settings_refused "$1" "$name must be a whole number of steps >= 1, got '${!name}'"
  done
  [[ $MASK_TASKS =~ ^[01]$ ]] ||
    curriculum_settings_refused "$1" "MASK_TASKS must be 1 (the proxy tasks) or 0 (next image only), got '$MASK_TASKS'"
  [[ $MASK_PROBABILITY =~ ^(0(\.[0-9]+)?|1(\.0+)?|\.[0-9]+)$ ]] ||
    curriculum_settings_refused "$1" "MASK_PROBABILITY must be a number from 0 to 1, got '$MASK_PROBABILITY'"
  [[ $LAST_PHASE =~ ^[1-4]$ ]] ||
    curriculum_settings_refused "$1" "LAST_PHASE must be 1, 2, 3 or 4 (the phase to stop after), got '$LAST_PHASE'"
}
