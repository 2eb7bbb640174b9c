"""Command lines that used to end in a traceback: a damaged parquet shard, the demo's image, guidance and turn
count, a lone surrogate in an instruction, conflicting evaluation call arguments. Each is one line, exit 2."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from conftest import load_script, one_error_line, one_line_exit_2
from datasets import Dataset, Features, Image, List, Value

from diffusers_vincie.utils.cli import UsageError

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------- parquet shards


@pytest.fixture
def sessions_folder(tmp_path) -> Path:
    from diffusers_vincie.data.loaders import records_to_dataset
    from diffusers_vincie.data.shapes.world import ShapesWorld

    world = ShapesWorld(resolution=16, grid=2)
    folder = tmp_path / "sessions"
    (folder / "data").mkdir(parents=True)
    for shard in range(2):
        records = [world.sample_session(seed, num_turns=2).to_record() for seed in range(4 * shard, 4 * shard + 4)]
        records_to_dataset(records).to_parquet(str(folder / "data" / f"train-{shard:05d}.parquet"))
    return folder


def _damage(shard: Path, how: str) -> None:
    data = bytearray(shard.read_bytes())
    if how == "truncated":
        shard.write_bytes(bytes(data[:-64]))
    else:  # the footer is intact, a data page is not
        data[200:2000] = b"\x55" * 1800
        shard.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "damaged page"])
def test_loading_a_damaged_shard_names_it(sessions_folder, tmp_path, how):
    from diffusers_vincie.data.loaders import load_sessions

    shard = sessions_folder / "data" / "train-00001.parquet"
    _damage(shard, how)
    with pytest.raises(ValueError, match=f"shard {shard} is damaged"):
        load_sessions(sessions_folder, cache_dir=str(tmp_path / "cache"))


def test_a_hidden_leftover_of_an_interrupted_writer_is_not_a_shard(sessions_folder, tmp_path):
    from diffusers_vincie.data.loaders import load_sessions

    (sessions_folder / "data" / ".train-00002.parquet.123-abc.tmp.parquet").write_bytes(b"half")
    assert len(load_sessions(sessions_folder, cache_dir=str(tmp_path / "cache"))) == 8


def test_training_on_a_damaged_shard_is_one_line_naming_it(sessions_folder, tmp_path, capsys, monkeypatch):
    from accelerate.state import AcceleratorState

    from diffusers_vincie.testing import write_tiny_components

    sys.path.insert(0, str(REPO / "training_scripts"))
    train = load_script(REPO / "training_scripts" / "train_vincie.py", "train_vincie")
    components = write_tiny_components(tmp_path / "components")
    _damage(sessions_folder / "data" / "train-00000.parquet", "truncated")
    monkeypatch.setattr(train, "load_components", lambda args: pytest.fail("models loaded before the data check"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    argv = [
        *("--transformer_config", str(components / "transformer.json")),
        *("--text_encoder_name_or_path", str(components / "text_encoder")),
        *("--tokenizer_name_or_path", str(components / "tokenizer")),
        *("--output_dir", str(tmp_path / "run"), "--dataset_name", str(sessions_folder), "--resolution", "16"),
    ]
    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(UsageError, match="--dataset_name.*shard .*train-00000.parquet is damaged"):
        train.main(train.parse_args(argv))


# ----------------------------------------------------------------------------------------- the demo


def _demo(tmp_path, *extra: str):
    from diffusers_vincie.demo import main

    return lambda: main(["--output", str(tmp_path / "out"), "--steps", "1", *extra])


def test_demo_with_a_text_file_as_image(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture")
    one_line_exit_2(_demo(tmp_path, "--image", str(notes)), capsys, "--image", "not an image file")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("scale", ["0.5", "0", "-1"])
def test_demo_guidance_below_one_is_refused_as_the_pipeline_does(tmp_path, capsys, scale):
    one_line_exit_2(_demo(tmp_path, "--guidance_scale", scale), capsys, "--guidance_scale must be >= 1")


def test_demo_with_more_instructions_than_turns_fails_before_the_first_turn(tmp_path, capsys):
    from diffusers_vincie.default_model import load_default_pipeline

    max_turns = load_default_pipeline().transformer.config.max_turns
    instructions = ["add a big red circle at the top left"] * (max_turns + 1)
    one_line_exit_2(
        _demo(tmp_path, "--instructions", *instructions), capsys, f"{max_turns + 1} instructions", "turn table"
    )
    assert not (tmp_path / "out").exists(), "no turn ran"


def test_demo_with_a_lone_surrogate_in_an_instruction(tmp_path, capsys):
    one_line_exit_2(_demo(tmp_path, "--instructions", "add a \udc80 circle"), capsys, "lone surrogate")
    assert not (tmp_path / "out").exists()


def test_a_lone_surrogate_is_named_by_the_pipeline_and_the_session():
    from diffusers_vincie.testing import tiny_pipeline

    pipe = tiny_pipeline(default_resolution=32)
    image = PIL.Image.new("RGB", (32, 32))
    with pytest.raises(ValueError, match=r"`prompt\[1\]` is not valid text.*position 2"):
        pipe(image, ["add a circle", "a \udc80"], num_inference_steps=1)
    with pytest.raises(ValueError, match="`negative_prompt` is not valid text"):
        pipe(image, "add a circle", negative_prompt="\ud800", num_inference_steps=1)
    with pytest.raises(ValueError, match="`instruction` is not valid text"):
        pipe.start_session(image).edit("\udcff", num_inference_steps=1)


# ----------------------------------------------------------------------------------------- evaluation


@pytest.fixture
def bench(tmp_path) -> Path:
    features = Features({"image": Image(), "index": Value("int64"), "context": List(Value("string"))})
    Dataset.from_dict(
        {"image": [PIL.Image.new("RGB", (16, 16), (40, 0, 0))], "index": [0], "context": [["t1", "t2"]]},
        features=features,
    ).to_parquet(str(tmp_path / "bench.parquet"))
    return tmp_path / "bench.parquet"


@pytest.fixture(scope="module")
def pipeline_folder(tmp_path_factory) -> Path:
    from diffusers_vincie.testing import tiny_pipeline

    folder = tmp_path_factory.mktemp("pipeline") / "pipeline"
    tiny_pipeline(default_resolution=32).save_pretrained(str(folder))
    return folder


@pytest.mark.parametrize(
    "kwargs, flags, words",
    [
        ('{"num_inference_steps": 5}', ["--num-inference-steps", "3"], ["num_inference_steps=5", "give it once"]),
        ('{"guidance_scale": 2.0}', ["--guidance-scale", "4"], ["guidance_scale=2.0", "give it once"]),
        ('{"prompt": "x"}', [], ["['prompt']", "set by the editor"]),
        ('{"output_type": "np"}', [], ["['output_type']", "set by the editor"]),
        ('{"num_images_per_prompt": 2}', [], ["num_images_per_prompt", "set by the editor"]),
        ('{"no_such_argument": 1}', [], ["takes no argument(s) ['no_such_argument']"]),
    ],
)
def test_conflicting_pipeline_kwargs_are_one_line(tmp_path, capsys, bench, pipeline_folder, kwargs, flags, words):
    from diffusers_vincie.evaluation.__main__ import main

    argv = ["generate", "--dataset", str(bench), "--pipeline", str(pipeline_folder)]
    argv += ["--output-dir", str(tmp_path / "out"), "--pipeline-kwargs", kwargs, "--device", "cpu", *flags]
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--pipeline-kwargs" in line and all(word in line for word in words), line
    assert not (tmp_path / "out").exists()


def test_agreeing_pipeline_kwargs_and_flags_still_run(tmp_path, bench, pipeline_folder):
    from diffusers_vincie.evaluation.__main__ import main

    argv = ["generate", "--dataset", str(bench), "--pipeline", str(pipeline_folder), "--device", "cpu"]
    argv += ["--output-dir", str(tmp_path / "out"), "--pipeline-kwargs", '{"num_inference_steps": 1}']
    assert main([*argv, "--num-inference-steps", "1"]) == 0
    assert len(list((tmp_path / "out").glob("*.png"))) == 2
    assert np.asarray(PIL.Image.open(next((tmp_path / "out").glob("*.png")))).shape[-1] == 3


def test_the_pairwise_and_vincie10m_adapters_name_a_damaged_shard_too(sessions_folder):
    from diffusers_vincie.data.loaders import PairwiseEditAdapter, Vincie10MAdapter

    shard = sessions_folder / "data" / "train-00000.parquet"
    _damage(shard, "truncated")
    for adapter in (PairwiseEditAdapter, Vincie10MAdapter):
        for path in (sessions_folder, shard):
            with pytest.raises(ValueError, match=f"shard {shard} is damaged"):
                adapter.from_path(str(path))
