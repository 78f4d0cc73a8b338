"""The Ray Tune trainable: one search trial = one PreRNN conversion (or traditional baseline) fine-tuned.

`train_trial(config, data)` is a plain function of the trial config (Ray's function API):
  config: {"arch": <a pipeline.space arch dict>, "epochs", "batch_size", "lr_inherited", "lr_new",
           "weight_decay", "hh_init", "seed", "cpus_per_trial", "use_gpu", "tracking_uri",
           "experiment_id", "parent_run_id", "gate_stats_every_epoch", optional "_fault": "nan" (tests)}
  data (via tune.with_parameters, i.e. the Ray object store): {"backbone": {"config", "state_dict"},
           "train": SplitTensors, "val": SplitTensors} (cached trunk features or raw clips).
Each epoch it reports the epoch's metrics (`val_acc`, `val_loss`, ...), the history so far
(`history_json`), `recurrent_params` and the MLflow child run id, with a checkpoint from which a
restarted trial continues. The last epoch (every epoch with `gate_stats_every_epoch`, for ASHA,
which may stop a trial early) adds the gate statistics of each recurrent layer on the val clips
(`gate_stats_json`, [0059]-[0062]). A loss that is not finite raises, so Ray marks the trial failed.
"""
from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import torch

from pipeline import tracking
from pipeline.train import Trainer, pick_device, seed_everything

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


def load_backbone(ckpt: dict) -> torch.nn.Module:
    import prernn

    model = prernn.build_from_config(ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    return model


def _inject_fault(model, fault) -> None:
    """Test hook: `_fault: nan` poisons one new weight so the first loss is NaN."""
    if fault in (None, ""):
        return
    if fault != "nan":
        raise ValueError(f"trial config _fault: {fault!r}: only 'nan' is supported")
    params = list(model.new_parameters()) or list(model.parameters())
    with torch.no_grad():
        params[0].fill_(float("nan"))


def _gate_stats(model, val, device) -> dict:
    import prernn

    model.eval()
    with torch.no_grad():
        return prernn.gate_statistics(model, val.x.to(device), start=val.start)


def train_trial(config: dict, data: dict) -> None:
    """Train one configuration; report metrics + a checkpoint every epoch (see module docstring)."""
    import prernn
    from ray import tune

    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)  # one INFO line per checkpoint
    cfg = flat_config(config)
    torch.set_num_threads(max(1, int(cfg.get("cpus_per_trial", 1))))
    seed_everything(int(cfg["seed"]))
    device = pick_device(bool(cfg.get("use_gpu")))
    model = build_model(load_backbone(data["backbone"]), cfg)
    _inject_fault(model, cfg.get("_fault"))
    train, val = data["train"], data["val"]
    trainer = Trainer(model, lr_inherited=cfg["lr_inherited"], lr_new=cfg["lr_new"],
                      weight_decay=cfg["weight_decay"], batch_size=cfg["batch_size"], seed=int(cfg["seed"]),
                      start=train.start, device=device)
    recurrent_params = int(prernn.count_recurrent_parameters(model))
    uri, run_id = cfg["tracking_uri"], None

    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # a restarted trial: continue from its last epoch and MLflow run
        with checkpoint.as_directory() as ckpt_dir:
            state = torch.load(Path(ckpt_dir) / CHECKPOINT_FILE, map_location=device, weights_only=True)
        trainer.load_state_dict(state["trainer"])
        run_id = state.get("mlflow_run_id")
        if run_id:
            tracking.client(uri).update_run(run_id, status="RUNNING")
    trial_id = tune.get_context().get_trial_id() or cfg["name"]
    if run_id is None:  # a retry that failed before its first checkpoint reuses its run
        run_id = tracking.find_child_run(uri, cfg["experiment_id"], cfg["parent_run_id"], trial_id)
        if run_id:
            tracking.client(uri).update_run(run_id, status="RUNNING")
    if run_id is None:
        run_id = tracking.start_run(uri, cfg["experiment_id"], cfg["name"], parent_run_id=cfg["parent_run_id"],
                                    params={k: v for k, v in cfg.items() if k not in ("tracking_uri",)},
                                    tags={tracking.TRIAL_TAG: cfg["name"], tracking.TRIAL_ID_TAG: trial_id,
                                          "kind": cfg["kind"]}, stage="search")
        tracking.log_metrics(uri, run_id, {"recurrent_params": recurrent_params})

    epochs = int(cfg["epochs"])
    try:
        while trainer.epoch < epochs:
            row = trainer.fit_epoch(train.pair(), val.pair())
            tracking.log_metrics(uri, run_id, row, step=row["epoch"])
            metrics = {**row, "name": cfg["name"], "mlflow_run_id": run_id, "recurrent_params": recurrent_params,
                       "history_json": json.dumps(trainer.history)}
            if trainer.epoch == epochs or cfg.get("gate_stats_every_epoch"):
                stats = _gate_stats(model, val, device)
                metrics["gate_stats_json"] = json.dumps(stats)
                tracking.log_json(uri, run_id, stats, "gate_stats.json")
            with tempfile.TemporaryDirectory() as tmp:
                torch.save({"trainer": trainer.state_dict(), "mlflow_run_id": run_id}, Path(tmp) / CHECKPOINT_FILE)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
    except Exception as err:
        tracking.set_tags(uri, run_id, {"error": f"{type(err).__name__}: {err}"})
        tracking.end_run(uri, run_id, "FAILED")
        raise
    tracking.end_run(uri, run_id, "FINISHED")
