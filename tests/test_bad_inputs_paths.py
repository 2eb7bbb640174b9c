"""Paths taken from data stay inside their folder: a benchmark row's index, a MagicBrush ``edit_sessions.json``
entry and the judge cache name never lead outside, whether by ``..``, an absolute path or a symlink (saved sessions:
``test_bad_inputs_writes.py``; the helper itself: ``resolve_inside`` / ``check_plain_name``)."""

from __future__ import annotations

import json
from pathlib import Path

import PIL.Image
import pytest
from conftest import one_error_line
from datasets import Dataset, Features, Image, List, Value

from diffusers_vincie.evaluation import load_benchmark_sessions
from diffusers_vincie.evaluation.__main__ import main
from diffusers_vincie.evaluation.sessions import BenchmarkSession, output_path
from diffusers_vincie.utils.io import UnsafePathError


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _bench(path: Path, index: str) -> Path:
    features = Features({"image": Image(), "index": Value("string"), "context": List(Value("string"))})
    rows = {"image": [PIL.Image.new("RGB", (16, 16), (40, 0, 0))] * 2, "index": ["0", index], "context": [["t1"]] * 2}
    Dataset.from_dict(rows, features=features).to_parquet(str(path))
    return path


@pytest.mark.parametrize("index", ["../../escaped", "/tmp/escaped-vincie", "..", "a/b"])
def test_a_benchmark_index_that_leaves_the_output_dir_is_refused_before_any_output(tmp_path, capsys, index):
    work = tmp_path / "work"
    work.mkdir()
    bench = _bench(work / "bench.parquet", index)
    code = main(
        ["generate", "--dataset", str(bench), "--editor", "os:getcwd", "--output-dir", str(work / "a" / "out")]
    )
    assert code == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--dataset" in line and "index" in line and repr(index) in line, line
    assert _files(tmp_path) == ["work/bench.parquet"] and not Path("/tmp/escaped-vincie_turn0_rep0_seed0.png").exists()


def test_the_output_and_judge_cache_names_are_checked_where_they_are_built(tmp_path):
    with pytest.raises(UnsafePathError, match="session index"):
        BenchmarkSession(index="../../x", source=PIL.Image.new("RGB", (4, 4)), instructions=["a"])
    with pytest.raises(UnsafePathError, match="session index"):
        output_path(tmp_path, "../x", 0, 0)
    (tmp_path / "0_turn0_rep0_seed0.png").symlink_to(tmp_path.parent / "elsewhere.png")
    with pytest.raises(UnsafePathError, match="leads outside"):
        output_path(tmp_path, "0", 0, 0)


def _magicbrush(folder: Path, turns: list[dict], img_id: str = "100") -> Path:
    images = folder / "images" / "100"
    images.mkdir(parents=True)
    for name in ("100-input.png", "100-output1.png"):
        PIL.Image.new("RGB", (8, 8), (10, 20, 30)).save(images / name)
    (folder / "edit_sessions.json").write_text(json.dumps({img_id: turns}))
    return folder


@pytest.mark.parametrize(
    "turn, img_id",
    [
        ({"input": "../../../outside.png", "output": "100-output1.png", "instruction": "x"}, "100"),
        ({"input": "100-input.png", "output": "/etc/hostname", "instruction": "x"}, "100"),
        ({"input": "link.png", "output": "100-output1.png", "instruction": "x"}, "100"),
        ({"input": "100-input.png", "output": "100-output1.png", "instruction": "x"}, "../100"),
    ],
)
def test_a_magicbrush_entry_that_leads_outside_its_folder_is_refused(tmp_path, turn, img_id):
    PIL.Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "outside.png")
    folder = _magicbrush(tmp_path / "mb" / "test", [turn], img_id)
    (folder / "images" / "100" / "link.png").symlink_to(tmp_path / "outside.png")
    with pytest.raises(UnsafePathError):
        list(load_benchmark_sessions(folder))


def test_a_magicbrush_folder_inside_its_folder_still_loads(tmp_path):
    turn = {"input": "100-input.png", "output": "100-output1.png", "instruction": "make it blue"}
    (session,) = list(load_benchmark_sessions(_magicbrush(tmp_path / "mb", [turn])))
    assert session.index == "100" and session.instructions == ["make it blue"] and len(session.references) == 1


# ----------------------------------------------------------------------------------------------------- datasets


@pytest.mark.parametrize("bad", ["../outside.png", "ABSOLUTE", "link.png", {"bytes": None, "path": "../outside.png"}])
def test_an_image_path_in_a_dataset_row_that_leads_outside_image_root_is_an_invalid_row(tmp_path, bad):
    from diffusers_vincie.data.loaders import Vincie10MAdapter
    from diffusers_vincie.data.schema import SessionValidationError

    root = tmp_path / "images"
    root.mkdir()
    for name in ("f0.png", "f1.png"):
        PIL.Image.new("RGB", (8, 8)).save(root / name)
    PIL.Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "outside.png")
    (root / "link.png").symlink_to(tmp_path / "outside.png")
    bad = str(tmp_path / "outside.png") if bad == "ABSOLUTE" else bad
    rows = [{"id": "bad", "images": ["f0.png", bad], "instructions": ["x"]}]
    with pytest.raises(SessionValidationError, match="image path"):
        list(Vincie10MAdapter(rows, image_root=root))
    good = {"id": "ok", "images": ["f0.png", "f1.png"], "instructions": ["x"]}
    skipping = Vincie10MAdapter([*rows, good], image_root=root, on_invalid="skip")
    assert [record.session_id for record in skipping] == ["ok"] and skipping.num_skipped == 1


def test_an_undecoded_benchmark_image_path_that_leads_outside_is_refused(tmp_path, monkeypatch):
    from diffusers_vincie.evaluation.sessions import SessionList

    PIL.Image.new("RGB", (8, 8)).save(tmp_path / "outside.png")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    rows = [{"index": "0", "image": {"bytes": None, "path": "../outside.png"}, "context": ["a"]}]
    with pytest.raises(UnsafePathError, match="image` path"):
        list(SessionList(rows, "mse-bench"))
