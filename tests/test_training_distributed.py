"""Training under the shipped accelerate configs against single-process runs of the same global batches.

FSDP2 on 2 CPU processes (gloo): sharded parameters, losses and weights after 4 steps (gradient clipping, EMA,
validation, sharded checkpoints, a SIGKILL after step 2 and a resume, the gathered final export), LoRA SFT, and the
errors when FSDP is asked for but cannot be active. DeepSpeed ZeRO-2 on one CPU process (accelerate 1.16 cannot run
it on several CPU processes) and the prepared DataLoader's split of every global batch."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import psutil
import pytest
import torch
from conftest import load_script
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "training_scripts"
FSDP2_CONFIG = SCRIPTS / "configs" / "accelerate_fsdp2.yaml"
ZERO2_CONFIG = SCRIPTS / "configs" / "accelerate_deepspeed_zero2.yaml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
STEPS = 4
TOLERANCE = 1e-5


def _script(name: str):
    sys.path.insert(0, str(SCRIPTS))  # the LoRA script imports its sibling
    return load_script(SCRIPTS / f"{name}.py", name)


def _reset_accelerate():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def _log(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run / "train_log.jsonl").read_text().splitlines())}


def _launch_fsdp2(script: str) -> list[str]:
    """The documented CPU command: the FSDP2 config, 2 processes, gloo (``ACCELERATE_USE_CPU=1`` in ``ENV``)."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(FSDP2_CONFIG),
        "--num_processes",
        "2",
        "--main_process_port",
        "0",  # a free port: other test runs may share the machine
        str(SCRIPTS / script),
    ]


def _data_args(batch_size: int) -> list[str]:
    """Synthetic sessions; the next-image task only without masks, so every sample of a global batch has the same
    loss weight and the mean of the per-process losses is the loss of the whole batch."""
    return [
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
        "--task_weights",
        "1,0,0",
        "--mask_probability",
        "0",
        "--train_batch_size",
        str(batch_size),
        "--seed",
        "0",
        "--mixed_precision",
        "no",
        "--lr_scheduler",
        "constant",
        "--checkpointing_steps",
        "2",
        "--use_ema",
        "--ema_decay",
        "0.9",
        "--max_grad_norm",
        "0.05",  # below the gradient norms of these steps: the clip acts at every step
    ]


def _full_args(components: Path, out: Path, batch_size: int, steps: int) -> list[str]:
    return [
        "--transformer_config",
        str(components / "transformer.json"),
        "--text_encoder_name_or_path",
        str(components / "text_encoder"),
        "--tokenizer_name_or_path",
        str(components / "tokenizer"),
        "--output_dir",
        str(out),
        "--max_train_steps",
        str(steps),
        "--learning_rate",
        "3e-3",
        "--validation_steps",
        str(STEPS),
        "--num_validation_sessions",
        "1",
        "--validation_inference_steps",
        "2",
        "--resume_from_checkpoint",
        "latest",
    ] + _data_args(batch_size)


def _lora_args(pipeline: Path, out: Path, batch_size: int) -> list[str]:
    return [
        "--pretrained_model_name_or_path",
        str(pipeline),
        "--output_dir",
        str(out),
        "--max_train_steps",
        str(STEPS),
        "--learning_rate",
        "1e-2",
        "--lora_rank",
        "2",
    ] + _data_args(batch_size)


@pytest.fixture(scope="module")
def components(tmp_path_factory) -> Path:
    from diffusers_vincie.testing import write_tiny_components

    return write_tiny_components(tmp_path_factory.mktemp("components"))


@pytest.fixture(scope="module")
def single(components, tmp_path_factory) -> Path:
    """The reference: one process, global batches of 2 sessions."""
    out = tmp_path_factory.mktemp("single")
    train = _script("train_vincie")
    _reset_accelerate()
    train.main(train.parse_args(_full_args(components, out, batch_size=2, steps=STEPS)))
    return out


@pytest.fixture(scope="module")
def sharded(components, tmp_path_factory) -> Path:
    """FSDP2 on 2 processes of 1 session each: SIGKILLed once checkpoint-2 exists, then resumed to step 4."""
    out = tmp_path_factory.mktemp("fsdp2")
    env = {**ENV, "ACCELERATE_USE_CPU": "1"}
    endless = _launch_fsdp2("train_vincie.py") + _full_args(components, out, batch_size=1, steps=1000)
    proc = subprocess.Popen(endless, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "checkpoint-2").is_dir() and proc.poll() is None:
        time.sleep(0.02)
    workers = psutil.Process(proc.pid).children(recursive=True)  # torchrun starts them in sessions of their own
    for process in [psutil.Process(proc.pid)] + workers:
        process.send_signal(signal.SIGKILL)
    psutil.wait_procs(workers, timeout=30)
    proc.wait()
    assert (out / "checkpoint-2").is_dir(), "the run did not reach checkpoint-2 in time"
    assert not (out / "checkpoint-4").exists()  # killed between the checkpoints: the resume starts at step 2

    resumed = _launch_fsdp2("train_vincie.py") + _full_args(components, out, batch_size=1, steps=STEPS)
    result = subprocess.run(resumed, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Resuming from" in result.stdout + result.stderr
    return out


def _sharded_model(checkpoint: Path) -> dict[str, torch.Tensor]:
    """Full tensors of an FSDP2 sharded model checkpoint (``torch.distributed.checkpoint``, read in this process)."""
    import torch.distributed.checkpoint as dcp

    folder = checkpoint / "pytorch_model_fsdp_0"
    metadata = dcp.FileSystemReader(str(folder)).read_metadata()
    state = {key: torch.empty(meta.size) for key, meta in metadata.state_dict_metadata.items()}
    dcp.load(state, checkpoint_id=str(folder))
    return {key.removeprefix("model."): value for key, value in state.items()}


def _assert_close(actual: dict, expected: dict):
    assert sorted(actual) == sorted(expected)
    for key in expected:
        torch.testing.assert_close(actual[key].float(), expected[key].float(), atol=TOLERANCE, rtol=0, msg=key)


def test_fsdp2_shards_every_parameter_over_both_processes(sharded):
    """Each weight of the checkpoint is stored as DTensor shards of both processes whose sizes sum to the whole."""
    import torch.distributed.checkpoint as dcp

    metadata = dcp.FileSystemReader(str(sharded / "checkpoint-4" / "pytorch_model_fsdp_0")).read_metadata()
    files = {}
    for index, info in metadata.storage_data.items():
        files.setdefault(index.fqn, set()).add(info.relative_path)
    assert metadata.state_dict_metadata
    for key, meta in metadata.state_dict_metadata.items():
        chunks = [int(np.prod(chunk.sizes)) for chunk in meta.chunks]
        assert sum(chunks) == int(np.prod(meta.size)), key
        if meta.size[0] >= 2:
            assert len(chunks) == 2 and min(chunks) > 0, (key, chunks)
            assert files[key] == {"__0_0.distcp", "__1_0.distcp"}, key


def test_fsdp2_matches_one_process_in_losses_and_weights(single, sharded):
    """Clipping, EMA and the kill + resume at step 2: losses, trained weights, EMA and validation after 4 steps."""
    expected, actual = _log(single), _log(sharded)
    assert sorted(actual) == list(range(1, STEPS + 1))
    for step in expected:
        assert actual[step] == pytest.approx(expected[step], abs=TOLERANCE), step
    records = [json.loads(line) for line in (sharded / "train_log.jsonl").read_text().splitlines()]
    assert all(0.1 < r["peak_memory_gb"] < 16 for r in records)  # the main process's resident high-water mark
    _assert_close(
        _sharded_model(sharded / f"checkpoint-{STEPS}"),
        load_file(single / f"checkpoint-{STEPS}" / "model.safetensors"),
    )
    _assert_close(
        load_file(sharded / f"checkpoint-{STEPS}" / "ema.safetensors"),  # written whole
        load_file(single / f"checkpoint-{STEPS}" / "ema.safetensors"),
    )
    grids = [np.asarray(PIL.Image.open(run / "validation" / f"step-{STEPS}.png")) for run in (single, sharded)]
    assert grids[0].shape == grids[1].shape and np.abs(grids[0].astype(int) - grids[1]).max() <= 1


def test_fsdp2_final_pipeline_is_gathered_and_loads(single, sharded):
    from diffusers_vincie.pipelines import VincieInContextPipeline

    pipelines = [VincieInContextPipeline.from_pretrained(run / "pipeline") for run in (single, sharded)]
    _assert_close(pipelines[1].transformer.state_dict(), pipelines[0].transformer.state_dict())
    ema = load_file(single / f"checkpoint-{STEPS}" / "ema.safetensors")  # the export holds the EMA weights
    trained = [p for p in pipelines[1].transformer.parameters() if p.requires_grad]
    torch.testing.assert_close(trained[0].detach(), ema["shadow.0"], atol=TOLERANCE, rtol=0)


def test_lora_sft_under_fsdp2_matches_one_process(single, tmp_path):
    lora = _script("train_vincie_lora")
    _reset_accelerate()
    lora.main(_lora_args(single / "pipeline", tmp_path / "single", batch_size=2))
    command = _launch_fsdp2("train_vincie_lora.py") + _lora_args(single / "pipeline", tmp_path / "fsdp2", 1)
    result = subprocess.run(command, env={**ENV, "ACCELERATE_USE_CPU": "1"}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    expected, actual = _log(tmp_path / "single"), _log(tmp_path / "fsdp2")
    assert sorted(actual) == list(range(1, STEPS + 1))
    for step in expected:
        assert actual[step] == pytest.approx(expected[step], abs=TOLERANCE), step
    weights = [
        load_file(run / "pytorch_lora_weights.safetensors") for run in (tmp_path / "single", tmp_path / "fsdp2")
    ]
    assert weights[0] and all("lora" in key for key in weights[0])
    _assert_close(weights[1], weights[0])
    assert (tmp_path / "fsdp2" / f"checkpoint-{STEPS}" / "pytorch_model_fsdp_0").is_dir()  # trained sharded


def test_deepspeed_zero2_on_one_cpu_process_matches_one_process(components, single, tmp_path):
    """The shipped ZeRO-2 config (its clip set to --max_grad_norm on the command line): losses, EMA and the export."""
    out = tmp_path / "zero2"
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ZERO2_CONFIG),
        "--num_processes",
        "1",
        "--main_process_port",
        "0",
        "--gradient_clipping",
        "0.05",
        str(SCRIPTS / "train_vincie.py"),
    ] + _full_args(components, out, batch_size=2, steps=STEPS)
    result = subprocess.run(command, env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / f"checkpoint-{STEPS}" / "pytorch_model").is_dir()  # the DeepSpeed engine's own state
    expected, actual = _log(single), _log(out)
    assert sorted(actual) == list(range(1, STEPS + 1))
    for step in expected:
        assert actual[step] == pytest.approx(expected[step], abs=TOLERANCE), step
    _assert_close(
        load_file(out / f"checkpoint-{STEPS}" / "ema.safetensors"),
        load_file(single / f"checkpoint-{STEPS}" / "ema.safetensors"),
    )
    exported = [
        load_file(run / "pipeline" / "transformer" / "diffusion_pytorch_model.safetensors") for run in (single, out)
    ]
    _assert_close(exported[1], exported[0])


@pytest.mark.parametrize(
    "env, match",
    [
        # the FSDP config with one process: nothing to shard over
        ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}, "FSDP, but it is not active"),
        # `accelerate launch --cpu --num_processes 2`: its one-process launcher drops the FSDP config
        ({"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}, "starts one process"),
    ],
)
def test_fsdp_that_cannot_be_active_is_an_error(components, tmp_path, monkeypatch, env, match):
    from diffusers_vincie.utils.cli import UsageError

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    train = _script("train_vincie")
    _reset_accelerate()
    with pytest.raises(UsageError, match=match):
        train.main(train.parse_args(_full_args(components, tmp_path / "run", batch_size=2, steps=1)))
    _reset_accelerate()
    assert not (tmp_path / "run").exists()  # stopped before writing anything


@pytest.mark.parametrize("num_processes", [1, 2])
def test_prepared_loader_gives_each_process_its_part_of_every_global_batch(num_processes):
    """The loader is prepared with the model (DeepSpeed reads its micro-batch size from it): after accelerate's
    sharding each process still reads exactly the batches of the resumable per-process order."""
    from argparse import Namespace

    from accelerate.data_loader import prepare_data_loader

    from diffusers_vincie.training.data import ResumableBatchSampler
    from diffusers_vincie.training.distributed import build_train_dataloader

    class Keys(torch.utils.data.Dataset):
        def __len__(self):
            return 23

        def __getitem__(self, key):
            return key

    args = Namespace(train_batch_size=3, seed=7, dataloader_num_workers=0)
    loader = build_train_dataloader(Keys(), args, num_processes, start_step=5)
    assert loader.batch_size == 3
    for process in range(num_processes):
        prepared = prepare_data_loader(loader, num_processes=num_processes, process_index=process, put_on_device=False)
        expected = iter(ResumableBatchSampler(23, 3, num_processes, process, seed=7, start_step=5))
        got = iter(prepared)
        for _ in range(12):  # across an epoch boundary (23 // (3 x processes) global batches per epoch)
            assert next(got) == next(expected)


def test_what_cannot_run_sharded_is_refused_up_front():
    """FSDP: a trained text encoder, the sensitivity probe, FSDP1; DeepSpeed: ZeRO-3 and a clip other than
    --max_grad_norm (the engine's clip wins)."""
    from argparse import Namespace
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from diffusers_vincie.training.distributed import check_deepspeed_config, check_fsdp_support
    from diffusers_vincie.utils.cli import UsageError

    def fsdp(version):
        plugin = SimpleNamespace(fsdp_version=version)
        return SimpleNamespace(distributed_type=DistributedType.FSDP, state=SimpleNamespace(fsdp_plugin=plugin))

    def deepspeed(config):
        plugin = SimpleNamespace(deepspeed_config=config)
        return SimpleNamespace(
            distributed_type=DistributedType.DEEPSPEED, state=SimpleNamespace(deepspeed_plugin=plugin)
        )

    plain = Namespace(train_text_encoder=False, sensitivity_steps=0, max_grad_norm=1.0)
    check_fsdp_support(fsdp(2), plain)
    for args, match in [
        (Namespace(**{**vars(plain), "train_text_encoder": True}), "--train_text_encoder"),
        (Namespace(**{**vars(plain), "sensitivity_steps": 5}), "--sensitivity_steps"),
    ]:
        with pytest.raises(UsageError, match=match):
            check_fsdp_support(fsdp(2), args)
    with pytest.raises(UsageError, match="FSDP2 only"):
        check_fsdp_support(fsdp(1), plain)

    check_deepspeed_config(deepspeed({"zero_optimization": {"stage": 2}, "gradient_clipping": 1.0}), plain)
    with pytest.raises(UsageError, match="ZeRO-3"):
        check_deepspeed_config(deepspeed({"zero_optimization": {"stage": 3}, "gradient_clipping": 1.0}), plain)
    with pytest.raises(UsageError, match="--gradient_clipping 1.0"):
        check_deepspeed_config(deepspeed({"zero_optimization": {"stage": 2}, "gradient_clipping": 0.5}), plain)
