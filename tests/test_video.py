"""Decode / sample / resize / flow of one video (pipeline.data.video), on real clips and on videos made here."""
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.core.params import ExtractParams
from pipeline.data.synthetic import write_video
from pipeline.data.video import VideoError, decode_flow, encode_flow, read_clip, resize_frame, sample_indices, stream_frames

VIDEOS = Path(__file__).parents[1] / ".." / "shared" / "videos"
REAL = ["test.avi", "test.mp4", "part_0.mp4"]
needs_real = pytest.mark.skipif(not (VIDEOS / "part_0.mp4").is_file(),
                                reason=f"real test videos not found in {VIDEOS} (only the project's own checkout has them)")


def _params(**kw):
    return ExtractParams(**{"frames": 4, "size": 16, "modalities": ["rgb", "flow"], **kw}).model_dump()


def _bare_count(path):
    cap, n = cv2.VideoCapture(str(path)), 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


@needs_real
@pytest.mark.parametrize("name", REAL)
def test_decoded_frame_count_matches_opencv(name):
    info = {}
    clip = read_clip(VIDEOS / name, _params(), info=info)
    assert info["decoded_frames"] == _bare_count(VIDEOS / name)
    assert clip["rgb"].shape == (4, 16, 16, 3) and clip["rgb"].dtype == np.uint8
    assert clip["flow"].shape == (4, 16, 16, 3) and clip["flow"].dtype == np.uint8


@needs_real
def test_sampled_frames_are_the_decoded_frames_at_the_sampled_indices():
    path = VIDEOS / "part_0.mp4"
    p = _params(frames=3, sampling="consecutive", stride=5, size=24, resize="stretch")
    cap, frames = cv2.VideoCapture(str(path)), []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
    idx = sample_indices(len(frames), 3, "consecutive", 5)
    assert list(idx) == [(32 - 11) // 2 + k * 5 for k in range(3)]
    want = np.stack([cv2.resize(frames[i], (24, 24), interpolation=cv2.INTER_AREA) for i in idx])
    np.testing.assert_array_equal(read_clip(path, p)["rgb"], want)


@needs_real
def test_resize_modes_keep_the_aspect_handling_asked_for():
    path = VIDEOS / "part_0.mp4"  # 340 x 256, landscape
    pad = read_clip(path, _params(resize="pad", size=34, frames=2, modalities=["rgb"]))["rgb"]
    # 256 * 34 / 340 = 25.6 -> 26 rows of picture, 4 black rows above and below
    assert pad[:, :4].max() == 0 and pad[:, -4:].max() == 0 and pad[:, 4:30].max() > 0
    crop = read_clip(path, _params(resize="center_crop", size=32, frames=2, modalities=["rgb"]))["rgb"]
    stretch = read_clip(path, _params(resize="stretch", size=32, frames=2, modalities=["rgb"]))["rgb"]
    assert crop.shape == stretch.shape == (2, 32, 32, 3)
    assert not np.array_equal(crop, stretch)


def test_resize_frame_geometry():
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, 10:30] = 255  # the central 20 x 20 square is white
    assert resize_frame(img, 10, "center_crop").min() == 255
    padded = resize_frame(img, 10, "pad")  # 40 x 20 -> 10 x 5, rows 2..6 hold the picture
    assert padded[:2].max() == 0 and padded[-3:].max() == 0 and padded[3:6, 4:6].min() == 255
    assert resize_frame(img, 10, "stretch").shape == (10, 10, 3)
    assert resize_frame(img[..., 0], 8, "pad").shape == (8, 8)


def _moving(path, still, frames=10, size=48):
    rng = np.random.default_rng(0)
    bg = cv2.GaussianBlur(rng.integers(0, 255, (size, size, 3), dtype=np.uint8), (5, 5), 0)
    out = []
    for t in range(frames):
        f = bg.copy()
        x = 10 if still else 6 + 3 * t
        cv2.rectangle(f, (x, 14), (x + 12, 30), (255, 255, 255), -1)
        out.append(f)
    write_video(path, np.stack(out), 10)
    return path


@pytest.mark.parametrize("method", ["dis", "farneback"])
def test_flow_near_zero_when_still_and_clearly_nonzero_when_moving(tmp_path, method):
    p = _params(frames=5, size=48, sampling="consecutive", stride=1, flow_method=method, flow_bound=8.0)
    still = read_clip(_moving(tmp_path / "still.avi", True), p)["flow"]
    moving = read_clip(_moving(tmp_path / "moving.avi", False), p)["flow"]
    dx_still, dx_moving = decode_flow(still, 8.0)[..., 0], decode_flow(moving, 8.0)[..., 0]
    assert np.abs(dx_still).mean() < 0.1
    assert dx_moving[1:, 14:30, 10:30].mean() > 1.0  # the square moves 3 px right per frame
    np.testing.assert_array_equal(moving[0], encode_flow(np.zeros((48, 48, 2), np.float32), 8.0))


@needs_real
def test_flow_nonzero_on_real_video():
    flow = read_clip(VIDEOS / "test.avi", _params(frames=6, size=32))["flow"]
    assert flow[1:, ..., 2].mean() > flow[0, ..., 2].mean() + 1


def test_flow_encoding_bounds():
    f = np.array([[[0.0, 0.0], [5.0, -5.0], [50.0, -50.0], [-2.5, 0.0]]], np.float32)
    enc = encode_flow(f, 5.0)
    assert enc[0, 0].tolist() == [128, 128, 0]
    assert enc[0, 1].tolist() == [255, 0, 255]  # at the bound; magnitude bound*sqrt(2) -> 255
    assert enc[0, 2].tolist() == [255, 0, 255]  # clipped
    assert enc[0, 3, 0] == 64 and enc[0, 3, 2] == 90  # -2.5 -> 63.75; |2.5| / (5 sqrt 2) * 255 = 90.2
    np.testing.assert_allclose(decode_flow(enc, 5.0)[0, 1], [5.0, -5.0])


def test_sampling_and_short_videos(tmp_path):
    assert list(sample_indices(10, 5, "uniform", 1)) == [1, 3, 5, 7, 9]
    assert list(sample_indices(5, 5, "uniform", 1)) == [0, 1, 2, 3, 4]
    assert list(sample_indices(10, 3, "consecutive", 3)) == [1, 4, 7]  # centred
    with pytest.raises(VideoError, match="4 frames, need 5"):
        sample_indices(4, 5, "uniform", 1)
    short = _moving(tmp_path / "short.avi", False, frames=3)
    with pytest.raises(VideoError, match="3 frames, need 4"):
        read_clip(short, _params())


def test_depth_video_read_as_one_channel(tmp_path):
    color = _moving(tmp_path / "a_color.avi", False)
    depth = tmp_path / "a_depth.avi"
    write_video(depth, np.stack([np.full((48, 48), 10 * t, np.uint8) for t in range(10)]), 10)
    clip = read_clip(color, _params(modalities=["rgb", "depth"], sampling="consecutive", stride=3), depth_path=depth)
    assert clip["depth"].shape == (4, 16, 16, 1)
    assert np.abs(clip["depth"][:, 8, 8, 0].astype(int) - [0, 30, 60, 90]).max() <= 3
    assert set(clip) == {"rgb", "depth"}


def test_stream_frames_matches_read_clip(tmp_path):
    path = _moving(tmp_path / "m.avi", False)
    p = _params(frames=10, sampling="consecutive", stride=1, size=24)
    clip = read_clip(path, p)
    streamed = list(stream_frames(path, p))
    assert len(streamed) == 10
    np.testing.assert_array_equal(np.stack([r for r, _ in streamed]), clip["rgb"])
    np.testing.assert_array_equal(np.stack([f for _, f in streamed]), clip["flow"])


@pytest.mark.parametrize("content,reason", [(b"", "empty file"), (b"hello, not a video\n" * 20, "cannot be opened")])
def test_unusable_files_raise_with_reason(tmp_path, content, reason):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(content)
    with pytest.raises(VideoError, match=reason):
        read_clip(bad, _params())


def test_frame_folder_with_offset_and_total(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(12):
        cv2.imwrite(str(folder / f"img_{i + 1:05d}.png"), np.full((10, 14, 3), 20 * i, np.uint8))
    (folder / "notes.txt").write_text("ignored")
    p = _params(frames=4, sampling="consecutive", stride=1, modalities=["rgb"])
    rgb = read_clip(folder, p, offset=2, total=6)["rgb"]  # images 2..7, the centred 4 are 3..6
    assert rgb[:, 0, 0, 0].tolist() == [60, 80, 100, 120]
    with pytest.raises(VideoError, match="3 frames, need 4"):
        read_clip(folder, p, offset=9)
