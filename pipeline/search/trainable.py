"""The Ray Tune trainable: one search trial = one PreRNN conversion (or traditional baseline) fine-tuned.

`train_trial(config, data, experiment_dir)` is a plain function of the trial config (Ray's function API):
  config: {"arch": <a pipeline.search.space arch dict>, "epochs", "batch_size", "lr_inherited", "lr_new",
           "weight_decay", "hh_init", "seed", "cpus_per_trial", "use_gpu", "tracking_uri",
           "tracking_outage_s", "experiment_id", "parent_run_id", "gate_stats_every_epoch"}
  data (via tune.with_parameters, i.e. the Ray object store): {"backbone": {"config", "state_dict"},
           "caches": {boundary: {"train": SplitTensors, "val": SplitTensors}} (cached trunk features per trial
           boundary, pipeline.search.trunk_cache.trunk_caches, or {None: raw clips}; a trial takes its boundary's),
           "task": the task's entries (pipeline.training.tasks.Task.entries; absent: classification)};
  experiment_dir (the same way): the search's experiment folder under search.storage_path.
Each epoch it reports the epoch's metrics (`val_acc`, `val_loss`, ...), the history so far
(`history_json`), `recurrent_params`, the MLflow child run id, the Ray node (`node_id`, `node_ip`) and
`trial_wall_clock` ([time.time() when this attempt's train_trial began, time.time() at this report]),
`work_seconds` / `work_cpu_seconds` (wall and CPU time of this attempt's own work so far, `OwnWork`: building the
model and trainer, the epochs, the gate statistics; the rest of its time is MLflow, Ray and checkpoints, what
bench.scale measures) and
`tracking_lock_retries` (store calls this attempt retried on "database is locked", pipeline.core.tracking), with a
checkpoint (pipeline.search.trial_checkpoint). A restarted trial (a killed driver, a lost node, a retry) continues
from the newest checkpoint it wrote, whatever Ray had recorded; one that had trained every epoch reports its
last epoch again, untrained. Metrics go to MLflow once per key and step (tracking.MetricLog): a resumed trial
first logs what its checkpoint holds and the run lacks, then only epochs the run does not have, so the run's
history equals an uninterrupted run's. While an http(s) tracking server does not answer, the metrics wait in
the MetricLog and the trial trains on; its other tracking calls (tags, artifacts, the run's status) wait for the
server (pipeline.core.tracking_outage, up to `trial_bound` of the driver's `mlflow.outage_s`: the driver stops the
search first). The last epoch (every epoch with `gate_stats_every_epoch`, for ASHA,
which may stop a trial early) adds the gate statistics of each recurrent layer on the val clips
(`gate_stats_json`: the saturation of [0055]-[0062] that the selection of [0065] uses); the last
epoch also reports `best_val_acc`, `epochs_to_95` and `mean_clips_per_sec`. A loss that is not
finite raises, so Ray marks the trial failed (and the other trials go on).
"""
from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Optional

import ray
import torch
from ray import tune

import prernn
from pipeline.core import tracking, tracking_outage
from pipeline.core.checkpoint import backbone_from
from pipeline.core.storage import StoragePath
from pipeline.data.augment import ClipAugment
from pipeline.search import trial_checkpoint
from pipeline.search.trunk_cache import trial_splits
from pipeline.training.tasks import task_from_entries
from pipeline.training.trainer import Trainer, pick_device, seed_everything, summarize, summary_keys

COMMON_KEYS = ("epochs", "batch_size", "lr_inherited", "lr_new", "weight_decay", "hh_init", "seed")
TRACKING_KEYS = ("tracking_uri", "tracking_outage_s", "parent_run_id", "experiment_id")  # where a trial logs


def flat_config(config: dict) -> dict:
    """The trial config with the arch dict merged in (what MLflow params and trials.json show)."""
    cfg = {k: v for k, v in config.items() if k != "arch"}
    cfg.update(config.get("arch", {}))
    return cfg


def _node() -> dict:
    """Where this trial runs: the Ray node id and IP (the cluster tests check that both nodes ran trials)."""
    try:
        node_id = ray.get_runtime_context().get_node_id()
        ips = [n.get("NodeManagerAddress") for n in ray.nodes() if n.get("NodeID") == node_id]
        return {"node_id": node_id, "node_ip": ips[0] if ips else ray.util.get_node_ip_address()}
    except Exception:  # noqa: BLE001 - not inside a Ray worker (unit tests)
        return {"node_id": None, "node_ip": None}


def _count_attempt(mlflow_log: tracking.MetricLog) -> int:
    """Log and return this attempt's number on the child run (metric `attempts`, at step = the attempt)."""
    attempt = 1 + max((step for key, step in mlflow_log.logged if key == "attempts"), default=0)
    mlflow_log.log({"attempts": attempt}, step=attempt)
    return attempt


def _gate_stats(model, val, device) -> dict:
    model.eval()
    with torch.no_grad():
        return prernn.gate_statistics(model, val.inputs(device), start=val.start)


def _open_child_run(cfg: dict, state: dict, trial_id: str, node: dict) -> tuple[str, bool]:
    """(run id, whether it is new): the trial's MLflow child run from its checkpoint, else the run of an earlier
    attempt, else a new one (created with the Ray node's tags; `train_trial` counts the attempt and tags an existing
    run with the node)."""
    uri = cfg["tracking_uri"]
    node_tags = {f"ray.{k}": v for k, v in node.items()}
    run_id = state.get("mlflow_run_id") or tracking.find_child_run(uri, cfg["experiment_id"], cfg["parent_run_id"],
                                                                   trial_id, name=cfg["name"])
    if run_id:
        tracking.reopen_run(uri, run_id)
        return run_id, False
    return tracking.start_run(uri, cfg["experiment_id"], cfg["name"], parent_run_id=cfg["parent_run_id"],
                              params={k: v for k, v in cfg.items() if k not in ("tracking_uri", "tracking_outage_s")},
                              tags={tracking.TRIAL_TAG: cfg["name"], tracking.TRIAL_ID_TAG: trial_id,
                                    "kind": cfg["kind"], **node_tags}, stage="search",
                              unique_tags={tracking.PARENT_TAG: cfg["parent_run_id"],
                                           tracking.TRIAL_ID_TAG: trial_id}), True


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


def train_trial(config: dict, data: dict, experiment_dir: Optional[str] = None) -> None:
    """Train one configuration; report metrics + a checkpoint every epoch (see module docstring)."""
    started = time.time()  # trial_wall_clock[0]
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)  # one INFO line per checkpoint
    cfg = flat_config(config)
    torch.set_num_threads(max(1, int(cfg.get("cpus_per_trial", 1))))
    seed_everything(int(cfg["seed"]))
    device = pick_device(bool(cfg.get("use_gpu")))
    tracking_outage.set_bound(tracking_outage.trial_bound(cfg.get("tracking_outage_s",
                                                                  tracking_outage.DEFAULT_BOUND_S)))
    # a restarted trial continues from the newest epoch it checkpointed, and in the same MLflow run
    folder = StoragePath.resolve(experiment_dir, "/") if experiment_dir else None
    state = trial_checkpoint.newest_state(folder, cfg["name"], tune.get_checkpoint(), device)
    uri = cfg["tracking_uri"]
    node = _node()
    retries_before = tracking.lock_retries()
    run_id, new_run = _open_child_run(cfg, state, tune.get_context().get_trial_id() or cfg["name"], node)
    epochs = int(cfg["epochs"])
    try:
        mlflow_log = tracking.MetricLog(uri, run_id, new_run)
        _count_attempt(mlflow_log)
        if not new_run:  # a new run has its node tags from its creation
            tracking.set_tags(uri, run_id, {f"ray.{k}": v for k, v in node.items()})
        work = OwnWork()  # the trial's own work (not MLflow, Ray or checkpoints)
        with work():
            backbone = backbone_from(data["backbone"])
            model = prernn.build_from_config(cfg, backbone)  # the trial's kind, layers, cell, ...
            splits = trial_splits(data["caches"], backbone, cfg)  # the cache at this trial's boundary
            train, val = splits["train"], splits["val"]
            task = task_from_entries(data.get("task", {}))
            trainer = Trainer(model, lr_inherited=cfg["lr_inherited"], lr_new=cfg["lr_new"],
                              weight_decay=cfg["weight_decay"], batch_size=cfg["batch_size"], seed=int(cfg["seed"]),
                              start=train.start, device=device, task=task, augment=batch_augment(cfg, train.start, task.points))
            if state:
                trainer.load_state_dict(state["trainer"])
        recurrent_params = int(prernn.count_recurrent_parameters(model))
        for row in trainer.history:  # epochs checkpointed before an interruption cut off their logging
            mlflow_log.log(row, step=row["epoch"])
        # finished before a killed driver recorded it: report the last epoch again (nothing is retrained)
        replay = bool(state) and trainer.epoch >= epochs and bool(trainer.history)
        while trainer.epoch < epochs or replay:
            if replay:
                row, replay = trainer.history[-1], False
            else:
                with work():
                    row = trainer.fit_epoch(train, val)
            metrics = {**row, "name": cfg["name"], "mlflow_run_id": run_id, "recurrent_params": recurrent_params,
                       "history_json": json.dumps(trainer.history), **node}
            summary_tags = {"recurrent_params": recurrent_params}
            if trainer.epoch == epochs:
                summary = summarize(trainer.history, task)
                final = {"best_val_acc": summary.at_best("val_acc"), "best_val_loss": summary.at_best("val_loss"),
                         "epochs_to_95": summary.epochs_to_95, "mean_clips_per_sec": summary.clips_per_sec,
                         **{f"best_{k}": summary.at_best(k) for k in summary_keys(task)}}
                metrics.update(final)
                summary_tags.update(final)
            # the epoch's metrics (once per step: a replayed epoch is in the run already) and the summary, one write
            mlflow_log.log(row, step=row["epoch"], tags=summary_tags)
            if trainer.epoch == epochs or cfg.get("gate_stats_every_epoch"):
                with work():
                    stats = _gate_stats(model, val, device)
                metrics["gate_stats_json"] = json.dumps(stats)
                tracking.log_json(uri, run_id, stats, "gate_stats.json")
            metrics["trial_wall_clock"] = [started, time.time()]  # the trial's own wall time so far
            # what an outage kept back is sent before a report that can end the trial (the last; ASHA's any)
            mlflow_log.flush(wait=trainer.epoch == epochs or bool(cfg.get("gate_stats_every_epoch")))
            metrics.update(work_seconds=work.wall, work_cpu_seconds=work.cpu)
            metrics["tracking_lock_retries"] = tracking.lock_retries() - retries_before
            with tempfile.TemporaryDirectory() as tmp:
                trial_checkpoint.save(Path(tmp), trainer.state_dict(), run_id)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
        mlflow_log.flush()  # what an outage kept back
    except tracking.TrackingUnavailable:
        raise  # the server is gone: nothing to mark the run with
    except Exception as err:
        tracking.set_tags(uri, run_id, {"error": f"{type(err).__name__}: {err}"})
        tracking.end_run(uri, run_id, "FAILED")
        raise
    tracking.end_run(uri, run_id, "FINISHED")
