"""Peak memory on long videos: `python -m bench.memory [--seconds 60] [--factor 10] [--fps 25]`.

Writes two 640x480 MJPG videos in a temporary folder, `--seconds` long (1x) and `--factor` times that (10x; the
defaults give 1 and 10 minutes), and runs on each, as a child process of its own, the extract stage (one video,
one worker: decode every frame, keep the T sampled ones, flow, Arrow file) and `prernn predict --stream` (every
frame through a two-stream vgg_mini, JSON lines to /dev/null). The peak resident memory of each child comes from
`os.wait4` (the kernel's ru_maxrss of that process). Both must not grow with the video's length:
`target extract_memory_10x: X (goal 1.2)` and `target stream_memory_10x: X (goal 1.2)`, X = peak RSS on the 10x
video / on the 1x video. `--seconds 2 --factor 3` is a quick check of the mechanism.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from bench.stream import make_model
from pipeline.core.params import DataParams
from pipeline.data.sources import ingest, write_manifest

REPO = Path(__file__).resolve().parents[1]
WIDTH, HEIGHT = 640, 480
GOAL = 1.2


def write_long_video(path: Path, frames: int, fps: int) -> Path:
    """A `frames`-frame 640x480 MJPG video: a blurred random texture panning sideways, a square moving over it."""
    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(rng.integers(0, 256, (HEIGHT, WIDTH * 2, 3), dtype=np.uint8), (0, 0), 3)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (WIDTH, HEIGHT))
    if not writer.isOpened():
        raise SystemExit(f"{path}: OpenCV cannot write MJPG video here")
    try:
        for i in range(frames):
            x = (3 * i) % WIDTH
            frame = np.ascontiguousarray(texture[:, x:x + WIDTH])  # (H, W, 3)
            y0, x0 = (7 * i) % (HEIGHT - 80), (11 * i) % (WIDTH - 80)
            frame[y0:y0 + 80, x0:x0 + 80] = (40, 200, 240)
            writer.write(frame)
    finally:
        writer.release()
    return path


def peak_rss_mb(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """Run `cmd` (`[python, "-m", module, args...]` or `[python, "-c", code]`) as a child; -> (its own peak RSS in
    MB, VmHWM read inside it by bench.hwm, wall seconds). Raises if it fails."""
    if cmd[1] == "-c":  # code: run it as a module of its own
        folder = Path(tempfile.mkdtemp(prefix="hwm-"))
        (folder / "snippet.py").write_text(cmd[2])
        cmd, env = [cmd[0], "-m", "snippet", *cmd[3:]], {**os.environ, "PYTHONPATH": f"{folder}{os.pathsep}{REPO}"}
    else:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    with tempfile.NamedTemporaryFile(suffix=".hwm", delete=False) as f:
        out = Path(f.name)
    t0 = time.perf_counter()
    proc = subprocess.run([cmd[0], "-m", "bench.hwm", str(out), *cmd[2:]], cwd=cwd, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
    kb = int(out.read_text())
    out.unlink()
    return kb / 1024.0, seconds


def extract_project(folder: Path, video: Path) -> list[str]:
    """A manifest of the one video (train split) and params for it; -> the extract stage's command."""
    root = folder / "videos"
    (root / "long").mkdir(parents=True)
    os.link(video, root / "long" / video.name)
    rows, _ = ingest(DataParams(source="folder", root=str(root), val_fraction=0.0, test_fraction=0.0), folder)
    write_manifest(rows, folder / "manifest.csv")
    (folder / "params.yaml").write_text("extract: " + json.dumps({"workers": 1}) + "\n")  # the default clip shape
    return [sys.executable, "-m", "stages.extract", "--params", str(folder / "params.yaml"),
            "--manifest", str(folder / "manifest.csv"), "--out", str(folder / "clips"),
            "--report", str(folder / "extract.json"), "--no-progress"]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the 1x video (default 60 s)")
    ap.add_argument("--factor", type=int, default=10, help="the long video is this many times longer (default 10)")
    ap.add_argument("--fps", type=int, default=25)
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    try:
        model = make_model(tmp / "final.pt", 32)
        lengths = {"1x": round(args.seconds * args.fps), f"{args.factor}x": round(args.seconds * args.fps * args.factor)}
        rss = {}
        for label, frames in lengths.items():
            t0 = time.perf_counter()
            video = write_long_video(tmp / f"long_{label}.avi", frames, args.fps)
            print(f"{label}: {frames} frames ({frames / args.fps:.0f} s at {args.fps} fps, {WIDTH}x{HEIGHT}), "
                  f"{video.stat().st_size / 2**20:.0f} MB, written in {time.perf_counter() - t0:.1f} s", flush=True)
            work = tmp / f"extract_{label}"
            work.mkdir()
            ext, ext_s = peak_rss_mb(extract_project(work, video), REPO)
            report = json.loads((work / "extract.json").read_text())
            if report["kept"] != 1:
                raise SystemExit(f"extract skipped the {label} video: {report['skipped']}")
            stream, stream_s = peak_rss_mb([sys.executable, "-m", "pipeline.serve.cli", "predict", str(model), str(video),
                                            "--stream", "--json"], REPO)
            rss[label] = (ext, stream)
            print(f"{label}: peak RSS extract {ext:.0f} MB ({ext_s:.1f} s), predict --stream {stream:.0f} MB "
                  f"({stream_s:.1f} s, {frames / stream_s:.0f} frames/s)", flush=True)
            video.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    short, long_ = rss["1x"], rss[f"{args.factor}x"]
    for i, name in enumerate(("extract", "stream")):
        ratio = long_[i] / short[i]
        print(f"target {name}_memory_{args.factor}x: {ratio:.2f} (goal {GOAL}) {'ok' if ratio <= GOAL else 'miss'}")


if __name__ == "__main__":
    main()
