"""Landmark video sources (task: regression, claim 4): the 300VW layout, the .pts format, a synthetic set.

Layout (300VW, and what the synthetic source writes): one folder per video,
    ROOT/<video>/vid.avi             the video (any of pipeline.data.sources.VIDEO_EXTS named `vid`)
    ROOT/<video>/annot/000001.pts    one file per frame, in frame order (sorted by name), pixel coordinates
.pts format: `version: 1`, `n_points: K`, `{`, K lines `x y`, `}` (`read_pts` / `write_pts`).
Coordinates are 0-based pixel-centre coordinates of the original frame; `normalise_points` maps them to
[0, 1] of the frame as the extract stage resizes it (stretch, center_crop or pad, pipeline.data.video.resize_frame),
so a landmark keeps its place on the resized picture.

- `scan_300vw(root)` -> ingest entries {"path", "label": 0, "class_name"} for every video folder with annotations.
- `write_synthetic(params, out_dir)`: `SyntheticLandmarkParams` -> clips in the layout above: a deformable
  K-point shape (a star-like contour, roughly upright) that moves, turns, scales and deforms smoothly over time, rendered with
  its landmarks as coloured dots over clutter, with Gaussian noise, random blur and a moving occluder, so a
  single frame can hide landmarks that the neighbouring frames show (temporal context helps).
- `clip_landmarks(row, extract_params, decoded_frames)` -> float32 (T, K, 2): the landmarks of the frames
  `read_clip` sampled (pipeline.data.video.sample_indices), normalised after the resize.
"""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from pipeline.data.paths import VIDEO_EXTS, SourceError, resolve
from pipeline.data.synthetic import write_video
from pipeline.data.video import sample_indices

ANNOT_DIR = "annot"
VIDEO_STEM = "vid"
CLASS_NAME = "landmarks"


class LandmarkError(ValueError):
    """A landmark file or folder that cannot be used; the message names it."""


# ---------------------------------------------------------------------------------------------- .pts files
def read_pts(path) -> np.ndarray:
    """A .pts file -> float64 (K, 2) pixel coordinates (x, y)."""
    path = Path(path)
    try:
        lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    except FileNotFoundError:
        raise LandmarkError(f"{path}: no such landmark file") from None
    n_points, body, inside = None, [], False
    for n, line in enumerate(lines, 1):
        if line.startswith("version"):
            continue
        if line.startswith("n_points"):
            try:
                n_points = int(line.split(":", 1)[1])
            except (IndexError, ValueError):
                raise LandmarkError(f"{path}:{n}: {line!r}: expected `n_points: K`") from None
        elif line == "{":
            inside = True
        elif line == "}":
            inside = False
        elif inside:
            parts = line.split()
            try:
                body.append((float(parts[0]), float(parts[1])))
            except (IndexError, ValueError):
                raise LandmarkError(f"{path}:{n}: {line!r}: expected `x y`") from None
        else:
            raise LandmarkError(f"{path}:{n}: {line!r}: unexpected line outside {{ }}")
    if n_points is None:
        raise LandmarkError(f"{path}: no `n_points:` line (not a .pts file)")
    if len(body) != n_points:
        raise LandmarkError(f"{path}: n_points is {n_points} but {len(body)} points are listed")
    return np.asarray(body, np.float64).reshape(n_points, 2)


def write_pts(path, points) -> None:
    """(K, 2) pixel coordinates -> a .pts file."""
    pts = np.asarray(points, np.float64)
    lines = ["version: 1", f"n_points: {len(pts)}", "{"] + [f"{x:.3f} {y:.3f}" for x, y in pts] + ["}"]
    Path(path).write_text("\n".join(lines) + "\n")


def annotation_files(video: Path) -> list[Path]:
    """The per-frame .pts files beside a video (VIDEO/../annot/*.pts), sorted by name."""
    folder = Path(video).parent / ANNOT_DIR
    if not folder.is_dir():
        raise LandmarkError(f"{folder}: no annotation folder (expected {ANNOT_DIR}/NNNNNN.pts beside {Path(video).name})")
    files = sorted(folder.glob("*.pts"))
    if not files:
        raise LandmarkError(f"{folder}: no .pts files")
    return files


def num_points(video: Path) -> int:
    """K of a video's first annotation file."""
    return len(read_pts(annotation_files(video)[0]))


# ---------------------------------------------------------------------------------------------- 300VW ingest
def scan_300vw(root) -> list[dict]:
    """ROOT/<video>/vid.<ext> + annot/*.pts -> ingest entries (sorted by folder name)."""

    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"data.root: {str(root)!r}: not a folder")
    entries = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        videos = [folder / f"{VIDEO_STEM}{ext}" for ext in VIDEO_EXTS if (folder / f"{VIDEO_STEM}{ext}").is_file()]
        if not videos or not (folder / ANNOT_DIR).is_dir():
            continue
        entries.append({"path": videos[0], "label": 0, "class_name": CLASS_NAME})
    if not entries:
        raise SourceError(f"data.root: {str(root)!r}: no 300VW video folders (expected ROOT/<video>/vid.avi and "
                          f"ROOT/<video>/{ANNOT_DIR}/000001.pts ...)")
    return entries


# ---------------------------------------------------------------------------------------------- extraction
def normalise_points(pts: np.ndarray, width: int, height: int, size: int, mode: str) -> np.ndarray:
    """Pixel coordinates (..., K, 2) of a (height, width) frame -> [0, 1] coordinates of the resized square frame."""
    u = (np.asarray(pts, np.float64) + 0.5) / np.array([width, height], np.float64)  # [0, 1] of the original
    if mode == "center_crop":
        s = min(height, width)
        off = np.array([(width - s) // 2, (height - s) // 2], np.float64)
        return (u * np.array([width, height]) - off) / s
    if mode == "pad":
        scale = size / max(height, width)
        nh, nw = max(1, round(height * scale)), max(1, round(width * scale))
        off = np.array([(size - nw) // 2, (size - nh) // 2], np.float64)
        return (u * np.array([nw, nh]) + off) / size
    return u  # stretch


def clip_landmarks(row: dict, p: dict, decoded_frames: int) -> np.ndarray:
    """The sampled frames' landmarks of one manifest row -> float32 (T, K, 2) normalised (see module docstring)."""

    video = resolve(row["path"])
    files = annotation_files(video)
    offset = int(row.get("offset") or 0) if video.is_dir() else 0
    if len(files) < offset + decoded_frames:
        raise LandmarkError(f"{files[0].parent}: {len(files)} annotation files for {decoded_frames} video frames")
    idx = sample_indices(decoded_frames, p["frames"], p["sampling"], p["stride"])
    pts = np.stack([read_pts(files[offset + i]) for i in idx])  # (T, K, 2)
    w, h = int(row.get("width") or 0), int(row.get("height") or 0)
    if w <= 0 or h <= 0:
        raise LandmarkError(f"{row['path']}: unknown frame size {w}x{h} in the manifest")
    return normalise_points(pts, w, h, int(p["size"]), p["resize"]).astype(np.float32)


def coordinate_names(k: int) -> list[str]:
    """The 2K output names of the regression head: p0_x, p0_y, p1_x, ..."""
    return [f"p{i}_{c}" for i in range(k) for c in ("x", "y")]


# ---------------------------------------------------------------------------------------------- synthetic set
def _trajectory(rng: np.random.Generator, frames: int, k: int) -> np.ndarray:
    """Smooth landmark positions (T, K, 2) in [0, 1] frame units: motion + rotation + scale + deformation."""
    t = np.linspace(0.0, 1.0, frames)[:, None]  # (T, 1)

    def wave(amp, lo=0.5, hi=1.5):
        f, ph = rng.uniform(lo, hi), rng.uniform(0, 2 * math.pi)
        return amp * np.sin(2 * math.pi * f * t + ph)  # (T, 1)

    cx = 0.5 + rng.uniform(-0.08, 0.08) + wave(0.12)
    cy = 0.5 + rng.uniform(-0.08, 0.08) + wave(0.12)
    angle = rng.uniform(-0.4, 0.4) + wave(0.3)  # upright-ish, like faces: point i keeps its side of the shape
    scale = rng.uniform(0.2, 0.27) * (1 + wave(0.15))
    base = np.linspace(0, 2 * math.pi, k, endpoint=False)[None]  # (1, K)
    radius = np.where(np.arange(k) % 2 == 0, 1.0, 0.55)[None]  # a star: alternating tips and notches
    modes = sum(wave(0.18, 0.3, 1.2) * np.cos(m * base + rng.uniform(0, 2 * math.pi)) for m in (2, 3))  # (T, K)
    r = scale * radius * (1 + modes)
    a = base + angle
    return np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], -1)  # (T, K, 2)


def _colours(k: int) -> list[tuple[int, int, int]]:
    hsv = np.stack([np.linspace(0, 179, k, endpoint=False), np.full(k, 230), np.full(k, 255)], -1).astype(np.uint8)
    return [tuple(int(c) for c in v) for v in cv2.cvtColor(hsv[None], cv2.COLOR_HSV2RGB)[0]]


def render_clip(rng: np.random.Generator, p) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic clip: rgb (T, S, S, 3) uint8 and landmarks (T, K, 2) in pixel-centre coordinates."""
    size, k, frames = p.size, p.points, p.frames
    pos = _trajectory(rng, frames, k)  # (T, K, 2) frame units
    bg = np.empty((size, size, 3), np.uint8)
    bg[:] = rng.integers(0, 70, 3)
    for _ in range(int(rng.integers(3, 7))):  # static clutter
        c = tuple(int(v) for v in rng.integers(0, 150, 3))
        x, y = (int(v) for v in rng.integers(0, size, 2))
        cv2.circle(bg, (x, y), int(rng.integers(2, max(3, size // 6))), c, -1)
    body = tuple(int(v) for v in rng.integers(90, 200, 3))
    colours = _colours(k)
    occluder = None
    if rng.random() < p.occlusion:  # a grey bar crossing the frame
        occluder = {"y0": rng.uniform(0.1, 0.9), "y1": rng.uniform(0.1, 0.9), "w": rng.uniform(0.15, 0.3),
                    "c": tuple(int(v) for v in rng.integers(80, 160, 3)), "dir": rng.choice([-1, 1])}
    dot = max(1, size // 28)
    px = pos * size - 0.5  # pixel-centre coordinates
    rgb = np.empty((frames, size, size, 3), np.uint8)
    for t in range(frames):
        img = bg.copy()
        pts = np.round(px[t] * 16).astype(np.int32)
        cv2.fillPoly(img, [pts.reshape(-1, 1, 2)], body, lineType=cv2.LINE_AA, shift=4)
        for i in range(k):
            cv2.circle(img, (int(pts[i, 0]), int(pts[i, 1])), dot * 16, colours[i], -1, lineType=cv2.LINE_AA, shift=4)
        if occluder is not None:
            f = t / max(frames - 1, 1)
            cx = (f if occluder["dir"] > 0 else 1 - f) * 1.4 - 0.2
            cy = occluder["y0"] + (occluder["y1"] - occluder["y0"]) * f
            half = occluder["w"] * size / 2
            cv2.rectangle(img, (int(cx * size - half), int(cy * size - half)),
                          (int(cx * size + half), int(cy * size + half)), occluder["c"], -1)
        if rng.random() < p.blur:
            img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.6, 1.5))
        if p.noise > 0:
            img = np.clip(img + rng.normal(0, p.noise, img.shape), 0, 255).astype(np.uint8)
        rgb[t] = img
    return rgb, px


def write_synthetic(params, out_dir) -> list[dict]:
    """Write `params.clips` clips as out_dir/clip_NNN/vid.avi + annot/NNNNNN.pts; returns ingest entries."""

    rng = np.random.default_rng(params.seed)
    out = []
    for i in range(params.clips):
        rgb, pts = render_clip(rng, params)
        folder = Path(out_dir) / f"clip_{i:03d}"
        (folder / ANNOT_DIR).mkdir(parents=True, exist_ok=True)
        write_video(folder / f"{VIDEO_STEM}.avi", rgb, params.fps)
        for t, frame_pts in enumerate(pts):
            write_pts(folder / ANNOT_DIR / f"{t + 1:06d}.pts", frame_pts)
        out.append({"path": folder / f"{VIDEO_STEM}.avi", "label": 0, "class_name": CLASS_NAME})
    return out
