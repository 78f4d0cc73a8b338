"""The learning task of a run: what the targets are and how outputs are trained, read, scored, fused and printed.

Chosen once from params (`task`, and the section its spec lives in: `regression`) by `task_from_params`, and
stored with every model as plain entries (`task.entries()`: {"task": name} plus that section; `task_from_entries`
reads them back, a missing "task" meaning classification, as in files written before the task was stored), so a
checkpoint loaded with `torch.load(weights_only=True)` says its own task. Registered by name like the backbones
(`@register_task`, `get_task`, `list_tasks`); every consumer (the Trainer, the search trials and driver, the
evaluate stage, `prernn predict`, the MLflow pyfunc predictor) takes a task and asks it instead of branching.

- `Classification` ("classification"): integer labels (B,); outputs are class probabilities. A model's clip
  readout (`prernn.readout`) decides the loss and the clip answer: "last" (a recurrent model) the cross-entropy
  and softmax of its last step, "mean" (the CNN per frame) the cross-entropy at every step averaged over T and
  the time-averaged softmax. Metric `acc`; ranked by `val_acc`, max; late fusion ([0023]) is the mean of the
  streams' clip probabilities.
- `LandmarkRegression` ("regression", claim 4, [0029]): landmark targets (B, [T,] K, 2) in [0, 1] image
  coordinates; a 2K-output head decoded as 0.5 + output (`pipeline.training.metrics.decode`), trained at every
  time step with the spec's `loss`. Metrics `auc`, `nme`, `failure_rate` (pipeline.training.metrics); ranked by
  `val_auc`, max; fusion is the mean of the streams' coordinates; every frame has its own answer (readout
  "every"). Augmented like classification, its landmarks shifted with their frames (`points`).

Outputs ("the task's outputs"): Classification (B, K) clip probabilities; LandmarkRegression (B, [T,] K, 2)
landmarks.
"""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from typing import Callable, ClassVar, Optional

import numpy as np
import torch
import torch.nn.functional as F

import prernn
from pipeline.training.metrics import (ced_curve, decode, landmark_loss, nme, regression_metrics, spec_of)

_TASKS: dict[str, type["Task"]] = {}


def register_task(cls: type["Task"]) -> type["Task"]:
    """Register a Task subclass under its `name`."""
    if cls.name in _TASKS:
        raise ValueError(f"task {cls.name!r} is already registered")
    _TASKS[cls.name] = cls
    return cls


def list_tasks() -> list[str]:
    """Names of the registered tasks, in registration order (the default first)."""
    return list(_TASKS)


def get_task(name: str, spec: Optional[dict] = None) -> "Task":
    """The registered task `name` with its spec (the params section it reads; None for its defaults)."""
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {list_tasks()}")
    return _TASKS[name](spec)


def task_from_entries(entries: dict) -> "Task":
    """The task stored in a mapping (`Task.entries()`: checkpoint meta, params.model_dump()); no "task" key is
    classification (models written before the task was stored)."""
    cls = _TASKS.get(entries.get("task", "classification"))
    if cls is None:
        raise ValueError(f"task {entries.get('task')!r}: unknown; expected one of {list_tasks()}")
    return cls(entries.get(cls.section) if cls.section else None)


def task_from_params(params) -> "Task":
    """The task a validated `Params` asks for: `params.task` with its section (`params.regression`)."""
    return task_from_entries(params.model_dump())


class Task(ABC):
    """One learning task; subclasses set the class attributes and implement the methods (see the module)."""

    name: ClassVar[str]
    section: ClassVar[Optional[str]] = None     # the params.yaml section holding the spec, if any
    metric_keys: ClassVar[tuple[str, ...]]     # `metrics` keys (evaluate, val_<key> in the epoch rows)
    score_metric: ClassVar[str]                # the metric trials, epochs and configurations are ranked by
    mode: ClassVar[str] = "max"
    report_keys: ClassVar[tuple[str, ...]]     # test metrics per stream, per epoch and compared over seeds
    train_metric: ClassVar[str]                # the per-batch train metric: train_<key> in the epoch rows
    points: ClassVar[bool] = False             # targets are frame coordinates that move with a shifted frame (augment)
    needs_landmarks: ClassVar[bool] = False    # targets are landmark annotations (data.source)
    fc_dropout: ClassVar[Optional[float]] = None  # the pretrained CNN's fc6/fc7 dropout (None: the backbone's)
    frame_phase: ClassVar[bool] = False        # pretraining can add (class, phase) targets (pipeline.training.phase)
    fusion: ClassVar[str]                      # how streams are fused, in words (evaluation.json, final.pt)
    evaluate_modalities: ClassVar[tuple[str, ...]]  # the streams `evaluate.modalities: null` fuses
    resamples: ClassVar[int] = 2000            # paired bootstrap resamples of the evaluate comparison
    mean_keys: ClassVar[bool] = True           # metrics.json carries test_<score>_mean, ..., gain_mean
    plot_file: ClassVar[str]                   # the evaluate stage's plot in reports/<task>/
    predict_columns: ClassVar[tuple[tuple[str, str, bool], ...]]  # pyfunc output: (name, type, required)

    def __init__(self, spec: Optional[dict] = None):
        # plain JSON values (tuples become lists), so that a spec compares equal however it was stored
        self.spec = json.loads(json.dumps(spec)) if self.section and spec is not None else None

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and other.spec == self.spec

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})" if self.section else f"{type(self).__name__}()"

    # --- identity ---------------------------------------------------------------------------
    @property
    def score(self) -> str:
        """The validation key ranked by (epochs, trials, Ray Tune's scheduler, select.metric's default)."""
        return f"val_{self.score_metric}"

    @property
    def val_keys(self) -> tuple[str, ...]:
        return tuple(f"val_{k}" for k in self.metric_keys)

    def params(self) -> dict:
        """The params sections this task reads, {section: spec} ({} without a spec): what a trial config
        records and the search fingerprint hashes."""
        return {self.section: dict(self.spec)} if self.section else {}

    def entries(self) -> dict:
        """The plain entries stored with a model (checkpoint meta): {"task": name, section: spec}."""
        return {"task": self.name, **self.params()}

    # --- training ----------------------------------------------------------------------------
    @abstractmethod
    def readout(self, model) -> str:
        """How a model's per-step outputs (B, T, K) give the answer: "last", "mean" or "every" (each step's own)."""

    @abstractmethod
    def target(self, y: torch.Tensor) -> torch.Tensor:
        """A batch of targets as loaded -> the dtype the loss takes; ValueError for targets of another task."""

    @abstractmethod
    def loss(self, out: torch.Tensor, y: torch.Tensor, readout: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Network outputs (B, [T,] K) and targets -> (mean loss, the task's outputs, detached)."""

    @abstractmethod
    def train_metric_sum(self, outputs: torch.Tensor, y: torch.Tensor) -> float:
        """The train metric summed over the batch (the epoch's value is the sum over batches / clips)."""

    @abstractmethod
    def metrics(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict:
        """{key: value for key in metric_keys} of the task's outputs against the targets (N, ...)."""

    # --- inference and fusion ----------------------------------------------------------------
    @abstractmethod
    def step_outputs(self, out: torch.Tensor) -> torch.Tensor:
        """One step's network output (B, K) -> the task's output of that step."""

    @abstractmethod
    def clip_outputs(self, out: torch.Tensor, readout: str) -> torch.Tensor:
        """A model's outputs over a clip (B, T, K) -> the task's outputs for the clip."""

    def fuse(self, outputs: list[torch.Tensor]) -> torch.Tensor:
        """Late fusion ([0023]): the streams' outputs (each the same shape) -> their mean."""
        return torch.stack([o.float() for o in outputs]).mean(0)

    @abstractmethod
    def clip_answers(self, outputs: np.ndarray, frames: list[int]) -> list[tuple[Optional[int], np.ndarray]]:
        """One clip's fused outputs and its sampled frame indices -> [(frame or None for the clip, answer)]."""

    # --- records: prernn predict, the pyfunc predictor ------------------------------------------
    @abstractmethod
    def record(self, video: str, frame: Optional[int], answer: np.ndarray, class_names: list[str], k: int) -> dict:
        """One `prernn predict --json` line."""

    @abstractmethod
    def table_header(self, width: int, with_frame: bool, class_width: int, k: int) -> str:
        """The `prernn predict` table's header: the video column `width` wide, a frame column if `with_frame`."""

    @abstractmethod
    def table_row(self, record: dict, width: int, with_frame: bool, class_width: int) -> str:
        """One `record` as a row of that table."""

    @abstractmethod
    def predict_row(self, path: str, answers: list, class_names: list[str]) -> dict:
        """The pyfunc predictor's row for one video from its `clip_answers`."""

    @abstractmethod
    def predict_error_row(self, path: str, error: str) -> dict:
        """The pyfunc predictor's row for a video that cannot be used (`error`: the reason)."""

    # --- the evaluate stage's report -----------------------------------------------------------
    @abstractmethod
    def test_report(self, outputs: torch.Tensor, targets: torch.Tensor, class_names: list[str]) -> dict:
        """The test metrics of one model / fusion in evaluation.json (a superset of `report_keys`)."""

    def metrics_head(self) -> dict:
        """The first entries of metrics.json and evaluation.json."""
        return {}

    @abstractmethod
    def test_info(self, report: dict, targets: torch.Tensor) -> dict:
        """metrics.json's description of the test set (after the scores), from the selected model's report."""

    @abstractmethod
    def report_info(self, class_names: list[str]) -> dict:
        """evaluation.json's description of the outputs (after the modalities)."""

    @abstractmethod
    def plot_rows(self, final: dict[str, torch.Tensor], targets: torch.Tensor, class_names: list[str]) -> list[dict]:
        """reports/<task>/<plot_file> rows from each role's last-epoch fused outputs."""

    def metric_fn(self, key: str) -> Callable[[torch.Tensor, torch.Tensor], float]:
        """(outputs, targets) -> metrics[key]: a score for the comparison over seeds."""
        return lambda outputs, targets: self.metrics(outputs, targets)[key]


@register_task
class Classification(Task):
    name = "classification"
    metric_keys = ("acc",)
    score_metric = "acc"
    report_keys = ("acc",)
    train_metric = "acc"
    fusion = "mean of the streams' clip probabilities (a recurrent model's last step, a frame model's time average)"
    evaluate_modalities = ("rgb", "flow")  # the two streams of [0024]; flow carries the direction of a motion
    # fc6/fc7 dropout 0.2, not the VGG's 0.5: with (class, phase) pretraining at 0.5 two of five CNNs stayed at
    # chance on a real-texture set (README "Training recipe")
    fc_dropout = 0.2
    frame_phase = True
    plot_file = "confusion.csv"
    predict_columns = (("path", "string", True), ("class", "string", False), ("probability", "double", True),
                       ("error", "string", False))

    def readout(self, model) -> str:
        return prernn.readout(model)

    def target(self, y):
        if y.is_floating_point():
            raise ValueError(f"float targets {tuple(y.shape)} (landmarks?) for task classification; set task: "
                             "regression for landmark clips")
        return y.long()

    def loss(self, out, y, readout):
        loss, probs = clip_loss_and_probs(out, y, readout)
        return loss, probs.detach()  # (B, K)

    def train_metric_sum(self, outputs, y):
        return (outputs.argmax(-1) == y).sum().item()

    def metrics(self, outputs, targets):
        return {"acc": (outputs.argmax(-1) == targets).float().mean().item()}

    def step_outputs(self, out):
        return out.softmax(-1)  # (B, K)

    def clip_outputs(self, out, readout):
        return prernn.clip_output(out.softmax(-1), readout)  # (B, K)

    def clip_answers(self, outputs, frames):
        return [(None, outputs)]  # one answer per clip: (K,) probabilities

    def record(self, video, frame, answer, class_names, k):
        order = np.argsort(-answer, kind="stable")[:max(1, k)]
        return {"video": video, "frame": frame, "class": class_names[int(order[0])],
                "probability": float(answer[order[0]]),
                "top_k": [{"class": class_names[int(i)], "probability": float(answer[i])} for i in order]}

    def table_header(self, width, with_frame, class_width, k):
        frame = f"{'frame':>7} " if with_frame else ""
        return f"{'video':<{width}} {frame}{'class':<{class_width}} {'prob':>6}  top-{k}"

    def table_row(self, record, width, with_frame, class_width):
        top = ", ".join(f"{t['class']} {t['probability']:.3f}" for t in record["top_k"])
        frame = f"{'-' if record['frame'] is None else record['frame']:>7} " if with_frame else ""
        return (f"{record['video']:<{width}} {frame}{record['class']:<{class_width}} {record['probability']:>6.3f}  "
                f"{top}")

    def predict_row(self, path, answers, class_names):
        probs = answers[0][1]
        k = int(np.argmax(probs))
        return {"path": path, "class": class_names[k], "probability": float(probs[k]), "error": ""}

    def predict_error_row(self, path, error):
        return {"path": path, "class": None, "probability": float("nan"), "error": error}

    def test_report(self, outputs, targets, class_names):
        """{"acc", "per_class_acc": {name: acc | None}, "confusion": K x K counts [actual][predicted], "n"}."""
        pred = outputs.argmax(-1).numpy()
        y = targets.numpy()
        k = len(class_names)
        cm = np.zeros((k, k), dtype=int)
        np.add.at(cm, (y, pred), 1)
        per = {name: (float(cm[i, i] / cm[i].sum()) if cm[i].sum() else None) for i, name in enumerate(class_names)}
        return {"acc": float((pred == y).mean()) if len(y) else 0.0, "per_class_acc": per,
                "confusion": cm.tolist(), "n": int(len(y))}

    def test_info(self, report, targets):
        return {"n_test": report["n"], "per_class_acc": report["per_class_acc"]}

    def report_info(self, class_names):
        return {"class_names": class_names}

    def plot_rows(self, final, targets, class_names):
        """confusion.csv: actual, predicted class of every test clip (the selected configuration, fused)."""
        pred = final["selected"].argmax(-1).tolist()
        return [{"actual": class_names[a], "predicted": class_names[p]} for a, p in zip(targets.tolist(), pred)]


def clip_loss_and_probs(logits: torch.Tensor, y: torch.Tensor,
                        readout: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
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


def _points(landmarks) -> list[list[float]]:
    """(K, 2) landmarks -> [[x, y], ...] rounded to 5 decimals (the predict / pyfunc record)."""
    return [[round(float(x), 5), round(float(y), 5)] for x, y in np.asarray(landmarks)]


@register_task
class LandmarkRegression(Task):
    name = "regression"
    section = "regression"
    metric_keys = ("auc", "nme", "failure_rate")
    score_metric = "auc"
    report_keys = ("auc", "nme")
    train_metric = "nme"
    points = True
    needs_landmarks = True
    # no dropout on fc6/fc7: with the classification default 0.5 the coordinates stay near the mean shape (tiny
    # set: val AUC@0.08 0.000 after 10 epochs, 0.135 without dropout)
    fc_dropout = 0.0
    fusion = "mean of the streams' predicted landmark coordinates"
    # rgb alone: flow cannot place the landmarks of a still face (test AUC 0.03 against rgb's 0.62, README), and the
    # mean of the two streams' coordinates fell to 0.21
    evaluate_modalities = ("rgb",)
    resamples = 1000
    mean_keys = False  # regression's metrics.json never had them (its comparison holds the means)
    plot_file = "ced.csv"
    predict_columns = (("path", "string", True), ("frame", "long", True), ("landmarks", "string", False),
                       ("error", "string", False))

    def __init__(self, spec: Optional[dict] = None):
        super().__init__(spec_of(spec))  # {"normalize", "eyes", "threshold", "loss"} over the defaults

    def readout(self, model) -> str:
        return "every"  # landmarks move: every frame has its own answer, trained at every step

    def target(self, y):
        if not y.is_floating_point():
            raise ValueError(f"integer targets {tuple(y.shape)} (class labels?) for task regression; regression "
                             "needs landmark clips (data.source: synthetic_landmarks or 300vw)")
        return y

    def loss(self, out, y, readout):
        return landmark_loss(out, y, self.spec["loss"]), decode(out.detach())  # (B, [T,] K, 2)

    def train_metric_sum(self, outputs, y):
        errors = nme(outputs, y, self.spec["normalize"], self.spec["eyes"])  # (B, [T])
        return float(errors.reshape(len(y), -1).mean(-1).sum())  # each clip's mean NME over its frames

    def metrics(self, outputs, targets):
        return regression_metrics(outputs, targets, self.spec)

    def step_outputs(self, out):
        return decode(out)  # (B, K, 2)

    def clip_outputs(self, out, readout):
        return decode(out)  # (B, T, K, 2): every frame's landmarks

    def clip_answers(self, outputs, frames):
        return [(int(i), p) for i, p in zip(frames, outputs)]  # (K, 2) landmarks per sampled frame

    def record(self, video, frame, answer, class_names, k):
        return {"video": video, "frame": frame, "landmarks": _points(answer)}

    def table_header(self, width, with_frame, class_width, k):
        return f"{'video':<{width}} {'frame':>7} landmarks x,y (0-1 of the frame)"

    def table_row(self, record, width, with_frame, class_width):
        frame = f"{'-' if record['frame'] is None else record['frame']:>7} "
        return f"{record['video']:<{width}} {frame}" + " ".join(f"{x:.3f},{y:.3f}" for x, y in record["landmarks"])

    def predict_row(self, path, answers, class_names):
        """The LAST sampled frame's landmarks (the recurrent model has then seen the whole clip), as JSON."""
        frame, pts = answers[-1]
        return {"path": path, "frame": int(frame), "error": "", "landmarks": json.dumps(_points(pts))}

    def predict_error_row(self, path, error):
        return {"path": path, "frame": -1, "landmarks": None, "error": error}

    def test_report(self, outputs, targets, class_names):
        return regression_metrics(outputs, targets, self.spec)

    def metrics_head(self):
        return {"task": self.name}

    def test_info(self, report, targets):
        n, t, k = (int(s) for s in targets.shape[:3])  # (N, T, K, 2)
        return {"n_test": n, "n_frames": n * t, "points": k, "threshold": self.spec["threshold"],
                "normalize": self.spec["normalize"]}

    def report_info(self, class_names):
        return {"regression": self.spec}

    def plot_rows(self, final, targets, class_names):
        """ced.csv: role, error, fraction: the cumulative error distribution of each role's fused landmarks."""
        rows = []
        for role, outputs in final.items():
            errors = nme(outputs, targets, self.spec["normalize"], self.spec["eyes"])
            rows += [{"role": role, **pt} for pt in ced_curve(errors, self.spec["threshold"])]
        return rows
