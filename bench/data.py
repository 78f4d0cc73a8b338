"""Benchmark of clip loading: `python -m bench.data [--clips 64] [--frames 16] [--size 112] [--workers 0 2] [--repeat 3]`.

1. clips/s of ``pipeline.data.dataset.ClipDataset(raw=True)`` over Arrow files (written by ``pipeline.data.clipstore.ClipWriter``,
   as the extract stage does; uint8 clips, as the pipeline's stages read them) vs a DataLoader decoding the same
   clips from a folder of JPEG frames in the MMAction2 rawframes layout (``<clip>/img_00001.jpg`` ...; OpenCV
   decode, BGR->RGB, uint8 (T, H, W, 3)), same batch size and worker count, interleaved repeats, medians. Both hand
   the device the same uint8 batch; the normalisation (``ClipDataset.normalizer()``, MMAction2's data
   preprocessor) then costs both the same, on the device. Target ``arrow_vs_jpeg >= 10``. For context the same
   pair is timed normalising to float32 per item inside the loader (the old way; not the target). Each worker
   count in ``--workers`` is timed in steady state (persistent workers, one untimed pass first); the target is
   the first count (default 0: the pipeline's Trainer reads in-process, since reading a mapped clip is a copy
   and a worker only adds the shared-memory hand-over of every batch; the other counts are printed to show it).
2. A short training loop (``pipeline.training.trainer.Trainer.train_epoch``, a vgg_mini with fc6 made an LSTM, raw uint8 clips
   from a ClipDataset at the pipeline's default 32 px, T=8, normalised in the step): the fraction of the epoch
   spent waiting on the DataLoader (its ``__next__``, timed by wrapping pipeline.training.trainer's DataLoader). Target
   ``data_wait_fraction < 0.05``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

import pipeline.training.trainer as train  # its DataLoader is swapped for a timed one (data_wait_fraction)
import prernn
from pipeline.data.clipstore import ClipWriter
from pipeline.data.dataset import ClipDataset, Normalize
from pipeline.training.tasks import Classification


def synthetic_clip(rng: np.random.Generator, frames: int, size: int) -> np.ndarray:
    """uint8 (T, H, W, 3): a moving colour gradient + a bright square + mild noise (JPEG-compressible, like video)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = rng.uniform(0, 1, 3).astype(np.float32)
    out = np.empty((frames, size, size, 3), np.uint8)
    s = max(2, size // 6)
    for t in range(frames):
        img = np.stack([(xx + t * 0.03 + base[0]) % 1, (yy + base[1]) % 1, ((xx + yy) / 2 + base[2]) % 1], -1) * 200
        x0 = int((t * size / frames + base[0] * size) % (size - s))
        img[size // 3:size // 3 + s, x0:x0 + s] = 255
        img += rng.normal(0, 4, img.shape).astype(np.float32)
        out[t] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def write_clips(root: Path, n: int, frames: int, size: int, classes: int = 4, seed: int = 0):
    """Arrow files under root/clips and rawframes under root/rawframes; returns (clip dirs, labels, mean, std)."""
    rng = np.random.default_rng(seed)
    w = ClipWriter(root / "clips", ["rgb"], frames, size, 256 << 20, splits=("train",))
    dirs, labels, acc = [], [], []
    for i in range(n):
        clip, label = synthetic_clip(rng, frames, size), i % classes
        w.add("train", {"rgb": clip}, label, f"v{i:04d}", f"v{i:04d}")
        d = root / "rawframes" / f"v{i:04d}"
        d.mkdir(parents=True)
        for t in range(frames):
            cv2.imwrite(str(d / f"img_{t + 1:05d}.jpg"), cv2.cvtColor(clip[t], cv2.COLOR_RGB2BGR),
                        [cv2.IMWRITE_JPEG_QUALITY, 90])
        dirs.append(d)
        labels.append(label)
        acc.append(clip.reshape(-1, 3).astype(np.float64) / 255)
    px = np.concatenate(acc)
    mean, std = px.mean(0).tolist(), px.std(0).tolist()
    meta = {"prernn.class_names": [f"c{k}" for k in range(classes)], "prernn.modalities": ["rgb"],
            "prernn.extract": {"frames": frames, "size": size},
            "prernn.normalization": {"rgb": {"mean": mean, "std": std}}}
    w.finish(meta)
    return dirs, labels, mean, std


class RawFrameDataset(Dataset):
    """MMAction2 rawframes: item -> (uint8 (T, H, W, 3) RGB, label); with mean/std: (float32 (T, C, H, W)
    normalised like ClipDataset, label)."""

    def __init__(self, dirs, labels, frames: int, mean=None, std=None):
        self.dirs, self.labels, self.frames = list(dirs), list(labels), frames
        self.normalize = None if mean is None else Normalize(mean, std)

    def __len__(self) -> int:
        return len(self.dirs)

    def __getitem__(self, i: int):
        cv2.setNumThreads(1)
        imgs = [cv2.imread(str(self.dirs[i] / f"img_{t + 1:05d}.jpg"), cv2.IMREAD_COLOR) for t in range(self.frames)]
        x = np.stack([cv2.cvtColor(im, cv2.COLOR_BGR2RGB) for im in imgs])  # (T, H, W, 3)
        x = torch.from_numpy(x)
        return (x if self.normalize is None else self.normalize(x)), self.labels[i]


def clips_per_sec(ds: Dataset, batch: int, workers: int, min_seconds: float = 0.5) -> float:
    """Steady-state clips/s of a DataLoader over `ds`: one untimed pass (worker start, page faults), then whole
    passes until `min_seconds` have gone by (a pass of the Arrow loader takes milliseconds: timed alone it is
    mostly noise)."""
    loader = DataLoader(ds, batch_size=batch, shuffle=False, num_workers=workers, persistent_workers=workers > 0)
    for _ in loader:
        pass
    t0, n = time.perf_counter(), 0
    while n == 0 or time.perf_counter() - t0 < min_seconds:
        for x, _ in loader:
            n += x.shape[0]
    return n / (time.perf_counter() - t0)


class _TimedLoader(DataLoader):
    """A DataLoader that adds the seconds spent in its iterator's __next__ to ``_TimedLoader.waited``."""

    waited = 0.0

    def __iter__(self):
        it = super().__iter__()
        while True:
            t0 = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                _TimedLoader.waited += time.perf_counter() - t0
                return
            _TimedLoader.waited += time.perf_counter() - t0
            yield item


def data_wait_fraction(clips_dir: Path, epochs: int = 2, batch: int = 16) -> tuple[float, float]:
    """(fraction of train_epoch wall time spent in the loader, clips/s) for a raw-clip PreLSTM on vgg_mini."""
    ds = ClipDataset(clips_dir, "train", "rgb", raw=True)
    T, H, _, C = ds[0][0].shape
    torch.manual_seed(0)
    model = prernn.convert(prernn.create_backbone("vgg_mini", ds.num_classes, input_size=H), ["fc6"], "lstm")
    trainer = train.Trainer(model, lr_inherited=1e-4, lr_new=1e-3, batch_size=batch, task=Classification())
    orig = train.DataLoader
    train.DataLoader = _TimedLoader
    try:
        trainer.train_epoch(ds)  # warm-up
        _TimedLoader.waited, wall, n = 0.0, 0.0, 0
        for _ in range(epochs):
            t0 = time.perf_counter()
            trainer.train_epoch(ds)
            wall += time.perf_counter() - t0
            n += len(ds)
    finally:
        train.DataLoader = orig
    return _TimedLoader.waited / wall, n / wall


def main(argv=None) -> list[tuple[str, float, float, str]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=64)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2],
                    help="DataLoader worker counts, the same for both loaders; the target is taken at the first")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--train-clips", type=int, default=64, help="clips (32 px, T=8) for the training-loop part")
    ap.add_argument("--train-epochs", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        root = Path(tmp)
        dirs, labels, mean, std = write_clips(root / "big", a.clips, a.frames, a.size)
        loaders = {"arrow": ClipDataset(root / "big" / "clips", "train", "rgb", raw=True),
                   "jpeg": RawFrameDataset(dirs, labels, a.frames),
                   "arrow_float": ClipDataset(root / "big" / "clips", "train", "rgb"),
                   "jpeg_float": RawFrameDataset(dirs, labels, a.frames, mean, std)}
        xa, xj = loaders["arrow"][1][0], loaders["jpeg"][1][0]
        assert xa.dtype == xj.dtype == torch.uint8 and xa.shape == xj.shape, (xa.shape, xj.shape)
        print(f"{a.clips} clips of {a.frames}x{a.size}x{a.size}x3, batch {a.batch}; "
              f"|arrow - jpeg| mean {float((xa.int() - xj.int()).abs().float().mean()):.1f}, max "
              f"{int((xa.int() - xj.int()).abs().max())} of 255 (JPEG loss at the square's edges)")
        by_workers = {}
        for workers in a.workers:
            rates = {k: [] for k in loaders}
            for _ in range(a.repeat):
                for k, ds in loaders.items():
                    rates[k].append(clips_per_sec(ds, a.batch, workers))
            med = by_workers[workers] = {k: statistics.median(v) for k, v in rates.items()}
            print(f"workers {workers}: clips/s, uint8 batches (normalised on the device): ClipDataset (Arrow) "
                  f"{med['arrow']:.1f}   rawframes JPEG {med['jpeg']:.1f}   ratio {med['arrow'] / med['jpeg']:.2f}")
            print(f"workers {workers}: clips/s, float32 normalised per item in the loader (not the target): Arrow "
                  f"{med['arrow_float']:.1f}   JPEG {med['jpeg_float']:.1f}   ratio "
                  f"{med['arrow_float'] / med['jpeg_float']:.2f}")
        med = by_workers[a.workers[0]]
        best = {k: max(by_workers, key=lambda w: by_workers[w][k]) for k in ("arrow", "jpeg")}
        print(f"each at its best worker count: Arrow {by_workers[best['arrow']]['arrow']:.1f} (workers "
              f"{best['arrow']}) vs JPEG {by_workers[best['jpeg']]['jpeg']:.1f} (workers {best['jpeg']}): ratio "
              f"{by_workers[best['arrow']]['arrow'] / by_workers[best['jpeg']]['jpeg']:.2f}")
        write_clips(root / "small", a.train_clips, 8, 32, seed=1)
        frac, rate = data_wait_fraction(root / "small" / "clips", a.train_epochs)
        print(f"training loop (vgg_mini 32px, fc6 PreLSTM, raw uint8 clips, batch 16): {rate:.1f} clips/s, "
              f"data wait {frac:.3f} of the epoch")
    res = [("arrow_vs_jpeg", med["arrow"] / med["jpeg"], 10.0, ">="), ("data_wait_fraction", frac, 0.05, "<")]
    print(f"\nload average {os.getloadavg()[0]:.2f}")
    for name, x, goal, op in res:
        ok = x >= goal if op == ">=" else x < goal
        print(f"target {name}: {x:.3f} (goal {op} {goal}) {'ok' if ok else 'miss'}")
    return res


if __name__ == "__main__":
    main()
