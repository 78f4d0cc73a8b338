"""The Ray Tune trainable: one search trial = one PreRNN conversion (or traditional baseline) fine-tuned.

`train_trial(config, data)` is a plain function of the trial config (Ray's function API):
  config: {"arch": <a pipeline.space arch dict>, "epochs", "batch_size", "lr_inherited", "lr_new",
           "weight_decay", "hh_init", "seed", "cpus_per_trial", "use_gpu", "tracking_uri",
           "experiment_id", "parent_run_id", "gate_stats_every_epoch", optional "_fault": "nan" | "raise" | "raise_once" | "slow" (tests)}
  data (via tune.with_parameters, i.e. the Ray object store): {"backbone": {"config", "state_dict"},
           "train": SplitTensors, "val": SplitTensors} (cached trunk features or raw clips).
Each epoch it reports the epoch's metrics (`val_acc`, `val_loss`, ...), the history so far
(`history_json`), `recurrent_params`, the MLflow child run id, the Ray node (`node_id`, `node_ip`) and
`trial_wall_clock` ([time.time() when this attempt's train_trial began, time.time() at this report]), with a
checkpoint from which a restarted trial continues (one that had finished before a killed driver
recorded it reports its last epoch again, untrained). The last epoch (every epoch with `gate_stats_every_epoch`, for ASHA,
which may stop a trial early) adds the gate statistics of each recurrent layer on the val clips
(`gate_stats_json`: the saturation of [0055]-[0062] that the selection of [0065] uses); the last
epoch also reports `best_val_acc`, `epochs_to_95` and `mean_clips_per_sec`. A loss that is not
finite raises, so Ray marks the trial failed (and the other trials go on).
"""
from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import torch

from pipeline import tracking
from pipeline.checkpoint import backbone_from
from pipeline.train import REGRESSION_KEYS, Trainer, pick_device, seed_everything, summarize

CHECKPOINT_FILE = "trial.pt"
COMMON_KEYS = ("epochs", "batch_size", "lr_inherited", "lr_new", "weight_decay", "hh_init", "seed")


def flat_config(config: dict) -> dict:
    """The trial config with the arch dict merged in (what MLflow params and trials.json show)."""
    cfg = {k: v for k, v in config.items() if k != "arch"}
    cfg.update(config.get("arch", {}))
    return cfg


def build_model(backbone: torch.nn.Module, cfg: dict):
    """The SequenceModel of one trial: prernn.convert for kind "prernn", prernn.traditional otherwise."""
    import prernn

    if cfg["kind"] == "prernn":
        return prernn.convert(backbone, list(cfg["layers"]), cfg["cell"], sih=bool(cfg["sih"]), hh_init=cfg["hh_init"])
    if cfg["kind"] == "traditional":
        return prernn.traditional(backbone, cfg["cell"], num_layers=int(cfg["num_layers"]),
                                  hidden_size=cfg.get("hidden_size"), hh_init=cfg["hh_init"])
    raise ValueError(f"trial config kind: {cfg['kind']!r}: expected 'prernn' or 'traditional'")


FAULTS = ("nan", "raise", "raise_once", "slow")
SLOW_EPOCH_S = 2.0  # the `_fault: slow` test hook: seconds added to each epoch


class InjectedFault(RuntimeError):
    """Raised by the `_fault: raise` / `raise_once` test hook."""


def _inject_fault(model, fault) -> None:
    """Test hook: `_fault: nan` poisons one new weight so the first loss is NaN (`raise`, `raise_once`: see
    `_raise_fault`)."""
    if fault in (None, ""):
        return
    if fault not in FAULTS:
        raise ValueError(f"trial config _fault: {fault!r}: expected one of {list(FAULTS)}")
    if fault != "nan":
        return
    params = list(model.new_parameters()) or list(model.parameters())
    with torch.no_grad():
        params[0].fill_(float("nan"))


def _raise_fault(fault, epoch: int, resumed: bool) -> None:
    """Test hook, called after each epoch's report: `raise` fails every attempt before its first report;
    `raise_once` fails once, right after epoch 1 was reported and checkpointed (a retry continues from it);
    `slow` adds SLOW_EPOCH_S to every epoch (so a test can interrupt a search while that trial runs)."""
    if fault == "slow":
        time.sleep(SLOW_EPOCH_S)
    if fault == "raise" and epoch == 0:
        raise InjectedFault("injected fault (_fault: raise) before the first epoch")
    if fault == "raise_once" and epoch == 1 and not resumed:
        raise InjectedFault("injected fault (_fault: raise_once) after epoch 1")


def _node() -> dict:
    """Where this trial runs: the Ray node id and IP (the cluster tests check that both nodes ran trials)."""
    import ray

    try:
        node_id = ray.get_runtime_context().get_node_id()
        ips = [n.get("NodeManagerAddress") for n in ray.nodes() if n.get("NodeID") == node_id]
        return {"node_id": node_id, "node_ip": ips[0] if ips else ray.util.get_node_ip_address()}
    except Exception:  # noqa: BLE001 - not inside a Ray worker (unit tests)
        return {"node_id": None, "node_ip": None}


def _count_attempt(uri: str, run_id: str) -> int:
    """Log and return this attempt's number on the child run (metric `attempts`: 1 + max_failures at most)."""
    attempt = int(tracking.client(uri).get_run(run_id).data.metrics.get("attempts", 0)) + 1
    tracking.log_metrics(uri, run_id, {"attempts": attempt})
    return attempt


def _gate_stats(model, val, device) -> dict:
    import prernn

    model.eval()
    with torch.no_grad():
        return prernn.gate_statistics(model, val.inputs(device), start=val.start)


def _open_child_run(cfg: dict, state: dict, trial_id: str) -> str:
    """The trial's MLflow child run: from its checkpoint, else the run of an earlier attempt, else a new one."""
    uri = cfg["tracking_uri"]
    run_id = state.get("mlflow_run_id") or tracking.find_child_run(uri, cfg["experiment_id"], cfg["parent_run_id"],
                                                                   trial_id, name=cfg["name"])
    if run_id:
        tracking.client(uri).update_run(run_id, status="RUNNING")
        return run_id
    return tracking.start_run(uri, cfg["experiment_id"], cfg["name"], parent_run_id=cfg["parent_run_id"],
                              params={k: v for k, v in cfg.items() if k != "tracking_uri"},
                              tags={tracking.TRIAL_TAG: cfg["name"], tracking.TRIAL_ID_TAG: trial_id,
                                    "kind": cfg["kind"]}, stage="search")


def train_trial(config: dict, data: dict) -> None:
    """Train one configuration; report metrics + a checkpoint every epoch (see module docstring)."""
    started = time.time()  # trial_wall_clock[0]
    import prernn
    from ray import tune

    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)  # one INFO line per checkpoint
    cfg = flat_config(config)
    torch.set_num_threads(max(1, int(cfg.get("cpus_per_trial", 1))))
    seed_everything(int(cfg["seed"]))
    device = pick_device(bool(cfg.get("use_gpu")))
    state = {}
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # a restarted trial: continue from its last epoch and MLflow run
        with checkpoint.as_directory() as ckpt_dir:
            state = torch.load(Path(ckpt_dir) / CHECKPOINT_FILE, map_location=device, weights_only=True)
    uri = cfg["tracking_uri"]
    run_id = _open_child_run(cfg, state, tune.get_context().get_trial_id() or cfg["name"])
    epochs = int(cfg["epochs"])
    node = _node()
    try:
        _count_attempt(uri, run_id)
        tracking.set_tags(uri, run_id, {f"ray.{k}": v for k, v in node.items()})
        model = build_model(backbone_from(data["backbone"]), cfg)
        _inject_fault(model, cfg.get("_fault"))
        train, val = data["train"], data["val"]
        trainer = Trainer(model, lr_inherited=cfg["lr_inherited"], lr_new=cfg["lr_new"],
                          weight_decay=cfg["weight_decay"], batch_size=cfg["batch_size"], seed=int(cfg["seed"]),
                          start=train.start, device=device, regression=cfg.get("regression"))
        if state:
            trainer.load_state_dict(state["trainer"])
        recurrent_params = int(prernn.count_recurrent_parameters(model))
        tracking.log_summary(uri, run_id, {"recurrent_params": recurrent_params})
        resumed = bool(state)
        # finished before a killed driver recorded it: report the last epoch again (nothing is retrained)
        replay = resumed and trainer.epoch >= epochs and bool(trainer.history)
        while trainer.epoch < epochs or replay:
            if replay:
                row, replay = trainer.history[-1], False
            else:
                _raise_fault(cfg.get("_fault"), trainer.epoch, resumed)
                row = trainer.fit_epoch(train, val)
                tracking.log_metrics(uri, run_id, row, step=row["epoch"])
            metrics = {**row, "name": cfg["name"], "mlflow_run_id": run_id, "recurrent_params": recurrent_params,
                       "history_json": json.dumps(trainer.history), **node}
            if trainer.epoch == epochs:
                summary = summarize(trainer.history)
                final = {"best_val_acc": summary["val_acc"], "best_val_loss": summary["val_loss"],
                         "epochs_to_95": summary["epochs_to_95"], "mean_clips_per_sec": summary["clips_per_sec"],
                         **{f"best_{k}": summary[k] for k in REGRESSION_KEYS if k in summary}}
                metrics.update(final)
                tracking.log_summary(uri, run_id, final)
            if trainer.epoch == epochs or cfg.get("gate_stats_every_epoch"):
                stats = _gate_stats(model, val, device)
                metrics["gate_stats_json"] = json.dumps(stats)
                tracking.log_json(uri, run_id, stats, "gate_stats.json")
            metrics["trial_wall_clock"] = [started, time.time()]  # the trial's own wall time so far
            with tempfile.TemporaryDirectory() as tmp:
                torch.save({"trainer": trainer.state_dict(), "mlflow_run_id": run_id}, Path(tmp) / CHECKPOINT_FILE)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
    except Exception as err:
        tracking.set_tags(uri, run_id, {"error": f"{type(err).__name__}: {err}"})
        tracking.end_run(uri, run_id, "FAILED")
        raise
    tracking.end_run(uri, run_id, "FINISHED")
