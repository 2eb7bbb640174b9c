"""Bad inputs of `python -m diffusers_vincie.conversion`: every input is checked before any component is converted,
the release folder is never written into, and each error is one line with exit status 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import one_error_line
from safetensors.torch import load_file
from test_convert_official import FIXTURES, VAE_CONFIG, needs_fixtures, write_official_release

from diffusers_vincie.conversion.convert import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def release(tmp_path: Path) -> Path:
    folder = write_official_release(tmp_path / "VINCIE-tiny")
    (folder / "README.md").write_text("the release's own card")
    return folder


def _convert(release: Path, out: Path, capsys, *extra: str) -> str:
    assert main(["--official", str(release), "--out", str(out), "--no-hash", *VAE_CONFIG, *extra]) == 2
    return one_error_line(capsys.readouterr().err)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@needs_fixtures
@pytest.mark.parametrize(
    "damage, words",
    [
        ("truncated dit", ["dit.pth", "truncated"]),
        ("legacy dit", ["dit.pth", "legacy"]),
        ("empty vae", ["vae.pth", "empty"]),
        ("truncated vae", ["vae.pth", "truncated"]),
        ("dit without its turn table", ["dit.pth", "prompt_id_embedding"]),
        ("broken llm config", ["config.json", "Qwen config"]),
        ("no llm weights", ["llm14b", "safetensors"]),
        ("broken tiktoken", ["qwen.tiktoken", "base64token rank"]),
    ],
)
def test_a_bad_input_is_named_before_any_component_is_converted(release, tmp_path, capsys, damage, words):
    dit, vae, llm = release / "dit.pth", release / "vae.pth", release / "llm14b"
    if damage == "truncated dit":
        _truncate(dit)
    elif damage == "legacy dit":
        torch.save(load_file(FIXTURES / "dit_official.safetensors"), dit, _use_new_zipfile_serialization=False)
    elif damage == "empty vae":
        vae.write_bytes(b"")
    elif damage == "truncated vae":
        _truncate(vae)
    elif damage == "dit without its turn table":
        state = load_file(FIXTURES / "dit_official.safetensors")
        del state["prompt_id_embedding.embedding.weight"]
        torch.save(state, dit)
    elif damage == "broken llm config":
        (llm / "config.json").write_text('{"hidden_size": ')
    elif damage == "no llm weights":
        for shard in llm.glob("*.safetensors"):
            shard.unlink()
    else:
        (llm / "qwen.tiktoken").write_text("not a vocabulary line\n")
    out = tmp_path / "out"
    message = _convert(release, out, capsys)
    assert all(word in message for word in words), message
    assert not out.exists()  # nothing converted, not even the text encoder (the first and longest job)


@needs_fixtures
@pytest.mark.parametrize("where", ["equal", "inside"])
def test_out_equal_to_or_inside_the_release_is_refused(release, capsys, where):
    out = release if where == "equal" else release / "converted"
    message = _convert(release, out, capsys)
    assert "--out" in message and "--official" in message
    assert (release / "README.md").read_text() == "the release's own card"
    assert not (release / "model_index.json").exists() and not (release / "converted").exists()


@needs_fixtures
def test_out_that_is_someone_elses_folder_is_refused(release, tmp_path, capsys):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "README.md").write_text("chapter 1")
    assert "--out" in _convert(release, out, capsys)
    assert (out / "README.md").read_text() == "chapter 1" and sorted(os.listdir(out)) == ["README.md"]


@needs_fixtures
def test_out_that_is_a_file_is_refused(release, tmp_path, capsys):
    out = tmp_path / "out.txt"
    out.write_text("mine")
    assert "is a file" in _convert(release, out, capsys)
    assert out.read_text() == "mine"


def test_missing_vae_config_is_one_line(tmp_path, capsys):
    (tmp_path / "release").mkdir()
    assert (
        main(
            [
                "--official",
                str(tmp_path / "release"),
                "--out",
                str(tmp_path / "out"),
                "--vae-config",
                str(tmp_path / "missing.json"),
            ]
        )
        == 2
    )
    line = one_error_line(capsys.readouterr().err)
    assert "--vae-config" in line, line


def test_the_module_cli_prints_one_line_and_exits_2(tmp_path):
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "diffusers_vincie.conversion",
            "--official",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path / "out"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("python -m diffusers_vincie.conversion: error: --official") and "snapshot_download" in last


# ----------------------------------------------------------------------------------------------------------------------
# Only a new folder or the same conversion; one-line errors for a bad --vae-config or an --out that cannot be written
# ----------------------------------------------------------------------------------------------------------------------


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@needs_fixtures
def test_out_that_is_another_models_pipeline_folder_is_refused_before_writing(release, tmp_path, capsys):
    out = tmp_path / "other-model"
    for name in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
        (out / name).mkdir(parents=True)
        (out / name / "config.json").write_text(json.dumps({"_class_name": f"Other{name}"}))
    (out / "model_index.json").write_text('{"_class_name": "OtherPipeline"}')
    before = _tree(out)
    assert "no conversion" in _convert(release, out, capsys)
    assert _tree(out) == before


@needs_fixtures
def test_converting_another_release_into_a_finished_conversion_is_refused(release, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--official", str(release), "--out", str(out), "--no-hash", *VAE_CONFIG]) == 0
    record = json.loads((out / "conversion.json").read_text())
    assert record["inputs"]["source"] == "VINCIE-tiny" and record["notes"]
    before = _tree(out)

    other = tmp_path / "other" / "VINCIE-other"
    shutil.copytree(release, other)
    config = json.loads((other / "llm14b" / "config.json").read_text())
    (other / "llm14b" / "config.json").write_text(json.dumps(config, indent=4))  # another file, same meaning
    assert "other inputs" in _convert(other, out, capsys)
    assert "other inputs" in _convert(release, out, capsys, "--dtype", "bf16")  # same release, other options
    assert _tree(out) == before

    (out / "notes.txt").write_text("mine")
    assert "notes.txt" in _convert(release, out, capsys)
    (out / "notes.txt").unlink()
    capsys.readouterr()
    assert main(["--official", str(release), "--out", str(out), "--no-hash", *VAE_CONFIG]) == 0  # the same: resumed
    assert _tree(out) == before


@pytest.mark.parametrize("content", ["[1, 2]", '{"vae": [32]}', '"norm_num_groups"', "{torn"])
def test_a_vae_config_that_is_not_an_object_is_one_line(tmp_path, capsys, content):
    (tmp_path / "release").mkdir()
    (tmp_path / "vae.json").write_text(content)
    argv = ["--official", str(tmp_path / "release"), "--out", str(tmp_path / "out")]
    assert main([*argv, "--vae-config", str(tmp_path / "vae.json")]) == 2
    assert "--vae-config" in one_error_line(capsys.readouterr().err)


@needs_fixtures
def test_an_out_that_cannot_be_written_is_one_line_before_any_work(release, capsys):
    out = Path("/sys/diffusers-vincie-test-out")  # sysfs refuses new folders, even to root
    message = _convert(release, out, capsys)
    assert "--out" in message and "cannot be written" in message, message


@needs_fixtures
def test_a_second_conversion_into_one_out_is_refused_while_the_first_runs(release, tmp_path, capsys):
    from diffusers_vincie.conversion.convert import CONVERSION_LOCK
    from diffusers_vincie.utils.io import exclusive_lock

    out = tmp_path / "out"
    with exclusive_lock(out / CONVERSION_LOCK, "a running conversion"):  # what the first conversion holds
        message = _convert(release, out, capsys)
        assert "--out" in message and "another process" in message, message
        assert sorted(os.listdir(out)) == [CONVERSION_LOCK]  # nothing written, no record
    # a lock left by a finished or killed run does not block the next one
    assert main(["--official", str(release), "--out", str(out), "--no-hash", *VAE_CONFIG]) == 0
    assert (out / "model_index.json").is_file() and (out / "conversion.json").is_file()
