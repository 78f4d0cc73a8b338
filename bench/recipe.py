"""The training recipe, measured: `python -m bench.recipe [--clips data/clips] [--pretrained models/pretrained]
[--seeds 3] [--epochs 8]`.

On the clips and the pretrained rgb CNN of a finished `make repro` (or any project's), trains three
configurations (PreGRU fc6, PreLSTM fc6, the 1-layer traditional LSTM) over the cached trunk, as the search does,
once with the readout this project uses (`prernn.readout`: a recurrent model's loss and answer at its last step)
and once with the loss at every step averaged over T (the first version's recipe), over `--seeds` seeds each.
Prints per configuration and recipe: best val accuracy (mean [95% interval] over seeds), last-epoch train and
val accuracy (the gap shows memorising), the per-class val accuracy (which classes a frozen trunk cannot tell
apart), and `target` lines: the ratio of best val accuracy, last-step / every-step readout (measured side by
side in this run), and the best configuration's best val accuracy against the issue's goal 0.90.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

import prernn
from pipeline.core.checkpoint import load_backbone
from pipeline.data.dataset import ClipDataset
from pipeline.search.trunk_cache import prepare_splits
from pipeline.report.seeds import mean_interval
from pipeline.training.tasks import Classification
from pipeline.training.trainer import Trainer, seed_everything

ARCHS = (("prernn-gru-fc6", "gru", ["fc6"]), ("prernn-lstm-fc6", "lstm", ["fc6"]), ("traditional-lstm-1", "lstm", None))


def build(backbone, cell: str, layers):
    """A PreRNN conversion of `layers`, or the 1-layer traditional RNN when `layers` is None."""
    if layers is None:
        return prernn.traditional(backbone, cell, num_layers=1)
    return prernn.convert(backbone, layers, cell)


def train_once(backbone, arch, splits, *, seed: int, epochs: int, readout: str) -> dict:
    """One configuration, one seed: {"best_val", "train", "val" (last epoch), "per_class" (last epoch)}."""
    _, cell, layers = arch
    seed_everything(seed)
    model = build(backbone, cell, layers)
    trainer = Trainer(model, lr_inherited=5e-4, lr_new=3e-3, batch_size=16, seed=seed, start=splits["train"].start,
                      task=Classification())  # the recipe of the classification set
    trainer.readout = readout  # the recipe under test
    rows = [trainer.fit_epoch(splits["train"], splits["val"]) for _ in range(epochs)]
    ev = trainer.evaluate(splits["val"])
    pred, y = ev.outputs.argmax(-1), ev.targets
    per_class = [float((pred[y == k] == k).float().mean()) for k in range(int(y.max()) + 1)]
    return {"best_val": max(r["val_acc"] for r in rows), "train": rows[-1]["train_acc"], "val": rows[-1]["val_acc"],
            "per_class": per_class}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", default="data/clips")
    ap.add_argument("--pretrained", default="models/pretrained")
    ap.add_argument("--modality", default="rgb")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=8)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    backbone = load_backbone(Path(args.pretrained) / f"{args.modality}.pt")
    datasets = {s: ClipDataset(args.clips, s, args.modality, raw=True) for s in ("train", "val")}
    splits = prepare_splits(backbone, datasets, prernn.trunk_boundary(backbone), cache_trunk=True)
    names = datasets["val"].class_names
    print(f"bench.recipe: {args.clips}, {len(splits['train'])} train / {len(splits['val'])} val clips, "
          f"{args.epochs} epochs, seeds 0..{args.seeds - 1}")
    best = {}
    for readout in ("mean", "last"):
        for arch in ARCHS:
            runs = [train_once(backbone, arch, splits, seed=s, epochs=args.epochs, readout=readout)
                    for s in range(args.seeds)]
            interval = mean_interval([r["best_val"] for r in runs])
            best[(readout, arch[0])] = interval.mean
            per_class = np.mean([r["per_class"] for r in runs], axis=0)
            weakest = ", ".join(f"{names[k]} {per_class[k]:.2f}" for k in np.argsort(per_class)[:2])
            print(f"  readout {readout:4s} {arch[0]:20s} best val {interval.text()}  last epoch train "
                  f"{np.mean([r['train'] for r in runs]):.3f} val {np.mean([r['val'] for r in runs]):.3f}  "
                  f"weakest classes: {weakest}")
    for arch in ARCHS:
        ratio = best[("last", arch[0])] / max(best[("mean", arch[0])], 1e-9)
        print(f"target recipe_{arch[0]}: best val, last-step / every-step readout = {ratio:.3f} (goal >= 1)")
    top = max(best[("last", a[0])] for a in ARCHS)
    print(f"target best_val_acc: {top:.3f} (goal >= 0.90; {'ok' if top >= 0.9 else 'MISSED'})")


if __name__ == "__main__":
    main()
