"""pipeline.data.landmarks: the .pts reader, coordinate normalisation, 300VW scan, the synthetic set."""
import numpy as np
import pytest

from pipeline.data.landmarks import (LandmarkError, annotation_files, normalise_points, read_pts, render_clip,
                                scan_300vw, write_pts)
from pipeline.core.params import SyntheticLandmarkParams


def test_read_pts_written_by_hand(tmp_path):
    path = tmp_path / "000001.pts"
    lines = ["version: 1", "n_points: 68", "{"] + [f"{i + 0.5} {2 * i}" for i in range(68)] + ["}"]
    path.write_text("\n".join(lines) + "\n")
    pts = read_pts(path)
    assert pts.shape == (68, 2)
    assert pts[0].tolist() == [0.5, 0.0] and pts[67].tolist() == [67.5, 134.0]


def test_pts_round_trip_and_errors(tmp_path):
    pts = np.array([[1.25, 2.5], [3.0, 4.75], [10.0, 0.0]])
    write_pts(tmp_path / "a.pts", pts)
    assert np.allclose(read_pts(tmp_path / "a.pts"), pts)
    (tmp_path / "bad.pts").write_text("version: 1\nn_points: 3\n{\n1 2\n}\n")
    with pytest.raises(LandmarkError, match="n_points is 3 but 1"):
        read_pts(tmp_path / "bad.pts")
    (tmp_path / "bad2.pts").write_text("version: 1\nn_points: 1\n{\n1 x\n}\n")
    with pytest.raises(LandmarkError, match="expected `x y`"):
        read_pts(tmp_path / "bad2.pts")


def test_normalise_points_follows_the_resize():
    pts = np.array([[99.5, 49.5], [-0.5, -0.5]])  # a 200 x 100 frame: centre and top-left corner
    assert np.allclose(normalise_points(pts, 200, 100, 32, "stretch"), [[0.5, 0.5], [0, 0]])
    # centre crop keeps the central 100 x 100: x offset 50
    assert np.allclose(normalise_points(pts, 200, 100, 32, "center_crop"), [[0.5, 0.5], [-0.5, 0]])
    # pad: 200 x 100 -> 32 x 16 placed at y offset 8
    assert np.allclose(normalise_points(pts, 200, 100, 32, "pad"), [[0.5, 0.5], [0, 0.25]])


def test_scan_300vw_layout(tmp_path):
    for name in ("001", "002"):
        (tmp_path / name / "annot").mkdir(parents=True)
        (tmp_path / name / "vid.avi").write_bytes(b"x")
        write_pts(tmp_path / name / "annot" / "000001.pts", np.zeros((68, 2)))
    (tmp_path / "003").mkdir()  # no video: ignored
    entries = scan_300vw(tmp_path)
    assert [e["path"].parent.name for e in entries] == ["001", "002"]
    assert len(annotation_files(entries[0]["path"])) == 1


def test_synthetic_clip_moves_smoothly_and_shows_landmarks():
    p = SyntheticLandmarkParams(points=8, frames=20, size=32, noise=0.0, blur=0.0, occlusion=0.0)
    rgb, pts = render_clip(np.random.default_rng(1), p)
    assert rgb.shape == (20, 32, 32, 3) and pts.shape == (20, 8, 2)
    step = np.abs(np.diff(pts, axis=0)).max()
    assert 0 < step < 4  # pixels per frame: smooth motion
    t = 3
    x, y = np.clip(np.round(pts[t, 0]).astype(int), 0, 31)
    corner = rgb[t, 0, 0].astype(int)
    assert np.abs(rgb[t, y, x].astype(int) - corner).sum() > 30  # a landmark dot differs from the background
