"""Ingest sources: class folders, MMAction2 list files, UCF101 split files, depth pairing, splits, the stage."""
import csv
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.core.params import DataParams, SyntheticParams
from pipeline.data.sources import MANIFEST_COLUMNS, SourceError, ingest, read_manifest, stratified_split, write_manifest
from pipeline.data.synthetic import write_video

ROOT = Path(__file__).parents[1]


def _video(path, frames=5, size=(24, 16), seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tmp = path.with_name(path.name + ".tmp.avi")  # OpenCV's MJPG writer wants .avi; the reader probes content
    write_video(tmp, rng.integers(0, 255, (frames, size[1], size[0], 3), dtype=np.uint8), 10)
    tmp.rename(path)
    return path


def _frames_dir(path, n):
    path.mkdir(parents=True)
    for i in range(n):
        cv2.imwrite(str(path / f"img_{i + 1:05d}.jpg"), np.full((12, 20, 3), i * 10, np.uint8))
    return path


def test_folder_layout_labels_by_sorted_class_name_and_depth_pairs(tmp_path):
    _video(tmp_path / "zoom" / "a.avi", frames=7)
    _video(tmp_path / "zoom" / "b.mp4")
    _video(tmp_path / "clap" / "x_color.avi")
    _video(tmp_path / "clap" / "x_depth.avi")
    _video(tmp_path / "clap" / "y.mkv")
    (tmp_path / "clap" / "notes.txt").write_text("not a video")
    rows, names = ingest(DataParams(source="folder", root=str(tmp_path)), tmp_path / "out")
    assert names == ["clap", "zoom"]
    by_id = {r["video_id"]: r for r in rows}
    assert sorted(by_id) == ["clap/x", "clap/y", "zoom/a", "zoom/b"]  # the depth file is not a video of its own
    assert by_id["clap/x"]["depth_path"].endswith("clap/x_depth.avi")
    assert by_id["clap/y"]["depth_path"] == ""
    assert [by_id[k]["label"] for k in ("clap/x", "zoom/a")] == [0, 1]
    assert by_id["zoom/a"]["frames"] == 7 and by_id["zoom/a"]["width"] == 24 and by_id["zoom/a"]["height"] == 16
    assert by_id["zoom/a"]["fps"] == 10


def test_list_files_videos_and_both_frame_folder_forms(tmp_path):
    _video(tmp_path / "v" / "run.avi", frames=6)
    _frames_dir(tmp_path / "imgs" / "walk", 9)
    _frames_dir(tmp_path / "imgs" / "jump", 10)
    (tmp_path / "a.txt").write_text("v/run.avi 2\nimgs/walk 9 0\n")
    (tmp_path / "b.txt").write_text("# offset form\nimgs/jump 3 5 1\n")
    data = DataParams(source="list", root=str(tmp_path), list_files=[str(tmp_path / "a.txt"), str(tmp_path / "b.txt")],
                      val_fraction=0.0, test_fraction=0.0)
    rows, names = ingest(data, tmp_path / "out")
    by_id = {r["video_id"]: r for r in rows}
    assert by_id["v/run"]["label"] == 2 and by_id["v/run"]["frames"] == 6
    assert by_id["imgs/walk"]["frames"] == 9 and by_id["imgs/walk"]["width"] == 20 and by_id["imgs/walk"]["offset"] == 0
    assert by_id["imgs/jump"]["frames"] == 5 and by_id["imgs/jump"]["offset"] == 3 and by_id["imgs/jump"]["label"] == 1
    assert names == ["class_0", "class_1", "class_2"]  # labels 0 and 1 share the top folder "imgs": no names


def test_ucf101_split_files_with_class_index(tmp_path):
    for cls in ("ApplyEyeMakeup", "Basketball"):
        for i in range(4):
            _video(tmp_path / cls / f"v_{cls}_g0{i}.avi", seed=i)
    (tmp_path / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 Basketball\n")
    (tmp_path / "trainlist01.txt").write_text(
        "".join(f"{c}/v_{c}_g0{i}.avi {k}\n" for k, c in ((1, "ApplyEyeMakeup"), (2, "Basketball")) for i in range(3)))
    (tmp_path / "testlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g03.avi\nBasketball/v_Basketball_g03.avi\n")
    data = DataParams(source="list", root=str(tmp_path), class_index=str(tmp_path / "classInd.txt"),
                      split_files={"train": str(tmp_path / "trainlist01.txt"), "test": str(tmp_path / "testlist01.txt")},
                      val_fraction=0.34)
    rows, names = ingest(data, tmp_path / "out")
    assert names == ["ApplyEyeMakeup", "Basketball"]
    split = {r["video_id"]: (r["split"], r["label"]) for r in rows}
    assert split["Basketball/v_Basketball_g03"] == ("test", 1)
    assert split["ApplyEyeMakeup/v_ApplyEyeMakeup_g03"] == ("test", 0)
    # val is carved from the train list, one per class (stratified)
    assert sorted(lab for s, lab in split.values() if s == "val") == [0, 1]
    assert sum(s == "train" for s, _ in split.values()) == 4


@pytest.mark.parametrize("bad", ["../outside.avi", "v/../../outside.avi", "ABS"])
def test_list_path_escaping_the_root_is_rejected(tmp_path, bad):
    root = tmp_path / "root"
    _video(root / "v" / "ok.avi")
    outside = _video(tmp_path / "outside.avi")
    bad = str(outside) if bad == "ABS" else bad
    (tmp_path / "list.txt").write_text(f"v/ok.avi 0\n{bad} 0\n")
    data = DataParams(source="list", root=str(root), list_files=[str(tmp_path / "list.txt")])
    with pytest.raises(SourceError, match=r"list.txt:2: path .* escapes the data root"):
        ingest(data, tmp_path / "out")


def test_malformed_list_line_names_file_and_line(tmp_path):
    (tmp_path / "list.txt").write_text("a.avi zero\n")
    data = DataParams(source="list", root=str(tmp_path), list_files=[str(tmp_path / "list.txt")])
    with pytest.raises(SourceError, match="list.txt:1"):
        ingest(data, tmp_path / "out")


def test_stratified_split_is_seeded_and_per_class():
    labels = [0] * 10 + [1] * 5
    a = stratified_split(labels, 0.2, 0.2, seed=0)
    assert a == stratified_split(labels, 0.2, 0.2, seed=0)
    assert a != stratified_split(labels, 0.2, 0.2, seed=1)
    for lab, n_val, n_test in ((0, 2, 2), (1, 1, 1)):
        got = [s for s, l in zip(a, labels) if l == lab]
        assert (got.count("val"), got.count("test")) == (n_val, n_test)
    assert stratified_split([0, 1], 0.4, 0.4, seed=0) == ["train", "train"]  # a class never loses all its train clips


def test_synthetic_source_manifest_roundtrip(tmp_path):
    data = DataParams(synthetic=SyntheticParams(classes=["push", "pull"], clips_per_class=5, frames=4, size=16))
    rows, names = ingest(data, tmp_path / "work", final_dir=tmp_path / "final")
    assert names == ["push", "pull"] and len(rows) == 10
    assert all(r["path"].startswith(str(tmp_path / "final" / "videos")) and r["depth_path"] for r in rows)
    assert all((r["frames"], r["width"], r["height"]) == (4, 16, 16) for r in rows)
    write_manifest(rows, tmp_path / "m.csv")
    with open(tmp_path / "m.csv") as fh:
        assert next(csv.reader(fh)) == MANIFEST_COLUMNS
    back = read_manifest(tmp_path / "m.csv")
    assert [(r["video_id"], r["label"], r["split"]) for r in back] == [(r["video_id"], r["label"], r["split"]) for r in rows]


def test_ingest_stage_writes_manifest_and_rejects_bad_params(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("data:\n  synthetic: {classes: [swipe_up, swipe_down], clips_per_class: 3, frames: 4, size: 16}\n")
    out = tmp_path / "ingest"
    run = subprocess.run([sys.executable, "-m", "stages.ingest", "--params", str(params), "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "6 videos, 2 classes" in run.stdout
    assert len(read_manifest(out / "manifest.csv")) == 6 and (out / "videos" / "swipe_up").is_dir()
    params.write_text("data:\n  source: folder\n  sourse: x\n")
    run = subprocess.run([sys.executable, "-m", "stages.ingest", "--params", str(params), "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 2 and "data.sourse: unknown key" in run.stderr


def test_symlinked_folder_inside_the_root_is_allowed(tmp_path):
    _video(tmp_path / "elsewhere" / "a.avi")
    root = tmp_path / "root"
    root.mkdir()
    (root / "v").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "list.txt").write_text("v/a.avi 0\n")
    rows, _ = ingest(DataParams(source="list", root=str(root), list_files=[str(tmp_path / "list.txt")]), tmp_path / "o")
    assert [r["video_id"] for r in rows] == ["v/a"] and rows[0]["frames"] == 5
