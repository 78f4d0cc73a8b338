"""Arrow clip files: schema, tensor columns, metadata, sharding, zero-copy reads."""
import json

import numpy as np
import pyarrow as pa
import pytest

from pipeline.data.clipstore import ClipWriter, read_meta, split_files


def _clip(rng, t=3, s=8):
    return {"rgb": rng.integers(0, 255, (t, s, s, 3), dtype=np.uint8),
            "depth": rng.integers(0, 255, (t, s, s, 1), dtype=np.uint8)}


def test_writer_shards_schema_metadata_and_zero_copy(tmp_path):
    rng = np.random.default_rng(0)
    w = ClipWriter(tmp_path, ["rgb", "depth"], 3, 8, shard_bytes=3000)  # ~ 1 KB a clip: a few shards
    clips = [_clip(rng) for _ in range(40)]
    for i, c in enumerate(clips):
        w.add("train" if i < 36 else "val", c, label=i % 4, video_id=f"v{i}", path=f"p/{i}.avi")
    meta = {"prernn.class_names": ["a", "b", "c", "d"], "prernn.extract": {"frames": 3},
            "prernn.normalization": {"rgb": {"mean": [0.5] * 3, "std": [0.2] * 3}}, "prernn.modalities": ["rgb", "depth"]}
    files = w.finish(meta)
    names = [f.name for f in files]
    assert "test-000.arrow" in names and "val-000.arrow" in names  # an empty split still gets a file
    train = split_files(tmp_path, "train")
    assert len(train) >= 2 and [f.name for f in train] == sorted(f.name for f in train)
    assert not list(tmp_path.glob(".*"))  # no partial files left
    got, labels = [], []
    for f in train:
        with pa.memory_map(str(f)) as src:
            table = pa.ipc.open_file(src).read_all()
            assert table.schema.names == ["rgb", "depth", "label", "video_id", "path"]
            assert table.schema.field("rgb").type == pa.fixed_shape_tensor(pa.uint8(), (3, 8, 8, 3))
            assert table.schema.field("depth").type.shape == [3, 8, 8, 1]
            assert table.schema.field("label").type == pa.int64()
            assert json.loads(table.schema.metadata[b"prernn.class_names"]) == ["a", "b", "c", "d"]
            for chunk in table.column("rgb").chunks:
                arr = chunk.to_numpy_ndarray()
                assert not arr.flags.owndata  # a view of the mapped buffer
                got += list(arr)
            labels += table.column("label").to_pylist()
    np.testing.assert_array_equal(np.stack(got), np.stack([c["rgb"] for c in clips[:36]]))
    assert labels == [i % 4 for i in range(36)]
    assert read_meta(train[0]) == meta
    with pa.memory_map(str(tmp_path / "test-000.arrow")) as src:
        assert pa.ipc.open_file(src).read_all().num_rows == 0


def test_missing_split_files_say_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="no train-NNN.arrow files .*extract"):
        split_files(tmp_path, "train")
