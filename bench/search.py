"""Benchmark of the search: `python -m bench.search [--trials 4] [--epochs 3] [--gpus-per-trial 0.25] [--skip-ray]`.

1. Scheduling efficiency (Ray Tune through ``pipeline.search.tuner.run_search`` and the pipeline's trainable): a search
   of N equal trials (the same config repeated under distinct names, default N=4) vs the same search of that one
   trial alone, both in this run on one local Ray instance (started once, so neither pays Ray's start-up).
   Ratio = span(N trials) / (one trial x ceil(N / slots)), slots = concurrent trials the resources allow
   (CPUs / cpus_per_trial, or GPUs / gpus_per_trial). Both sides are the trials' own wall times as recorded by the
   trainable (``trial_wall_clock`` of each trial's last result, [train_trial entry, last report]): "one trial" is
   the median end - start of the single trial over the alone searches, span(N) is the last trial end minus the
   first trial start of the N-trial search. So the driver's fixed setup of each search (trunk pass, MLflow
   parent run, Tuner setup, actor start of the first trials, result collection) is excluded from both, while
   Ray's scheduling between trials (actor reuse, trial start of the later waves) is included. The whole-search
   wall times (run_search call) and Ray's ``time_total_s`` per trial are printed too. Target
   ``search_efficiency <= 1.25``.
2. Cost of the cached trunk: the default space (21 configurations for a VGG-style backbone: 9 PreRNN gate-dependent /
   SIH x fc6, fc7, fc6+fc7 conversions + 6 SIH... see pipeline.search.space) trained one after another on cached trunk
   features (``prepare_splits(cache_trunk=True)``, the trunk run once, included in the time) vs ONE configuration
   fine-tuned end to end (``cache_trunk=False``: raw clips, every layer trained), same epochs / data / Trainer.
   Serial compute time, no Ray (the scheduling part is measured in 1.). Target ``search21_vs_full_finetune < 3``.
Data: synthetic Arrow clips (``pipeline.data.clipstore``) read by ``pipeline.data.dataset.ClipDataset``, vgg_mini at 32 px, T=8.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import prernn
from bench.data import synthetic_clip
from pipeline.data.clipstore import ClipWriter
from pipeline.data.dataset import ClipDataset
from pipeline.search.trunk_cache import prepare_splits
from pipeline.core.params import MlflowParams, SearchParams
from pipeline.search.space import build_space
from pipeline.search.trial_config import SHARED_KEYS
from pipeline.training.tasks import Classification
from pipeline.training.trainer import Trainer, seed_everything


def make_split_clips(out: Path, per_split: dict, frames: int, size: int, classes: int = 4) -> Path:
    rng = np.random.default_rng(0)
    w = ClipWriter(out, ["rgb"], frames, size, 1 << 30, splits=tuple(per_split))
    for split, n in per_split.items():
        for i in range(n):
            w.add(split, {"rgb": synthetic_clip(rng, frames, size)}, i % classes, f"{split}{i}", f"{split}{i}")
    w.finish({"prernn.class_names": [f"c{k}" for k in range(classes)], "prernn.modalities": ["rgb"],
              "prernn.extract": {"frames": frames, "size": size},
              "prernn.normalization": {"rgb": {"mean": [0.4] * 3, "std": [0.25] * 3}}})
    return out


def train_one(backbone, arch: dict, splits: dict, search: SearchParams, device="cpu") -> float:
    """The trainable's work for one config (build, fit every epoch, gate statistics), outside Ray; seconds."""
    t0 = time.perf_counter()
    cfg = {**{k: getattr(search, k) for k in SHARED_KEYS}, **arch}
    seed_everything(int(cfg["seed"]))
    model = prernn.build_from_config(cfg, copy.deepcopy(backbone))
    train, val = splits["train"], splits["val"]
    trainer = Trainer(model, lr_inherited=cfg["lr_inherited"], lr_new=cfg["lr_new"], batch_size=cfg["batch_size"],
                      seed=int(cfg["seed"]), start=train.start, device=device, task=Classification())
    while trainer.epoch < int(cfg["epochs"]):
        trainer.fit_epoch(train, val)
    prernn.gate_statistics(model, val.inputs(device), start=val.start)
    return time.perf_counter() - t0


def cost_of_cached_search(backbone, datasets: dict, search: SearchParams, full_name: str, device="cpu"):
    """(seconds of the 21-config search on cached features incl. the trunk pass, seconds of one full fine-tune)."""
    candidates, boundary = prernn.candidate_layers(backbone), prernn.trunk_boundary(backbone)
    space = build_space(search, candidates, prernn.default_candidates(backbone))
    warm = prepare_splits(backbone, datasets, boundary, cache_trunk=True, device=device)
    train_one(backbone, space[0], warm, search.model_copy(update={"epochs": 1}), device)  # warm-up, not timed
    t0 = time.perf_counter()
    cached = prepare_splits(backbone, datasets, boundary, cache_trunk=True, device=device)
    trunk_s = time.perf_counter() - t0
    per = [train_one(backbone, arch, cached, search, device) for arch in space]
    search_s = trunk_s + sum(per)
    arch = next(a for a in space if a["name"] == full_name)
    raw = prepare_splits(backbone, datasets, boundary, cache_trunk=False)
    full_s = train_one(backbone, arch, raw, search, device)
    return search_s, full_s, len(space), trunk_s


def trial_windows(exp_dir) -> list[dict]:
    """Per trial of a finished search: its last result's ``trial_wall_clock`` (start, end) and ``time_total_s``."""
    out = []
    for res in sorted(Path(exp_dir).glob("*/result.json")):
        lines = [ln for ln in res.read_text().splitlines() if ln.strip()]
        last = json.loads(lines[-1])
        start, end = last["trial_wall_clock"]
        out.append({"start": start, "end": end, "time_total_s": last.get("time_total_s")})
    return out


def ray_efficiency(ckpt: dict, splits: dict, arch: dict, search: SearchParams, n: int, slots: int, tmp: Path,
                   repeat_alone: int = 2) -> dict:
    """The N-trial search vs the single trial through pipeline.search.tuner.run_search (see the module docstring):
    {"span": first start..last end of the n trials, "one": median single-trial wall time, "ratio",
    "many_wall" / "one_wall": whole run_search seconds, "ray_total": Ray's time_total_s per trial}."""
    from pipeline.search.tuner import SearchInputs, run_search

    candidates, boundary = prernn.candidate_layers(ckpt["model"]), prernn.trunk_boundary(ckpt["model"])
    ck = {"config": ckpt["config"], "state_dict": ckpt["state_dict"], "meta": {"class_names": ckpt["classes"]}}
    mlflow = MlflowParams(tracking_uri=f"sqlite:///{tmp}/mlflow.db", experiment="bench")

    def run(space, tag):
        t0 = time.perf_counter()
        inputs = SearchInputs(ck, {boundary: splits}, space, candidates, boundary, Classification())
        rows, info = run_search(search, mlflow, inputs, base_dir=tmp, verbose=0, fresh=True)
        wall = time.perf_counter() - t0
        bad = [r for r in rows if r["status"] != "ok"]
        if bad:
            raise RuntimeError(f"bench search {tag}: trial failed: {bad[0]['error']}")
        compute.append(sum(e.get("epoch_seconds", 0.0) for r in rows for e in r["history"]) / len(rows))
        windows = trial_windows(info["experiment_dir"])
        if len(windows) != len(space):
            raise RuntimeError(f"bench search {tag}: {len(windows)} trial results under {info['experiment_dir']}, "
                               f"expected {len(space)}")
        return wall, windows

    compute: list[float] = []  # per trial: seconds inside fit_epoch (the rest is Ray / MLflow / checkpoints)
    equal = [{**arch, "name": f"{arch['name']}-rep{k}"} for k in range(n)]
    alone = [run([{**arch, "name": f"{arch['name']}-alone{r}"}], "alone") for r in range(1)]
    many_wall, many = run(equal, "n")
    alone += [run([{**arch, "name": f"{arch['name']}-alone{r}"}], "alone") for r in range(1, repeat_alone)]
    one = float(np.median([w[0]["end"] - w[0]["start"] for _, w in alone]))
    span = max(w["end"] for w in many) - min(w["start"] for w in many)
    print(f"mean seconds per trial inside Trainer.fit_epoch: {np.mean(compute):.2f} (the rest of a trial's wall "
          f"time is MLflow runs, model build, gate statistics, per-epoch checkpoints)")
    print("single-trial searches: trial wall " + ", ".join(f"{w[0]['end'] - w[0]['start']:.2f}" for _, w in alone)
          + " s (Ray time_total_s " + ", ".join(f"{w[0]['time_total_s']:.2f}" for _, w in alone) + "); whole search "
          + ", ".join(f"{t:.2f}" for t, _ in alone) + " s")
    t_first = min(w["start"] for w in many)
    print(f"{n}-trial search: trials (start, end) s after the first start: "
          + ", ".join(f"({w['start'] - t_first:.2f}, {w['end'] - t_first:.2f})" for w in sorted(many, key=lambda w: w["start"]))
          + "; Ray time_total_s " + ", ".join(f"{w['time_total_s']:.2f}" for w in many)
          + f"; whole search {many_wall:.2f} s")
    ordered = sorted(many, key=lambda w: w["start"])
    first, rest = ordered[:slots], ordered[slots:]
    wave1 = max(w["end"] for w in first) - min(w["start"] for w in first)
    print(f"wave 1 (the first {len(first)} trials, fresh actors like the single trial): span {wave1:.2f} s = "
          f"{wave1 / one:.2f} x one trial" + (f"; later trials (reused actors, no per-process warm-up such as the "
          f"MLflow store init): mean {np.mean([w['end'] - w['start'] for w in rest]):.2f} s each" if rest else ""))
    one_wall = float(np.median([t for t, _ in alone]))
    return {"span": span, "one": one, "ratio": span / (one * math.ceil(n / slots)), "many_wall": many_wall,
            "one_wall": one_wall}


def main(argv=None) -> list[tuple[str, float, float, str]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=4, help="N equal trials for the efficiency part")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--clips", type=int, default=64, help="train clips (val: a quarter)")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--cpus-per-trial", type=float, default=1)
    ap.add_argument("--gpus-per-trial", type=float, default=0, help="> 0: trials on the GPU (fractional: several per GPU)")
    ap.add_argument("--full-config", default="prernn-lstm-fc6", help="the config fine-tuned end to end in part 2")
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--skip-cost", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    device = "cuda" if a.gpus_per_trial > 0 and torch.cuda.is_available() else "cpu"
    res = []
    with tempfile.TemporaryDirectory(prefix="bench_search_") as tmp:
        tmp = Path(tmp)
        clips = make_split_clips(tmp / "clips", {"train": a.clips, "val": max(4, a.clips // 4)}, a.frames, a.size)
        datasets = {s: ClipDataset(clips, s, "rgb") for s in ("train", "val")}
        torch.manual_seed(0)
        backbone = prernn.create_backbone("vgg_mini", datasets["train"].num_classes, input_size=a.size)
        search = SearchParams(epochs=a.epochs, batch_size=16, cpus_per_trial=a.cpus_per_trial,
                              gpus_per_trial=a.gpus_per_trial, max_failures=0, storage_path=str(tmp / "ray"))
        print(f"load average {os.getloadavg()[0]:.2f}; vgg_mini {a.size}px T={a.frames}, {a.clips} train clips, "
              f"{a.epochs} epochs, device {device}")
        if not a.skip_ray:
            import ray
            ngpu = torch.cuda.device_count() if device == "cuda" else 0
            ncpu = os.cpu_count() or 1
            from pipeline.core.ray_cluster import connect

            connect(None, num_cpus=ncpu, num_gpus=ngpu, log_to_driver=False)  # as the search stage starts Ray
            try:
                slots = int(ncpu // a.cpus_per_trial)
                if a.gpus_per_trial > 0:
                    slots = min(slots, int(ngpu // a.gpus_per_trial))
                boundary = prernn.trunk_boundary(backbone)
                splits = prepare_splits(backbone, datasets, boundary, cache_trunk=True, device=device)
                arch = next(x for x in build_space(search, prernn.candidate_layers(backbone),
                                                   prernn.default_candidates(backbone)) if x["name"] == a.full_config)
                ck = {"config": backbone.config, "state_dict": backbone.state_dict(), "model": backbone,
                      "classes": datasets["train"].class_names}
                eff = ray_efficiency(ck, splits, arch, search, a.trials, slots, tmp)
                waves = math.ceil(a.trials / slots)
                print(f"Ray Tune: {a.trials} equal trials ({arch['name']}) on {slots} slots: first trial start to last "
                      f"trial end {eff['span']:.2f} s, one trial alone {eff['one']:.2f} s: ideal "
                      f"{eff['one'] * waves:.2f} s")
                print(f"whole searches (run_search, incl. the driver's fixed setup): {a.trials} trials "
                      f"{eff['many_wall']:.2f} s, 1 trial {eff['one_wall']:.2f} s (their ratio over {waves} waves "
                      f"{eff['many_wall'] / (eff['one_wall'] * waves):.2f}, not the target)")
                res.append(("search_efficiency", eff["ratio"], 1.25, "<="))
            finally:
                ray.shutdown()
        if not a.skip_cost:
            search_s, full_s, n, trunk_s = cost_of_cached_search(backbone, datasets, search, a.full_config, device)
            print(f"cached trunk: {n} configs {search_s:.1f} s (trunk pass {trunk_s:.2f} s) vs one full fine-tune of "
                  f"{a.full_config} (cache_trunk=false) {full_s:.1f} s")
            res.append(("search21_vs_full_finetune", search_s / full_s, 3.0, "<"))
    print(f"\nload average {os.getloadavg()[0]:.2f}")
    for name, x, goal, op in res:
        ok = x <= goal if op == "<=" else x < goal
        print(f"target {name}: {x:.2f} (goal {op} {goal}) {'ok' if ok else 'miss'}")
    return res


if __name__ == "__main__":
    main()
