"""Pretraining: the trained CNN each stream starts from ([0025]: the CNN is trained first).

In: the `pretrain` and `extract` params sections, the extract stage's clip folder, a modality and the task
(pipeline.training.tasks). `pretrain_modality(...)` trains `pretrain.backbone` (a registered backbone, or the
user's own module from its builder `package.module:function`: pipeline.core.own_model) on the frames of the
train split (snippets for a 3D backbone), or starts from the user's `pretrain.weights` and fine-tunes them
(`pretrain.finetune`) or keeps them, and evaluates frame accuracy on val; the weights of the best val epoch are
kept. With `pretrain.phase_bins` (classification) the CNN trains with its (class, phase) head
(pipeline.training.phase), dropped afterwards.
Out: (checkpoint {"config", "state_dict", "meta"}, metrics): the contract save format of `{modality}.pt`.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch

import prernn
from pipeline.core.own_model import OwnModelError, build_own, check_output, is_builder, load_own_weights, model_config
from pipeline.data.augment import from_params
from pipeline.data.dataset import FrameDataset, snippet_length
from pipeline.training.phase import PhaseClassification, PhaseHead
from pipeline.training.tasks import Task
from pipeline.training.trainer import Trainer, seed_everything


class PretrainedWeightsError(ValueError):
    """`pretrain.weights` names a file the backbone cannot load (the message names the key and the file)."""


def backbone_kwargs(p, extract, task: Task) -> dict:
    """The builder's keyword options for `p.backbone` (`prernn.backbone_options`): the extract size as
    `input_size`, and the fc6 / fc7 dropout of a VGG or a C3D (`p.dropout`; null: the task's, regression none)."""
    options = prernn.backbone_options(p.backbone)
    kwargs = {"input_size": extract.size} if "input_size" in options else {}
    dropout = p.dropout if p.dropout is not None else task.fc_dropout
    if dropout is not None and "dropout" in options:
        kwargs["dropout"] = dropout
    return kwargs


def frame_datasets(clips_dir: Path, modality: str, snippet: int, bins: int, task: Task):
    """(train, val) FrameDatasets of uint8 frames; ValueError when the clips were extracted for another task."""
    train = FrameDataset(clips_dir, "train", modality, snippet=snippet, raw=True, phase_bins=bins)
    val = FrameDataset(clips_dir, "val", modality, snippet=snippet, raw=True, phase_bins=bins)
    if train.task != task.name:
        raise ValueError(f"{clips_dir}: clips extracted for task {train.task!r}, but params.yaml's task is "
                         f"{task.name!r}; rerun the extract stage")
    return train, val


def load_weights(model, weights: str) -> None:
    """The user's `pretrain.weights` into `model` (its classifier may differ); PretrainedWeightsError if refused."""
    try:
        prernn.load_pretrained(model, weights, strict_classifier=False)
    except ValueError as err:
        raise PretrainedWeightsError(f"pretrain.weights: {weights!r}: {err}") from err


def train_best(trainer: Trainer, train, val, epochs: int, key: str, modality: str) -> dict | None:
    """`epochs` epochs of `trainer`, printing one line each; loads the best val `key` epoch's weights (ties: the
    lower val loss) into the trainer's model and returns that epoch's row (None without epochs)."""
    trained = trainer.model
    best, best_state = None, copy.deepcopy(trained.state_dict())
    for _ in range(epochs):
        row = trainer.fit_epoch(train, val)
        print(f"pretrain {modality}: epoch {row['epoch']}/{epochs} train_loss {row['train_loss']:.3f} "
              f"{key} {row[key]:.3f} ({row['clips_per_sec']:.0f} frames/s)")
        if best is None or (row[key], -row["val_loss"]) > (best[key], -best["val_loss"]):
            best, best_state = row, copy.deepcopy(trained.state_dict())
    trained.load_state_dict(best_state)
    return best


def new_model(p, extract, task: Task, num_classes: int, in_channels: int, frame_shape) -> torch.nn.Module:
    """The CNN to pretrain with `p.weights` loaded: a registered backbone (`prernn.create_backbone`, the weights
    by `prernn.load_pretrained`, its classifier may differ), or the user's module from its builder (the weights
    strictly, `load_own_weights`; its output checked: `check_output`); PretrainedWeightsError when refused."""
    if not is_builder(p.backbone):
        model = prernn.create_backbone(p.backbone, num_classes, in_channels=in_channels,
                                       **backbone_kwargs(p, extract, task))
        if p.weights:
            load_weights(model, p.weights)
        return model
    try:
        model = build_own(p, num_classes, in_channels)
        if p.weights:
            load_own_weights(model, p.weights)
        check_output(model, frame_shape, num_classes, p.backbone)
    except OwnModelError as err:
        raise PretrainedWeightsError(str(err)) from None
    return model


def pretrain_modality(p, extract, clips_dir: Path, modality: str, task: Task) -> tuple[dict, dict]:
    """Train (or load) one stream's backbone for `task`; returns (checkpoint dict, metrics).

    The head has the clips' `num_classes` outputs (regression: 2K, the frames regress their landmarks); the best
    epoch is the one with the best val `task.score` (metrics `val_frame_<key>` for the task's metric keys).
    """
    seed_everything(p.seed)
    snippet = None  # the user's module reads frames
    if not is_builder(p.backbone):
        with torch.device("meta"):  # the backbone's snippet length, from its config (no memory, no random numbers)
            snippet = snippet_length(prernn.create_backbone(p.backbone, 2, **backbone_kwargs(p, extract, task)).config)
    bins = p.phase_bins if task.frame_phase else 0  # (class, phase) pair targets: classification only
    train, val = frame_datasets(clips_dir, modality, snippet, bins, task)
    frame = train[0][0]  # (H, W, C) / (L, H, W, C)
    in_channels = frame.shape[-1]
    model = new_model(p, extract, task, train.num_classes, in_channels, (in_channels, *frame.shape[:2]))
    epochs = p.epochs if (p.weights is None or p.finetune) else 0
    augment = from_params(p, p.seed, points=task.points)  # shifted, jittered training frames (pretrain.augment_*)
    trained, train_task = model, task
    if bins:  # the CNN with its (class, phase) head, dropped afterwards (pipeline.training.phase)
        trained = PhaseHead(model, bins)
        train_task = PhaseClassification(bins, p.phase_weight, train.num_classes)
    trainer = Trainer(trained, lr_inherited=p.lr, lr_new=p.lr, weight_decay=p.weight_decay,
                      batch_size=p.batch_size, seed=p.seed, task=train_task, augment=augment)
    best = train_best(trainer, train, val, epochs, task.score, modality)
    final = trainer.evaluate(val, batch_size=256)
    metrics = {"backbone": p.backbone, "frames_train": len(train), "frames_val": len(val),
               "epochs": epochs, "best_epoch": best["epoch"] if best else 0, "phase_bins": bins,
               **{f"val_frame_{k}": v for k, v in final.metrics.items()}, "val_loss": final.loss,
               "weights": p.weights, "finetuned": bool(epochs), "history": trainer.history}
    meta = {"class_names": train.class_names, "normalization": {modality: train.meta["prernn.normalization"][modality]},
            "extract": train.meta.get("prernn.extract"), "modality": modality, "snippet": snippet,
            "pretrain": p.model_dump(), "metrics": {k: v for k, v in metrics.items() if k != "history"},
            **task.entries()}
    return {"config": model_config(model), "state_dict": model.state_dict(), "meta": meta}, metrics
