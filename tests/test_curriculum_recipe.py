"""The issue-13 curriculum recipe end to end at a toy length: text side, phase 1, export, phase 2, export with the
per-turn text positions, phase 3, phase 4 (high-noise training times, a move-heavy world), pipeline."""

import json
import os
import shutil
import subprocess

import pytest
import torch
from conftest import REPO, toy_recipe_env
from safetensors.torch import load_file

RECIPE = REPO / "training_scripts" / "recipes" / "vincie_shapes_curriculum.sh"
VIDEO_RECIPE = REPO / "training_scripts" / "recipes" / "vincie_shapes_video.sh"
FLAGS = ["--train_batch_size", "2", "--checkpointing_steps", "2", "--lr_warmup_steps", "1"]


def _run_recipe(run, env):
    return subprocess.run(
        ["bash", str(RECIPE), str(run), *FLAGS], env=env, capture_output=True, text=True, timeout=600
    )


def test_curriculum_recipe_runs_every_phase(tmp_path):
    env = toy_recipe_env(2)
    run = tmp_path / "run"
    result = _run_recipe(run, env)
    assert result.returncode == 0, result.stderr[-3000:]

    config = json.loads((run / "phase3" / "pipeline" / "transformer" / "config.json").read_text())
    assert config["num_mm_layers"] == config["num_layers"] == 4  # all-MM
    assert config["text_rope_mode"] == "per_turn"
    phase2_config = json.loads((run / "phase2" / "pipeline" / "transformer" / "config.json").read_text())
    assert phase2_config.get("text_rope_mode", "diagonal") == "diagonal"
    text_config = json.loads((run / "phase1" / "text" / "text_encoder" / "config.json").read_text())
    assert text_config["num_layers"] == 0  # learned word embeddings
    assert json.loads((run / "phase1_export" / "checkpoint.json").read_text())["checkpoint"] == "checkpoint-2"

    # phase 2 starts from phase 1's export and trains it further (the transformer and the word embeddings)
    start = load_file(run / "phase1_export" / "transformer" / "diffusion_pytorch_model.safetensors")
    end = load_file(run / "phase2" / "pipeline" / "transformer" / "diffusion_pytorch_model.safetensors")
    assert start.keys() == end.keys()
    assert any(not torch.equal(start[k], end[k]) for k in start)
    phase2_log = [json.loads(line) for line in (run / "phase2" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in phase2_log] == [1, 2]

    # phase 3 starts from phase 2's export and decays the lr to 0 (cosine)
    assert json.loads((run / "phase3_init" / "checkpoint.json").read_text())["checkpoint"] == "checkpoint-2"
    start = load_file(run / "phase3_init" / "transformer" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(start[k], end[k]) for k in start)  # phase 2's last weights, unchanged by the export
    final = load_file(run / "phase3" / "pipeline" / "transformer" / "diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(start[k], final[k]) for k in start)
    phase3_log = [json.loads(line) for line in (run / "phase3" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in phase3_log] == [1, 2] and phase3_log[-1]["lr"] < phase3_log[0]["lr"]
    assert phase2_log[-1]["lr"] == phase2_log[0]["lr"]  # phase 2: constant

    # phase 4 starts from phase 3's pipeline and stops half-way down its cosine (2 of 4 steps: the lr is still up)
    phase4_final = load_file(run / "phase4" / "pipeline" / "transformer" / "diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(final[k], phase4_final[k]) for k in final)
    phase4_log = [json.loads(line) for line in (run / "phase4" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in phase4_log] == [1, 2]
    assert phase4_log[-1]["lr"] > 0.5 * phase4_log[0]["lr"] > 0 and phase4_log[-1]["lr"] > 2 * phase3_log[-1]["lr"]

    from diffusers_vincie import VincieInContextPipeline
    from diffusers_vincie.default_model import DEFAULT_SAMPLING

    pipe = VincieInContextPipeline.from_pretrained(run / "phase4" / "pipeline")
    assert pipe.block_causal and pipe.transformer.config.text_rope_mode == "per_turn"
    # the recipe's pipeline samples as the shipped one does (guidance 2, 10 steps)
    assert pipe.config.default_guidance_scale == DEFAULT_SAMPLING["guidance_scale"]
    assert pipe.config.default_num_inference_steps == DEFAULT_SAMPLING["num_inference_steps"]

    # LAST_PHASE=1 stops after phase 1 (here already done): nothing of phase 2 is started again
    shutil.rmtree(run / "phase2")
    first_only = _run_recipe(run, dict(env, LAST_PHASE="1"))
    assert first_only.returncode == 0, first_only.stderr[-3000:]
    assert (run / "phase1" / "pipeline").is_dir() and not (run / "phase2").exists()

    # a longer phase 1 later: its export of step 2 is kept, not replaced, and the recipe says so (exit 2)
    longer = _run_recipe(run, dict(env, PHASE1_STEPS="3"))
    assert longer.returncode == 2 and "phase1_export is not phase1's step 3" in longer.stderr, longer.stderr[-3000:]
    assert json.loads((run / "phase1_export" / "checkpoint.json").read_text())["checkpoint"] == "checkpoint-2"


def test_phase4_world_is_the_training_world_with_more_moves():
    """``vincie_shapes_world_move3.json`` repeats the training world's config; it may differ only in its op weights."""
    configs = REPO / "training_scripts" / "configs"
    base = json.loads((configs / "vincie_shapes_world.json").read_text())
    move3 = json.loads((configs / "vincie_shapes_world_move3.json").read_text())
    assert move3.pop("op_weights") == {"move": 3.0}
    assert move3 == base


@pytest.mark.parametrize("recipe", [RECIPE, VIDEO_RECIPE], ids=["curriculum", "video"])
@pytest.mark.parametrize(
    "setting, value, message",
    [
        ("MASK_TASKS", "2", "MASK_TASKS must be 1 (the proxy tasks) or 0"),
        ("MASK_PROBABILITY", "1.5", "MASK_PROBABILITY must be a number from 0 to 1, got '1.5'"),
        ("LAST_PHASE", "5", "LAST_PHASE must be 1, 2, 3 or 4"),
        ("PHASE3_STEPS", "0", "PHASE3_STEPS must be a whole number of steps >= 1"),
    ],
)
def test_a_bad_curriculum_setting_is_refused_before_any_work(tmp_path, recipe, setting, value, message):
    """The video recipe checks the curriculum's settings before drawing videos, not hours later."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", **{setting: value})
    result = subprocess.run(["bash", str(recipe), str(tmp_path / "run")], env=env, capture_output=True, text=True)
    assert result.returncode == 2 and message in result.stderr and recipe.name in result.stderr
    assert result.stderr.count("\n") == 1 and not (tmp_path / "run").exists()
