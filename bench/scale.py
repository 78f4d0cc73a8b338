"""Benchmark of a search at scale: `python -m bench.scale [--configurations 105] [--seeds 3] [--clips 8]`.

One search of `configurations x seeds` short trials (default 105 x 3 = 315) through the project's real path:
`pipeline.search.tuner.run_search` (Ray Tune grid, actor reuse, per-epoch checkpoints in `storage_path`) running the
pipeline's trainable (`pipeline.search.trainable.train_trial`: one MLflow child run per trial in a SQLite store, params,
metrics, tags, the gate statistics artifact), 1 epoch each on tiny synthetic clips (vgg_mini at 32 px, T = 4,
8 train and 4 val clips, cached trunk). The configurations are the default space of 21 (pipeline.search.space) repeated
under distinct names (`<name>-r<k>`), as a space of conv + fc candidates would have more of them.

Measured in the same run:
1. Ray Tune + MLflow overhead per trial, in wall time: (the run_search call's wall time - the trials' own work
   / slots) / trials. A trial's own work is what it would do without Ray and MLflow: build the model and
   trainer, train and validate the epoch, compute the gate statistics; the trainable times it
   (`work_seconds` of its last result), so the baseline is the same trials in the same run. slots = the trials Ray
   runs at once (CPUs / cpus_per_trial). Ray's start-up is excluded (it is started once before); everything
   run_search does is included (fingerprint, parent run, Tuner setup, per-trial MLflow runs, checkpoints,
   experiment-state saves, result collection, closing the runs). Target `scale_overhead_per_trial_s < 0.3`.
   The overhead inside the trials (trial wall time - work) and between them (Ray) are printed too.
2. The select stage on those trials (`python -m stages.select` in a fresh process, as DVC runs it: imports,
   aggregation over seeds, claim 12, Table 1, FIG. 2A-2C, convergence, logging the reports to the parent run).
   Target `scale_select_s < 10`.
3. The SQLite store after the search: every trial has its child run of the parent, FINISHED, with its val_acc
   at epoch 1, its best_val_acc tag and its gate_stats.json; no run is lost or doubled; no trial failed and none
   had to retry a store call on "database is locked" (`tracking_lock_retries` of each result; a lock that
   outlasted the retries fails the trial and shows in its error). Target `scale_store_problems == 0`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

import prernn
from bench.search import make_split_clips
from pipeline.data.dataset import ClipDataset
from pipeline.core.params import MlflowParams, SearchParams
from pipeline.core.ray_cluster import connect
from pipeline.core.tracking import TRIAL_TAG, Tracker
from pipeline.search.results import write_outputs
from pipeline.search.space import build_space
from pipeline.search.stage import frame_reference
from pipeline.search.trial_config import seed_values, with_seeds
from pipeline.search.trunk_cache import prepare_splits
from pipeline.search.tuner import SearchInputs, run_search
from pipeline.training.tasks import Classification

REPO = Path(__file__).resolve().parents[1]


def scale_space(search: SearchParams, candidates: list[str], configurations: int) -> list[dict]:
    """`configurations` arch dicts: the default space repeated under distinct names (`<name>-r<k>`), each once per
    seed of `search` (pipeline.report.seeds.with_seeds)."""
    base = build_space(search, candidates)
    archs = [{**base[i % len(base)], "name": f"{base[i % len(base)]['name']}-r{i // len(base)}"}
             for i in range(configurations)]
    return with_seeds(archs, seed_values(search))


class TreeCpu:
    """CPU seconds (user + system) used by this process and every descendant (the local Ray instance: GCS, raylet,
    the trial workers) while the `with` block runs. A thread samples the tree every `every` s and keeps each
    process's last reading, so a worker that exits before the end still counts (up to its last sample)."""

    def __init__(self, every: float = 0.25):
        import psutil

        self.every, self.psutil, self.first, self.last = every, psutil, {}, {}
        self.stop = threading.Event()

    def sample(self) -> None:
        me = self.psutil.Process()
        for proc in [me] + me.children(recursive=True):
            try:
                key, t = (proc.pid, proc.create_time()), proc.cpu_times()
            except self.psutil.Error:  # exited meanwhile
                continue
            self.last[key] = t.user + t.system
            self.first.setdefault(key, self.last[key] if self.started else 0.0)

    def __enter__(self):
        self.started = False
        self.sample()  # what the processes alive now have used before: not counted
        self.started = True
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()
        return self

    def _loop(self) -> None:
        while not self.stop.wait(self.every):
            self.sample()

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self.sample()
        self.seconds = sum(self.last[k] - self.first[k] for k in self.last)


def trial_results(exp_dir: str | Path) -> list[dict]:
    """The last result (result.json) of every trial folder of a finished Ray experiment."""
    out = []
    for res in sorted(Path(exp_dir).glob("*/result.json")):
        lines = [ln for ln in res.read_text().splitlines() if ln.strip()]
        out.append(json.loads(lines[-1]) if lines else {"trial_dir": res.parent.name})
    return out


def locked_errors(exp_dir: str | Path) -> list[str]:
    """The trial folders whose error file mentions "database is locked"."""
    return sorted(p.parent.name for p in Path(exp_dir).glob("*/error*.txt")
                  if "database is locked" in p.read_text(errors="replace").lower())


def store_problems(uri: str, experiment_id: str, parent: str, rows: list[dict]) -> list[str]:
    """Every way the MLflow store disagrees with the trials (section 3 of the module docstring), one line each."""
    tracker = Tracker(uri)
    c = tracker.client
    children = tracker.child_runs(experiment_id, parent)
    by_trial: dict[str, list] = {}
    for run in children:
        by_trial.setdefault(run.data.tags.get(TRIAL_TAG), []).append(run)
    problems = []
    if len(children) != len(rows):
        problems.append(f"{len(children)} child runs for {len(rows)} trials")
    for row in rows:
        runs = by_trial.get(row["name"], [])
        if len(runs) != 1:
            problems.append(f"{row['name']}: {len(runs)} child runs")
            continue
        run = runs[0]
        if row["status"] != "ok":
            problems.append(f"{row['name']}: trial {row['status']}: {row['error']}")
        if run.info.status != "FINISHED":
            problems.append(f"{row['name']}: run {run.info.status}")
        if row["mlflow_run_id"] != run.info.run_id:
            problems.append(f"{row['name']}: trials.json names run {row['mlflow_run_id']}, the store {run.info.run_id}")
        if [m.step for m in c.get_metric_history(run.info.run_id, "val_acc")] != [1]:
            problems.append(f"{row['name']}: val_acc not logged once at epoch 1")
        if "best_val_acc" not in run.data.tags:
            problems.append(f"{row['name']}: no best_val_acc tag")
        if "gate_stats.json" not in {a.path for a in c.list_artifacts(run.info.run_id)}:
            problems.append(f"{row['name']}: no gate_stats.json artifact")
    return problems


def time_select(search_dir: Path, out: Path, params: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of `python -m stages.select` over `search_dir` in a fresh process (as DVC runs
    the stage)."""
    import resource

    params.write_text("select: {}\n")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "stages.select", "--params", str(params), "--search", str(search_dir),
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"select stage failed ({done.returncode}): {done.stderr[-2000:]}")
    print(done.stdout.strip())
    return seconds, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def run_scale(tmp: Path, *, configurations: int, seeds: int, clips: int, size: int, frames: int,
              cpus_per_trial: float, tracking_uri: str | None = None) -> dict:
    """The search, the select stage and the store check (module docstring); returns the measurements.
    `tracking_uri`: another MLflow store than `<tmp>/mlflow.db` (tests/test_mlflow_postgres.py: a server on
    PostgreSQL)."""
    import ray

    clip_dir = make_split_clips(tmp / "clips", {"train": clips, "val": max(4, clips // 2)}, frames, size)
    datasets = {s: ClipDataset(clip_dir, s, "rgb") for s in ("train", "val")}
    torch.manual_seed(0)
    backbone = prernn.create_backbone("vgg_mini", datasets["train"].num_classes, input_size=size)
    candidates, boundary = prernn.default_candidates(backbone), prernn.trunk_boundary(backbone)
    splits = prepare_splits(backbone, datasets, boundary, cache_trunk=True)  # every trial of the space shares it
    search = SearchParams(epochs=1, batch_size=8, seeds=seeds, cpus_per_trial=cpus_per_trial, max_failures=0,
                          storage_path=str(tmp / "ray"))
    space = scale_space(search, candidates, configurations)
    ckpt = {"config": backbone.config, "state_dict": backbone.state_dict(),
            "meta": {"class_names": datasets["train"].class_names}}
    uri = tracking_uri or f"sqlite:///{tmp}/mlflow.db"
    task = Classification()  # the default params' task
    inputs = SearchInputs(ckpt, {boundary: splits}, space, candidates, boundary, task)
    ncpu = os.cpu_count() or 1
    slots = max(1, int(ncpu // cpus_per_trial))
    connect(None, num_cpus=ncpu, log_to_driver=False)  # Ray started once, outside the timed search
    try:
        with TreeCpu() as tree:
            driver0, t0 = time.process_time(), time.perf_counter()
            rows, info = run_search(search, MlflowParams(tracking_uri=uri, experiment="bench-scale"), inputs,
                                    base_dir=tmp, verbose=0, fresh=True)
            wall, driver_cpu = time.perf_counter() - t0, time.process_time() - driver0
        cpu = tree.seconds
    finally:
        ray.shutdown()
    results = trial_results(info["experiment_dir"])
    work = [float(r.get("work_seconds", math.nan)) for r in results]
    work_cpu = [float(r.get("work_cpu_seconds", math.nan)) for r in results]
    trial_wall = [r["trial_wall_clock"][1] - r["trial_wall_clock"][0] for r in results if "trial_wall_clock" in r]
    retries = sum(int(r.get("tracking_lock_retries", 0)) for r in results)
    problems = store_problems(info["tracking_uri"], info["experiment_id"], info["parent_run_id"], rows)
    problems += [f"{len(results)} trial results for {len(space)} trials"] if len(results) != len(space) else []
    problems += [f"{d}: database is locked" for d in locked_errors(info["experiment_dir"])]
    problems += [f"{retries} store calls retried on 'database is locked'"] if retries else []

    info.update(cache_trunk=True, seeds=seed_values(search), frame_reference=frame_reference(backbone, splits["val"], task))
    write_outputs(tmp / "search", rows, info)
    select_s, select_cpu = time_select(tmp / "search", tmp / "reports", tmp / "params.yaml")
    selection = json.loads((tmp / "reports" / "selection.json").read_text())
    if len(selection["trials"]) != configurations:
        problems.append(f"selection.json judged {len(selection['trials'])} configurations, expected {configurations}")
    return {"trials": len(space), "slots": slots, "wall": wall, "cpu": cpu, "driver_cpu": driver_cpu,
            "work": work, "work_cpu": work_cpu, "trial_wall": trial_wall,
            "retries": retries, "problems": problems, "select_s": select_s, "select_cpu": select_cpu, "selection": selection,
            "overhead": (wall - float(np.nansum(work)) / slots) / len(space)}


def main(argv=None) -> list[tuple[str, float, float, str]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configurations", type=int, default=105, help="distinct configurations (default 105 = 5 x 21)")
    ap.add_argument("--seeds", type=int, default=3, help="trials per configuration")
    ap.add_argument("--clips", type=int, default=8, help="train clips (val: half, at least 4)")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--cpus-per-trial", type=float, default=1)
    ap.add_argument("--keep", help="work in this folder and keep it (clips, ray/, mlflow.db, search/, reports/)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(f"load average {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs; {a.configurations} configurations x "
          f"{a.seeds} seeds, vgg_mini {a.size}px T={a.frames}, {a.clips} train clips, 1 epoch", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        work_dir = Path(a.keep) if a.keep else Path(tmp)
        work_dir.mkdir(parents=True, exist_ok=True)
        m = run_scale(work_dir, configurations=a.configurations, seeds=a.seeds, clips=a.clips, size=a.size,
                      frames=a.frames, cpus_per_trial=a.cpus_per_trial)
    n, work, trial_wall = m["trials"], m["work"], m["trial_wall"]
    inside = float(np.mean(trial_wall) - np.nanmean(work))
    print(f"search: {n} trials on {m['slots']} slots in {m['wall']:.1f} s ({n / m['wall']:.2f} trials/s); own work "
          f"per trial {np.nanmean(work):.3f} s (median {np.nanmedian(work):.3f}, sum {np.nansum(work):.1f} s); "
          f"trial wall time (train_trial entry to last report) {np.mean(trial_wall):.3f} s")
    print(f"overhead per trial: {m['overhead']:.3f} s of wall time ({m['overhead'] * m['slots']:.3f} slot-seconds); "
          f"inside the trial (MLflow run, params, tags, metrics, artifact, checkpoint, report) {inside:.3f} s, "
          f"the rest between trials (Ray scheduling, actor reuse, experiment state, driver)")
    overhead_cpu = (m["cpu"] - np.nansum(m["work_cpu"])) / n
    ncpu = os.cpu_count() or 1
    print(f"CPU: the search used {m['cpu']:.1f} CPU-s in this process tree (Ray's driver, GCS, raylet, workers), "
          f"{m['cpu'] / n:.3f} per trial, of which own work {np.nansum(m['work_cpu']) / n:.3f} (its wall time "
          f"{np.nanmean(work):.3f}: the rest is waiting for a core); the driver alone {m['driver_cpu'] / n:.3f} per "
          f"trial. Overhead {overhead_cpu:.3f} CPU-s per trial, spread over {ncpu} cores: {overhead_cpu / ncpu:.3f} s "
          f"of wall time per trial where nothing else runs (a floor: disk syncs and waits between processes aside)")
    print(f"select stage: {m['select_s']:.2f} s ({m['select_cpu']:.2f} CPU-s) for {n} trials ({len(m['selection']['trials'])} configurations); "
          f"selected {(m['selection']['selected'] or {}).get('name')}")
    print(f"store: {len(m['problems'])} problem(s), {m['retries']} lock retries"
          + "".join(f"\n  {p}" for p in m["problems"][:20]))
    res = [("scale_overhead_per_trial_s", m["overhead"], 0.3, "<"), ("scale_select_s", m["select_s"], 10.0, "<"),
           ("scale_store_problems", float(len(m["problems"])), 0.0, "<=")]
    print(f"\nload average {os.getloadavg()[0]:.2f}")
    for name, x, goal, op in res:
        ok = x <= goal if op == "<=" else x < goal
        print(f"target {name}: {x:.{0 if name.endswith('problems') else 3}f} (goal {op} {goal:g}) "
              f"{'ok' if ok else 'miss'}")
    return res


if __name__ == "__main__":
    main()
