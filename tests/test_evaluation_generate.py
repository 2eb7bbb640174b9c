"""Benchmark loading, output naming and the resumable turn-by-turn `generate` loop (fake editors)."""

from __future__ import annotations

import os
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import PIL.Image
import pytest
from datasets import Dataset, Features, Image, List, Value

from diffusers_vincie.evaluation import (
    PipelineEditor,
    generate_outputs,
    load_benchmark_sessions,
    output_filename,
)


def solid(color: tuple[int, int, int], size: tuple[int, int] = (24, 16)) -> PIL.Image.Image:
    return PIL.Image.new("RGB", size, color)


def tiny_mse_bench(num_sessions: int = 3, num_turns: int = 3) -> Dataset:
    """A tiny MSE-Bench-format dataset: one row per session."""
    features = Features(
        {
            "image": Image(),
            "index": Value("int64"),
            "context": List(Value("string")),
            "operation": List(Value("string")),
        }
    )
    return Dataset.from_dict(
        {
            "image": [solid((10 * i, 20, 30)) for i in range(num_sessions)],
            "index": list(range(num_sessions)),
            "context": [[f"s{i}-t{t + 1} edit" for t in range(num_turns)] for i in range(num_sessions)],
            "operation": [["add"] * num_turns for _ in range(num_sessions)],
        },
        features=features,
    )


class RecordingEditor:
    """Brightens the last image by 10 per call and records what it was given."""

    def __init__(self):
        self.calls: list[tuple[int, list[str], int, list[np.ndarray]]] = []

    def __call__(self, images, instructions, seed):
        self.calls.append((len(images), list(instructions), seed, [np.asarray(image) for image in images]))
        return PIL.Image.fromarray(np.clip(np.asarray(images[-1]).astype(int) + 10, 0, 255).astype(np.uint8))


# -----------------------------------------------------------------------------------------------------
# Loading
# -----------------------------------------------------------------------------------------------------


def test_load_sessions_from_parquet_and_save_to_disk(tmp_path):
    dataset = tiny_mse_bench()
    dataset.to_parquet(str(tmp_path / "bench.parquet"))
    dataset.save_to_disk(str(tmp_path / "saved"))
    for source in (tmp_path / "bench.parquet", tmp_path / "saved"):
        sessions = load_benchmark_sessions(source)
        assert len(sessions) == 3
        session = sessions[2]
        assert session.index == "2"
        assert session.instructions == ["s2-t1 edit", "s2-t2 edit", "s2-t3 edit"]
        assert session.operations == ["add"] * 3
        assert session.source.mode == "RGB" and session.source.getpixel((0, 0)) == (20, 20, 30)
    assert len(load_benchmark_sessions(tmp_path / "bench.parquet", limit=2)) == 2


def test_load_sessions_groups_magicbrush_turns():
    rows = Dataset.from_dict(
        {
            "img_id": ["7", "5", "7", "5"],
            "turn_index": [2, 1, 1, 2],
            "source_img": [solid((1, 1, 1)), solid((2, 2, 2)), solid((3, 3, 3)), solid((4, 4, 4))],
            "target_img": [solid((11, 0, 0)), solid((12, 0, 0)), solid((13, 0, 0)), solid((14, 0, 0))],
            "instruction": ["7b", "5a", "7a", "5b"],
        },
        features=Features(
            {
                "img_id": Value("string"),
                "turn_index": Value("int32"),
                "source_img": Image(),
                "target_img": Image(),
                "instruction": Value("string"),
            }
        ),
    )
    sessions = load_benchmark_sessions(rows)
    assert [s.index for s in sessions] == ["7", "5"]
    first = sessions[0]
    assert first.instructions == ["7a", "7b"]  # ordered by turn_index
    assert first.source.getpixel((0, 0)) == (3, 3, 3)  # the source of turn 1
    assert [r.getpixel((0, 0)) for r in first.references] == [(13, 0, 0), (11, 0, 0)]


def test_load_sessions_rejects_unknown_columns(tmp_path):
    Dataset.from_dict({"picture": ["x"], "prompts": ["y"]}).to_parquet(str(tmp_path / "bad.parquet"))
    with pytest.raises(ValueError, match="MSE-Bench needs"):
        load_benchmark_sessions(tmp_path / "bad.parquet")
    with pytest.raises(FileNotFoundError, match="source"):
        load_benchmark_sessions(tmp_path / "missing" / "dir")


# -----------------------------------------------------------------------------------------------------
# Generation
# -----------------------------------------------------------------------------------------------------


def test_output_filename_matches_official_generator():
    assert output_filename("12", 0, 12) == "12_turn0_rep0_seed12.png"


def test_generate_feeds_history_and_names_outputs(tmp_path):
    sessions = load_benchmark_sessions(tiny_mse_bench(num_sessions=2, num_turns=3))
    editor = RecordingEditor()
    summary = generate_outputs(editor, sessions, tmp_path, seed_offset=100, show_progress=False)

    expected = {f"{i}_turn{t}_rep0_seed{100 + i}.png" for i in range(2) for t in range(3)}
    assert {p.name for p in tmp_path.iterdir()} == expected  # no temporary files left
    assert (summary.sessions_generated, summary.sessions_skipped, summary.images_written) == (2, 0, 6)

    # Session 1, turn t: history [source, out_0..out_{t-1}], instructions 1..t+1, seed 100 + index.
    calls = editor.calls[3:]
    assert [c[0] for c in calls] == [1, 2, 3]
    assert [c[1] for c in calls] == [
        ["s1-t1 edit"],
        ["s1-t1 edit", "s1-t2 edit"],
        ["s1-t1 edit", "s1-t2 edit", "s1-t3 edit"],
    ]
    assert {c[2] for c in calls} == {101}
    # The history holds the PNGs written to disk: source (10, 20, 30) brightened by 10 per turn.
    last_history = calls[2][3]
    assert [tuple(image[0, 0]) for image in last_history] == [(10, 20, 30), (20, 30, 40), (30, 40, 50)]
    final = np.asarray(PIL.Image.open(tmp_path / "1_turn2_rep0_seed101.png"))
    assert tuple(final[0, 0]) == (40, 50, 60)


def test_generate_resumes_and_skips_finished_sessions(tmp_path):
    sessions = load_benchmark_sessions(tiny_mse_bench(num_sessions=2, num_turns=3))
    generate_outputs(RecordingEditor(), sessions, tmp_path, show_progress=False)
    (tmp_path / "1_turn2_rep0_seed1.png").unlink()  # as if the run had been killed during its last turn

    editor = RecordingEditor()
    summary = generate_outputs(editor, sessions, tmp_path, show_progress=False)
    assert (summary.sessions_generated, summary.sessions_skipped, summary.images_written) == (1, 1, 1)
    assert len(editor.calls) == 1
    images, instructions = editor.calls[0][0], editor.calls[0][1]
    assert images == 3 and instructions[-1] == "s1-t3 edit"
    assert (tmp_path / "1_turn2_rep0_seed1.png").exists()

    editor = RecordingEditor()
    summary = generate_outputs(editor, sessions, tmp_path, show_progress=False)
    assert editor.calls == [] and summary.sessions_skipped == 2


def test_generate_rejects_bad_editor_output_and_max_turns(tmp_path):
    sessions = load_benchmark_sessions(tiny_mse_bench(num_sessions=1))
    with pytest.raises(TypeError, match="must return a PIL image"):
        generate_outputs(
            lambda images, instructions, seed: np.zeros((4, 4, 3)), sessions, tmp_path, show_progress=False
        )
    with pytest.raises(ValueError, match="max_turns"):
        generate_outputs(RecordingEditor(), sessions, tmp_path, max_turns=0, show_progress=False)
    summary = generate_outputs(RecordingEditor(), sessions, tmp_path, max_turns=2, show_progress=False)
    assert summary.images_written == 2 and not (tmp_path / "0_turn2_rep0_seed0.png").exists()


def test_pipeline_editor_calls_pipeline_with_history_and_takes_last_image():
    import torch

    class FakePipeline:
        device = torch.device("cpu")

        def __call__(self, image, prompt, generator, output_type, **kwargs):
            self.seen = (len(image), list(prompt), output_type, kwargs, torch.rand(1, generator=generator).item())
            return SimpleNamespace(images=[solid((t, t, t)) for t in range(len(image))])

    pipeline = FakePipeline()
    editor = PipelineEditor(pipeline, num_inference_steps=3)
    result = editor([solid((0, 0, 0)), solid((1, 1, 1))], ["a", "b"], seed=5)
    assert result.getpixel((0, 0)) == (1, 1, 1)
    assert pipeline.seen[:4] == (2, ["a", "b"], "pil", {"num_inference_steps": 3})
    assert pipeline.seen[4] == torch.rand(1, generator=torch.Generator().manual_seed(5)).item()


def test_load_sessions_reads_the_unzipped_magicbrush_test_folder(tmp_path):
    sessions_json = {
        "42": [
            {"input": "42-input.png", "mask": "42-mask1.png", "output": "42-output1.png", "instruction": "add a cat"},
            {
                "input": "42-output1.png",
                "mask": "42-mask2.png",
                "output": "42-output2.png",
                "instruction": "make it red",
            },
        ]
    }
    (tmp_path / "edit_sessions.json").write_text(__import__("json").dumps(sessions_json))
    images = tmp_path / "images" / "42"
    images.mkdir(parents=True)
    for name, value in (("42-input.png", 1), ("42-output1.png", 2), ("42-output2.png", 3)):
        solid((value, value, value)).save(images / name)
    (session,) = load_benchmark_sessions(tmp_path)
    assert session.index == "42" and session.instructions == ["add a cat", "make it red"]
    assert session.source.getpixel((0, 0)) == (1, 1, 1)
    assert [r.getpixel((0, 0)) for r in session.references] == [(2, 2, 2), (3, 3, 3)]
    with pytest.raises(ValueError, match="limit"):
        load_benchmark_sessions(tmp_path, limit=0)


@pytest.mark.slow
def test_generate_splits_sessions_across_torchrun_processes(tmp_path):
    """Two CPU processes (gloo) share the sessions: each session is generated exactly once."""
    import subprocess
    import sys

    tiny_mse_bench(num_sessions=5, num_turns=2).to_parquet(str(tmp_path / "bench.parquet"))
    (tmp_path / "rank_editor.py").write_text(
        "import os\n"
        "def editor(images, instructions, seed):\n"
        "    with open(os.path.join(os.path.dirname(__file__), f\"calls_{os.environ['RANK']}.txt\"), 'a') as f:\n"
        "        f.write(f'{seed}\\n')\n"
        "    return images[-1]\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "diffusers_vincie.evaluation",
        "generate",
        "--dataset",
        str(tmp_path / "bench.parquet"),
        "--editor",
        "rank_editor:editor",
        "--output-dir",
        str(tmp_path / "out"),
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    calls = [sorted((tmp_path / f"calls_{rank}.txt").read_text().split()) for rank in (0, 1)]
    assert calls == [["0", "0", "1", "1", "2", "2"], ["3", "3", "4", "4"]]
    assert len(list((tmp_path / "out").glob("*.png"))) == 10


def test_generate_cli_with_a_saved_vincie_pipeline(tmp_path, capsys):
    """`--pipeline` loads a folder with DiffusionPipeline.from_pretrained (the tiny random VINCIE pipeline)."""
    from diffusers_vincie.evaluation.__main__ import main
    from diffusers_vincie.testing import tiny_pipeline

    tiny_pipeline().save_pretrained(str(tmp_path / "pipeline"))
    tiny_mse_bench(num_sessions=2, num_turns=2).to_parquet(str(tmp_path / "bench.parquet"))
    arguments = [
        "generate",
        "--dataset",
        str(tmp_path / "bench.parquet"),
        "--pipeline",
        str(tmp_path / "pipeline"),
        "--output-dir",
        str(tmp_path / "out"),
        "--device",
        "cpu",
        "--num-inference-steps",
        "2",
        "--pipeline-kwargs",
        '{"resolution": 32}',
    ]
    assert main(arguments) == 0
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == [
        "0_turn0_rep0_seed0.png",
        "0_turn1_rep0_seed0.png",
        "1_turn0_rep0_seed1.png",
        "1_turn1_rep0_seed1.png",
    ]
    first, second = (PIL.Image.open(tmp_path / "out" / name) for name in names[2:])
    assert first.mode == second.mode == "RGB" and first.size == second.size  # the pipeline's working size
    mtimes = [os.path.getmtime(tmp_path / "out" / name) for name in names]
    assert main(arguments) == 0  # resumed: nothing regenerated
    assert [os.path.getmtime(tmp_path / "out" / name) for name in names] == mtimes
    assert main([*arguments[:-1], "[1, 2]"]) == 2
    assert "pipeline-kwargs" in capsys.readouterr().err
