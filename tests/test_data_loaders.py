"""Tests of the session schema (SessionRecord <-> dataset rows) and of the dataset loaders/adapters."""

import json

import numpy as np
import PIL.Image
import pytest
from datasets import Dataset, Image, List, load_dataset

from diffusers_vincie.data.schema import SESSION_FEATURES, SessionRecord, SessionValidationError, mask_to_array


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
