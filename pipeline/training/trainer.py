"""The training / evaluation loop shared by pretrain, search trials and evaluate.

Models: a frame model (prernn Backbone, `model(x)`: (N, C, H, W) -> (N, K)) or a sequence model
(prernn SequenceModel, `model(x, start=...)`: (B, T, ...) -> (B, T, K)).

Loss and accuracy follow the model's readout (`prernn.readout`): a model with recurrent layers is trained with
the cross-entropy of its last step and predicts the class of its last step's softmax (an early step cannot tell
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

Regression (task: regression, float targets: landmarks (B, [T,] K, 2)): the 2K outputs are decoded to
landmarks and trained with `regression["loss"]` (pipeline.training.metrics.landmark_loss, at every time step);
evaluation reports the landmark metrics (`auc`, `nme`, `failure_rate`: pipeline.training.metrics) instead of `acc`,
and the epoch rows carry `val_auc`, `val_nme`, `val_failure_rate`, `train_nme`; `summarize` ranks by `val_auc`.
"""
from __future__ import annotations

import math
import os
import random
import time
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

import prernn
from pipeline.data.dataset import device_normalizer


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


def clip_loss_and_probs(logits: torch.Tensor, y: torch.Tensor, readout: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """logits (B, K) or (B, T, K), y (B,) -> (mean CE over the batch, probabilities (B, K)).

    (B, T, K) with readout "last": CE and probabilities of the last step; "mean": CE at every step averaged over
    T, time-averaged probabilities (`prernn.clip_output`)."""
    if logits.dim() == 3 and readout == "last":
        loss = F.cross_entropy(logits[:, -1], y)
        probs = logits[:, -1].softmax(-1)  # (B, K)
    elif logits.dim() == 3:  # (B, T, K): CE at every time step, averaged over T
        b, t, k = logits.shape
        loss = F.cross_entropy(logits.reshape(b * t, k), y.repeat_interleave(t))
        probs = prernn.clip_output(logits.softmax(-1), "mean")  # (B, K) time-averaged probabilities
    else:
        loss = F.cross_entropy(logits, y)
        probs = logits.softmax(-1)
    return loss, probs


def batches(data, batch_size: int, device, *, shuffle: bool = False, generator=None):
    """(x, y) batches of `data` on `device`; a raw dataset's uint8 x normalised there (float32, as its items)."""
    normalize = device_normalizer(data)
    if normalize is not None:
        normalize = normalize.to(device)
    pin = device.type == "cuda"
    loader = DataLoader(as_dataset(data), batch_size=batch_size, shuffle=shuffle, generator=generator, pin_memory=pin)
    for x, y in loader:
        x, y = x.to(device, non_blocking=pin), y.to(device, non_blocking=pin)
        y = y if y.is_floating_point() else y.long()
        yield (x if normalize is None else normalize(x)), y


def as_dataset(data) -> Dataset:
    """A Dataset, or an (x, y) pair of tensors -> a Dataset."""
    if isinstance(data, Dataset):
        return data
    x, y = data
    return TensorDataset(torch.as_tensor(x), torch.as_tensor(y))


class Trainer:
    """Epoch-steppable training of one model; `state_dict()` / `load_state_dict()` for checkpoints.

    `start`: the stage name the inputs enter at (cached trunk features), or None for raw inputs.
    """

    def __init__(self, model: torch.nn.Module, *, lr_inherited: float, lr_new: float, weight_decay: float = 0.0,
                 batch_size: int = 16, seed: int = 0, start: Optional[str] = None, device="cpu",
                 regression: Optional[dict] = None, augment: Optional[torch.nn.Module] = None):
        from pipeline.training.metrics import spec_of

        self.regression = spec_of(regression)  # used when the targets are landmarks (float)
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.readout = prernn.readout(model)  # "last" for recurrent models, "mean" for frame models
        self.augment = augment  # applied to training batches only (pipeline.data.augment.ClipAugment)
        self.start = start
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.optimizer = torch.optim.AdamW(param_groups(model, lr_inherited, lr_new, weight_decay),
                                           weight_decay=weight_decay)
        self.epoch = 0
        self.history: list[dict] = []

    # --- one epoch -------------------------------------------------------------------------
    def train_epoch(self, data) -> dict:
        """One pass over `data` (shuffled); returns {"train_loss", "train_acc", "clips_per_sec"}."""
        seed_everything(self.seed * 100_003 + self.epoch)
        gen = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
        self.model.train()
        total, loss_sum, correct, t0 = 0, 0.0, 0, time.perf_counter()
        regression = False
        for step, (x, y) in enumerate(batches(data, self.batch_size, self.device, shuffle=True, generator=gen)):
            regression = y.is_floating_point()
            if self.augment is not None:
                x = self.augment(x)
            loss, probs = self._loss(_forward(self.model, x, self.start), y)
            if not torch.isfinite(loss):
                raise NonFiniteLoss(f"training loss became {loss.item()} at epoch {self.epoch + 1}, batch {step + 1}")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += len(y)
            loss_sum += loss.item() * len(y)
            if regression:
                from pipeline.training.metrics import nme

                correct += float(nme(probs, y, self.regression["normalize"], self.regression["eyes"])
                                 .reshape(len(y), -1).mean(-1).sum())
            else:
                correct += (probs.argmax(-1) == y).sum().item()
        seconds = time.perf_counter() - t0
        self.epoch += 1
        return {"train_loss": loss_sum / max(total, 1), ("train_nme" if regression else "train_acc"): correct / max(total, 1),
                "clips_per_sec": total / seconds if seconds > 0 else float("nan")}

    def _loss(self, out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, probabilities (B, K)) for labels; (loss, landmarks (B, [T,] K, 2)) for float landmark targets."""
        if y.is_floating_point():
            from pipeline.training.metrics import decode, landmark_loss

            return landmark_loss(out, y, self.regression["loss"]), decode(out.detach())
        return clip_loss_and_probs(out, y, self.readout)

    @torch.no_grad()
    def evaluate(self, data, batch_size: Optional[int] = None) -> dict:
        """{"loss", "acc", "probs" (N, K) tensor, "labels" (N,) tensor, "metrics": {"acc"}} over `data` in order.

        Regression: {"loss", "auc", "nme", "failure_rate", "probs": predicted landmarks (N, [T,] K, 2),
        "labels": true landmarks, "metrics": {"auc", "nme", "failure_rate"}} (pipeline.training.metrics).
        """
        self.model.eval()
        losses, probs, labels = [], [], []
        for x, y in batches(data, batch_size or self.batch_size, self.device):
            loss, p = self._loss(_forward(self.model, x, self.start), y)
            losses.append(loss.item() * len(y))
            probs.append(p.cpu())
            labels.append(y.cpu())
        probs_t, labels_t = torch.cat(probs), torch.cat(labels)
        n = len(labels_t)
        if labels_t.is_floating_point():
            from pipeline.training.metrics import regression_metrics

            metrics = regression_metrics(probs_t, labels_t, self.regression)
            return {"loss": sum(losses) / max(n, 1), **metrics, "probs": probs_t, "labels": labels_t,
                    "metrics": metrics}
        acc = (probs_t.argmax(-1) == labels_t).float().mean().item()
        return {"loss": sum(losses) / max(n, 1), "acc": acc, "probs": probs_t, "labels": labels_t,
                "metrics": {"acc": acc}}

    def fit_epoch(self, train_data, val_data) -> dict:
        """Train one epoch, evaluate on `val_data`; append and return the epoch's metrics."""
        t0 = time.perf_counter()
        metrics = self.train_epoch(train_data)
        val = self.evaluate(val_data)
        row = {"epoch": self.epoch, **metrics, "val_loss": val["loss"],
               **{f"val_{k}": v for k, v in val["metrics"].items()}, "epoch_seconds": time.perf_counter() - t0}
        self.history.append(row)
        return row

    # --- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "epoch": self.epoch, "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])


def evaluate_model(model: torch.nn.Module, data, *, regression: Optional[dict] = None, device="cpu") -> dict:
    """`Trainer.evaluate` of a model that is not trained here (the CNN alone, `prernn.frame_model`): data's
    `start` (cached trunk features) is used; returns the same dict."""
    trainer = Trainer(model, lr_inherited=0.0, lr_new=0.0, start=getattr(data, "start", None), device=device,
                      regression=regression)
    return trainer.evaluate(data)


def fit(trainer: Trainer, train_data, val_data, epochs: int,
        on_epoch: Optional[Callable[[dict], None]] = None) -> list[dict]:
    """Run `trainer` until it has done `epochs` epochs (continuing a resumed one); returns history."""
    while trainer.epoch < epochs:
        row = trainer.fit_epoch(train_data, val_data)
        if on_epoch is not None:
            on_epoch(row)
    return trainer.history


def epochs_to_fraction(history: list[dict], key: str = "val_acc", fraction: float = 0.95) -> Optional[int]:
    """The first epoch whose `key` reaches `fraction` of the best value in `history` (None if empty)."""
    values = [row[key] for row in history if key in row and not math.isnan(row[key])]
    if not values:
        return None
    best = max(values)
    for row in history:
        if row.get(key) is not None and row[key] >= fraction * best:
            return int(row["epoch"])
    return None


REGRESSION_KEYS = ("val_auc", "val_nme", "val_failure_rate")


def score_key(history: list[dict]) -> str:
    """The validation score a history is ranked by: val_acc, or val_auc for a regression history."""
    return "val_auc" if history and "val_acc" not in history[0] and "val_auc" in history[0] else "val_acc"


def summarize(history: list[dict]) -> dict:
    """{"val_acc": best, "val_loss": at the best epoch, "best_epoch", "epochs_to_95", "clips_per_sec": mean}.

    A regression history (val_auc rows): best by val_auc; "val_acc" is None and "val_auc", "val_nme",
    "val_failure_rate" are those of the best epoch.
    """
    if not history:
        return {"val_acc": None, "val_loss": None, "best_epoch": None, "epochs_to_95": None, "clips_per_sec": None}
    key = score_key(history)
    best = max(history, key=lambda r: (r[key], -r["val_loss"]))
    rates = [r["clips_per_sec"] for r in history if math.isfinite(r.get("clips_per_sec", float("nan")))]
    out = {"val_acc": best.get("val_acc"), "val_loss": best["val_loss"], "best_epoch": best["epoch"],
           "epochs_to_95": epochs_to_fraction(history, key), "clips_per_sec": sum(rates) / len(rates) if rates else None}
    if key == "val_auc":
        out.update({k: best.get(k) for k in REGRESSION_KEYS})
    return out
