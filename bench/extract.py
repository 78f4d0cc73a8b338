"""Benchmark of the extract code: `python -m bench.extract [--repeat 3] [--real-copies 4] [--workers N]`.

Side by side in one run, on the same videos (the default synthetic set, plus copies of the real
clips in ../shared/videos when present):
  bare:    a plain loop of the same OpenCV calls (open with one decode thread, grab every frame,
           retrieve the sampled ones, resize, grey, DIS between consecutive samples), no flow
           encoding, no Arrow, one process;
  extract: pipeline.data.extraction.extract_manifest with 1 worker, then with N workers (all cores).
Prints clips/s of each, the ratio extract/bare and the 1 -> N worker speed-up, and ends with
`target extract_vs_bare: X (goal 0.9) ok|miss` and `target workers_speedup: X (goal 1.8) ok|miss`.
Best of `--repeat` interleaved runs each (after one warm-up), to damp the noise of a shared machine.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import cv2

from pipeline.data.extraction import extract_manifest
from pipeline.core.params import DataParams, ExtractParams
from pipeline.data.sources import ingest
from pipeline.data.video import DIS_PRESETS, sample_indices

REAL = Path(__file__).parents[1] / ".." / "shared" / "videos"


def bare_loop(paths: list[str], p: ExtractParams) -> None:
    """The OpenCV work of extraction and nothing else."""
    cv2.setNumThreads(1)
    dis = cv2.DISOpticalFlow_create(DIS_PRESETS[p.dis_preset])
    for path in paths:
        cap = cv2.VideoCapture(path, cv2.CAP_ANY, [cv2.CAP_PROP_N_THREADS, 1])  # one decode thread, as in extract
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        want = set(sample_indices(n, p.frames, p.sampling, p.stride).tolist())
        grey, i = [], 0
        while cap.grab():
            if i in want:
                frame = cv2.resize(cap.retrieve()[1], (p.size, p.size), interpolation=cv2.INTER_AREA)
                grey.append(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
            i += 1
        cap.release()
        for a, b in zip(grey, grey[1:]):
            dis.calc(a, b, None)


def _cpu() -> float:
    """CPU seconds used by this process and its finished children (the pool's workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and its workers) of one call."""
    t0, c0 = time.perf_counter(), _cpu()
    fn()
    return time.perf_counter() - t0, _cpu() - c0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--real-copies", type=int, default=4, help="copies of each real clip to add (0: none)")
    ap.add_argument("--workers", type=int, default=0, help="N for the speed-up (0: all cores)")
    args = ap.parse_args(argv)
    n_workers = args.workers or os.cpu_count() or 1
    params = ExtractParams(modalities=["rgb", "flow"])  # no depth: the bare loop decodes colour only
    tmp = Path(tempfile.mkdtemp(prefix="bench-extract-"))
    try:
        rows, names = ingest(DataParams(), tmp / "synthetic")
        if (REAL / "test.mp4").is_file() and args.real_copies:
            real = tmp / "real" / "real"
            real.mkdir(parents=True)
            for k in range(args.real_copies):
                for name in ("test.avi", "test.mp4", "part_0.mp4"):
                    shutil.copy(REAL / name, real / f"{k}_{name}")
            more, _ = ingest(DataParams(source="folder", root=str(tmp / "real")), tmp / "real-work")
            rows += [{**r, "label": 0} for r in more]
        for r in rows:
            r["depth_path"] = ""
        paths = [r["path"] for r in rows]
        frames = sum(r["frames"] for r in rows)
        print(f"videos: {len(rows)} ({frames} frames), extract params: {params.frames} frames of {params.size} px, "
              f"{params.sampling}, flow {params.flow_method}/{params.dis_preset}; {os.cpu_count()} cores")

        def run(workers):
            out = tmp / f"clips-{workers}"
            shutil.rmtree(out, ignore_errors=True)
            report = extract_manifest(rows, names, params, out, workers=workers, progress=False)
            assert report["kept"] == len(rows), report["skipped"]

        run(1)  # warm-up: lazy imports, file cache
        times = {"bare": [], "one": [], "n": []}
        for _ in range(args.repeat):  # interleaved, so a busy moment hits every variant alike
            times["bare"].append(timed(lambda: bare_loop(paths, params)))
            times["one"].append(timed(lambda: run(1)))
            times["n"].append(timed(lambda: run(n_workers)))
        t_bare, t_one, t_n = (min(w for w, _ in times[k]) for k in ("bare", "one", "n"))
        c_bare, c_one, c_n = (min(c for _, c in times[k]) for k in ("bare", "one", "n"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n = len(rows)
    print(f"bare OpenCV loop (1 process): {n / t_bare:8.1f} clips/s  ({t_bare:.2f} s)")
    print(f"extract, 1 worker:            {n / t_one:8.1f} clips/s  ({t_one:.2f} s)")
    print(f"extract, {n_workers} workers:           {n / t_n:8.1f} clips/s  ({t_n:.2f} s)")
    print(f"CPU seconds: bare {c_bare:.2f}, extract 1 worker {c_one:.2f} (ratio {c_bare / c_one:.2f}), "
          f"{n_workers} workers {c_n:.2f} in all (on {n_workers} free cores: speed-up about "
          f"{n_workers * c_one / c_n:.2f})")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (wall-clock numbers are noisy when it is "
          "above 0; the targets below use wall-clock time)")
    ratio, speedup = t_bare / t_one, t_one / t_n
    print(f"target extract_vs_bare: {ratio:.2f} (goal 0.9) {'ok' if ratio >= 0.9 else 'miss'}")
    print(f"target workers_speedup: {speedup:.2f} (goal 1.8) {'ok' if speedup >= 1.8 else 'miss'}")


if __name__ == "__main__":
    main()
