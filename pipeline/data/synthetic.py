"""The built-in synthetic gesture set: seeded, deterministic, labelled colour + depth videos.

One clip is a `Motion`: a shape (one per gesture kind, `KIND_SHAPES`) moving over a cluttered, static background from a start state
(x, y, angle, scale, depth) to an end state. The class is read off the direction of the change
(`classify`), never off one frame: swipes move the centre, rotations turn the shape about a pivot beside it
(as a hand turns about the wrist: the sense shows in where the shape goes, not only in how it is oriented, which a
CNN trained on single frames to name the gesture learns to ignore; README "Training recipe"), push/pull
shrink/grow it while its depth value falls/rises. Paired classes are time-reversals of each
other: `motion.reversed()` swaps start and end, is a valid clip of the partner class, and
`render(motion.reversed())` equals `render(motion)[::-1]` frame for frame (the per-frame state is
computed with symmetric integer weights, so the equality is exact).

`write_dataset(params, out_dir)` writes `out_dir/<class>/<class>_<i>_color.avi` and the matching
`_depth.avi` (MJPG in AVI via OpenCV's built-in encoder: same seed -> same bytes).
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import cv2
import numpy as np

# class -> (base motion kind, reversed?) ; the reversed member of a pair is its time reversal.
PAIRS = {
    "swipe_left": ("swipe_x", False), "swipe_right": ("swipe_x", True),
    "swipe_up": ("swipe_y", False), "swipe_down": ("swipe_y", True),
    "rotate_cw": ("rotate", False), "rotate_ccw": ("rotate", True),
    "push": ("push", False), "pull": ("push", True),
}
# Each gesture kind has its own "hand pose", as real gesture groups do: a single frame can tell the
# kind (what a frame-level CNN can learn in pretraining) but never the direction within a pair.
KIND_SHAPES = {"swipe_x": "rectangle", "swipe_y": "triangle", "rotate": "ell", "push": "arrow"}
DEPTH_BACKGROUND = 40  # depth value of the far wall; nearer = brighter


@dataclasses.dataclass(frozen=True)
class Motion:
    """A clip's content. States are (x, y, angle_deg, scale, depth) in frame-relative units:
    x, y in [0, 1] of the frame side, scale = shape radius / frame side, depth in [0, 255]."""

    shape: str
    color: tuple[int, int, int]
    start: tuple[float, float, float, float, float]
    end: tuple[float, float, float, float, float]
    clutter_seed: int
    background: tuple[int, int, int]
    arm: tuple[float, float] | None = None  # rotations: (length, phase); the shape turns about the pivot (x, y)

    def reversed(self) -> "Motion":
        return dataclasses.replace(self, start=self.end, end=self.start)


def classify(motion: Motion) -> str:
    """The gesture class of a motion, from the direction of its dominant change (screen y grows downwards)."""
    dx, dy, da, ds, _ = (e - s for s, e in zip(motion.start, motion.end))
    changes = {"x": abs(dx), "y": abs(dy), "a": abs(da) / 360.0, "s": abs(ds) / max(motion.start[3], motion.end[3])}
    kind = max(changes, key=changes.get)
    if kind == "x":
        return "swipe_left" if dx < 0 else "swipe_right"
    if kind == "y":
        return "swipe_up" if dy < 0 else "swipe_down"
    if kind == "a":
        return "rotate_cw" if da > 0 else "rotate_ccw"
    return "push" if ds < 0 else "pull"  # push: away from the camera (smaller, farther)


def sample_motion(class_name: str, rng: np.random.Generator) -> Motion:
    """Draw a random motion of `class_name` (random shape, colours, start position, speed)."""
    if class_name not in PAIRS:
        raise ValueError(f"data.synthetic.classes: unknown class {class_name!r}; allowed: {', '.join(PAIRS)}")
    kind, rev = PAIRS[class_name]
    shape = KIND_SHAPES[kind]
    color = tuple(int(c) for c in rng.integers(110, 256, 3))
    background = tuple(int(c) for c in rng.integers(0, 60, 3))
    x, y = rng.uniform(0.35, 0.65, 2)
    angle = rng.uniform(0, 360)
    scale = rng.uniform(0.17, 0.23)
    depth = rng.uniform(150, 200)
    start = [x, y, angle, scale, depth]
    end = list(start)
    travel = rng.uniform(0.35, 0.6)  # the speed: distance covered in the clip
    if kind == "swipe_x":  # swipe_left: right -> left
        start[0], end[0] = x + travel / 2, x - travel / 2
        end[1] = y + rng.uniform(-0.05, 0.05)
    elif kind == "swipe_y":  # swipe_up: bottom -> top
        start[1], end[1] = y + travel / 2, y - travel / 2
        end[0] = x + rng.uniform(-0.05, 0.05)
    elif kind == "rotate":  # rotate_cw: angle grows (clockwise on screen, y down), about a pivot beside the shape
        end[2] = angle + 360 * travel
        arm = (float(rng.uniform(0.12, 0.16)), float(rng.uniform(0, 2 * math.pi)))
    else:  # push: shrinks and moves away (depth value drops)
        start[3], end[3] = rng.uniform(0.2, 0.26), rng.uniform(0.08, 0.11)
        end[4] = depth - rng.uniform(60, 100)
    m = Motion(shape, color, tuple(float(v) for v in start), tuple(float(v) for v in end),
               int(rng.integers(2**31)), background, arm if kind == "rotate" else None)
    return m.reversed() if rev else m


def _polygon(shape: str) -> np.ndarray:
    """Unit outline of a shape (no rotational symmetry below 180 degrees, so turning shows)."""
    if shape == "triangle":
        pts = [(1.0, 0.0), (-0.6, 0.7), (-0.6, -0.7)]
    elif shape == "rectangle":
        pts = [(1.0, 0.5), (-1.0, 0.5), (-1.0, -0.5), (1.0, -0.5)]
    elif shape == "ell":
        pts = [(1.0, 1.0), (-1.0, 1.0), (-1.0, 0.3), (0.3, 0.3), (0.3, -1.0), (1.0, -1.0)]
    elif shape == "arrow":
        pts = [(1.0, 0.0), (0.2, 0.8), (0.2, 0.3), (-1.0, 0.3), (-1.0, -0.3), (0.2, -0.3), (0.2, -0.8)]
    else:  # ellipse
        t = np.linspace(0, 2 * math.pi, 24, endpoint=False)
        pts = list(zip(np.cos(t), 0.5 * np.sin(t)))
    return np.asarray(pts, dtype=np.float64)


def _background(m: Motion, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Static clutter (the same in every frame): random rectangles and circles, with depths."""
    rng = np.random.default_rng(m.clutter_seed)
    rgb = np.empty((size, size, 3), np.uint8)
    rgb[:] = m.background
    depth = np.full((size, size), DEPTH_BACKGROUND, np.uint8)
    for _ in range(int(rng.integers(2, 6))):
        color = tuple(int(c) for c in rng.integers(0, 100, 3))
        d = int(rng.integers(50, 110))
        cx, cy = (int(v) for v in rng.integers(0, size, 2))
        r = int(rng.integers(size // 16 + 1, size // 6 + 2))
        if rng.random() < 0.5:
            cv2.rectangle(rgb, (cx - r, cy - r // 2), (cx + r, cy + r // 2), color, -1)
            cv2.rectangle(depth, (cx - r, cy - r // 2), (cx + r, cy + r // 2), d, -1)
        else:
            cv2.circle(rgb, (cx, cy), r, color, -1)
            cv2.circle(depth, (cx, cy), r, d, -1)
    return rgb, depth


def render(motion: Motion, frames: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames of a motion: rgb (T, H, W, 3) uint8 and depth (T, H, W) uint8 (H = W = size)."""
    bg_rgb, bg_depth = _background(motion, size)
    outline = _polygon(motion.shape)
    a, b = np.asarray(motion.start), np.asarray(motion.end)
    n = max(frames - 1, 1)
    rgb = np.empty((frames, size, size, 3), np.uint8)
    depth = np.empty((frames, size, size), np.uint8)
    for t in range(frames):
        # symmetric weights: state(t) of the reversed motion is state(T-1-t) of this one, exactly
        x, y, ang, sc, dep = (a * (n - t) + b * t) / n
        th = math.radians(ang)
        if motion.arm is not None:  # turning about the pivot (x, y): the centre sits on an arm that turns too
            length, phase = motion.arm
            x, y = x + length * math.cos(th + phase), y + length * math.sin(th + phase)
        rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
        pts = (outline @ rot.T) * sc * size + np.array([x, y]) * size
        pts = np.round(pts * 16).astype(np.int32).reshape(-1, 1, 2)  # 4 bits of sub-pixel precision
        rgb[t], depth[t] = bg_rgb, bg_depth
        cv2.fillPoly(rgb[t], [pts], motion.color, lineType=cv2.LINE_AA, shift=4)
        cv2.fillPoly(depth[t], [pts], int(round(dep)), lineType=cv2.LINE_AA, shift=4)
    return rgb, depth


def write_video(path: Path, frames: np.ndarray, fps: int) -> None:
    """Write (T, H, W, 3) RGB or (T, H, W) grey uint8 frames as MJPG AVI (deterministic bytes)."""
    h, w = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.CAP_OPENCV_MJPEG, cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"{path}: OpenCV cannot open an MJPG writer")
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR) if f.ndim == 2 else cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()


def generate(params) -> list[tuple[str, int, Motion]]:
    """(class name, index, motion) for every clip of a SyntheticParams, in class-then-index order."""
    rng = np.random.default_rng(params.seed)
    return [(c, i, sample_motion(c, rng)) for c in params.classes for i in range(params.clips_per_class)]


def write_dataset(params, out_dir: Path, depth_pattern=("_color", "_depth")) -> list[dict]:
    """Render and write every clip; returns [{"path", "depth_path", "class_name"}] (paths under out_dir)."""
    out = []
    for class_name, i, motion in generate(params):
        rgb, depth = render(motion, params.frames, params.size)
        folder = Path(out_dir) / class_name
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{class_name}_{i:03d}"
        color_path = folder / f"{stem}{depth_pattern[0]}.avi"
        depth_path = folder / f"{stem}{depth_pattern[1]}.avi"
        write_video(color_path, rgb, params.fps)
        write_video(depth_path, depth, params.fps)
        out.append({"path": color_path, "depth_path": depth_path, "class_name": class_name})
    return out
