"""Benchmark of `prernn predict --stream` on the CPU: `python -m bench.stream [--model final.pt] [--video v.avi]`.

Streams one video frame by frame through `pipeline.serve.predictor.Predictor.stream` (decode, resize, DIS flow, normalise,
`SequenceModel.step` per stream, running fused probabilities) and compares the frames per second achieved with the
video's own frame rate. Without `--model`, a two-stream (rgb + flow) vgg_mini at the default extract settings
(32 px, fc6 + fc7 made LSTM) is built and saved in the models/final.pt format; without `--video`, a synthetic
gesture video of `--frames` frames at 15 fps is written. Best of `--repeat` runs (after a warm-up), one torch thread.
Also prints the peak resident memory after the first half and after the whole video (stream mode must not grow).
Ends with `target stream_realtime: X (goal 1.0) ok|miss`, X = achieved fps / video fps.
"""
from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import torch

import prernn
from pipeline.report.evaluation import final_checkpoint
from pipeline.core.params import ExtractParams, SyntheticParams
from pipeline.serve.predictor import Predictor
from pipeline.data.synthetic import generate, render, write_video


def make_model(path: Path, size: int) -> Path:
    torch.manual_seed(0)
    models = {}
    for m in ("rgb", "flow"):
        bb = prernn.create_backbone("vgg_mini", 8, in_channels=3, input_size=size)
        models[m] = prernn.convert(bb, ["fc6", "fc7"], "lstm")
    norm = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    meta = {"class_names": list(SyntheticParams().classes), "normalization": {"rgb": norm, "flow": norm},
            "extract": ExtractParams(size=size, modalities=["rgb", "flow"]).model_dump(), "modalities": ["rgb", "flow"]}
    torch.save(final_checkpoint(models, meta), path)
    return path


def make_video(path: Path, frames: int, fps: int, size: int = 96) -> Path:
    _, _, motion = generate(SyntheticParams(classes=["swipe_left", "swipe_right"], clips_per_class=3))[0]
    rgb, _ = render(motion, frames, size)
    write_video(path, rgb, fps)
    return path


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="a models/final.pt (default: a fresh two-stream vgg_mini)")
    ap.add_argument("--video", default=None, help="a video file (default: a synthetic 15 fps video)")
    ap.add_argument("--frames", type=int, default=300, help="frames of the synthetic video")
    ap.add_argument("--size", type=int, default=32, help="frame size of the default model")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    try:
        model = Path(args.model) if args.model else make_model(tmp / "final.pt", args.size)
        video = Path(args.video) if args.video else make_video(tmp / "stream.avi", args.frames, 15)
        cap = cv2.VideoCapture(str(video))
        fps_video = cap.get(cv2.CAP_PROP_FPS) or 0.0
        cap.release()
        if fps_video <= 0:
            raise SystemExit(f"{video}: the container gives no frame rate")
        pred = Predictor.from_file(model)
        list(pred.stream(video, max_frames=10))  # warm-up
        best, n, rss = float("inf"), 0, []
        for _ in range(args.repeat):
            t0, n, half = time.perf_counter(), 0, None
            for frame, probs in pred.stream(video, step=1):
                n += 1
                if half is None and n >= args.frames // 2:
                    half = peak_rss_mb()
            best = min(best, time.perf_counter() - t0)
            rss.append((half, peak_rss_mb()))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    fps = n / best
    ratio = fps / fps_video
    print(f"model: {model.name if args.model else 'two-stream vgg_mini (rgb + flow), fc6+fc7 LSTM'}, "
          f"{pred.extract['size']} px, flow {pred.extract['flow_method']}/{pred.extract['dis_preset']}; "
          f"video: {n} frames at {fps_video:g} fps; 1 torch thread")
    print(f"stream mode: {fps:.1f} frames/s ({best:.2f} s for {n} frames, best of {args.repeat})")
    print(f"peak RSS: {rss[0][0]:.0f} MB after half the video, {rss[0][1]:.0f} MB after all of it")
    print(f"target stream_realtime: {ratio:.2f} (goal 1.0) {'ok' if ratio >= 1.0 else 'miss'}")


if __name__ == "__main__":
    main()
