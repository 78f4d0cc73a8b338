"""The search driver: one Ray Tune trial per configuration, MLflow parent run, trial table.

`run_search(...)` takes the validated `search` and `mlflow` params sections, the pretrained backbone
checkpoint (save format of the contract), the trunk caches (pipeline.search.trunk_cache.trunk_caches: {boundary: {split:
SplitTensors}}, one per distinct trial boundary, or {None: raw clips}) and returns
(rows, info): one row per trial with the contract's keys (trials.json) and the search summary
(search.json). Ray results live under `search.storage_path`/<name>; the name is a fingerprint of
the params and inputs, so rerunning a killed search with the same inputs restores it there
(`Tuner.restore`: finished trials are kept, unfinished ones continue from the newest epoch they
checkpointed, see pipeline.search.trainable).
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Optional, TypedDict

import ray
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler

import prernn
from pipeline.core import ray_cluster, tracking, tracking_outage
from pipeline.core.atomic import atomic_path
from pipeline.core.params import ParamsError
from pipeline.core.storage import StoragePath
from pipeline.search.space import build_space
from pipeline.search.trainable import COMMON_KEYS, TRACKING_KEYS, flat_config, train_trial
from pipeline.training.tasks import Classification, Task
from pipeline.training.trainer import EpochRow, summarize, summary_keys

log = logging.getLogger(__name__)
DRIVER_STATE = "prernn_search.json"
ROW_KEYS = ("name", "configuration", "seed", "kind", "cell", "sih", "layers", "num_layers", "status", "error", "val_acc", "val_loss",
            "epochs_to_95", "clips_per_sec", "recurrent_params", "mlflow_run_id")


class TrialRow(TypedDict, total=False):
    """One trial of the search: a row of search/trials.json (the select and evaluate stages read it back as JSON),
    written by `_row` from the trial's last Ray result. The task's best val metrics (`val_auc`, ... ) join
    `val_acc` / `val_loss` (None where the task has none)."""

    name: str                   # the trial: configuration + seed (`prernn-gru-fc6-seed1`)
    configuration: str          # what the seeds share (`prernn-gru-fc6`), the unit Table 1 and selection rank
    seed: int
    kind: str                   # prernn | traditional
    cell: str
    sih: bool
    layers: list[str]
    num_layers: int
    status: str                 # ok | failed
    error: Optional[str]
    val_acc: Optional[float]    # at the best epoch by the task's score (`summarize`)
    val_loss: Optional[float]
    val_auc: Optional[float]    # LandmarkRegression's keys
    val_nme: Optional[float]
    val_failure_rate: Optional[float]
    epochs_to_95: Optional[int]
    clips_per_sec: Optional[float]
    recurrent_params: Optional[int]
    mlflow_run_id: Optional[str]
    gate_stats: Optional[dict]  # prernn.gate_statistics of the last epoch, per recurrent layer
    node_id: Optional[str]
    node_ip: Optional[str]
    history: list[EpochRow]
    epochs_run: int
    best_epoch: Optional[int]
    stopped_early: bool
    config: dict                # the trial's flat config (tracking keys left out)


def trial_name(trial) -> str:
    return trial.config["arch"]["name"]


def trial_dirname(trial) -> str:
    return f"{trial.config['arch']['name']}_{trial.trial_id}"


def code_digest(packages=None) -> str:
    """sha256 of the source of `packages` (default: the `prernn` and `pipeline` packages, the code a trial runs;
    every .py file, by relative path). Part of the fingerprint, so a search rerun after a code change (DVC reruns
    the stage for it) trains afresh instead of restoring results the old code computed."""
    h = hashlib.sha256()
    for pkg in packages or (Path(prernn.__file__).parent, Path(__file__).parents[1]):
        pkg = Path(pkg)
        for f in sorted(pkg.rglob("*.py")):
            h.update(f"{pkg.name}/{f.relative_to(pkg).as_posix()}".encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def fingerprint(search, tracking_uri: str, experiment: str, backbone_ckpt: dict, caches: dict, space: list,
                task: Optional[Task] = None) -> str:
    """A short hash of everything that decides the trial results (not the resources): the search params,
    the MLflow target, the space, the task's params (`task.params()`: the regression section; default
    classification, which has none), the pretrained weights, the cached inputs and the code (`code_digest`)."""
    h = hashlib.sha256(code_digest().encode())
    keep = {k: v for k, v in search.model_dump().items()
            if k not in ("address", "max_concurrent", "storage_path", "cpus_per_trial", "gpus_per_trial")}
    task_params = (task if task is not None else Classification()).params()
    h.update(json.dumps([keep, tracking_uri, experiment, space] + list(task_params.values()),
                        sort_keys=True, default=str).encode())
    for name, tensor in sorted(backbone_ckpt["state_dict"].items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    for boundary in sorted(caches, key=str):
        h.update(str(boundary).encode())
        for split in sorted(caches[boundary]):
            h.update(caches[boundary][split].x.contiguous().numpy().tobytes())
            h.update(caches[boundary][split].y.numpy().tobytes())
    return h.hexdigest()[:12]


def _short_error(error) -> str:
    """The root cause of a Ray trial error as one line `Type: message`."""
    cause = error
    for _ in range(5):
        inner = getattr(cause, "cause", None) or getattr(cause, "__cause__", None)
        if inner is None or inner is cause:
            break
        cause = inner
    text = f"{type(cause).__name__}: {cause}"
    lines = [ln.strip() for ln in str(cause).splitlines() if ln.strip()]
    if len(lines) > 1:  # a traceback: keep its last line (the exception)
        text = lines[-1]
    return text[:1000]


def state_period(num_trials: int) -> float:
    """Seconds between Ray Tune's saves of its experiment state (TUNE_GLOBAL_CHECKPOINT_S): 1 s up to 100 trials,
    then num_trials / 100 s. A save writes every trial's state, so at a fixed period the saves of a search would
    cost the driver time growing with the square of its trials (bench.scale: a save of 315 trials takes the driver
    about 0.1 s); at this period their cost per trial stays flat. A stale state costs nothing but a few replayed
    reports: each restarted trial finds its own newest checkpoint (pipeline.search.trial_checkpoint)."""
    return max(1.0, num_trials / 100)


@contextlib.contextmanager
def tune_environment(num_trials: int):
    """The Ray Tune settings of the driver for one search, where the environment does not set them already:
    `state_period`, and no automatic loggers (run_search asks for the JSON and CSV ones: TensorBoard event files
    cost the driver about 30 ms per trial and nothing here reads them)."""
    want = {"TUNE_GLOBAL_CHECKPOINT_S": f"{state_period(num_trials):g}", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}
    saved = {k: os.environ.get(k) for k in want}
    os.environ.update({k: v for k, v in want.items() if saved[k] is None})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)


class SearchInterrupted(RuntimeError):
    """Ray Tune stopped before every trial finished (Ctrl-C, SIGTERM); rerunning resumes the search."""


def _row(result, run_ids: dict, archs: dict, common: dict, task: Task) -> TrialRow:
    """One trials.json row from a Ray Result (ranked by the task's score: `summarize`)."""
    config = result.config
    if config is None:  # a restored trial that failed before its first report: Ray keeps no config for it
        name = Path(result.path).name.rsplit("_", 2)[0]  # trial_dirname: <name>_<trial_id (xxxxx_NNNNN)>
        config = {**common, "arch": archs[name]}
    cfg = flat_config(config)
    metrics = result.metrics or {}
    history = json.loads(metrics.get("history_json", "[]"))
    summary = summarize(history, task)
    failed = result.error is not None
    return {
        "name": cfg["name"], "configuration": cfg.get("configuration", cfg["name"]), "seed": cfg.get("seed"),
        "kind": cfg["kind"], "cell": cfg["cell"], "sih": bool(cfg["sih"]),
        "layers": list(cfg["layers"]), "num_layers": int(cfg["num_layers"]),
        "status": "failed" if failed else "ok", "error": _short_error(result.error) if failed else None,
        "val_acc": summary.at_best("val_acc"), "val_loss": summary.at_best("val_loss"),
        "epochs_to_95": summary.epochs_to_95, **{k: summary.at_best(k) for k in summary_keys(task)},
        "clips_per_sec": summary.clips_per_sec, "recurrent_params": metrics.get("recurrent_params"),
        "mlflow_run_id": metrics.get("mlflow_run_id") or run_ids.get(cfg["name"]),
        "gate_stats": json.loads(metrics["gate_stats_json"]) if metrics.get("gate_stats_json") else None,
        "node_id": metrics.get("node_id"), "node_ip": metrics.get("node_ip"),
        "history": history, "epochs_run": len(history), "best_epoch": summary.best_epoch,
        "stopped_early": not failed and len(history) < int(cfg["epochs"]),
        "config": {k: v for k, v in cfg.items() if k not in TRACKING_KEYS},
    }


def _open_parent(uri, experiment_id, exp_dir: StoragePath, search, info: dict, restoring: bool) -> str:
    """The parent run: reused from the driver state of an earlier run of the same search (restored, or killed
    before Ray saved any experiment state), else created."""
    state_file = exp_dir / DRIVER_STATE
    if state_file.exists():
        run_id = json.loads(state_file.read_text()).get("parent_run_id")
        if run_id and tracking.run_status(uri, run_id) is not None:
            tracking.reopen_run(uri, run_id)
            return run_id
    run_id = tracking.start_run(uri, experiment_id, exp_dir.name,
                                params={"search": search.model_dump(), **{k: info[k] for k in
                                        ("backbone", "modality", "trunk_boundary", "num_trials")}},
                                tags={"kind": "search"}, stage="search")
    state_file.write_text(json.dumps({"parent_run_id": run_id, "experiment_id": experiment_id}))
    return run_id


def check_resources(search) -> None:
    """ParamsError unless one node of the running Ray cluster has search.gpus_per_trial GPUs and
    search.cpus_per_trial CPUs (a trial never spans nodes); checked before any trial starts."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    total = {k: sum(n.get(k, 0) for n in nodes) for k in ("GPU", "CPU")}
    most = {k: max((n.get(k, 0) for n in nodes), default=0) for k in ("GPU", "CPU")}
    problems = []
    for key, res, value in (("search.gpus_per_trial", "GPU", search.gpus_per_trial),
                            ("search.cpus_per_trial", "CPU", search.cpus_per_trial)):
        if value > most[res]:
            problems.append(f"{key}: {value:g}: more than the Ray cluster has: {total[res]:g} {res}s in all, "
                            f"at most {most[res]:g} on one node ({len(nodes)} nodes); allowed: at most {most[res]:g} "
                            "(a trial runs on one node)")
    if problems:
        raise ParamsError("\n".join(problems))


def unfinished_trials(grid) -> int:
    """How many trials of a ResultGrid neither ended (their last result is `done`: returned, or stopped by the
    scheduler) nor failed. After Ctrl-C or SIGUSR1 Tune marks the trials it stops TERMINATED in memory (the state it
    saved just before has them running, so a restore resumes them): the status alone does not tell."""
    return sum(1 for r in grid if r.error is None and not (r.metrics or {}).get("done"))


def _stop_tune() -> None:
    """Stop Tuner.fit as Ctrl-C does (it saves the experiment state; unfinished trials resume on a rerun): SIGUSR1
    to this process, which Tune handles so while it runs in the main thread (otherwise nothing is sent, and the
    trials' own, longer bound applies). Tune's warnings about a stop signal are silenced: the stage says why."""
    handler = signal.getsignal(signal.SIGUSR1)
    if callable(handler):
        logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
        os.kill(os.getpid(), signal.SIGUSR1)


def run_search(search, mlflow_params, backbone_ckpt: dict, caches: dict, *, candidates: list, boundary: str,
               space: Optional[list] = None, base_dir: str | os.PathLike | None = None,
               verbose: int = 1, fresh: bool = False, task: Optional[Task] = None,
               defaults: Optional[list] = None) -> tuple[list[TrialRow], dict]:
    """Run (or restore) the search; returns (trial rows in space order, search info).

    `caches`: {boundary: {"train", "val": SplitTensors}} (pipeline.search.trunk_cache.trunk_caches); each trial takes
    the one at its boundary. `boundary`: the backbone's default one (search.json's `trunk_boundary`); `candidates`,
    `defaults`: prernn.candidate_layers / default_candidates (the space when `space` is None).

    `task` (pipeline.training.tasks; Classification by default): every trial trains, reports and is ranked by it
    (`task.score`); its params (`task.params()`) are part of each trial's config.

    `fresh`: discard a previous experiment with the same fingerprint instead of restoring it.

    An http(s) tracking server that does not answer for `mlflow.outage_s` while the trials run stops the search
    (TrackingUnavailable, one line naming the URI; rerunning resumes it); shorter outages are ridden out
    (pipeline.core.tracking_outage).
    """
    t0 = time.perf_counter()
    task = task if task is not None else Classification()
    base_dir = Path(base_dir or os.getcwd())
    uri, source = tracking.resolve_tracking_uri(mlflow_params.tracking_uri, base_dir)
    tracking.check_reachable(uri, source)
    tracking_outage.set_bound(mlflow_params.outage_s)
    # sqlite: WAL when every trial writes from this machine (a local Ray instance), set before MLflow opens the file
    journal = tracking.set_journal_mode(uri, local=ray_cluster.resolve_address(search.address)[0] is None)
    space = space if space is not None else build_space(search, candidates, defaults)
    started = ray_cluster.connect(search.address)
    try:
        check_resources(search)
        use_gpu = search.gpus_per_trial > 0
        storage = StoragePath.resolve(search.storage_path, base_dir)  # a shared folder or a pyarrow URI
        meta = backbone_ckpt.get("meta", {})
        name = f"search-{search.modality}-" + fingerprint(search, uri, mlflow_params.experiment, backbone_ckpt,
                                                          caches, space, task)
        exp_dir = storage / name
        if fresh and exp_dir.exists():
            exp_dir.rmtree()
        info = {"experiment_id": tracking.ensure_experiment(uri, mlflow_params.experiment), "tracking_uri": uri,
                "journal_mode": journal, "backbone": backbone_ckpt["config"]["name"], "modality": search.modality,
                "candidates": list(candidates), "trunk_boundary": boundary,
                "trunk_boundaries": [b for b in caches if b is not None], "num_trials": len(space),
                "storage_path": str(storage), "experiment_dir": str(exp_dir), "class_names": meta.get("class_names")}
        restoring = tune.Tuner.can_restore(str(exp_dir)) and (exp_dir / DRIVER_STATE).exists()
        parent = _open_parent(uri, info["experiment_id"], exp_dir, search, info, restoring)
        common = {k: getattr(search, k) for k in COMMON_KEYS}
        param_space = {
            "arch": tune.grid_search(space), **common,
            "cpus_per_trial": search.cpus_per_trial, "use_gpu": use_gpu,
            "gate_stats_every_epoch": search.scheduler == "asha", "tracking_uri": uri,
            "tracking_outage_s": mlflow_params.outage_s,
            "experiment_id": info["experiment_id"], "parent_run_id": parent,
            **task.params(),
            # per batch, uncached
            "augment": [search.augment_shift, search.augment_jitter],
        }
        trainable = tune.with_resources(
            tune.with_parameters(train_trial, data={"backbone": {"config": backbone_ckpt["config"],
                                                                 "state_dict": backbone_ckpt["state_dict"]},
                                                    "caches": caches, "task": task.entries()},
                                experiment_dir=str(exp_dir)),  # where a restarted trial finds its checkpoints
            {"cpu": search.cpus_per_trial, "gpu": search.gpus_per_trial if use_gpu else 0},
        )
        if restoring:
            log.warning("restoring the search from %s (finished trials are kept)", exp_dir)
            tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, param_space=param_space)
        else:
            scheduler = (ASHAScheduler(max_t=search.epochs, grace_period=max(1, search.epochs // 4),
                                       reduction_factor=2) if search.scheduler == "asha" else None)
            tuner = tune.Tuner(
                trainable,
                param_space=param_space,
                tune_config=tune.TuneConfig(
                    metric=task.score if scheduler else None, mode=task.mode if scheduler else None,
                    scheduler=scheduler, max_concurrent_trials=search.max_concurrent or None, reuse_actors=True,
                    trial_name_creator=trial_name, trial_dirname_creator=trial_dirname),
                run_config=tune.RunConfig(
                    name=name, storage_path=str(storage), verbose=verbose,
                    callbacks=[JsonLoggerCallback(), CSVLoggerCallback()],  # result.json, progress.csv per trial
                    failure_config=tune.FailureConfig(max_failures=search.max_failures),
                    # keep every epoch's checkpoint: with a limit, the driver deletes the previous one as soon
                    # as a new one lands, and a driver killed before it saves its state leaves a restore that
                    # points at a deleted checkpoint; and a restarted trial looks for the newest of them itself
                    # (pipeline.search.trial_checkpoint), which Ray, counting by its own index, could delete
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=None)),
            )
        tune_log = logging.getLogger("ray.tune")
        level = tune_log.level
        try:
            with tune_environment(len(space)), tracking_outage.Watch(uri, mlflow_params.outage_s, _stop_tune) as watch:
                grid = tuner.fit()
        finally:
            tune_log.setLevel(level)
        unfinished = unfinished_trials(grid)
        if watch.tripped:
            raise tracking.TrackingUnavailable(
                f"{tracking_outage.outage_message(uri, mlflow_params.outage_s)}: the search stopped with "
                f"{unfinished} of {len(grid)} trials unfinished; start the server again and rerun the stage to "
                f"resume them from {exp_dir}")
        if unfinished:
            tracking.end_run(uri, parent, "KILLED")
            raise SearchInterrupted(
                f"the search stopped with {unfinished} of {len(grid)} trials unfinished; rerun the stage with the "
                f"same params to resume them from {exp_dir}")
        child_runs = tracking.child_runs(uri, info["experiment_id"], parent)  # one query for every trial's run
        children = {r.data.tags.get(tracking.TRIAL_TAG): r.info.run_id for r in child_runs}
        statuses = {r.info.run_id: r.info.status for r in child_runs}
        order = {a["name"]: i for i, a in enumerate(space)}
        archs = {a["name"]: a for a in space}
        rows = sorted((_row(result, children, archs, param_space, task) for result in grid),
                      key=lambda r: order.get(r["name"], 1 << 30))
        _finish_runs(uri, parent, rows, task.score, statuses)
        info.update({"parent_run_id": parent, "restored": restoring, "wall_seconds": time.perf_counter() - t0,
                     "num_ok": sum(r["status"] == "ok" for r in rows),
                     "num_failed": sum(r["status"] == "failed" for r in rows)})
        return rows, info
    finally:
        if started:
            ray.shutdown()


def _finish_runs(uri: str, parent: str, rows: list[TrialRow], key: str, statuses: Optional[dict] = None) -> None:
    """Close child runs Ray stopped early (ASHA) or killed, log the search summary (the best `key`), close the
    parent. `statuses`: {run id: status} of the child runs as one search returned them (else each run is read)."""
    for row in rows:
        rid = row["mlflow_run_id"]
        status = (statuses or {}).get(rid) or (tracking.run_status(uri, rid) if rid else None)
        if rid and status == "RUNNING":
            tracking.end_run(uri, rid, "FAILED" if row["status"] == "failed" else "KILLED")
    ok = [r for r in rows if r["status"] == "ok" and r[key] is not None]
    summary = {"num_ok": len(ok), "num_failed": len(rows) - len(ok)}
    if ok:
        summary[f"best_{key}"] = max(r[key] for r in ok)
    tracking.log_summary(uri, parent, summary)
    tracking.log_json(uri, parent, [{k: r[k] for k in ROW_KEYS} for r in rows], "trials_summary.json")
    tracking.end_run(uri, parent, "FINISHED")


def trials_csv(rows: list[TrialRow]) -> str:
    """The trial table as CSV (one line per trial, the scalar keys of trials.json)."""
    buf = io.StringIO()
    extra = [k for k in (rows[0] if rows else {}) if k.startswith("val_") and k not in ROW_KEYS]  # the task's
    writer = csv.DictWriter(buf, fieldnames=list(ROW_KEYS) + extra + ["epochs_run"], extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "layers": "+".join(row["layers"])})
    return buf.getvalue()


def write_outputs(out_dir: str | os.PathLike, rows: list[TrialRow], info: dict) -> None:
    """search/trials.json, trials.csv, search.json, written together atomically (one folder rename)."""
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        (tmp / "trials.json").write_text(json.dumps(rows, indent=1, default=str) + "\n")
        (tmp / "trials.csv").write_text(trials_csv(rows))
        (tmp / "search.json").write_text(json.dumps(info, indent=2, default=str) + "\n")

