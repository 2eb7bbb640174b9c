"""Cases of a re-probe beyond the listed ones: images stored in dataset rows as a path only (``datasets`` would open
the path wherever it points), and further bad inputs that must be refused or handled, never a silent wrong result."""

from __future__ import annotations

import io
from pathlib import Path

import PIL.Image
import pyarrow.parquet as pq
import pytest
from datasets import Dataset, load_dataset

from diffusers_vincie.data.loaders import iter_session_records, load_sessions, records_to_dataset
from diffusers_vincie.data.schema import SESSION_FEATURES, SessionValidationError
from diffusers_vincie.data.shapes.world import ShapesWorld
from diffusers_vincie.training import SequenceConfig
from diffusers_vincie.training.data import SessionRowsDataset
from diffusers_vincie.training.streaming import StreamingSessions


def _png(color) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.new("RGB", (16, 16), color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(params=["absolute", "dotdot"])
def path_only_sessions(tmp_path, request) -> Path:
    """A sessions folder whose one row stores its second frame as a path to a valid PNG outside the folder."""
    secret = tmp_path / "private" / "secret.png"
    secret.parent.mkdir()
    secret.write_bytes(_png((255, 0, 0)))
    folder = tmp_path / "sessions"
    record = ShapesWorld(resolution=16, grid=2, max_objects=2).sample_session(0, num_turns=2).to_record()
    row = records_to_dataset([record])[0]
    where = str(secret) if request.param == "absolute" else "../../private/secret.png"
    frames = [{"bytes": _png((0, 0, 255)), "path": None}, {"bytes": None, "path": where}]
    frames += [{"bytes": _png((0, 255, 0)), "path": None}] * (len(row["frames"]) - 2)
    row["frames"] = frames
    shard = folder / "data" / "train-00000-of-00001.parquet"
    shard.parent.mkdir(parents=True)
    pq.write_table(Dataset.from_list([row], features=SESSION_FEATURES).data.table, shard)  # with the features
    if request.param == "absolute":  # what ``datasets`` does with such a row when it decodes it: reads the file
        leaked = load_dataset("parquet", data_files=str(shard), split="train", cache_dir=str(tmp_path / "c"))
        assert leaked[0]["frames"][1].getpixel((0, 0)) == (255, 0, 0)
    return folder


def _refused(call) -> str:
    with pytest.raises(SessionValidationError, match="only the path") as refused:
        call()
    return str(refused.value)


def test_load_sessions_refuses_a_frame_stored_as_a_path_only(path_only_sessions, tmp_path):
    dataset = load_sessions(path_only_sessions, cache_dir=str(tmp_path / "cache"))
    assert dataset[0]["frames"][1] == {"bytes": None, "path": dataset[0]["frames"][1]["path"]}  # not opened
    message = _refused(lambda: list(iter_session_records(dataset)))
    assert "frames[1]" in message
    streamed = load_sessions(path_only_sessions, streaming=True)
    _refused(lambda: list(iter_session_records(streamed)))


def test_the_training_loader_refuses_a_frame_stored_as_a_path_only(path_only_sessions, tmp_path):
    shard = str(next(path_only_sessions.rglob("*.parquet")))
    config = SequenceConfig(layout="block_causal", max_turns=2)
    for rows in (  # our loader's dataset, and a plain ``load_dataset`` one that decodes images itself
        load_sessions(path_only_sessions, cache_dir=str(tmp_path / "cache")),
        load_dataset("parquet", data_files=shard, split="train", cache_dir=str(tmp_path / "raw")),
    ):
        _refused(lambda: SessionRowsDataset(rows, config).session(0))


def test_the_streaming_loader_refuses_a_frame_stored_as_a_path_only(path_only_sessions):
    config = SequenceConfig(layout="block_causal", max_turns=2)
    sessions = StreamingSessions.from_source(str(path_only_sessions), "train", config)
    _refused(lambda: sessions.session(0))
    _refused(lambda: next(iter(sessions)))


def test_a_results_dataset_image_stored_as_an_outside_path_is_refused(tmp_path, monkeypatch):
    from datasets import Features, Image

    from diffusers_vincie.evaluation.generate import export_results_dataset
    from diffusers_vincie.evaluation.sessions import BenchmarkSession
    from diffusers_vincie.utils.io import UnsafePathError

    secret = tmp_path / "private" / "secret.png"
    secret.parent.mkdir()
    secret.write_bytes(_png((255, 0, 0)))
    monkeypatch.chdir(tmp_path / "private")  # even the working folder's parent is outside
    results = Dataset.from_dict(
        {"turn_0_image": [{"bytes": _png((1, 2, 3)), "path": None}, {"bytes": None, "path": str(secret)}]},
        features=Features({"turn_0_image": Image()}),
    )
    sessions = [
        BenchmarkSession(index=str(i), source=PIL.Image.new("RGB", (16, 16)), instructions=["x"]) for i in "01"
    ]
    with pytest.raises(UnsafePathError, match="absolute path"):
        export_results_dataset(results, sessions, tmp_path / "outputs")
    assert [p.name for p in (tmp_path / "outputs").glob("*.png")] == ["0_turn0_rep0_seed0.png"]  # the secret: never


@pytest.mark.parametrize(
    "kwargs, named",
    [
        ({"use_prompt_template": "no"}, "use_prompt_template"),  # a truthy string: the template would be used
        ({"chain_of_editing": "False"}, "chain_of_editing"),
        ({"negative_prompt": 5}, "negative_prompt"),
        ({"camera_prefix": 5}, "camera_prefix"),
        ({"max_sequence_length": 2.5}, "max_sequence_length"),
        ({"max_sequence_length": 1}, "max_sequence_length"),
    ],
)
def test_switches_and_texts_of_the_wrong_type_are_named_before_the_image_is_encoded(kwargs, named):
    from diffusers_vincie.testing import tiny_pipeline

    pipe = tiny_pipeline(default_resolution=32, default_num_inference_steps=1)
    encoded = []
    pipe.vae.encode = lambda *args, **kw: encoded.append(1)  # noqa: ARG005 (any image encoding is a failure)
    with pytest.raises((TypeError, ValueError), match=f"`{named}`"):
        pipe(image=PIL.Image.new("RGB", (32, 32)), prompt="make it blue", **kwargs)
    assert not encoded


def _rotated_photo(path: Path) -> Path:
    """A 20x10 JPEG stored sideways with EXIF orientation 6: viewers show it 10x20, red half on top."""
    stored = PIL.Image.new("RGB", (20, 10), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 10, 10))  # left half of the stored pixels
    exif = PIL.Image.Exif()
    exif[PIL.Image.ExifTags.Base.Orientation] = 6
    stored.save(path, exif=exif, quality=95)
    return path


def test_the_demo_and_the_adapters_read_a_photo_as_viewers_show_it(tmp_path):
    from diffusers_vincie.data.loaders import _to_image
    from diffusers_vincie.demo import _open_image

    photo = _rotated_photo(tmp_path / "photo.jpg")
    for image in (_open_image(str(photo)), _to_image("photo.jpg", "row 0", tmp_path)):
        assert image.size == (10, 20)
        top, bottom = image.convert("RGB").getpixel((5, 2)), image.convert("RGB").getpixel((5, 17))
        assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]


@pytest.mark.parametrize(
    "key, value", [("use_prompt_template", "no"), ("camera_prefix", 5), ("max_sequence_length", "150")]
)
def test_a_saved_session_with_a_setting_of_the_wrong_type_is_refused(tmp_path, key, value):
    import json

    from diffusers_vincie.pipelines.session import VincieEditingSession
    from diffusers_vincie.testing import tiny_pipeline

    pipe = tiny_pipeline(default_resolution=32, default_num_inference_steps=1)
    session = pipe.start_session(PIL.Image.new("RGB", (32, 32), (200, 30, 30)))
    session.edit("add a red circle")
    session.save(tmp_path / "s")
    assert VincieEditingSession.load(pipe, tmp_path / "s").use_prompt_template is True
    record = json.loads((tmp_path / "s" / "session.json").read_text())
    record[key] = value
    (tmp_path / "s" / "session.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=f"`{key}`.*damaged"):
        VincieEditingSession.load(pipe, tmp_path / "s")


@pytest.mark.parametrize("target", ["another model's folder", "a file"])
def test_an_export_onto_another_models_folder_or_a_file_is_refused_before_any_work(
    tmp_path, capsys, monkeypatch, target
):
    import json
    import sys

    from conftest import load_script, one_error_line

    repo = Path(__file__).resolve().parents[1]
    output = tmp_path / "VINCIE-3B-diffusers"
    if target == "a file":
        output.write_text("mine")
    else:
        (output / "transformer").mkdir(parents=True)
        (output / "transformer" / "config.json").write_text(json.dumps({"_class_name": "VincieTransformer"}))
        (output / "model_index.json").write_text("{}")
    before = {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    (tmp_path / "run" / "checkpoint-10").mkdir(parents=True)  # never read: the output is checked first
    cli = load_script(repo / "training_scripts" / "recipes" / "export_checkpoint.py", "export_checkpoint")
    argv = ["export_checkpoint.py", "--run_dir", str(tmp_path / "run"), "--output", str(output)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    assert "--output" in one_error_line(capsys.readouterr().err)
    assert {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()} == before


def test_a_second_export_into_one_output_is_refused_while_the_first_runs(tmp_path, monkeypatch, capsys):
    import sys

    from conftest import load_script, one_error_line

    from diffusers_vincie.utils.io import exclusive_lock

    repo = Path(__file__).resolve().parents[1]
    output = tmp_path / "pipeline"
    (tmp_path / "run" / "checkpoint-10").mkdir(parents=True)  # never read: the lock is taken first
    cli = load_script(repo / "training_scripts" / "recipes" / "export_checkpoint.py", "export_checkpoint")
    monkeypatch.setattr(
        sys, "argv", ["export_checkpoint.py", "--run_dir", str(tmp_path / "run"), "--output", str(output)]
    )
    with exclusive_lock(tmp_path / ".pipeline.export.lock", "the first export"):  # what a running export holds
        with pytest.raises(SystemExit) as exit_info:
            cli.main()
    assert exit_info.value.code == 2
    assert "another process" in one_error_line(capsys.readouterr().err)
    assert not output.exists() and not (tmp_path / ".pipeline.export").exists()


def test_a_uint8_mask_of_zeros_and_ones_marks_its_ones_not_nothing():
    import numpy as np

    from diffusers_vincie.data.schema import SessionRecord, mask_to_array

    frames = [np.zeros((16, 16, 3), np.uint8), np.full((16, 16, 3), 255, np.uint8)]
    ones = np.zeros((16, 16), np.uint8)
    ones[4:8, 4:12] = 1
    for mask in (ones, ones * 255, ones.astype(bool)):  # the same region however it is written
        record = SessionRecord(session_id="s", video_id="v", frames=frames, instructions=["add"], source_masks=[mask])
        assert (mask_to_array(record.source_masks[0]) == ones.astype(bool)).all()
    faint = np.where(ones == 1, 100, 0).astype(np.uint8)  # a 0..255 image: 100 is dark, outside
    record = SessionRecord(session_id="s", video_id="v", frames=frames, instructions=["add"], source_masks=[faint])
    assert not mask_to_array(record.source_masks[0]).any()
