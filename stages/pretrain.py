"""DVC stage `pretrain`: the trained CNN each stream starts from ([0025]: the CNN is trained first).

In: `--clips` (extract stage), params sections `pretrain` and `extract`. Per modality in
`pretrain.modalities`: train `pretrain.backbone` on the frames of the train split (snippets for a
3D backbone), or start from the user's `pretrain.weights` and fine-tune them (`pretrain.finetune`)
or keep them; evaluate frame accuracy on val. The weights of the best val epoch are kept.
Out (under --out, one atomic folder): `{modality}.pt` ({"config", "state_dict", "meta"}: class_names,
normalization, extract params, modality, metrics) and `pretrain.json` (per-modality metrics).
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path


def pretrain_modality(p, extract, clips_dir: Path, modality: str, task) -> tuple[dict, dict]:
    """Train (or load) one stream's backbone for `task` (pipeline.training.tasks); returns (checkpoint dict, metrics).

    The head has the clips' `num_classes` outputs (regression: 2K, the frames regress their landmarks); the best
    epoch is the one with the best val `task.score` (metrics `val_frame_<key>` for the task's metric keys).
    """
    import torch

    import prernn
    from pipeline.data.augment import from_params
    from pipeline.data.dataset import FrameDataset, snippet_length
    from pipeline.training.phase import PhaseClassification, PhaseHead
    from pipeline.training.trainer import Trainer, seed_everything

    seed_everything(p.seed)
    options = prernn.backbone_options(p.backbone)  # the builder's keyword options
    kwargs = {"input_size": extract.size} if "input_size" in options else {}
    dropout = p.dropout if p.dropout is not None else task.fc_dropout  # null: the task's (regression: none)
    if dropout is not None and "dropout" in options:  # the fc6 / fc7 dropout of a VGG or a C3D
        kwargs["dropout"] = dropout
    with torch.device("meta"):  # the backbone's snippet length, from its config (no memory, no random numbers)
        snippet = snippet_length(prernn.create_backbone(p.backbone, 2, **kwargs).config)
    bins = p.phase_bins if task.frame_phase else 0  # (class, phase) pair targets: classification only
    train = FrameDataset(clips_dir, "train", modality, snippet=snippet, raw=True, phase_bins=bins)  # uint8
    val = FrameDataset(clips_dir, "val", modality, snippet=snippet, raw=True, phase_bins=bins)
    if train.task != task.name:
        raise ValueError(f"{clips_dir}: clips extracted for task {train.task!r}, but params.yaml's task is "
                         f"{task.name!r}; rerun the extract stage")
    in_channels = train[0][0].shape[-1]  # (H, W, C) / (L, H, W, C)
    model = prernn.create_backbone(p.backbone, train.num_classes, in_channels=in_channels, **kwargs)
    if p.weights:
        try:
            prernn.load_pretrained(model, p.weights, strict_classifier=False)
        except ValueError as err:
            sys.exit(f"pretrain: pretrain.weights: {p.weights!r}: {err}")
    epochs = p.epochs if (p.weights is None or p.finetune) else 0
    augment = from_params(p, p.seed, points=task.points)  # shifted, jittered training frames (pretrain.augment_*)
    trained, train_task = model, task
    if bins:  # the CNN with its (class, phase) head, dropped afterwards (pipeline.training.phase)
        trained = PhaseHead(model, bins)
        train_task = PhaseClassification(bins, p.phase_weight, train.num_classes)
    trainer = Trainer(trained, lr_inherited=p.lr, lr_new=p.lr, weight_decay=p.weight_decay,
                      batch_size=p.batch_size, seed=p.seed, task=train_task, augment=augment)
    best, best_state = None, copy.deepcopy(trained.state_dict())
    key = task.score
    for _ in range(epochs):
        row = trainer.fit_epoch(train, val)
        print(f"pretrain {modality}: epoch {row['epoch']}/{epochs} train_loss {row['train_loss']:.3f} "
              f"{key} {row[key]:.3f} ({row['clips_per_sec']:.0f} frames/s)")
        if best is None or (row[key], -row["val_loss"]) > (best[key], -best["val_loss"]):  # ties: lower loss
            best, best_state = row, copy.deepcopy(trained.state_dict())
    trained.load_state_dict(best_state)
    final = trainer.evaluate(val, batch_size=256)
    metrics = {"backbone": p.backbone, "frames_train": len(train), "frames_val": len(val),
               "epochs": epochs, "best_epoch": best["epoch"] if best else 0, "phase_bins": bins,
               **{f"val_frame_{k}": v for k, v in final.metrics.items()}, "val_loss": final.loss,
               "weights": p.weights, "finetuned": bool(epochs), "history": trainer.history}
    meta = {"class_names": train.class_names, "normalization": {modality: train.meta["prernn.normalization"][modality]},
            "extract": train.meta.get("prernn.extract"), "modality": modality, "snippet": snippet,
            "pretrain": p.model_dump(), "metrics": {k: v for k, v in metrics.items() if k != "history"},
            **task.entries()}
    ckpt = {"config": model.config, "state_dict": model.state_dict(), "meta": meta}
    return ckpt, metrics


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--clips", default="data/clips", help="the extract stage's Arrow clip folder")
    ap.add_argument("--out", default="models/pretrained", help="folder for {modality}.pt and pretrain.json")
    args = ap.parse_args(argv)

    # deferred past argparse (`--help`, a bad argument answer at once): torch, Ray, MLflow take seconds to import
    import json

    import torch

    from pipeline.core.atomic import atomic_path
    from pipeline.data.clipstore import ClipFileError
    from pipeline.checks import load_stage_params
    from pipeline.training.tasks import task_from_params

    params = load_stage_params(args.params, "pretrain")
    p = params.pretrain
    task = task_from_params(params)
    if p.weights and not Path(p.weights).is_file():
        sys.exit(f"pretrain: pretrain.weights: {p.weights!r}: no such file")
    results = {}
    with atomic_path(args.out) as tmp:
        tmp.mkdir(parents=True)
        for modality in p.modalities:
            try:
                ckpt, metrics = pretrain_modality(p, params.extract, Path(args.clips), modality, task)
            except ClipFileError as err:  # a clip file cut short or overwritten: one line naming it, exit 2
                print(f"pretrain: {err}", file=sys.stderr)
                sys.exit(2)
            except (FileNotFoundError, ValueError) as err:
                sys.exit(f"pretrain: {modality}: {err}")
            torch.save(ckpt, tmp / f"{modality}.pt")
            results[modality] = metrics
            score = ", ".join(f"val frame {k} {metrics[f'val_frame_{k}']:.3f}" for k in task.metric_keys)
            print(f"pretrain {modality}: {score} -> {args.out}/{modality}.pt")
        (tmp / "pretrain.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
