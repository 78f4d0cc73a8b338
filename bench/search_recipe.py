"""The search's training recipe against the one before it: `python -m bench.search_recipe [--project .]
[--seeds 3] [--archs gru-fc6,vrnn-fc6+fc7,traditional-gru-1]`.

On a finished project (its `data/clips`, `models/pretrained/rgb.pt` and `params.yaml`: the built-in set after
`make repro`, a `bench.heldout --keep DIR` or `bench.regression --keep DIR` project), trains each configuration
over the cached trunk as the search does (augmented train copies, Trainer, no Ray), once with the recipe of
`params.yaml` (`search.augment_copies`, `batch_size`, `lr_*`, `epochs`) and once with the previous default (2
copies, batch 16, lr 5e-4 / 3e-3, 12 epochs), over `--seeds` seeds. Prints per configuration and recipe the best
val score (mean [95% interval] over seeds), last-epoch train and val (the gap shows memorising) and seconds per
seed, and a `ratio` line per configuration: best val, params.yaml recipe / previous recipe, measured side by side.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import prernn
from pipeline.core.checkpoint import load_backbone
from pipeline.checks import load_stage_params
from pipeline.data.augment import from_params
from pipeline.data.dataset import ClipDataset
from pipeline.report.seeds import mean_interval
from pipeline.search.trunk_cache import prepare_splits
from pipeline.training.tasks import task_from_params
from pipeline.training.trainer import Trainer, seed_everything

ARCHS = {"gru-fc6": ("gru", ["fc6"]), "lstm-fc6": ("lstm", ["fc6"]), "vrnn-fc6+fc7": ("vrnn", ["fc6", "fc7"]),
         "traditional-gru-1": ("gru", None), "traditional-lstm-1": ("lstm", None)}
PREVIOUS = {"augment_copies": 2, "batch_size": 16, "lr_inherited": 5e-4, "lr_new": 3e-3, "epochs": 12}


def recipe_of(search) -> dict:
    """The search params' values of the recipe keys (those of PREVIOUS)."""
    return {k: getattr(search, k) for k in PREVIOUS}


def build(backbone, cell: str, layers):
    """A PreRNN conversion of `layers`, or the 1-layer traditional RNN when `layers` is None."""
    return prernn.traditional(backbone, cell, num_layers=1) if layers is None else prernn.convert(backbone, layers, cell)


def run_recipe(backbone, datasets, search, task, recipe: dict, archs: list[str], seeds: int) -> dict:
    """{arch: (best val per seed, last train, last val, seconds per seed)} for one recipe (a dict of search keys)."""
    augment = from_params(search, search.seed, points=task.points)
    splits = prepare_splits(backbone, datasets, prernn.trunk_boundary(backbone),
                            train_augment=(augment, recipe["augment_copies"]) if augment else None)
    train_key = f"train_{task.train_metric}"
    out = {}
    for name in archs:
        cell, layers = ARCHS[name]
        best, last_train, last_val, t0 = [], [], [], time.perf_counter()
        for seed in range(search.seed, search.seed + seeds):
            seed_everything(seed)
            trainer = Trainer(build(backbone, cell, layers), lr_inherited=recipe["lr_inherited"],
                              lr_new=recipe["lr_new"], weight_decay=search.weight_decay,
                              batch_size=recipe["batch_size"], seed=seed, start=splits["train"].start, task=task)
            rows = [trainer.fit_epoch(splits["train"], splits["val"]) for _ in range(recipe["epochs"])]
            best.append(max(r[task.score] for r in rows))
            last_train.append(rows[-1][train_key])
            last_val.append(rows[-1][task.score])
        out[name] = (best, float(np.mean(last_train)), float(np.mean(last_val)), (time.perf_counter() - t0) / seeds)
    return out


def parse_bench_args(prog: str, doc: str, seeds: int, project_help: str, argv=None) -> argparse.Namespace:
    """The command line both recipe benchmarks share: --project, --seeds, --archs (checked against ARCHS)."""
    ap = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])
    ap.add_argument("--project", default=".", help=project_help)
    ap.add_argument("--seeds", type=int, default=seeds)
    ap.add_argument("--archs", default="gru-fc6,vrnn-fc6+fc7,traditional-gru-1",
                    help=f"comma-separated, of {', '.join(ARCHS)}")
    args = ap.parse_args(argv)
    args.archs = args.archs.split(",")
    unknown = [a for a in args.archs if a not in ARCHS]
    if unknown:
        raise SystemExit(f"{prog}: --archs: unknown {unknown}; expected some of {list(ARCHS)}")
    return args


def main(argv=None) -> None:
    args = parse_bench_args("bench.search_recipe", __doc__, 3, "a project folder after dvc repro", argv)
    archs = args.archs
    project = Path(args.project)
    params = load_stage_params(str(project / "params.yaml"), "search")
    search, task = params.search, task_from_params(params)
    backbone = load_backbone(project / "models" / "pretrained" / f"{search.modality}.pt")
    datasets = {s: ClipDataset(str(project / "data" / "clips"), s, search.modality, raw=True) for s in ("train", "val")}
    current = recipe_of(search)
    results = {label: run_recipe(backbone, datasets, search, task, recipe, archs, args.seeds)
               for label, recipe in (("previous", PREVIOUS), ("params.yaml", current))}
    print(f"bench.search_recipe: {project.resolve()} ({task.name}, {search.modality}, best {task.score} over "
          f"{args.seeds} seeds); previous {PREVIOUS}; params.yaml {current}")
    for name in archs:
        for label, res in results.items():
            best, train, val, secs = res[name]
            print(f"  {name:18s} {label:11s} best {mean_interval(best).text()}  last train {train:.3f} "
                  f"val {val:.3f}  ({secs:.1f} s/seed)")
        prev, now = np.mean(results["previous"][name][0]), np.mean(results["params.yaml"][name][0])
        print(f"ratio {name}: best {task.score} params.yaml / previous = {now / prev:.3f} ({now:.3f} / {prev:.3f})")


if __name__ == "__main__":
    main()
