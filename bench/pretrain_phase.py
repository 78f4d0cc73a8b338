"""Pretraining with (class, phase) targets against class labels alone, over pretraining seeds:
`python -m bench.pretrain_phase --project P [--seeds 5] [--archs gru-fc6,vrnn-fc6+fc7,traditional-gru-1]`.

On a finished classification project (its `data/clips` and `params.yaml`: the built-in set after `make repro`, a
`bench.heldout --keep DIR` project), pretrains the search stream's CNN with the pretrain stage's own code
(`pipeline.training.pretrain.pretrain_modality`) once per pretraining seed and variant, then trains each
configuration over its cached trunk with the search recipe of params.yaml (`bench.search_recipe.run_recipe`, one
search seed).
Variants: `params.yaml` (its `pretrain.phase_bins`, `dropout`), `labels alone, dropout 0.2` (phase_bins 0) and
`labels alone, dropout 0.5` (phase_bins 0, the VGG's dropout: the default before phase targets). Prints per
variant and configuration the best val score per pretraining seed and its mean [95% interval] over the seeds (the
spread that one pretrained CNN per stream leaves out of Table 1's intervals), and `ratio` lines: params.yaml /
the previous default, per configuration, measured side by side. About 30 s per seed and variant on the held-out
project (2 cores).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from bench.search_recipe import parse_bench_args, recipe_of, run_recipe
from pipeline.core.checkpoint import backbone_from
from pipeline.checks import load_stage_params
from pipeline.data.dataset import ClipDataset
from pipeline.report.seeds import mean_interval
from pipeline.training.pretrain import pretrain_modality
from pipeline.training.tasks import task_from_params

PREVIOUS_DEFAULT = "labels alone, dropout 0.5"  # the default before phase targets: the ratio lines' baseline
VARIANTS = {"params.yaml": {}, "labels alone, dropout 0.2": {"phase_bins": 0, "dropout": 0.2},
            PREVIOUS_DEFAULT: {"phase_bins": 0, "dropout": 0.5}}  # label -> pretrain overrides


def main(argv=None) -> None:
    args = parse_bench_args("bench.pretrain_phase", __doc__, 5,
                            "a classification project folder after dvc repro (pretraining seeds from its "
                            "pretrain.seed)", argv)
    archs = args.archs
    project = Path(args.project)
    params = load_stage_params(str(project / "params.yaml"), "search")
    task = task_from_params(params)
    if not task.frame_phase:
        raise SystemExit(f"bench.pretrain_phase: {project / 'params.yaml'}: task {task.name!r} has no phase "
                         "targets; expected a classification project")
    search, pretrain = params.search, params.pretrain
    clips = project / "data" / "clips"
    datasets = {s: ClipDataset(str(clips), s, search.modality, raw=True) for s in ("train", "val")}
    recipe = recipe_of(search)
    seeds = range(pretrain.seed, pretrain.seed + args.seeds)
    results: dict[str, dict[str, list[float]]] = {}
    for label, overrides in VARIANTS.items():
        results[label] = {name: [] for name in archs}
        for seed in seeds:
            t0 = time.perf_counter()
            p = pretrain.model_copy(update={**overrides, "seed": seed})
            ckpt, metrics = pretrain_modality(p, params.extract, clips, search.modality, task)
            res = run_recipe(backbone_from(ckpt), datasets, search, task, recipe, archs, 1)
            for name in archs:
                results[label][name].append(res[name][0][0])
            print(f"bench.pretrain_phase: {label}, pretrain seed {seed}: phase_bins {metrics['phase_bins']}, best "
                  f"epoch {metrics['best_epoch']}, val frame acc {metrics['val_frame_acc']:.3f}; " +
                  ", ".join(f"{n} {results[label][n][-1]:.3f}" for n in archs) +
                  f" ({time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"bench.pretrain_phase: {project.resolve()} ({search.modality}, best {task.score}, one search seed, "
          f"pretraining seeds {list(seeds)}); search recipe {recipe}")
    for name in archs:
        for label, res in results.items():
            print(f"  {name:18s} {label:26s} {mean_interval(res[name]).text()}  per seed "
                  f"{' '.join(f'{v:.3f}' for v in res[name])}")
        now, prev = np.mean(results["params.yaml"][name]), np.mean(results[PREVIOUS_DEFAULT][name])
        print(f"ratio {name}: best {task.score} params.yaml / {PREVIOUS_DEFAULT} = {now / prev:.3f} "
              f"({now:.3f} / {prev:.3f})")


if __name__ == "__main__":
    main()
