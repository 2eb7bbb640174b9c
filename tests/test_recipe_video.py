"""The from-video recipe end to end at a toy size: videos -> sessions by the pixel-only annotator -> the four training
phases on those sessions, streamed -> a pipeline. (Each step's resume is tested with its script: the videos, the
build and the curriculum.)"""

import json
import re
import subprocess

import numpy as np
import pytest
from conftest import REPO, load_script, toy_recipe_env
from datasets import load_dataset

from diffusers_vincie.data.shapes.video import video_session_seed

RECIPE = REPO / "training_scripts" / "recipes" / "vincie_shapes_video.sh"
FLAGS = ["--train_batch_size", "2", "--checkpointing_steps", "1", "--lr_warmup_steps", "1"]
# The recipe's default video seeds and counts, and the seed ranges the benchmarks draw their sessions from
# (ShapesBench and its mode protocols 10M+, instruction sensitivity 20M+, the annotator's accuracy 27M+, the move
# probe 31M+, validation 40M+).
DEFAULT_VIDEOS = {7_000_000: 20_000, 7_500_000: 6_000}
EVALUATION_SEEDS = (10_000_000, 50_000_000)


def _recipe_default(name: str) -> int:
    return int(re.search(rf"{name}=\$\{{{name}:-(\d+)\}}", RECIPE.read_text()).group(1))


def test_recipe_defaults_are_the_checked_ones():
    assert {_recipe_default("VIDEO_SEED"): _recipe_default("NUM_VIDEOS")} | {
        _recipe_default("PHASE4_VIDEO_SEED"): _recipe_default("PHASE4_VIDEOS")
    } == DEFAULT_VIDEOS


def test_training_videos_are_disjoint_from_every_evaluation_range():
    low, high = EVALUATION_SEEDS
    for seed, count in DEFAULT_VIDEOS.items():
        seeds = np.array([video_session_seed(seed, index) for index in range(count)], dtype=np.uint64)
        assert not ((seeds >= low) & (seeds < high)).any()
        assert len(np.unique(seeds)) == count


def test_video_recipe_trains_on_pixel_annotated_sessions(tmp_path):
    env = toy_recipe_env(1, NUM_VIDEOS="12", PHASE4_VIDEOS="6", JOBS="2")  # two video shards, a two-process build
    run = tmp_path / "run"
    result = subprocess.run(
        ["bash", str(RECIPE), str(run), *FLAGS], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]

    # the sessions are the videos' frames, described by the pixel-only annotator
    built = {name: load_dataset(str(run / name), split="train") for name in ("sessions", "sessions_move3")}
    for name, count in (("sessions", 12), ("sessions_move3", 6)):
        assert len(built[name]) == count
        assert {json.loads(annotator)["name"] for annotator in built[name]["annotator"]} == {"pixels"}
    assert json.loads((run / "videos_move3" / "world.json").read_text())["op_weights"]["move"] == 3.0
    instructions = [i for session in built["sessions"]["instructions"] for i in session]
    assert any(i.startswith("show ") for i in instructions)  # composition shots are in the data

    # every phase streamed sessions (a streamed dataset's position is in each checkpoint; the world has none)
    for phase in ("phase1", "phase2", "phase3", "phase4"):
        state = json.loads((run / "train" / phase / "checkpoint-1" / "data_state_0.json").read_text())
        assert state["format"] == "vincie-streaming-data/1" and state["step"] == 1
    vocabulary = json.loads((run / "train" / "phase1" / "text" / "tokenizer" / "tokenizer.json").read_text())
    assert {"show", "and", "pan", "camera"} <= set(vocabulary["model"]["vocab"])

    from diffusers_vincie import VincieInContextPipeline

    pipe = VincieInContextPipeline.from_pretrained(run / "train" / "phase4" / "pipeline")
    assert pipe.block_causal and pipe.transformer.config.text_rope_mode == "per_turn"


def _videos_cli():
    return load_script(REPO / "dataset_scripts" / "make_synthetic_videos.py", "make_synthetic_videos")


def test_video_shards_write_the_same_set(tmp_path):
    main = _videos_cli().main
    videos = ["--num-videos", "5", "--seed", "3", "--composition-fraction", "0.4", "--no-progress"]
    main(["--output-dir", str(tmp_path / "whole"), *videos])
    for shard in ("0/2", "1/2"):
        main(["--output-dir", str(tmp_path / "shards"), *videos, "--shard", shard])
    whole = sorted(p.name for p in (tmp_path / "whole").iterdir())
    assert whole == sorted(p.name for p in (tmp_path / "shards").iterdir())
    for name in whole:
        if name.endswith(".json"):  # the sidecars: the same sessions, shots and renders
            assert (tmp_path / "whole" / name).read_text() == (tmp_path / "shards" / name).read_text(), name


def test_bad_shard_is_one_line_and_exit_2(tmp_path, capsys):
    main = _videos_cli().main

    for bad in ("2/2", "1", "a/b"):
        with pytest.raises(SystemExit) as exit_info:
            main(["--output-dir", str(tmp_path / "v"), "--num-videos", "2", "--shard", bad])
        assert exit_info.value.code == 2
        assert "--shard must be INDEX/COUNT" in capsys.readouterr().err
    assert not (tmp_path / "v").exists()
