"""bench.memory's mechanism at a tiny scale (no memory figures asserted): each child's own peak RSS, the long
test video, and a whole run printing its two `target` lines."""
import re
import sys

import cv2

from bench import memory


def test_peak_rss_is_the_childs_own_not_the_largest_so_far(tmp_path):
    ballast = b"y" * (400 << 20)  # this process holds 400 MB more, as a parent that imported torch does  # noqa: F841
    big, _ = memory.peak_rss_mb([sys.executable, "-c", "b = b'x' * (300 << 20)"], tmp_path)
    small, _ = memory.peak_rss_mb([sys.executable, "-c", "b = b'x' * (10 << 20)"], tmp_path)
    assert big > 300 and small < big - 200  # wait4 / RUSAGE_CHILDREN would give at least the parent's RSS for both


def test_long_video_has_the_frames_asked_for(tmp_path):
    video = memory.write_long_video(tmp_path / "v.avi", 30, 25)
    cap = cv2.VideoCapture(str(video))
    n = 0
    while cap.grab():
        n += 1
    assert n == 30 and (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (640, 480)
    cap.release()


def test_tiny_run_prints_both_targets(capsys):
    memory.main(["--seconds", "0.4", "--factor", "2"])  # 10 and 20 frames: extract's T = 8 needs 8
    out = capsys.readouterr().out
    assert re.search(r"^1x: peak RSS extract \d+ MB .* predict --stream \d+ MB", out, re.M)
    for name in ("extract", "stream"):
        assert re.search(rf"^target {name}_memory_2x: \d+\.\d\d \(goal 1\.2\) (ok|miss)$", out, re.M), out
