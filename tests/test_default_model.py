"""Smoke tests of the shipped default model (VINCIE-Shapes), its demo and its text side."""

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import REPO, load_script

from diffusers_vincie.data.shapes.world import ShapesWorld
from diffusers_vincie.default_model import DEFAULT_MODEL, DEFAULT_SAMPLING, RESOLUTION, load_default_pipeline
from diffusers_vincie.sequence import format_turn_prompt

MAX_SHIPPED_BYTES = 25 * 2**20

# Held-out sessions (seeds from 30,000,000: outside training's 1,000,000-1,999,999, 4,000,000-4,999,999,
# 5,000,000-5,999,999 and 6,000,000-6,999,999, ShapesBench's 10,000,000+ and the instruction-sensitivity sessions'
# 20,000,000+) whose first edit has a visible instructed region: (seed, op of turn 1). The shipped model (2026-12-02,
# the curriculum's four phases, guidance 2) changes the instructed region of 77 of the first 80 such turn-1 edits
# this way (the one before it: 76, the same cases); these are the
# first clear case (inside > 60 and > 5x outside) of each op, so a broken load, config or sampler (noise everywhere,
# or a copy) fails here. The op is checked so a change of the world fails too.
CASES = (
    (30_000_019, "remove"),
    (30_000_017, "recolour"),
    (30_000_009, "move"),
    (30_000_000, "resize"),
    (30_000_002, "add"),
)


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(1)
    return load_default_pipeline()


def test_shipped_folder_is_small_and_safetensors_only():
    files = [p for p in Path(DEFAULT_MODEL).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl")]
    assert weights and all(p.suffix == ".safetensors" for p in weights), weights
    assert {p.parent.name for p in weights} == {"transformer", "text_encoder"}
    assert sum(p.stat().st_size for p in files) <= MAX_SHIPPED_BYTES


def test_pipeline_config_matches_training(pipe):
    """Sampling must use the training formulation: pixel space, block-causal, RoPE slots, CFG text = ''."""
    assert pipe.vae is None and pipe.transformer.config.latent_channels == 3
    assert pipe.block_causal
    assert pipe.config.frame_index_mode == "slots"
    assert pipe.config.default_negative_prompt == ""
    assert pipe.transformer.config.max_turns >= 16


def test_tokenizer_knows_every_word_of_the_world(pipe):
    """One token per world word, and the turn template's boilerplate is dropped: the model sees the instruction."""
    tokenizer = pipe.tokenizer
    for word in ShapesWorld().vocabulary:
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and tokenizer.unk_token_id not in ids, word
    instruction = "bring back the red circle"
    wrapped = tokenizer(format_turn_prompt(instruction, turn=3), add_special_tokens=False)["input_ids"]
    assert wrapped == tokenizer(instruction, add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(wrapped) == instruction.split()


@pytest.mark.parametrize("seed,op", CASES)
def test_edit_changes_the_instructed_region(pipe, seed, op):
    """The output differs from the input inside the true changed region much more than outside it."""
    session = ShapesWorld(resolution=RESOLUTION).sample_session(seed, num_turns=5)
    assert session.ops[0] == op
    generator = torch.Generator().manual_seed(0)
    editing = pipe.start_session(PIL.Image.fromarray(session.frames[0]), resolution=RESOLUTION, generator=generator)
    output = np.asarray(editing.edit(session.instructions[0], generator=generator, **DEFAULT_SAMPLING).convert("RGB"))
    assert output.shape == session.frames[0].shape
    difference = np.abs(output.astype(np.int16) - session.frames[0].astype(np.int16)).max(-1)  # (H, W)
    changed = session.changed_masks[0]
    inside, outside = difference[changed].mean(), difference[~changed].mean()
    assert inside > 40, (inside, outside)
    assert inside > 3 * outside, (inside, outside)


def test_demo_writes_turns_and_contact_sheet(tmp_path):
    from diffusers_vincie.demo import CAPTION_HEIGHT, CELL, run_demo

    torch.set_num_threads(1)
    result = run_demo(tmp_path, num_inference_steps=4)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [".demo_outputs.json", "contact_sheet.png", "turn_0_source.png"] + [
        f"turn_{k}.png" for k in range(1, 6)
    ]
    assert PIL.Image.open(tmp_path / "turn_3.png").size == (RESOLUTION, RESOLUTION)
    assert PIL.Image.open(tmp_path / "contact_sheet.png").size == (
        6 * CELL,
        CAPTION_HEIGHT + 2 * CELL,
    )  # model + truth
    assert len(result["scores"]) == 5


def test_demo_user_image_and_bad_input(tmp_path):
    from diffusers_vincie.demo import run_demo

    image = tmp_path / "mine.png"
    PIL.Image.fromarray(np.full((48, 64, 3), 200, np.uint8)).save(image)
    result = run_demo(
        tmp_path / "out",
        image=str(image),
        instructions=["add a big red circle at the top left"],
        num_inference_steps=2,
    )
    assert len(result["images"]) == 1 and result["scores"] == []
    with pytest.raises(FileNotFoundError, match="--image"):
        run_demo(tmp_path / "out", image=str(tmp_path / "missing.png"))
    with pytest.raises(ValueError, match="--instructions"):
        run_demo(tmp_path / "out", instructions=["  "])


def test_checkpoint_record_names_an_ema_checkpoint():
    record = json.loads((Path(DEFAULT_MODEL) / "checkpoint.json").read_text())
    assert record["ema"] is True and record["checkpoint"].startswith("checkpoint-")


def test_shapes_bench_runs_end_to_end(tmp_path):
    """The documented ShapesBench command on 2 sessions: tables, plots, a curve point; copy never succeeds."""
    torch.set_num_threads(1)
    bench = load_script(REPO / "benchmarks" / "shapes_bench.py", "shapes_bench")
    curve = tmp_path / "curve.jsonl"
    common = [
        "--num_sessions",
        "2",
        "--num_inference_steps",
        "2",
        "--output_dir",
        str(tmp_path),
        "--curve",
        str(curve),
    ]
    summary = bench.main(common + ["--modes", "full,copy", "--ground_truth_modes", "full", "--label", "7"])
    assert summary["chained"]["copy"]["cumulative_success"] == [0.0] * 5  # every turn changes some pixels
    assert len(summary["turns"]["ground_truth/full"]) == 2
    report = (tmp_path / "results.md").read_text()
    assert "| full |" in report
    failed = summary["ground_truth"]["full"]["failed_tests"]
    assert f"| full | {failed['failed']} | {failed['changed_region']} | {failed['object']} |" in report
    assert (tmp_path / "shapes_bench.png").is_file() and (tmp_path / "success_vs_steps.png").is_file()
    point = json.loads(curve.read_text())
    assert point["label"] == "7" and 0.0 <= point["gt_full_preserved"] <= 1.0
    with pytest.raises(ValueError, match="--label"):
        bench.main(common + ["--label", "final"])


def test_composition_prompts_word_references_as_the_training_videos_do():
    """Read from the pixels of a composition session's reference frames, the prompts are the session's own
    instructions (the wording of the composition shots the from-video model is trained on)."""
    from diffusers_vincie.data.shapes.shots import sample_composition_session
    from diffusers_vincie.default_model import composition_prompts

    world = ShapesWorld(resolution=RESOLUTION)
    for seed in range(6):
        session = sample_composition_session(world, 60_000_000 + seed)
        references = [PIL.Image.fromarray(frame) for frame in session.frames[:-1]]
        description = session.instructions[-1].removeprefix("show ")
        assert composition_prompts(references, description) == session.instructions
    with pytest.raises(ValueError, match="references: image 1 is not a scene of the shapes world"):
        composition_prompts([references[0], PIL.Image.new("RGB", (32, 32), (255, 0, 255))], "x")
