"""utils.io: a write that fails leaves the old content and no temporary; folders are replaced only when asked."""

import pytest

from diffusers_vincie.utils.io import atomic_directory, atomic_path, atomic_write, write_json_atomic


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "results.json"
    write_json_atomic(path, {"score": 1})
    with pytest.raises(RuntimeError, match="disk on fire"), atomic_write(path) as stream:
        stream.write('{"score": 2')
        raise RuntimeError("disk on fire")
    assert path.read_text() == '{\n  "score": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_atomic_path_keeps_the_suffix_for_writers_that_pick_a_format_by_extension(tmp_path):
    import PIL.Image

    with atomic_path(tmp_path / "grid.png") as temporary:
        assert temporary.suffix == ".png" and temporary.name.startswith(".")
        PIL.Image.new("RGB", (2, 2)).save(temporary)
    assert PIL.Image.open(tmp_path / "grid.png").format == "PNG"


def test_atomic_path_refuses_a_writer_that_wrote_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing was written"), atomic_path(tmp_path / "a.bin"):
        pass
    assert not list(tmp_path.iterdir())


def test_atomic_directory_refuses_an_existing_folder_unless_replace(tmp_path):
    target = tmp_path / "pipeline"
    target.mkdir()
    (target / "thesis.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="already exists"), atomic_directory(target):
        pass
    assert (target / "thesis.txt").read_text() == "keep me"

    with atomic_directory(target, replace=True) as temporary:
        (temporary / "model.safetensors").write_bytes(b"new")
    assert sorted(p.name for p in target.iterdir()) == ["model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipeline"]  # the old folder and the temporary are gone


def test_a_failed_folder_write_keeps_the_old_folder(tmp_path):
    target = tmp_path / "pipeline"
    target.mkdir()
    (target / "a.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_directory(target, replace=True) as temporary:
        (temporary / "a.txt").write_text("half")
        raise KeyboardInterrupt
    assert (target / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipeline"]
