"""Parity with the official code: every golden tensor of ../shared/fixtures/official is reproduced."""

import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffusers_vincie.parity import main, run_parity


@pytest.fixture(scope="module")
def checks(official_fixtures):
    return run_parity(official_fixtures)


def test_every_check_passes(checks):
    failed = [c.line() for c in checks if not c.passed]
    assert not failed, "\n".join(failed)


def test_every_fixture_family_is_checked(checks):
    names = " ".join(c.name for c in checks)
    for needed in (
        "forward_session out",
        "forward_session inter.block3.txt",
        "out_neg",
        "out_cfg",
        "forward_batch out",
        "bf16 q/k/v",
        "step3.x_t",
        "final latent",
        "timesteps 50 shift 12",
        "vae decode",
        "packed text",
    ):
        assert needed in names, needed


def test_verifier_detects_a_wrong_output(official_fixtures, tmp_path, capsys):
    folder = tmp_path / "fixtures"
    shutil.copytree(official_fixtures, folder)
    tensors = load_file(folder / "forward_batch.safetensors")
    tensors["out.vid_sample"] = tensors["out.vid_sample"] + 1e-3  # just above the 1e-4 tolerance
    save_file(tensors, folder / "forward_batch.safetensors")
    assert main([str(folder), "--only", "forward"]) == 1
    assert "FAIL forward_batch out" in capsys.readouterr().out


def test_cli_exit_status(official_fixtures):
    result = subprocess.run(
        [sys.executable, "-m", "diffusers_vincie.parity", str(official_fixtures), "--only", "forward"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 failed" in result.stdout


def test_unknown_fixture_file_is_an_error(official_fixtures, tmp_path):
    folder = tmp_path / "fixtures"
    shutil.copytree(official_fixtures, folder)
    save_file({"x": torch.zeros(1)}, folder / "mystery_thing.safetensors")
    assert main([str(folder)]) == 2
