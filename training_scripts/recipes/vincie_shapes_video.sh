#!/usr/bin/env bash
# VINCIE-Shapes learned from video: the method of the paper end to end on the package's own pipeline.
#
#   bash training_scripts/recipes/vincie_shapes_video.sh [RUN_DIR] [extra train_vincie.py flags...]
#
# 1. videos (RUN_DIR/videos): make_synthetic_videos.py renders NUM_VIDEOS H.264 videos of the shapes world with
#    camera pans, composition shots (objects introduced one by one, then a scene with them) and story shots
#    (camera moves only); their ground-truth sidecars are never read for training.
# 2. sessions (RUN_DIR/sessions): build_sessions.py samples frames every second and describes each transition
#    with the pixel-only annotator (--annotator pixels: instruction and regions of editing from the frames alone),
#    written as a Hugging Face sessions dataset.
# 3. the same for phase 4's videos, where "move" is three times as frequent (RUN_DIR/videos_move3,
#    RUN_DIR/sessions_move3, PHASE4_VIDEOS of them).
# 4. vincie_shapes_curriculum.sh's four phases on those sessions, streamed (load_dataset(..., streaming=True)):
#    in-context, block-causal, the three proxy tasks from phase 2 on. The pipeline is RUN_DIR/train/phase4/pipeline.
#    The 128-px frames are resized to the training resolution with the nearest filter: the benchmark's scenes are
#    drawn with hard edges, which bicubic resizing blurs (docs/default_model.md measures both); a later
#    --image_interpolation_mode among the extra flags overrides it.
#
# JOBS=N renders and builds on N processes (the same videos and sessions for any N).
# Re-running the same command resumes every step: videos and sessions already written are skipped, and training
# resumes from its latest checkpoint. NUM_VIDEOS (default 20000), PHASE4_VIDEOS (default 6000) and the curriculum's
# PHASE*_STEPS set the sizes and its LAST_PHASE where to stop (no phase-4 videos below 4); the curriculum's settings
# are checked before any video is drawn. The extra flags go to every training phase (vincie_shapes_video_gpu.sh: on
# one GPU).
# Video seeds (VIDEO_SEED, PHASE4_VIDEO_SEED) are hashed per video (video_session_seed): the sessions they give
# are disjoint from the evaluation ranges (tests/test_recipe_video.py checks the defaults).
set -euo pipefail
RUN_DIR=${1:-runs/vincie_shapes_video}
shift || true
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
export HF_HUB_OFFLINE=1
NUM_VIDEOS=${NUM_VIDEOS:-20000}
PHASE4_VIDEOS=${PHASE4_VIDEOS:-6000}
VIDEO_SEED=${VIDEO_SEED:-7000000}
PHASE4_VIDEO_SEED=${PHASE4_VIDEO_SEED:-7500000}
JOBS=${JOBS:-1}
source "$HERE/curriculum_settings.sh"
check_curriculum_settings vincie_shapes_video.sh  # before hours of videos: the curriculum reads them at the end
case "$JOBS" in
  '' | *[!0-9]* | 0) echo "vincie_shapes_video.sh: JOBS must be a whole number >= 1, got '$JOBS'" >&2; exit 2 ;;
esac

# videos_to_sessions NAME COUNT SEED [make_synthetic_videos.py flags...]: COUNT videos in RUN_DIR/NAME, then their
# sessions in RUN_DIR/NAME with "videos" replaced by "sessions", on JOBS processes (video shards, then a
# data-parallel build on CPU processes)
videos_to_sessions() {
  local videos="$RUN_DIR/$1" sessions="$RUN_DIR/${1/videos/sessions}" count=$2 seed=$3 shard
  shift 3
  for ((shard = 0; shard < JOBS; shard++)); do
    OMP_NUM_THREADS=1 python "$ROOT/dataset_scripts/make_synthetic_videos.py" --output-dir "$videos" \
      --num-videos "$count" --seed "$seed" --composition-fraction 0.15 --story-fraction 0.1 \
      --shard "$shard/$JOBS" "$@" &
  done
  wait_all
  local launch=(python)
  if [ "$JOBS" -gt 1 ]; then
    launch=(env ACCELERATE_USE_CPU=1 OMP_NUM_THREADS=1 accelerate launch --multi_gpu --num_processes "$JOBS")
  fi
  "${launch[@]}" "$ROOT/dataset_scripts/build_sessions.py" "$videos" --output "$sessions" --annotator pixels \
    --world-config "$videos/world.json" --strategy equal_interval --interval 1.0
}

# wait_all: waits for every background job; fails if any failed
wait_all() {
  local job status=0
  for job in $(jobs -p); do wait "$job" || status=$?; done
  return $status
}

videos_to_sessions videos "$NUM_VIDEOS" "$VIDEO_SEED"
if [ "$LAST_PHASE" = 4 ]; then
  videos_to_sessions videos_move3 "$PHASE4_VIDEOS" "$PHASE4_VIDEO_SEED" --move-weight 3
fi

SESSIONS="$RUN_DIR/sessions" SESSIONS_WORLD="$RUN_DIR/videos/world.json" PHASE4_SESSIONS="$RUN_DIR/sessions_move3" \
  bash "$HERE/vincie_shapes_curriculum.sh" "$RUN_DIR/train" --image_interpolation_mode nearest "$@"
