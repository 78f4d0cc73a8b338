"""Decode, sample, resize and compute optical flow for one video (shared by extract and `prernn predict`).

`read_clip(path, extract_params, depth_path=None, offset=0, total=None)` -> {"rgb": (T,H,W,3),
"flow": (T,H,W,3), "depth": (T,H,W,1)} uint8 (only the requested modalities), or raises
`VideoError(reason)`. `stream_frames(path, extract_params)` yields (rgb (H,W,3), flow (H,W,3)) one
decoded frame at a time, flow measured against the previous yielded frame.

Flow (patent [0024], flow as three colour channels): dense flow between consecutive sampled
frames (DIS or Farneback, at the output size, in pixels), dx, dy clipped to [-bound, bound] and
mapped linearly to [0, 255], magnitude of the clipped vector mapped from [0, bound*sqrt(2)] to
[0, 255]. flow[0] is the encoding of zero motion.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from pipeline.data.paths import list_images

DIS_PRESETS = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
               "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}


class VideoError(RuntimeError):
    """A video that cannot be used; str(err) is the reason written to reports/extract.json."""


def _params(p) -> dict:
    return p.model_dump() if hasattr(p, "model_dump") else dict(p)


def sample_indices(n: int, frames: int, sampling: str, stride: int) -> np.ndarray:
    """Indices of the T sampled frames among n decoded ones.

    uniform: the middle frame of each of T equal segments (needs n >= T);
    consecutive: T frames `stride` apart, centred in the video (needs n >= (T-1)*stride+1).
    """
    if sampling == "uniform":
        if n < frames:
            raise VideoError(f"{n} frames, need {frames}")
        return np.floor((np.arange(frames) + 0.5) * n / frames).astype(np.int64)
    span = (frames - 1) * stride + 1
    if n < span:
        raise VideoError(f"{n} frames, need {span}")
    return (n - span) // 2 + np.arange(frames) * stride


def resize_frame(img: np.ndarray, size: int, mode: str) -> np.ndarray:
    """(h, w, C) -> (size, size, C): stretch, center_crop (central square) or pad (fit, black borders)."""
    h, w = img.shape[:2]
    if mode == "center_crop":
        s = min(h, w)
        y, x = (h - s) // 2, (w - s) // 2
        img = img[y:y + s, x:x + s]
    elif mode == "pad":
        scale = size / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        small = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
        out = np.zeros((size, size) + img.shape[2:], img.dtype)
        y, x = (size - nh) // 2, (size - nw) // 2
        out[y:y + nh, x:x + nw] = small.reshape(out[y:y + nh, x:x + nw].shape)
        return out
    out = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    return out.reshape((size, size) + img.shape[2:])


def encode_flow(flow: np.ndarray, bound: float) -> np.ndarray:
    """(..., H, W, 2) float flow in pixels -> (..., H, W, 3) uint8 (dx, dy, magnitude), per patent [0024]."""
    if flow.ndim > 3:  # a stack of flows: one pass of each OpenCV call over (N*H, W)
        return encode_flow(flow.reshape(-1, *flow.shape[-2:]), bound).reshape(flow.shape[:-1] + (3,))
    fx, fy = cv2.split(np.clip(flow, -bound, bound).astype(np.float32, copy=False))
    mag = cv2.magnitude(fx, fy)  # of the clipped vector, so within [0, bound*sqrt(2)]
    # convertScaleAbs: saturate(round(|a*x + b|)), round half to even like np.rint; all values are >= 0 here
    dx = cv2.convertScaleAbs(fx, alpha=255.0 / (2 * bound), beta=127.5)
    dy = cv2.convertScaleAbs(fy, alpha=255.0 / (2 * bound), beta=127.5)
    m = cv2.convertScaleAbs(mag, alpha=255.0 / (bound * math.sqrt(2)))
    return cv2.merge([dx, dy, m])


def decode_flow(encoded: np.ndarray, bound: float) -> np.ndarray:
    """Inverse of encode_flow for dx, dy: (..., 3) uint8 -> (..., 2) float32 pixels (quantised)."""
    return encoded[..., :2].astype(np.float32) * (2 * bound / 255.0) - bound


class FlowComputer:
    """Dense flow between two grey uint8 frames with the configured OpenCV method."""

    def __init__(self, method: str = "dis", preset: str = "fast"):
        self.method = method
        self._dis = cv2.DISOpticalFlow_create(DIS_PRESETS[preset]) if method == "dis" else None

    def __call__(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:  # (H, W) x2 -> (H, W, 2)
        if self._dis is not None:
            return self._dis.calc(prev, nxt, None)
        return cv2.calcOpticalFlowFarneback(prev, nxt, None, 0.5, 3, 9, 3, 5, 1.1, 0)


def _open(path: Path, threads: int = 1) -> cv2.VideoCapture:
    """Open a video; threads=1 (default) decodes on one core, as extract's worker processes want; 0: FFmpeg's choice."""
    try:
        size = os.stat(path).st_size  # one stat for "exists" and "not empty"
    except FileNotFoundError:
        raise VideoError("no such file") from None
    if size == 0:
        raise VideoError("empty file")
    cap = cv2.VideoCapture(str(path), cv2.CAP_ANY, [cv2.CAP_PROP_N_THREADS, threads] if threads else [])
    if not cap.isOpened():
        cap.release()
        raise VideoError("cannot be opened by OpenCV")
    return cap


def _decode_video(path: Path, pick) -> tuple[dict[int, np.ndarray], int]:
    """Decode every frame; keep (as BGR, as decoded) those for which pick(i, n_meta) is true. -> (kept, count)."""
    cap = _open(path)
    try:
        n_meta = max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
        kept, i = {}, 0
        while True:
            try:
                if not cap.grab():
                    break
                if pick(i, n_meta):
                    ok, frame = cap.retrieve()
                    if not ok or frame is None:
                        raise VideoError(f"decode failed at frame {i}")
                    kept[i] = frame
            except cv2.error as err:
                raise VideoError(f"decode failed at frame {i}: {str(err).strip().splitlines()[-1]}") from None
            i += 1
    finally:
        cap.release()
    if i == 0:
        raise VideoError("no frames")
    if n_meta > 2 and i < 0.9 * n_meta and n_meta - i > 2:
        raise VideoError(f"decode stopped at frame {i} of {n_meta}")
    return kept, i


def _read_frames(path: Path, p: dict, offset: int = 0, total: int | None = None) -> tuple[list[np.ndarray], int]:
    """The T sampled frames (BGR as decoded, original size) of a video file or a frame folder, and its frame count."""
    path = Path(path)
    if path.is_dir():

        images = list_images(path)[offset:]
        images = images[:total] if total is not None else images
        if not images:
            raise VideoError("no frames")
        idx = sample_indices(len(images), p["frames"], p["sampling"], p["stride"])
        out = []
        for i in idx:
            img = cv2.imread(str(images[i]), cv2.IMREAD_COLOR)
            if img is None:
                raise VideoError(f"cannot read image {images[i].name}")
            out.append(img)
        return out, len(images)

    def want(n):
        try:
            return set(sample_indices(n, p["frames"], p["sampling"], p["stride"]).tolist())
        except VideoError:
            return set()
    cache = {}

    def pick(i, n_meta):  # guess from the container's frame count; re-read below if it was wrong
        if n_meta not in cache:
            cache[n_meta] = want(n_meta)
        return i in cache[n_meta]
    kept, n = _decode_video(path, pick)
    idx = sample_indices(n, p["frames"], p["sampling"], p["stride"])  # raises if too short
    if not all(i in kept for i in idx):
        need = set(idx.tolist())
        kept, n2 = _decode_video(path, lambda i, _: i in need)
        if n2 != n or not all(i in kept for i in idx):
            raise VideoError(f"frame count changed between reads ({n} then {n2})")
    return [kept[i] for i in idx], n


def flow_clip(frames: np.ndarray, p: dict, computer: FlowComputer | None = None) -> np.ndarray:
    """(T, H, W, 3) RGB uint8 -> (T, H, W, 3) encoded flow; flow[t] is frame t-1 -> t, flow[0] zero."""
    computer = computer or FlowComputer(p["flow_method"], p["dis_preset"])
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    flow = np.zeros(frames.shape[:3] + (2,), np.float32)  # (T, H, W, 2)
    for t in range(1, len(frames)):
        flow[t] = computer(grey[t - 1], grey[t])
    return encode_flow(flow, p["flow_bound"])


def read_clip(path, extract_params, depth_path=None, offset: int = 0, total: int | None = None,
              computer: FlowComputer | None = None, info: dict | None = None) -> dict[str, np.ndarray]:
    """One clip's modalities as uint8 arrays, per the extract params (a dict or ExtractParams).

    rgb (T, S, S, 3), flow (T, S, S, 3), depth (T, S, S, 1) with S = params size; depth only when
    requested and `depth_path` is given. `info`, if a dict, receives {"decoded_frames": n}.
    Raises VideoError with the reason when the video cannot be used.
    """
    p = _params(extract_params)
    mods = p["modalities"]
    frames, n = _read_frames(Path(path), p, offset, total)
    # resize first, then BGR -> RGB on the small frame (cheaper than converting the decoded one)
    rgb = np.stack([cv2.cvtColor(resize_frame(f, p["size"], p["resize"]), cv2.COLOR_BGR2RGB) for f in frames])  # (T, S, S, 3)
    out = {}
    if "rgb" in mods:
        out["rgb"] = rgb
    if "flow" in mods:
        out["flow"] = flow_clip(rgb, p, computer)
    if "depth" in mods and depth_path:
        try:
            dframes, dn = _read_frames(Path(depth_path), p)
        except VideoError as err:
            raise VideoError(f"depth video {Path(depth_path).name}: {err}") from None
        if dn != n:
            raise VideoError(f"depth video has {dn} frames, colour video {n}")
        grey = [cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) if f.ndim == 3 else f for f in dframes]
        out["depth"] = np.stack([resize_frame(g, p["size"], p["resize"]) for g in grey])[..., None]
    if info is not None:
        info["decoded_frames"] = n
    return out


def stream_frames(path, extract_params, *, step: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (rgb (S,S,3) uint8, flow (S,S,3) uint8) for every `step`-th decoded frame, flow vs the previous one."""
    yield from stream_capture(_open(Path(path), threads=0), extract_params, step=step)


def stream_capture(cap: "cv2.VideoCapture", extract_params, *, step: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """`stream_frames` over an open capture (a file or a camera); releases it when done."""
    p = _params(extract_params)
    computer = FlowComputer(p["flow_method"], p["dis_preset"])
    prev = None
    for frame in _every_step(cap, step):
        rgb = cv2.cvtColor(resize_frame(frame, p["size"], p["resize"]), cv2.COLOR_BGR2RGB)
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        flow = np.zeros(grey.shape + (2,), np.float32) if prev is None else computer(prev, grey)
        prev = grey
        yield rgb, encode_flow(flow, p["flow_bound"])


def stream_depth(path, extract_params, *, step: int = 1) -> Iterator[np.ndarray]:
    """Yield (S, S, 1) uint8 depth frames of a depth video for every `step`-th frame, as `read_clip` makes them."""
    p = _params(extract_params)
    for frame in _every_step(_open(Path(path), threads=0), step):
        grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame
        yield resize_frame(grey, p["size"], p["resize"])[..., None]


def _every_step(cap: "cv2.VideoCapture", step: int) -> Iterator[np.ndarray]:
    """Every `step`-th decoded frame of an open capture (H, W, 3) BGR; releases the capture when done."""
    i = 0
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                return
            if i % step == 0:
                yield frame
            i += 1
    finally:
        cap.release()
