"""Tests of the session schema (SessionRecord <-> dataset rows) and of the dataset loaders/adapters."""

import json
from dataclasses import replace

import numpy as np
import PIL.Image
import pytest
from datasets import Dataset, Features, Image, List, Value, load_dataset

from diffusers_vincie.data.loaders import (
    MAGICBRUSH_COLUMNS,
    PairwiseEditAdapter,
    PairwiseEditColumns,
    Vincie10MAdapter,
    Vincie10MColumns,
    iter_session_records,
    load_sessions,
    records_to_dataset,
)
from diffusers_vincie.data.schema import SESSION_FEATURES, SessionRecord, SessionValidationError, mask_to_array
from diffusers_vincie.data.shapes.world import ShapesWorld


def _record(num_frames: int = 3, size: int = 8, seed: int = 0, **overrides) -> SessionRecord:
    rng = np.random.default_rng(seed)
    frames = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(num_frames)]
    masks = [rng.random((size, size)) > 0.5 for _ in range(num_frames - 1)]
    fields = dict(
        session_id=f"vid{seed}/0",
        video_id=f"vid{seed}",
        frames=frames,
        instructions=[f"edit {i}" for i in range(num_frames - 1)],
        timestamps=[1.5 * i for i in range(num_frames)],
        source_masks=masks,
        target_masks=[None] + masks[1:],
        camera_motion=["static"] + ["pan left"] * (num_frames - 2),
        annotator={"name": "test", "version": 2},
    )
    fields.update(overrides)
    return SessionRecord(**fields)


# =====================================================================================================
# Schema
# =====================================================================================================


def test_record_round_trip_through_parquet(tmp_path):
    records = [_record(3, seed=0), _record(4, seed=1)]
    Dataset.from_list([r.to_row() for r in records], features=SESSION_FEATURES).to_parquet(
        str(tmp_path / "data" / "train-00000.parquet")
    )
    loaded = load_dataset("parquet", data_dir=str(tmp_path / "data"), split="train")
    assert loaded.features == SESSION_FEATURES
    for original, row in zip(records, loaded):
        back = SessionRecord.from_row(row)
        assert back.session_id == original.session_id and back.video_id == original.video_id
        assert back.instructions == original.instructions
        assert back.timestamps == original.timestamps
        assert back.camera_motion == original.camera_motion
        assert back.annotator == {"name": "test", "version": 2}
        for a, b in zip(original.frames, back.frames):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        for name in ("source_masks", "target_masks"):
            for a, b in zip(getattr(original, name), getattr(back, name)):
                assert (a is None) == (b is None)
                if a is not None:
                    np.testing.assert_array_equal(mask_to_array(a), mask_to_array(b))
    assert back.target_masks[0] is None and back.source_masks[0] is not None


def test_record_from_undecoded_row_and_defaults():
    dataset = Dataset.from_list([_record(2).to_row()], features=SESSION_FEATURES)
    row = dataset.cast_column("frames", List(Image(decode=False)))[0]
    assert isinstance(row["frames"][0], dict)
    back = SessionRecord.from_row(row)
    assert back.frames[0].mode == "RGB" and back.num_turns == 1
    minimal = SessionRecord("s", "v", frames=[np.zeros((4, 4, 3), np.uint8)] * 2, instructions=["x"])
    assert minimal.timestamps == [0.0, 1.0] and minimal.camera_motion == ["static"]
    assert minimal.source_masks == [None] and json.loads(minimal.to_row()["annotator"]) == {"name": "unknown"}


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"instructions": ["only one"]}, "instructions"),
        ({"instructions": ["a", "  "]}, "instructions[1]"),
        ({"frames": [np.zeros((8, 8, 3), np.uint8)]}, "frames"),
        ({"frames": [np.zeros((8, 8, 3), np.uint8)] * 2 + [np.zeros((4, 8, 3), np.uint8)]}, "frames[2]"),
        ({"frames": [np.zeros((8, 8), np.float32)] * 3}, "frames[0]"),
        ({"timestamps": [0.0, 2.0, 1.0]}, "timestamps"),
        ({"timestamps": [0.0, 1.0]}, "timestamps"),
        ({"source_masks": [np.zeros((4, 4), bool)] * 2}, "source_masks[0]"),
        ({"target_masks": [None]}, "target_masks"),
        ({"camera_motion": ["static", ""]}, "camera_motion[1]"),
        ({"annotator": {"model": "x"}}, "annotator"),
        ({"session_id": ""}, "session_id"),
    ],
)
def test_record_validation_names_the_field(overrides, field):
    with pytest.raises(SessionValidationError, match=field.replace("[", r"\[").replace("]", r"\]")):
        _record(3, **overrides)


def test_from_row_missing_column():
    row = _record(2).to_row()
    del row["frames"]
    with pytest.raises(SessionValidationError, match="frames"):
        SessionRecord.from_row(row)


# =====================================================================================================
# load_sessions
# =====================================================================================================


def _assert_same(a: SessionRecord, b: SessionRecord) -> None:
    assert (a.session_id, a.video_id, a.instructions, a.timestamps, a.camera_motion) == (
        b.session_id,
        b.video_id,
        b.instructions,
        b.timestamps,
        b.camera_motion,
    )
    for x, y in zip(a.frames, b.frames):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    for x, y in zip(a.source_masks + a.target_masks, b.source_masks + b.target_masks):
        np.testing.assert_array_equal(mask_to_array(x), mask_to_array(y))


@pytest.fixture(scope="module")
def synthetic_records():
    world = ShapesWorld(resolution=16, grid=2, max_objects=3)
    return [world.sample_session(seed, num_turns=3).to_record() for seed in range(5)]


def test_load_sessions_folder_map_and_streaming(tmp_path, synthetic_records):
    folder = tmp_path / "sessions"
    records_to_dataset(synthetic_records[:3]).to_parquet(str(folder / "data" / "train-00000-of-00002.parquet"))
    records_to_dataset(synthetic_records[3:]).to_parquet(str(folder / "data" / "train-00001-of-00002.parquet"))
    dataset = load_sessions(folder)
    assert len(dataset) == 5 and dataset.features.arrow_schema == SESSION_FEATURES.arrow_schema
    loaded = sorted(iter_session_records(dataset), key=lambda r: r.session_id)
    for original, back in zip(sorted(synthetic_records, key=lambda r: r.session_id), loaded):
        _assert_same(original, back)
    assert loaded[0].annotator["name"] == "ground_truth"
    streamed = list(iter_session_records(load_sessions(str(folder), streaming=True)))
    assert sorted(r.session_id for r in streamed) == sorted(r.session_id for r in synthetic_records)
    single = load_sessions(folder / "data" / "train-00000-of-00002.parquet")
    assert len(single) == 3


def test_load_sessions_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="path_or_repo"):
        load_sessions(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="path_or_repo"):
        load_sessions(str(tmp_path / "missing.parquet"))
    Dataset.from_dict({"text": ["a"]}).to_parquet(str(tmp_path / "other" / "train.parquet"))
    with pytest.raises(ValueError, match="frames"):
        load_sessions(tmp_path / "other")


# =====================================================================================================
# VINCIE-10M adapter
# =====================================================================================================


def _frames(count: int, size: int = 8, offset: int = 0) -> list[PIL.Image.Image]:
    return [PIL.Image.new("RGB", (size, size), (10 * (i + offset), 0, 0)) for i in range(count)]


def test_vincie10m_adapter_default_and_custom_columns(tmp_path):
    rows = [
        {"id": "a", "images": _frames(3), "instructions": ["x", "y"]},
        {"id": "b", "images": _frames(2, offset=5), "instructions": ["z"]},
    ]
    records = list(Vincie10MAdapter(Dataset.from_list(rows)))
    assert [r.session_id for r in records] == ["a", "b"] and records[0].video_id == "a"
    assert records[0].instructions == ["x", "y"] and records[1].frames[1].getpixel((0, 0)) == (60, 0, 0)
    assert records[0].annotator["name"] == "vincie10m" and records[0].timestamps == [0.0, 1.0, 2.0]

    # Another layout: paths relative to a root, JSON-encoded lists, masks, timestamps, camera motion.
    for i, frame in enumerate(_frames(2)):
        frame.save(tmp_path / f"f{i}.png")
    mask = np.zeros((8, 8), np.uint8)
    mask[2:4, 2:4] = 255
    custom = [
        {
            "clip": "v1",
            "paths": ["f0.png", "f1.png"],
            "prompts": json.dumps(["add"]),
            "t": [0.5, 2.0],
            "m0": [PIL.Image.fromarray(mask)],
            "m1": [None],
            "cam": ["pan left"],
        }
    ]
    columns = Vincie10MColumns(
        frames="paths",
        instructions="prompts",
        session_id=None,
        video_id="clip",
        timestamps="t",
        source_masks="m0",
        target_masks="m1",
        camera_motion="cam",
    )
    (record,) = Vincie10MAdapter(custom, columns=columns, image_root=tmp_path, image_size=(4, 4))
    assert record.session_id == "v1/0" and record.video_id == "v1" and record.size == (4, 4)
    assert record.timestamps == [0.5, 2.0] and record.camera_motion == ["pan left"]
    assert mask_to_array(record.source_masks[0]).sum() == 1 and record.target_masks == [None]


def test_vincie10m_adapter_errors():
    rows = [
        {"id": "a", "images": _frames(3), "instructions": ["only one"]},
        {"id": "b", "images": _frames(2), "instructions": ["ok"]},
    ]
    with pytest.raises(ValueError, match="Vincie10MColumns"):
        Vincie10MAdapter(Dataset.from_list(rows), columns=Vincie10MColumns(frames="frames"))
    with pytest.raises(SessionValidationError, match="instructions"):
        list(Vincie10MAdapter(rows))
    adapter = Vincie10MAdapter(rows, on_invalid="skip")
    assert [r.session_id for r in adapter] == ["b"] and adapter.num_skipped == 1
    with pytest.raises(ValueError, match="on_invalid"):
        Vincie10MAdapter(rows, on_invalid="ignore")
    with pytest.raises(SessionValidationError, match="not found"):
        list(Vincie10MAdapter([{"id": "c", "images": ["nope.png", "nope.png"], "instructions": ["x"]}]))


# =====================================================================================================
# Pairwise (MagicBrush-style) adapter
# =====================================================================================================

MAGICBRUSH_FEATURES = Features(
    {
        "img_id": Value("string"),
        "turn_index": Value("int32"),
        "source_img": Image(),
        "mask_img": Image(),
        "instruction": Value("string"),
        "target_img": Image(),
    }
)


def _magicbrush_rows():
    frames = {"s1": _frames(4), "s2": _frames(2, offset=10)}
    rows = []
    for session_id, images in frames.items():
        for turn in range(1, len(images)):
            mask = np.zeros((8, 8), np.uint8)
            mask[:turn, :] = 255
            rows.append(
                {
                    "img_id": session_id,
                    "turn_index": turn,
                    "source_img": images[turn - 1],
                    "mask_img": PIL.Image.fromarray(mask),
                    "instruction": f"{session_id} edit {turn} ",
                    "target_img": images[turn],
                }
            )
    return frames, rows


def test_pairwise_adapter_groups_turns_in_order():
    frames, rows = _magicbrush_rows()
    shuffled = [rows[i] for i in (2, 3, 0, 1)]  # s1 turns 3, then s2, then s1 turns 1 and 2
    dataset = Dataset.from_list(shuffled, features=MAGICBRUSH_FEATURES)
    records = {r.video_id: r for r in PairwiseEditAdapter(dataset)}
    assert set(records) == {"s1", "s2"}
    s1 = records["s1"]
    assert s1.session_id == "magicbrush/s1" and s1.num_turns == 3
    assert s1.instructions == ["s1 edit 1", "s1 edit 2", "s1 edit 3"]
    assert [f.getpixel((0, 0)) for f in s1.frames] == [f.getpixel((0, 0)) for f in frames["s1"]]
    assert s1.timestamps == [0.0, 1.0, 2.0, 3.0] and s1.source_masks == [None] * 3
    assert s1.annotator["first_turn"] == 1

    with_masks = PairwiseEditAdapter(dataset, columns=replace(MAGICBRUSH_COLUMNS, mask="mask_img"), image_size=(4, 4))
    s1 = next(r for r in with_masks if r.video_id == "s1")
    assert s1.size == (4, 4) and [mask_to_array(m)[:, 0].sum() for m in s1.target_masks] == [0, 1, 1]
    assert [r.video_id for r in PairwiseEditAdapter(dataset, min_turns=2)] == ["s1"]


def test_pairwise_adapter_streaming_and_errors():
    _, rows = _magicbrush_rows()
    streaming = Dataset.from_list(rows, features=MAGICBRUSH_FEATURES).to_iterable_dataset()
    assert [r.num_turns for r in PairwiseEditAdapter(streaming)] == [3, 1]
    interleaved = Dataset.from_list([rows[0], rows[3], rows[1], rows[2]], features=MAGICBRUSH_FEATURES)
    with pytest.raises(ValueError, match="not adjacent"):
        list(PairwiseEditAdapter(interleaved.to_iterable_dataset()))
    gap = [row for row in rows if row["turn_index"] != 2]
    with pytest.raises(SessionValidationError, match="consecutive"):
        list(PairwiseEditAdapter(gap))
    adapter = PairwiseEditAdapter(gap, on_invalid="skip")
    assert [r.video_id for r in adapter] == ["s2"] and adapter.num_skipped == 1
    with pytest.raises(ValueError, match="PairwiseEditColumns"):
        PairwiseEditAdapter(rows, columns=PairwiseEditColumns(session_id="session"))
    with pytest.raises(ValueError, match="min_turns"):
        PairwiseEditAdapter(rows, min_turns=0)
    resized = [dict(row) for row in rows]
    resized[1]["target_img"] = PIL.Image.new("RGB", (6, 6))
    with pytest.raises(SessionValidationError, match="frames"):
        list(PairwiseEditAdapter(resized))
