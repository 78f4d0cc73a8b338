"""Benchmark of DVC's overhead: `python -m bench.dvc [--clips-per-class 3] [--scale 4] [--repeat 3] [--keep DIR]`.

On a temporary copy of the repository's pipeline (dvc.yaml, params.yaml, stages/, pipeline/, prernn/; `dvc init
--no-scm`, no git needed) with a tiny params set (a few synthetic clips, 1 epoch everywhere, one search trial):
1. one full `dvc repro` (timed, for information), then `dvc repro` with nothing changed (median of --repeat):
   target ``repro_nothing_changed_s < 5``;
2. `dvc status` time (median) at that dataset size, then with --scale x the clips (params changed,
   `dvc repro extract` rebuilds the data stages; downstream stages are then reported changed, which status
   finds the same way): ratio of the two status times, target ``status_time_ratio <= 1.5`` (~1: the status
   check does not grow with the number of clips).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
COPY = ("dvc.yaml", "params.yaml", "stages", "pipeline", "prernn", ".dvcignore")


def tiny_params(raw: dict, clips_per_class: int) -> dict:
    p = yaml.safe_load(yaml.safe_dump(raw))
    p["data"]["synthetic"].update({"classes": ["swipe_left", "swipe_right", "push"], "clips_per_class": clips_per_class,
                                   "frames": 8, "size": 24})
    p["extract"].update({"frames": 4, "size": 16, "modalities": ["rgb", "flow"], "workers": 1})
    p["pretrain"].update({"modalities": ["rgb"], "epochs": 1, "batch_size": 16})
    p["search"].update({"cells": ["lstm"], "sih": [False], "layers": [["fc6"]], "baselines": [], "epochs": 1, "seeds": 1,
                        "batch_size": 4, "max_concurrent": 1})
    p["evaluate"].update({"epochs": 1, "modalities": ["rgb"]})
    return p


def sh(args: list[str], cwd: Path, env: dict, check: bool = True) -> float:
    """Seconds of one command; its output is kept for an error message."""
    t0 = time.perf_counter()
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if check and r.returncode:
        raise RuntimeError(f"{' '.join(args)} failed ({r.returncode}) in {cwd}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return dt


def _files(d: Path) -> int:
    return sum(1 for f in d.rglob("*") if f.is_file()) if d.exists() else 0


def main(argv=None) -> list[tuple[str, float, float, str]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips-per-class", type=int, default=3)
    ap.add_argument("--scale", type=int, default=4, help="the second dataset size, x the first")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", default=None, help="work in this folder (kept) instead of a temporary one")
    a = ap.parse_args(argv)
    dvc = str(Path(sys.executable).with_name("dvc"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
           "PYTHONPATH": "", "RAY_ADDRESS": "", "MLFLOW_TRACKING_URI": ""}
    env = {k: v for k, v in env.items() if v != "" or k == "PYTHONPATH"}
    tmp = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="bench_dvc_"))
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        for name in COPY:
            src = REPO / name
            if src.is_dir():
                shutil.copytree(src, tmp / name, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
            elif src.exists():
                shutil.copy2(src, tmp / name)
        raw = yaml.safe_load((REPO / "params.yaml").read_text())
        (tmp / "params.yaml").write_text(yaml.safe_dump(tiny_params(raw, a.clips_per_class), sort_keys=False))
        if not (tmp / ".dvc").exists():
            sh([dvc, "init", "--no-scm", "-q"], tmp, env)
        sh([dvc, "config", "core.analytics", "false"], tmp, env)
        print(f"load average {os.getloadavg()[0]:.2f}; copy in {tmp}, {a.clips_per_class} clips per class x 3 classes")
        full = sh([dvc, "repro", "-q"], tmp, env)
        print(f"full dvc repro: {full:.1f} s")
        nothing = [sh([dvc, "repro", "-q"], tmp, env) for _ in range(a.repeat)]
        status1 = [sh([dvc, "status", "-q"], tmp, env, check=False) for _ in range(a.repeat)]
        n1 = _files(tmp / "data" / "ingest")
        (tmp / "params.yaml").write_text(yaml.safe_dump(tiny_params(raw, a.clips_per_class * a.scale), sort_keys=False))
        big = sh([dvc, "repro", "-q", "extract"], tmp, env)
        status2 = [sh([dvc, "status", "-q"], tmp, env, check=False) for _ in range(a.repeat)]
        n2 = _files(tmp / "data" / "ingest")
        rn, s1, s2 = statistics.median(nothing), statistics.median(status1), statistics.median(status2)
        print(f"dvc repro, nothing changed: {rn:.2f} s (runs {', '.join(f'{x:.2f}' for x in nothing)})")
        print(f"dvc status: {s1:.2f} s at {3 * a.clips_per_class} clips, {s2:.2f} s at {3 * a.clips_per_class * a.scale} "
              f"clips ({n1} -> {n2} files under data/ingest; rebuilding the data stages took {big:.1f} s)")
    finally:
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    res = [("repro_nothing_changed_s", rn, 5.0, "<"), ("status_time_ratio", s2 / s1, 1.5, "<=")]
    print(f"\nload average {os.getloadavg()[0]:.2f}")
    for name, x, goal, op in res:
        ok = x < goal if op == "<" else x <= goal
        print(f"target {name}: {x:.2f} (goal {op} {goal}) {'ok' if ok else 'miss'}")
    return res


if __name__ == "__main__":
    main()
