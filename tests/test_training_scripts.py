"""End-to-end tests of training_scripts/: tiny random models, a tiny sessions dataset built by the project's own
data scripts, single process and 2 CPU processes (gloo), kill/resume, overfitting, LoRA."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "training_scripts"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _load_script(name: str, folder: Path = SCRIPTS):
    sys.path.insert(0, str(folder))  # the scripts import their siblings
    return load_script(folder / f"{name}.py", name)


def _reset_accelerate():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def _losses(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def components(tmp_path_factory) -> Path:
    from diffusers_vincie.testing import write_tiny_components

    return write_tiny_components(tmp_path_factory.mktemp("components"))


@pytest.fixture(scope="module")
def sessions(tmp_path_factory) -> Path:
    """4 sessions of 3 edits at 16x16: synthetic videos -> build_sessions.py (ground-truth annotator)."""
    root = tmp_path_factory.mktemp("data")
    data_scripts = ROOT / "dataset_scripts"
    _load_script("make_synthetic_videos", data_scripts).main(
        [
            "--output-dir",
            str(root / "videos"),
            "--num-videos",
            "4",
            "--num-turns",
            "3",
            "--resolution",
            "16",
            "--no-progress",
        ]
    )
    _load_script("build_sessions", data_scripts).main(
        [
            str(root / "videos"),
            "--output",
            str(root / "sessions"),
            "--annotator",
            "ground_truth",
            "--strategy",
            "equal_interval",
            "--interval",
            "1.0",
        ]
    )
    return root / "sessions"


def _common(components: Path, out: Path) -> list[str]:
    return [
        "--transformer_config",
        str(components / "transformer.json"),
        "--text_encoder_name_or_path",
        str(components / "text_encoder"),
        "--tokenizer_name_or_path",
        str(components / "tokenizer"),
        "--output_dir",
        str(out),
        "--train_batch_size",
        "2",
        "--seed",
        "0",
    ]


# =====================================================================================================
#                                           Single process
# =====================================================================================================


@pytest.fixture(scope="module")
def trained_pipeline(components, sessions, tmp_path_factory) -> Path:
    """3 full-attention steps on the built sessions in bf16 autocast; returns the saved pipeline folder."""
    out = tmp_path_factory.mktemp("full")
    train = _load_script("train_vincie")
    _reset_accelerate()
    result = train.main(
        train.parse_args(
            _common(components, out)
            + [
                "--dataset_name",
                str(sessions),
                "--attention_layout",
                "full",
                "--max_train_steps",
                "3",
                "--checkpointing_steps",
                "2",
                "--checkpoints_total_limit",
                "1",
                "--validation_steps",
                "3",
                "--num_validation_sessions",
                "2",
                "--validation_inference_steps",
                "2",
                "--use_ema",
                "--mixed_precision",
                "bf16",
                "--gradient_checkpointing",
                "--cache_text_embeddings",
                "--lr_scheduler",
                "cosine",
                "--lr_warmup_steps",
                "1",
            ]
        )
    )
    assert result["global_step"] == 3 and np.isfinite(result["last_loss"])
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3"]  # total limit 1
    assert not list(out.glob(".checkpoint-*"))  # no temporary folder left
    grid = PIL.Image.open(out / "validation" / "step-3.png")
    assert grid.size == (4 * 16, 4 * 16)  # 2 sessions x (truth + samples) rows, I_0..I_3 columns
    return out / "pipeline"


def test_full_layout_run_saves_a_loadable_pipeline(trained_pipeline):
    from diffusers_vincie.pipelines import VincieInContextPipeline

    pipe = VincieInContextPipeline.from_pretrained(trained_pipeline)
    assert pipe.vae is None and pipe.transformer.config.latent_channels == 3
    assert pipe.config.default_negative_prompt == ""
    image = PIL.Image.fromarray(np.full((16, 16, 3), 200, np.uint8))
    out = pipe(
        image,
        ["remove the red circle"],
        num_inference_steps=2,
        guidance_scale=2.0,
        resolution=16,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    )
    assert np.asarray(out.images[0]).shape[:2] == (16, 16)


@pytest.mark.parametrize("family", ["3b", "7b"])
def test_a_run_with_a_vae_of_each_family_validates_and_saves_it(components, tmp_path, family):
    """The VAE folder loads by the class it names, frames are encoded and validation grids decoded through the image
    owner, and the saved pipeline carries the same VAE."""
    from diffusers_vincie.pipelines import VincieInContextPipeline
    from diffusers_vincie.testing import tiny_transformer_config, tiny_vae

    vae = tiny_vae(4, family=family)
    vae.save_pretrained(tmp_path / "vae")
    config = tmp_path / "transformer.json"
    config.write_text(json.dumps(tiny_transformer_config(latent_channels=4, patch_size=2)))
    train = _load_script("train_vincie")
    _reset_accelerate()
    args = _common(components, tmp_path / "run")
    args[args.index("--transformer_config") + 1] = str(config)  # latent space: 4 channels
    args += ["--vae_name_or_path", str(tmp_path / "vae"), "--synthetic_world", "--resolution", "16"]
    args += ["--synthetic_num_sessions", "2", "--synthetic_num_turns", "2", "--max_train_steps", "1"]
    args += ["--validation_steps", "1", "--num_validation_sessions", "1", "--validation_inference_steps", "1"]
    train.main(train.parse_args(args))
    assert (tmp_path / "run" / "validation" / "step-1.png").is_file()
    pipe = VincieInContextPipeline.from_pretrained(tmp_path / "run" / "pipeline")
    assert type(pipe.vae) is type(vae)
    for key, value in vae.state_dict().items():
        assert torch.equal(pipe.vae.state_dict()[key], value), key


def test_a_vae_whose_channels_differ_from_the_transformer_is_refused_naming_the_flag(components, tmp_path):
    from diffusers_vincie.testing import tiny_vae
    from diffusers_vincie.utils.cli import UsageError

    tiny_vae(8, family="7b").save_pretrained(tmp_path / "vae")  # the components' transformer is pixel space (3)
    train = _load_script("train_vincie")
    _reset_accelerate()
    args = _common(components, tmp_path / "run") + ["--vae_name_or_path", str(tmp_path / "vae")]
    args += ["--synthetic_world", "--resolution", "16", "--max_train_steps", "1"]
    with pytest.raises(UsageError, match="VAE's latents have 8 channels; give a matching --vae_name_or_path"):
        train.main(train.parse_args(args))


def test_loss_decreases_when_overfitting_a_few_sessions(components, tmp_path):
    train = _load_script("train_vincie")
    _reset_accelerate()
    train.main(
        train.parse_args(
            _common(components, tmp_path)
            + [
                "--synthetic_world",
                "--resolution",
                "16",
                "--synthetic_world_config",
                '{"grid": 2}',
                "--synthetic_num_sessions",
                "2",
                "--synthetic_num_turns",
                "2",
                "--attention_layout",
                "block_causal",
                "--max_train_steps",
                "80",
                "--learning_rate",
                "3e-3",
                "--text_dropout",
                "0",
                "--checkpointing_steps",
                "1000",
                "--no_save_pipeline",
                "--lr_scheduler",
                "constant",
            ]
        )
    )
    losses = [r["loss"] for r in _losses(tmp_path)]
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert last < 0.6 * first, (first, last)


def test_lora_sft_weights_load_into_the_pipeline_and_change_its_output(trained_pipeline, sessions, tmp_path):
    from diffusers_vincie.pipelines import VincieInContextPipeline

    lora = _load_script("train_vincie_lora")
    _reset_accelerate()
    lora.main(
        [
            "--pretrained_model_name_or_path",
            str(trained_pipeline),
            "--dataset_name",
            str(sessions),
            "--output_dir",
            str(tmp_path),
            "--train_batch_size",
            "2",
            "--max_train_steps",
            "3",
            "--learning_rate",
            "5e-2",
            "--lora_rank",
            "4",
            "--base_dtype",
            "bf16",
            "--attention_layout",
            "full",
            "--mask_probability",
            "0",
            "--checkpointing_steps",
            "1000",
        ]
    )
    weights = tmp_path / "pytorch_lora_weights.safetensors"
    assert weights.is_file()
    from safetensors.torch import load_file

    keys = list(load_file(weights))
    assert keys and all(k.startswith("transformer.") and "lora" in k for k in keys)

    pipe = VincieInContextPipeline.from_pretrained(trained_pipeline)
    image = PIL.Image.fromarray(np.full((16, 16, 3), 90, np.uint8))

    def run():
        return pipe(
            image,
            ["move the red circle left"],
            num_inference_steps=2,
            guidance_scale=1.0,
            resolution=16,
            output_type="np",
            generator=torch.Generator().manual_seed(0),
        ).images[0]

    before = np.asarray(run(), dtype=np.float32)
    pipe.load_lora_weights(tmp_path)
    after = np.asarray(run(), dtype=np.float32)
    assert np.abs(after - before).max() > 1e-3


@pytest.mark.parametrize(
    "extra, match",
    [
        ([], "Give training data"),
        (["--synthetic_world", "--dataset_name", "x"], "exclusive"),
        (["--synthetic_world", "--task_weights", "1,1"], "task_weights"),
        (["--synthetic_world", "--checkpoints_total_limit", "0"], "checkpoints_total_limit"),
    ],
)
def test_bad_flags_name_the_flag(components, tmp_path, extra, match):
    train = _load_script("train_vincie")
    with pytest.raises(ValueError, match=match):
        train.parse_args(_common(components, tmp_path) + extra)


# =====================================================================================================
#                                     Subprocesses: kill/resume, 2 processes
# =====================================================================================================


def _resume_args(components: Path, out: Path, steps: int) -> list[str]:
    return (
        [sys.executable, str(SCRIPTS / "train_vincie.py")]
        + _common(components, out)
        + [
            "--synthetic_world",
            "--resolution",
            "16",
            "--synthetic_world_config",
            '{"grid": 2}',
            "--synthetic_num_sessions",
            "50",
            "--synthetic_num_turns",
            "3",
            "--attention_layout",
            "block_causal",
            "--max_train_steps",
            str(steps),
            "--checkpointing_steps",
            "2",
            "--gradient_accumulation_steps",
            "2",
            "--lr_scheduler",
            "constant",
            "--learning_rate",
            "2e-3",
            "--use_ema",
            "--no_save_pipeline",
            "--resume_from_checkpoint",
            "latest",
        ]
    )


def test_hard_kill_then_resume_reproduces_the_uninterrupted_losses(components, tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    subprocess.run(_resume_args(components, reference, 8), env=ENV, check=True, capture_output=True)
    expected = {r["step"]: r["loss"] for r in _losses(reference)}
    assert sorted(expected) == list(range(1, 9))

    # a long run, SIGKILLed once it has logged step 5 (checkpoint-4 is complete by then)
    proc = subprocess.Popen(
        _resume_args(components, killed, 1000), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 240
    log = killed / "train_log.jsonl"
    while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 5):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(log.read_text().splitlines()) >= 5, "the run did not reach step 5 in time"
    resumed_from = max(int(p.name.split("-")[1]) for p in killed.glob("checkpoint-*"))
    assert resumed_from >= 4

    subprocess.run(_resume_args(components, killed, 8), env=ENV, check=True, capture_output=True)
    records = [json.loads(x) for x in log.read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 9))  # cut back to the checkpoint, then continued
    for r in records:  # the killed run's steps and the resumed ones
        assert r["loss"] == pytest.approx(expected[r["step"]], abs=1e-6), r["step"]


def _launch_two_processes(script: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(SCRIPTS / script),
    ]


def test_two_cpu_processes_with_accelerate_launch(components, sessions, tmp_path):
    """Both scripts under `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2` (gloo)."""
    cmd = (
        _launch_two_processes("train_vincie.py")
        + _common(components, tmp_path)
        + [
            "--dataset_name",
            str(sessions),
            "--attention_layout",
            "block_causal",
            "--max_train_steps",
            "2",
            "--train_batch_size",
            "1",
            "--checkpointing_steps",
            "1",
            "--checkpoints_total_limit",
            "1",
            "--use_ema",
        ]
    )
    result = subprocess.run(cmd, env={**ENV, "ACCELERATE_USE_CPU": "1"}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r["step"] for r in _losses(tmp_path)] == [1, 2]  # one log line per step (main process only)
    checkpoint = tmp_path / "checkpoint-2"
    assert (checkpoint / "random_states_0.pkl").is_file() and (checkpoint / "random_states_1.pkl").is_file()
    assert not (tmp_path / "checkpoint-1").exists()
    assert (tmp_path / "pipeline" / "transformer" / "diffusion_pytorch_model.safetensors").is_file()

    lora_dir = tmp_path / "lora"
    cmd = _launch_two_processes("train_vincie_lora.py") + [
        "--pretrained_model_name_or_path",
        str(tmp_path / "pipeline"),
        "--dataset_name",
        str(sessions),
        "--output_dir",
        str(lora_dir),
        "--train_batch_size",
        "1",
        "--max_train_steps",
        "1",
        "--lora_rank",
        "2",
        "--attention_layout",
        "block_causal",
        "--checkpointing_steps",
        "100",
    ]
    result = subprocess.run(cmd, env={**ENV, "ACCELERATE_USE_CPU": "1"}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (lora_dir / "pytorch_lora_weights.safetensors").is_file()


def test_pairwise_edit_data_trains_through_the_adapter(components, tmp_path):
    """MagicBrush-style rows (one per turn) -> PairwiseEditAdapter sessions -> a training step (no masks)."""
    from datasets import Dataset, Image

    from diffusers_vincie.data.shapes.world import ShapesWorld

    world, rows = ShapesWorld(resolution=16, grid=2), []
    for seed in range(2):
        session = world.sample_session(seed, num_turns=2)
        for turn, text in enumerate(session.instructions):
            rows.append(
                {
                    "img_id": f"s{seed}",
                    "turn_index": turn + 1,
                    "instruction": text,
                    "source_img": PIL.Image.fromarray(session.frames[turn]),
                    "target_img": PIL.Image.fromarray(session.frames[turn + 1]),
                }
            )
    data = tmp_path / "pairs"
    dataset = Dataset.from_list(rows).cast_column("source_img", Image()).cast_column("target_img", Image())
    data.mkdir()
    dataset.to_parquet(str(data / "train.parquet"))

    train = _load_script("train_vincie")
    _reset_accelerate()
    out = tmp_path / "run"
    result = train.main(
        train.parse_args(
            _common(components, out)
            + [
                "--dataset_name",
                str(data),
                "--dataset_format",
                "pairwise",
                "--attention_layout",
                "full",
                "--max_train_steps",
                "1",
                "--checkpointing_steps",
                "100",
                "--no_save_pipeline",
            ]
        )
    )
    assert result["global_step"] == 1 and np.isfinite(result["last_loss"])
