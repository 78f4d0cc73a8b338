"""The training / evaluation loop shared by pretrain, search trials and evaluate.

Models: a frame model (prernn Backbone, `model(x)`: (N, C, H, W) -> (N, K)) or a sequence model
(prernn SequenceModel, `model(x, start=...)`: (B, T, ...) -> (B, T, K)).

Classification's loss and accuracy follow the model's readout (`prernn.readout`): a model with recurrent layers is
trained with the cross-entropy of its last step and predicts the class of its last step's softmax (an early step cannot tell
the direction of a motion: a loss at every step, as this loop used before, rewarded memorising the training
clips, measured in the README's "Training recipe"); a model without recurrence (the CNN per frame) takes the
cross-entropy at every step, averaged over T, and predicts the class of the time-averaged softmax.
Optimiser: AdamW with two parameter groups, `lr_inherited` for the weights that came from the
trained CNN (`model.inherited_parameters()`) and `lr_new` for the new hidden-to-hidden weights
(`model.new_parameters()`); a frame model has one group at `lr_new`.
Reproducible: every epoch reseeds torch / numpy / random from (seed, epoch) and shuffles with its
own generator, so a run resumed from an epoch checkpoint continues exactly as an unbroken run.
A loss that stops being finite raises `NonFiniteLoss` (the trial is then marked failed).
Raw datasets (`ClipDataset(..., raw=True)`: uint8 items) are normalised on the training device after the
transfer (`pipeline.data.dataset.device_normalizer`), so the loader only copies bytes.

The task (pipeline.training.tasks: Classification, LandmarkRegression) decides the loss, the train metric, the
evaluation metrics and the score ranked by: the epoch rows carry `train_<task.train_metric>` and `val_<key>` for
the task's metric keys (`val_acc`; `val_auc`, `val_nme`, `val_failure_rate`); `summarize` ranks by `task.score`.
"""
from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass
from typing import Callable, Optional, TypedDict

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from pipeline.data.dataset import device_normalizer
from pipeline.training.tasks import Task


class NonFiniteLoss(FloatingPointError):
    """The training loss became NaN or infinite."""


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and random; ask torch for deterministic kernels where they exist."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS (read at CUDA init)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def pick_device(want_gpu: bool = False) -> torch.device:
    """cuda when asked for and present, else cpu."""
    return torch.device("cuda" if want_gpu and torch.cuda.is_available() else "cpu")


def param_groups(model: torch.nn.Module, lr_inherited: float, lr_new: float, weight_decay: float = 0.0) -> list[dict]:
    """Two AdamW groups for a SequenceModel (inherited / new weights), one for anything else.

    Only trainable parameters (requires_grad) are included.
    """
    if hasattr(model, "inherited_parameters") and hasattr(model, "new_parameters"):
        inherited = [p for p in model.inherited_parameters() if p.requires_grad]
        seen = {id(p) for p in inherited}
        new = [p for p in model.new_parameters() if p.requires_grad and id(p) not in seen]
        seen |= {id(p) for p in new}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in seen]
        groups = [
            {"params": inherited, "lr": lr_inherited, "name": "inherited"},
            {"params": new + rest, "lr": lr_new, "name": "new"},
        ]
        return [g for g in groups if g["params"]]
    return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr_new, "name": "all"}]


def _forward(model, x, start):
    return model(x) if start is None else model(x, start=start)


def batches(data, batch_size: int, device, *, shuffle: bool = False, generator=None):
    """(x, y) batches of `data` on `device`; a raw dataset's uint8 x normalised there (float32, as its items), y as
    loaded (the task makes it the dtype its loss takes: `Task.target`)."""
    normalize = device_normalizer(data)
    if normalize is not None:
        normalize = normalize.to(device)
    pin = device.type == "cuda"
    loader = DataLoader(as_dataset(data), batch_size=batch_size, shuffle=shuffle, generator=generator, pin_memory=pin)
    for x, y in loader:
        x, y = x.to(device, non_blocking=pin), y.to(device, non_blocking=pin)
        yield (x if normalize is None else normalize(x)), y


def as_dataset(data) -> Dataset:
    """A Dataset, or an (x, y) pair of tensors -> a Dataset."""
    if isinstance(data, Dataset):
        return data
    x, y = data
    return TensorDataset(torch.as_tensor(x), torch.as_tensor(y))


class EpochRow(TypedDict, total=False):
    """One epoch of `Trainer.fit_epoch`: a trial's per-epoch report to Ray Tune and MLflow, one entry of
    `Trainer.history` and of trials.json's `history`. A plain dict (JSON, Ray results and MLflow take it as it is);
    the task decides which train / val keys it has (`Task.train_metric`, `Task.metric_keys`)."""

    epoch: int              # 1-based, the epochs trained so far
    train_loss: float
    train_acc: float        # Classification (train_<task.train_metric>)
    train_nme: float        # LandmarkRegression
    clips_per_sec: float    # training throughput of the epoch
    val_loss: float
    val_acc: float          # Classification
    val_auc: float          # LandmarkRegression: AUC@0.08, NME and failure rate on the val clips
    val_nme: float
    val_failure_rate: float
    epoch_seconds: float    # the epoch's train + val wall time


@dataclass(frozen=True)
class Evaluation:
    """`Trainer.evaluate` over a dataset, in its order: the mean loss, the task's outputs (Classification (N, K)
    clip probabilities, LandmarkRegression (N, [T,] K, 2) landmarks), the targets (N,) labels or (N, [T,] K, 2)
    landmarks, and the task's metrics ({"acc"} or {"auc", "nme", "failure_rate"})."""

    loss: float
    outputs: torch.Tensor
    targets: torch.Tensor
    metrics: dict


class Trainer:
    """Epoch-steppable training of one model for one task; `state_dict()` / `load_state_dict()` for checkpoints.

    `start`: the stage name the inputs enter at (cached trunk features), or None for raw inputs.
    `task`: the pipeline.training.tasks.Task trained for (its loss, metrics and readout).
    """

    def __init__(self, model: torch.nn.Module, *, lr_inherited: float, lr_new: float, weight_decay: float = 0.0,
                 batch_size: int = 16, seed: int = 0, start: Optional[str] = None, device="cpu",
                 task: Task, augment: Optional[torch.nn.Module] = None):
        self.task = task
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.readout = self.task.readout(model)  # "last" for recurrent models, "mean" for frame models (Task.readout)
        self.augment = augment  # applied to training batches only (pipeline.data.augment.ClipAugment)
        self.start = start
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.optimizer = torch.optim.AdamW(param_groups(model, lr_inherited, lr_new, weight_decay),
                                           weight_decay=weight_decay)
        self.epoch = 0
        self.history: list[EpochRow] = []

    # --- one epoch -------------------------------------------------------------------------
    def train_epoch(self, data) -> EpochRow:
        """One pass over `data` (shuffled); returns {"train_loss", "train_<task.train_metric>", "clips_per_sec"}."""
        seed_everything(self.seed * 100_003 + self.epoch)
        gen = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
        self.model.train()
        total, loss_sum, metric_sum, t0 = 0, 0.0, 0, time.perf_counter()
        for step, (x, y) in enumerate(batches(data, self.batch_size, self.device, shuffle=True, generator=gen)):
            y = self.task.target(y)
            if self.augment is not None:
                x, y = self.augment(x, y)  # landmark targets move with their shifted frames
            loss, outputs = self.task.loss(_forward(self.model, x, self.start), y, self.readout)
            if not torch.isfinite(loss):
                raise NonFiniteLoss(f"training loss became {loss.item()} at epoch {self.epoch + 1}, batch {step + 1}")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += len(y)
            loss_sum += loss.item() * len(y)
            metric_sum += self.task.train_metric_sum(outputs, y)
        seconds = time.perf_counter() - t0
        self.epoch += 1
        train_metric = {f"train_{self.task.train_metric}": metric_sum / max(total, 1)}
        return EpochRow(train_loss=loss_sum / max(total, 1), **train_metric,
                        clips_per_sec=total / seconds if seconds > 0 else float("nan"))

    @torch.no_grad()
    def evaluate(self, data, batch_size: Optional[int] = None) -> Evaluation:
        """The loss, the task's outputs and metrics over `data`, in order."""
        self.model.eval()
        losses, outputs, targets = [], [], []
        for x, y in batches(data, batch_size or self.batch_size, self.device):
            y = self.task.target(y)
            loss, out = self.task.loss(_forward(self.model, x, self.start), y, self.readout)
            losses.append(loss.item() * len(y))
            outputs.append(out.cpu())
            targets.append(y.cpu())
        outputs_t, targets_t = torch.cat(outputs), torch.cat(targets)
        return Evaluation(loss=sum(losses) / max(len(targets_t), 1), outputs=outputs_t, targets=targets_t,
                          metrics=self.task.metrics(outputs_t, targets_t))

    def fit_epoch(self, train_data, val_data) -> EpochRow:
        """Train one epoch, evaluate on `val_data`; append and return the epoch's row {"epoch", train metrics,
        "val_loss", "val_<key>" per task metric, "epoch_seconds"}."""
        t0 = time.perf_counter()
        metrics = self.train_epoch(train_data)
        val = self.evaluate(val_data)
        row = EpochRow(epoch=self.epoch, **metrics, val_loss=val.loss, **{f"val_{k}": v for k, v in val.metrics.items()},
                       epoch_seconds=time.perf_counter() - t0)
        self.history.append(row)
        return row

    # --- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Plain tensors and dicts (weights-only loadable), the task's entries included."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "epoch": self.epoch, "history": list(self.history), "task": self.task.entries()}

    def load_state_dict(self, state: dict) -> None:
        """Restore a `state_dict()`; ValueError when it was written for another task."""
        stored = state.get("task")
        if stored is not None and stored != self.task.entries():
            raise ValueError(f"checkpoint of task {stored}, this trainer's is {self.task.entries()}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])


def evaluate_model(model: torch.nn.Module, data, *, task: Task, device="cpu") -> Evaluation:
    """`Trainer.evaluate` of a model that is not trained here (the CNN alone, `prernn.frame_model`): data's
    `start` (cached trunk features) is used."""
    trainer = Trainer(model, lr_inherited=0.0, lr_new=0.0, start=getattr(data, "start", None), device=device,
                      task=task)
    return trainer.evaluate(data)


def fit(trainer: Trainer, train_data, val_data, epochs: int,
        on_epoch: Optional[Callable[[dict], None]] = None) -> list[dict]:
    """Run `trainer` until it has done `epochs` epochs (continuing a resumed one); returns history."""
    while trainer.epoch < epochs:
        row = trainer.fit_epoch(train_data, val_data)
        if on_epoch is not None:
            on_epoch(row)
    return trainer.history


def epochs_to_fraction(history: list[EpochRow], key: str, fraction: float = 0.95) -> Optional[int]:
    """The first epoch whose `key` (a task's score, `Task.score`) reaches `fraction` of the best value in
    `history` (None if empty)."""
    values = [row[key] for row in history if key in row and not math.isnan(row[key])]
    if not values:
        return None
    best = max(values)
    for row in history:
        if row.get(key) is not None and row[key] >= fraction * best:
            return int(row["epoch"])
    return None


@dataclass(frozen=True)
class HistorySummary:
    """A history's epoch rows summed up: `best` the row of the best epoch by the task's score (ties: the lower
    val_loss; {} for an empty history), `epochs_to_95` (epochs_to_fraction of the score) and `clips_per_sec`
    (the mean over epochs)."""

    best: dict
    epochs_to_95: Optional[int]
    clips_per_sec: Optional[float]

    def at_best(self, key: str):
        """`key` of the best epoch's row, None when the row has none (val_acc of a regression history)."""
        return self.best.get(key)

    @property
    def best_epoch(self) -> Optional[int]:
        return self.best.get("epoch")


def summary_keys(task: Task) -> tuple[str, ...]:
    """The validation metrics a trial's summary carries besides val_acc and val_loss (which it always has, None
    where the task has no accuracy): the task's other `val_<key>`s (trials.json, the trial's MLflow summary)."""
    return tuple(k for k in task.val_keys if k not in ("val_acc", "val_loss"))


def summarize(history: list[EpochRow], task: Task) -> HistorySummary:
    """The best epoch of `history` by `task.score` (see HistorySummary)."""
    if not history:
        return HistorySummary({}, None, None)
    key = task.score
    best = max(history, key=lambda r: (r[key], -r["val_loss"]))
    rates = [r["clips_per_sec"] for r in history if math.isfinite(r.get("clips_per_sec", float("nan")))]
    return HistorySummary(best, epochs_to_fraction(history, key), sum(rates) / len(rates) if rates else None)
