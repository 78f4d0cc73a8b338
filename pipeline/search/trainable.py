"""The Ray Tune trainable: one search trial = one PreRNN conversion (or traditional baseline) fine-tuned.

`train_trial(config, data, experiment_dir)` is a plain function of the trial config (Ray's function API):
  config: a pipeline.search.trial_config.TrialConfig ({"arch": Arch, **TrialSettings});
  data (via tune.with_parameters, i.e. the Ray object store): {"backbone": {"config", "state_dict"},
           "caches": {boundary: {"train", "val": SplitTensors}} (pipeline.search.trunk_cache.trunk_caches, or
           {None: raw clips}; a trial takes its boundary's), "task": the task's entries (Task.entries)};
  experiment_dir (the same way): the search's experiment folder under search.storage_path.
Its steps: open the child run (`_open_attempt`: the MLflow store rebuilt from the config, the newest checkpoint,
the run), build the model and trainer (`_build`, restoring the checkpoint), the epoch loop (`_epoch_loop`), each
epoch's report (`_report`). A restarted trial (a killed driver, a lost node, a retry) continues from the newest
checkpoint it wrote, whatever Ray had recorded (pipeline.search.trial_checkpoint), in the same MLflow run; one that
had trained every epoch reports its last epoch again, untrained. Metrics go to MLflow once per key and step
(tracking.MetricLog), so the run's history equals an uninterrupted run's; while an http(s) tracking server does
not answer they wait in the MetricLog and the trial trains on, its other tracking calls wait for the server (up
to `trial_bound` of the driver's `mlflow.outage_s`: the driver stops the search first). A loss that is not
finite raises, so Ray marks the trial failed (and the other trials go on).
"""
from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import ray
import torch
from ray import tune

import prernn
from pipeline.core.checkpoint import backbone_from
from pipeline.core.storage import StoragePath
from pipeline.core.tracking import PARENT_TAG, TRIAL_ID_TAG, TRIAL_TAG, MetricLog, Tracker, TrackingUnavailable
from pipeline.core.tracking_outage import DEFAULT_BOUND_S, trial_bound
from pipeline.data.augment import ClipAugment
from pipeline.search import trial_checkpoint
from pipeline.search.trial_config import ROW_VAL_KEYS, STORE_KEYS, flat_config
from pipeline.search.trunk_cache import trial_splits
from pipeline.training.tasks import Task, task_from_entries
from pipeline.training.trainer import Trainer, pick_device, seed_everything, summarize, summary_keys


def _node() -> dict:
    """Where this trial runs: the Ray node id and IP (the cluster tests check that both nodes ran trials)."""
    try:
        node_id = ray.get_runtime_context().get_node_id()
        ips = [n.get("NodeManagerAddress") for n in ray.nodes() if n.get("NodeID") == node_id]
        return {"node_id": node_id, "node_ip": ips[0] if ips else ray.util.get_node_ip_address()}
    except Exception:  # noqa: BLE001 - not inside a Ray worker (unit tests)
        return {"node_id": None, "node_ip": None}


def _count_attempt(mlflow_log: MetricLog) -> int:
    """Log and return this attempt's number on the child run (metric `attempts`, at step = the attempt)."""
    attempt = 1 + max((step for key, step in mlflow_log.logged if key == "attempts"), default=0)
    mlflow_log.log({"attempts": attempt}, step=attempt)
    return attempt


def _gate_stats(model, val, device) -> dict:
    model.eval()
    with torch.no_grad():
        return prernn.gate_statistics(model, val.inputs(device), start=val.start)


class OwnWork:
    """Wall and CPU seconds a trial spends on its own work, summed over `with work():` blocks (CPU: this thread's,
    `time.thread_time`; the trial runs in one thread with torch at `cpus_per_trial` threads)."""

    def __init__(self):
        self.wall = self.cpu = 0.0

    @contextlib.contextmanager
    def __call__(self):
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            self.wall += time.perf_counter() - wall
            self.cpu += time.thread_time() - cpu


def batch_augment(cfg: dict, start, points: bool = False):
    """The per-batch augmentation of an uncached trial (raw clips, start None); a cached trunk was augmented when
    the train features were made (pipeline.search.trunk_cache.prepare_splits)."""
    shift, jitter = (cfg.get("augment") or [0, 0.0])
    if start is not None or not (shift or jitter):
        return None
    return ClipAugment(int(shift), float(jitter), torch.Generator().manual_seed(int(cfg["seed"])), points=points)


@dataclass
class Attempt:
    """One attempt of a trial: its flat config (trial_config.flat_config), device, MLflow store and child run
    (`new_run`: made by this attempt; `log`: its MetricLog), the Ray node, when it began (time.time(),
    `trial_wall_clock[0]`) and its own work (OwnWork)."""

    cfg: dict
    device: torch.device
    tracker: Tracker
    run_id: str
    new_run: bool
    node: dict
    started: float
    work: "OwnWork" = field(default_factory=lambda: OwnWork())
    log: Optional[MetricLog] = None


@dataclass
class Fit:
    """What a trial trains: the model, its Trainer (restored from the checkpoint), the splits, the task."""

    model: torch.nn.Module
    trainer: Trainer
    train: object  # pipeline.search.trunk_cache.SplitTensors
    val: object
    task: Task
    recurrent_params: int = 0


def _open_child_run(tracker: Tracker, cfg: dict, state: dict, trial_id: str, node: dict) -> tuple[str, bool]:
    """(run id, whether it is new): the trial's MLflow child run from its checkpoint, else the run of an earlier
    attempt, else a new one (created with the Ray node's tags; `_open_attempt` counts the attempt and tags an
    existing run with the node)."""
    node_tags = {f"ray.{k}": v for k, v in node.items()}
    run_id = state.get("mlflow_run_id") or tracker.find_child_run(cfg["experiment_id"], cfg["parent_run_id"],
                                                                   trial_id, name=cfg["name"])
    if run_id:
        tracker.reopen_run(run_id)
        return run_id, False
    return tracker.start_run(cfg["experiment_id"], cfg["name"], parent_run_id=cfg["parent_run_id"],
                             params={k: v for k, v in cfg.items() if k not in STORE_KEYS},
                             tags={TRIAL_TAG: cfg["name"], TRIAL_ID_TAG: trial_id, "kind": cfg["kind"], **node_tags},
                             stage="search", unique_tags={PARENT_TAG: cfg["parent_run_id"], TRIAL_ID_TAG: trial_id}), True


def _open_attempt(config: dict, experiment_dir: Optional[str], started: float) -> tuple[Attempt, dict]:
    """(the attempt, the newest checkpoint state of the trial or {}): threads and seed set, the MLflow store
    rebuilt from the config (a trial waits `trial_bound` of the driver's outage bound), the child run opened."""
    cfg = flat_config(config)
    torch.set_num_threads(max(1, int(cfg.get("cpus_per_trial", 1))))
    seed_everything(int(cfg["seed"]))
    device = pick_device(bool(cfg.get("use_gpu")))
    tracker = Tracker(cfg["tracking_uri"], trial_bound(cfg.get("tracking_outage_s", DEFAULT_BOUND_S)))
    # a restarted trial continues from the newest epoch it checkpointed, and in the same MLflow run
    folder = StoragePath.resolve(experiment_dir, "/") if experiment_dir else None
    state = trial_checkpoint.newest_state(folder, cfg["name"], tune.get_checkpoint(), device)
    node = _node()
    run_id, new_run = _open_child_run(tracker, cfg, state, tune.get_context().get_trial_id() or cfg["name"], node)
    return Attempt(cfg, device, tracker, run_id, new_run, node, started), state


def _build(attempt: Attempt, data: dict, state: dict) -> Fit:
    """The trial's model (its kind, layers, cell, ... on the pretrained backbone), the splits at its boundary and
    its Trainer, restored from `state` (a checkpoint) when there is one."""
    cfg = attempt.cfg
    backbone = backbone_from(data["backbone"])
    model = prernn.build_from_config(cfg, backbone)
    splits = trial_splits(data["caches"], backbone, cfg)  # the cache at this trial's boundary
    train, val = splits["train"], splits["val"]
    task = task_from_entries(data.get("task", {}))
    trainer = Trainer(model, lr_inherited=cfg["lr_inherited"], lr_new=cfg["lr_new"],
                      weight_decay=cfg["weight_decay"], batch_size=cfg["batch_size"], seed=int(cfg["seed"]),
                      start=train.start, device=attempt.device, task=task,
                      augment=batch_augment(cfg, train.start, task.points))
    if state:
        trainer.load_state_dict(state["trainer"])
    return Fit(model, trainer, train, val, task)


def _final_summary(fit: Fit) -> dict:
    """The values a finished trial has once: its best val metrics by the task's score, epochs to 95%, clips/s."""
    summary = summarize(fit.trainer.history, fit.task)
    return {**{f"best_{k}": summary.at_best(k) for k in ROW_VAL_KEYS}, "epochs_to_95": summary.epochs_to_95,
            "mean_clips_per_sec": summary.clips_per_sec,
            **{f"best_{k}": summary.at_best(k) for k in summary_keys(fit.task)}}


def _report(attempt: Attempt, fit: Fit, row: dict) -> None:
    """Report one epoch to MLflow (its metrics once per step, the summary tags; the gate statistics on the last
    epoch, on every one with `gate_stats_every_epoch`) and to Ray, with a checkpoint (module docstring)."""
    cfg, trainer, work = attempt.cfg, fit.trainer, attempt.work
    last = trainer.epoch == int(cfg["epochs"])
    metrics = {**row, "name": cfg["name"], "mlflow_run_id": attempt.run_id, "recurrent_params": fit.recurrent_params,
               "history_json": json.dumps(trainer.history), **attempt.node}
    summary_tags = {"recurrent_params": fit.recurrent_params}
    if last:
        final = _final_summary(fit)
        metrics.update(final)
        summary_tags.update(final)
    # the epoch's metrics (once per step: a replayed epoch is in the run already) and the summary, one write
    attempt.log.log(row, step=row["epoch"], tags=summary_tags)
    if last or cfg.get("gate_stats_every_epoch"):
        with work():
            stats = _gate_stats(fit.model, fit.val, attempt.device)
        metrics["gate_stats_json"] = json.dumps(stats)
        attempt.tracker.log_json(attempt.run_id, stats, "gate_stats.json")
    metrics["trial_wall_clock"] = [attempt.started, time.time()]  # the trial's own wall time so far
    # what an outage kept back is sent before a report that can end the trial (the last; ASHA's any)
    attempt.log.flush(wait=last or bool(cfg.get("gate_stats_every_epoch")))
    metrics.update(work_seconds=work.wall, work_cpu_seconds=work.cpu)
    metrics["tracking_lock_retries"] = attempt.tracker.lock_retries
    with tempfile.TemporaryDirectory() as tmp:
        trial_checkpoint.save(Path(tmp), trainer.state_dict(), attempt.run_id)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def _epoch_loop(attempt: Attempt, fit: Fit, restored: bool) -> None:
    """Train the epochs the checkpoint lacks, reporting each (`_report`); first log what the checkpoint holds and
    the run lacks (epochs whose logging an interruption cut off)."""
    trainer, epochs = fit.trainer, int(attempt.cfg["epochs"])
    for row in trainer.history:
        attempt.log.log(row, step=row["epoch"])
    # finished before a killed driver recorded it: report the last epoch again (nothing is retrained)
    replay = restored and trainer.epoch >= epochs and bool(trainer.history)
    while trainer.epoch < epochs or replay:
        if replay:
            row, replay = trainer.history[-1], False
        else:
            with attempt.work():
                row = trainer.fit_epoch(fit.train, fit.val)
        _report(attempt, fit, row)


def train_trial(config: dict, data: dict, experiment_dir: Optional[str] = None) -> None:
    """Train one configuration; report metrics + a checkpoint every epoch (see module docstring). Each report
    carries the epoch's row (`val_<key>`s, losses, ...), `history_json`, `recurrent_params`, `mlflow_run_id`, the
    Ray node (`node_id`, `node_ip`), `trial_wall_clock` ([when this attempt began, now]), `work_seconds` /
    `work_cpu_seconds` (this attempt's own work so far, `OwnWork`: what bench.scale measures against),
    `tracking_lock_retries` (store calls retried on "database is locked"); the last epoch (every one with
    `gate_stats_every_epoch`, for ASHA) `gate_stats_json` (the saturation of [0055]-[0062] that the selection of
    [0065] uses), and the last its summary (`_final_summary`)."""
    started = time.time()  # trial_wall_clock[0]
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)  # one INFO line per checkpoint
    attempt, state = _open_attempt(config, experiment_dir, started)
    tracker, run_id = attempt.tracker, attempt.run_id
    try:
        attempt.log = MetricLog(tracker, run_id, attempt.new_run)
        _count_attempt(attempt.log)
        if not attempt.new_run:  # a new run has its node tags from its creation
            tracker.log_batch(run_id, tags={f"ray.{k}": v for k, v in attempt.node.items()})
        with attempt.work():  # the trial's own work (not MLflow, Ray or checkpoints)
            fit = _build(attempt, data, state)
        fit.recurrent_params = int(prernn.count_recurrent_parameters(fit.model))
        _epoch_loop(attempt, fit, restored=bool(state))
        attempt.log.flush()  # what an outage kept back
    except TrackingUnavailable:
        raise  # the server is gone: nothing to mark the run with
    except Exception as err:
        tracker.log_batch(run_id, tags={"error": f"{type(err).__name__}: {err}"})
        tracker.end_run(run_id, "FAILED")
        raise
    tracker.end_run(run_id, "FINISHED")
