"""pipeline.core.atomic: outputs appear whole or not at all."""
import pytest

from pipeline.core.atomic import atomic_path, write_json


def test_file_replaced_only_on_success(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"a": 2, "half')
            raise RuntimeError("killed mid-write")
    assert target.read_text().strip() == '{\n  "a": 1\n}'
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_directory_swapped_whole(tmp_path):
    target = tmp_path / "clips"
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "old.arrow").write_text("old")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "new.arrow").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.arrow"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clips"]


def test_nothing_written_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing was written"):
        with atomic_path(tmp_path / "x"):
            pass
    assert not (tmp_path / "x").exists()
