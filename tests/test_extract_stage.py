"""The extract stage: bad videos skipped and reported, strict mode, worker-count independence, outputs."""
import hashlib
import re
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline.data.extraction import extract_manifest, failure
from pipeline.core.params import DataParams, ExtractParams, SyntheticParams
from pipeline.data.sources import ingest, write_manifest
from pipeline.data.synthetic import write_video

VIDEOS = Path(__file__).parents[1] / ".." / "shared" / "videos"
EXTRACT = dict(frames=4, size=16, modalities=["rgb", "flow"], workers=1)


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """A folder source: 4 good synthetic-style videos and 4 bad ones; returns (root, manifest path)."""
    root = tmp_path_factory.mktemp("messy")
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        for i in range(2):
            (root / cls).mkdir(exist_ok=True)
            write_video(root / cls / f"good{i}.avi", rng.integers(0, 255, (12, 20, 20, 3), dtype=np.uint8), 10)
    write_video(root / "a" / "long.avi", rng.integers(0, 255, (24, 20, 20, 3), dtype=np.uint8), 10)
    data = (root / "a" / "long.avi").read_bytes()
    (root / "a" / "truncated.avi").write_bytes(data[: len(data) // 2])
    (root / "a" / "long.avi").unlink()
    (root / "b" / "empty.mp4").write_bytes(b"")
    (root / "b" / "text.mp4").write_text("this is not a video\n" * 50)
    write_video(root / "b" / "short.avi", rng.integers(0, 255, (2, 20, 20, 3), dtype=np.uint8), 10)
    rows, names = ingest(DataParams(source="folder", root=str(root), val_fraction=0.0, test_fraction=0.0), root)
    manifest = root / "manifest.csv"
    write_manifest(rows, manifest)
    return root, manifest


def _params_file(tmp_path, **extract):
    path = tmp_path / "params.yaml"
    path.write_text("extract: " + json.dumps({**EXTRACT, **extract}) + "\n")
    return path


def _run(tmp_path, manifest, **extract):
    from stages.extract import main

    out, report = tmp_path / "clips", tmp_path / "extract.json"
    argv = ["--params", str(_params_file(tmp_path, **extract)), "--manifest", str(manifest), "--out", str(out),
            "--report", str(report), "--no-progress"]
    try:
        main(argv)
        code = 0
    except SystemExit as err:
        code = err.code
    return code, out, json.loads(report.read_text()) if report.exists() else None


def test_bad_videos_are_skipped_and_reported_by_name(tmp_path, messy, capsys):
    _, manifest = messy
    code, out, report = _run(tmp_path, manifest)
    assert code == 0
    reasons = {Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    assert set(reasons) == {"truncated.avi", "empty.mp4", "text.mp4", "short.avi"}
    assert reasons["empty.mp4"] == "empty file"
    assert reasons["short.avi"] == "2 frames, need 4"
    assert re.fullmatch(r"decode stopped at frame 1[0-3] of 24", reasons["truncated.avi"])
    assert report["kept"] == 4
    with pa.memory_map(str(out / "train-000.arrow")) as src:
        table = pa.ipc.open_file(src).read_all()
    assert sorted(Path(p).name for p in table.column("path").to_pylist()) == ["good0.avi", "good0.avi", "good1.avi", "good1.avi"]
    line = capsys.readouterr().out
    assert "kept 4, skipped 4 of 8" in line and "text.mp4" in line


def test_strict_mode_and_skip_fraction_fail_naming_the_videos(tmp_path, messy, capsys):
    _, manifest = messy
    code, out, report = _run(tmp_path, manifest, strict=True)
    err = capsys.readouterr().err
    assert code == 1 and not out.exists()
    assert all(n in err for n in ("truncated.avi", "empty.mp4", "text.mp4", "short.avi"))
    assert report["failed"].startswith("extract.strict")
    code, _, _ = _run(tmp_path, manifest, max_skipped_fraction=0.4)
    assert code == 1 and "more than extract.max_skipped_fraction 0.4" in capsys.readouterr().err


def test_failure_rule():
    report = {"skipped": [{"path": "x.avi", "reason": "empty file"}], "total": 4, "kept": 3}
    assert failure(report, ExtractParams(max_skipped_fraction=0.5)) is None
    assert "x.avi: empty file" in failure(report, ExtractParams(max_skipped_fraction=0.2))
    assert "x.avi" in failure(report, ExtractParams(strict=True))


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.arrow"))}


def test_output_is_identical_whatever_the_worker_count(tmp_path):
    data = DataParams(synthetic=SyntheticParams(classes=["swipe_left", "swipe_right"], clips_per_class=4, frames=6, size=16))
    rows, names = ingest(data, tmp_path / "ingest")
    params = ExtractParams(**EXTRACT, shard_mb=1)
    digests = []
    for workers in (1, 2):
        out = tmp_path / f"clips{workers}"
        report = extract_manifest(rows, names, params, out, workers=workers, progress=False)
        assert report["kept"] == 8 and report["workers"] == workers
        digests.append(_digests(out))
    assert digests[0] == digests[1] and set(digests[0]) == {"train-000.arrow", "val-000.arrow", "test-000.arrow"}


@pytest.mark.skipif(not (VIDEOS / "test.avi").is_file(), reason=f"real test videos not found in {VIDEOS}")
def test_real_videos_through_list_source(tmp_path):
    root = tmp_path / "root"
    shutil.copytree(VIDEOS, root / "clips", ignore=shutil.ignore_patterns("*.md", "LICENSE*"))
    (tmp_path / "list.txt").write_text("clips/test.avi 0\nclips/test.mp4 1\nclips/part_0.mp4 1\n")
    data = DataParams(source="list", root=str(root), list_files=[str(tmp_path / "list.txt")], val_fraction=0.0,
                      test_fraction=0.0)
    rows, names = ingest(data, tmp_path)
    assert [r["frames"] for r in rows] == [164, 300, 32]  # the container counts agree with the decoded counts
    report = extract_manifest(rows, names, ExtractParams(**EXTRACT), tmp_path / "clips", workers=1, progress=False)
    assert report["kept"] == 3 and not report["skipped"]


def test_depth_only_where_the_source_has_it(tmp_path, messy):
    _, manifest = messy  # a folder source without depth videos
    code, out, report = _run(tmp_path, manifest, modalities=["rgb", "flow", "depth"])
    assert code == 0 and report["modalities"] == ["rgb", "flow"]
    with pa.memory_map(str(out / "train-000.arrow")) as src:
        schema = pa.ipc.open_file(src).schema
    assert schema.names == ["rgb", "flow", "label", "video_id", "path"]
    assert json.loads(schema.metadata[b"prernn.modalities"]) == ["rgb", "flow"]


def test_plan_tasks_puts_costly_videos_first_in_each_window_and_covers_every_row():
    from pipeline.data.extraction import in_manifest_order, plan_tasks

    rows = [{"frames": 10, "width": 48, "height": 48} for _ in range(150)]
    for i in (5, 70, 149):
        rows[i] = {"frames": 300, "width": 340, "height": 256}
    tasks = plan_tasks(rows, workers=2, window=64)
    flat = [i for t in tasks for i in t]
    assert sorted(flat) == list(range(150))
    assert [t for t in tasks if 149 in t] == [[149]] and [5] in tasks  # a long video is a task of its own
    windows = [i // 64 for i in flat]
    assert windows == sorted(windows)  # the windows are handed out one after the other
    starts = [windows.index(w) for w in (0, 1, 2)]
    assert [flat[k] for k in starts] == [5, 70, 149]  # each window's costliest video first
    assert flat[starts[0] + 1:starts[0] + 4] == [0, 1, 2]  # equal costs keep manifest order
    assert max(len(t) for t in tasks) <= 16
    results = [[f"r{i}" for i in t] for t in tasks]
    assert list(in_manifest_order(tasks, results)) == [f"r{i}" for i in range(150)]


@pytest.mark.skipif(not (VIDEOS / "test.mp4").is_file(), reason=f"real test videos not found in {VIDEOS}")
def test_mixed_lengths_reordered_for_the_pool_still_give_identical_files(tmp_path):
    data = DataParams(synthetic=SyntheticParams(classes=["swipe_left", "swipe_right"], clips_per_class=6, frames=6, size=16))
    rows, names = ingest(data, tmp_path / "ingest")
    root = tmp_path / "real" / "real"
    root.mkdir(parents=True)
    for name in ("test.mp4", "part_0.mp4"):
        shutil.copy(VIDEOS / name, root / name)
    more, _ = ingest(DataParams(source="folder", root=str(tmp_path / "real"), val_fraction=0, test_fraction=0),
                     tmp_path / "real-ingest")
    rows = rows[:5] + [{**more[0], "label": 0}] + rows[5:] + [{**more[1], "label": 1}]  # long videos mid and last
    for r in rows:
        r["depth_path"] = ""
    params = ExtractParams(**EXTRACT, shard_mb=1)
    digests = []
    for workers in (1, 2):
        out = tmp_path / f"clips{workers}"
        report = extract_manifest(rows, names, params, out, workers=workers, progress=False)
        assert report["kept"] == len(rows), report["skipped"]
        digests.append(_digests(out))
    assert digests[0] == digests[1]
