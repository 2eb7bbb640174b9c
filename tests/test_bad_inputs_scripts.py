"""Bad inputs of the smaller command lines (demo, synthetic videos, the shapes text encoder, checkpoint export,
LoRA training): one line on stderr, exit status 2, nothing written, before any model is loaded."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import load_script, one_line_exit_2

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "extra, word",
    [
        (["--steps", "0"], "--steps"),
        (["--guidance_scale", "nan"], "--guidance_scale"),
        (["--image", "/missing/picture.png"], "--image"),
        (["--instructions", "  "], "--instructions"),
    ],
)
def test_demo_bad_inputs(tmp_path, capsys, extra, word):
    from diffusers_vincie.demo import main

    one_line_exit_2(lambda: main(["--output", str(tmp_path / "out"), *extra]), capsys, word)
    assert not (tmp_path / "out").exists()


def test_demo_output_that_is_a_file(tmp_path, capsys):
    from diffusers_vincie.demo import main

    (tmp_path / "out").write_text("mine")
    one_line_exit_2(lambda: main(["--output", str(tmp_path / "out")]), capsys, "--output")
    assert (tmp_path / "out").read_text() == "mine"


def test_demo_never_replaces_a_users_image_but_replaces_its_own(tmp_path, capsys):
    from diffusers_vincie.demo import main

    out = tmp_path / "out"
    out.mkdir()
    (out / "turn_1.png").write_text("mine")
    flags = ["--output", str(out), "--steps", "1", "--guidance_scale", "1", "--instructions", "add a red circle"]
    one_line_exit_2(lambda: main(flags), capsys, "no demo run wrote")
    assert (out / "turn_1.png").read_text() == "mine" and sorted(p.name for p in out.iterdir()) == ["turn_1.png"]
    (out / "turn_1.png").unlink()
    main(flags)
    first = (out / "turn_1.png").read_bytes()
    main(flags)  # a rerun replaces the images the first run wrote
    assert (out / "turn_1.png").read_bytes() == first


@pytest.mark.parametrize(
    "extra, word",
    [
        (["--fps", "0"], "--fps"),
        (["--resolution", "33"], "--resolution"),
        (["--transition-fraction", "1.5"], "--transition-fraction"),
        (["--crf", "60"], "--crf"),
        (["--seconds-per-turn", "0"], "--seconds-per-turn"),
        (["--pan-weight", "nan"], "--pan-weight"),
    ],
)
def test_make_synthetic_videos_bad_flags(tmp_path, capsys, extra, word):
    cli = load_script(REPO / "dataset_scripts" / "make_synthetic_videos.py", "make_synthetic_videos")
    out = tmp_path / "videos"
    one_line_exit_2(lambda: cli.main(["--output-dir", str(out), "--num-videos", "1", *extra]), capsys, word)
    assert not out.exists()


@pytest.mark.parametrize(
    "extra, word",
    [
        (["--d_model", "0"], "--d_model"),
        (["--d_model", "30"], "--d_model"),
        (["--world_config", "{bad"], "--world_config"),
    ],
)
def test_build_shapes_text_encoder_bad_flags(tmp_path, capsys, monkeypatch, extra, word):
    cli = load_script(REPO / "training_scripts" / "build_shapes_text_encoder.py", "build_shapes_text_encoder")
    monkeypatch.setattr(sys, "argv", ["build_shapes_text_encoder.py", "--output_dir", str(tmp_path / "text"), *extra])
    one_line_exit_2(cli.main, capsys, word)
    assert not (tmp_path / "text").exists()


def test_export_of_a_legacy_checkpoint_names_the_migration(tmp_path, capsys, monkeypatch):
    import torch

    checkpoint = tmp_path / "run" / "checkpoint-10"
    checkpoint.mkdir(parents=True)
    torch.save({"shadow_params": []}, checkpoint / "custom_checkpoint_0.pkl")
    cli = load_script(REPO / "training_scripts" / "recipes" / "export_checkpoint.py", "export_checkpoint")
    monkeypatch.setattr(
        sys,
        "argv",
        ["export_checkpoint.py", "--run_dir", str(tmp_path / "run"), "--output", str(tmp_path / "pipeline")],
    )
    one_line_exit_2(cli.main, capsys, "custom_checkpoint_0.pkl", "--migrate")
    assert not (tmp_path / "pipeline").exists()


@pytest.mark.parametrize(
    "extra, word",
    [
        (["--lora_rank", "0"], "--lora_rank"),
        (["--lora_target_modules", " , "], "--lora_target_modules"),
        (["--empty-pipeline"], "is not a pipeline folder: no transformer/"),
    ],
)
def test_lora_training_bad_flags(tmp_path, extra, word):
    from diffusers_vincie.utils.cli import UsageError

    sys.path.insert(0, str(REPO / "training_scripts"))
    lora = load_script(REPO / "training_scripts" / "train_vincie_lora.py", "train_vincie_lora")
    pipeline = tmp_path / "pipeline"
    pipeline.mkdir()
    if extra == ["--empty-pipeline"]:
        extra = []
    else:
        (pipeline / "transformer").mkdir()
        (pipeline / "text_encoder").mkdir()
    with pytest.raises(UsageError, match=word):
        lora.parse_args(
            [
                "--pretrained_model_name_or_path",
                str(pipeline),
                "--synthetic_world",
                "--output_dir",
                str(tmp_path / "run"),
                *extra,
            ]
        )
