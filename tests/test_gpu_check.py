"""benchmarks/gpu_check.sh: valid bash, and its tiny mode runs every section on the CPU in seconds."""

import json
import os
import subprocess

import pytest
from conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def test_script_is_valid_bash_and_refuses_unknown_arguments():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    bad = subprocess.run(["bash", str(SCRIPT), "--fast"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "unknown argument '--fast'" in bad.stderr


def test_wheels_folder_is_git_ignored():
    ignored = subprocess.run(
        ["git", "check-ignore", "wheels/diffusers-0.0.0-py3-none-any.whl"], cwd=REPO, capture_output=True, text=True
    )
    assert ignored.returncode == 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("family", ["3b", "7b"])
def test_tiny_mode_runs_every_section_on_cpu(tmp_path, family):
    env = {**os.environ, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    options = ["--tiny"] + (["--7b"] if family == "7b" else [])
    run = subprocess.run(["bash", str(SCRIPT), *options], env=env, capture_output=True, text=True, timeout=110)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    assert results["environment"]["family"] == family
    sections = results["sections"]
    # the sections' own work, imports aside: 3-6 s on an idle 2-core CPU, so tiny sizes, with room for a loaded one
    seconds = sum(result["seconds"] for result in sections.values())
    assert seconds < 30, f"tiny mode's sections took {seconds:.0f} s"
    assert list(sections) == ["forward", "sessions", "compile", "first_block_cache", "offload"]
    assert not [name for name, result in sections.items() if "error" in result]
    assert sections["forward"]["backends"]["native"]["ms"] > 0
    for backend in ("flash", "flash_varlen"):  # measured, or why not
        entry = sections["forward"]["backends"][backend]
        assert isinstance(entry, dict) or entry.startswith("not run: ")
    assert [len(sections["sessions"][f"{r}px"]["seconds_per_turn"]) for r in (32, 64)] == [5, 5]
    assert sections["compile"]["max_abs_diff"] == 0.0 and sections["compile"]["compiled_ms"] > 0
    fbc = sections["first_block_cache"]
    assert "speedup" in fbc or fbc["skipped"].startswith("VincieTransformer is not a diffusers CacheMixin")
    assert "needs CUDA" in sections["offload"]["skipped"]
    if "speedup" in fbc:
        assert fbc["speedup"] == pytest.approx(fbc["uncached_seconds"] / fbc["cached_seconds"], rel=0.1)
    assert (tmp_path / "gpu_check.md").read_text().startswith("# GPU check (CPU, ")
    assert "sections with errors: none" in (tmp_path / "gpu_check.log").read_text()
