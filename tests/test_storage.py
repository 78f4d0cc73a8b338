"""pipeline.core.storage: the search's storage_path as a local folder or a pyarrow filesystem URI (same behaviour)."""
import pytest

from pipeline.core.storage import StoragePath


@pytest.mark.parametrize("form", ["relative", "uri"])
def test_local_path_and_uri_read_write_remove_alike(tmp_path, form):
    root = StoragePath.resolve("store" if form == "relative" else (tmp_path / "store").as_uri(), tmp_path)
    exp = root / "search-rgb-abc"
    state = exp / "prernn_search.json"
    assert exp.name == "search-rgb-abc" and not state.exists()
    state.write_text('{"parent_run_id": "p"}')
    assert state.exists() and state.read_text() == '{"parent_run_id": "p"}'
    assert (tmp_path / "store" / "search-rgb-abc" / "prernn_search.json").is_file()  # the same place on disk
    assert str(root) == (str(tmp_path / "store") if form == "relative" else (tmp_path / "store").as_uri())
    exp.rmtree()
    assert not state.exists() and not (tmp_path / "store" / "search-rgb-abc").exists()
