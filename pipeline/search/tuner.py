"""The search driver: one Ray Tune trial per configuration, an MLflow parent run, the trial table.

`run_search(search, mlflow_params, inputs)` takes the validated `search` and `mlflow` params sections and the
`SearchInputs` (the pretrained backbone checkpoint, the trunk caches, the space of trials, the task) and returns
(rows, info): one `TrialRow` per trial (trials.json) and the search summary (search.json). Its steps:
open the MLflow store (`Tracker.open`), name the experiment (`_experiment`: a fingerprint of the params and
inputs), open the parent run (`_open_parent`), build the tuner or restore it (`_tuner`), run it (`_fit`), collect
the rows (`_collect_rows`) and finish the runs (`_finish_runs`). Ray results live under
`search.storage_path`/<name>, so rerunning a killed search with the same inputs restores it there
(`Tuner.restore`: finished trials are kept, unfinished ones continue from the newest epoch they checkpointed, see
pipeline.search.trainable). Where Ray's own state there is damaged (cut short by a kill or a full disk, missing:
`restore_problem`), a new Tuner runs the same trials in the same folder instead: each finds the newest whole
checkpoint of its name and its MLflow child run, so nothing finished is trained again (`_resume_from`).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import ray
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler

import prernn
from pipeline.core import ray_cluster, tracking_outage
from pipeline.core.params import ParamsError
from pipeline.core.storage import StoragePath
from pipeline.core.tracking import TRIAL_TAG, Tracker, TrackingUnavailable
from pipeline.search.results import trial_row
from pipeline.search.trainable import train_trial
from pipeline.search.trial_config import ROW_KEYS, Arch, TrialRow, TrialSettings, trial_settings
from pipeline.training.tasks import Task

log = logging.getLogger(__name__)
DRIVER_STATE = "prernn_search.json"


@dataclass
class SearchInputs:
    """What a search trains: `backbone_ckpt`, the pretrained backbone (save format of the contract: "config",
    "state_dict", "meta"); `caches`, {boundary: {"train", "val": SplitTensors}}
    (pipeline.search.trunk_cache.trunk_caches; each trial takes the one at its boundary) or {None: raw clips};
    `space`, the trials (Arch dicts, pipeline.search.space.build_space + trial_config.with_seeds), in the order of
    the rows; `candidates` and `boundary`, the backbone's candidate layers and default boundary (search.json's
    `candidates`, `trunk_boundary`); `task` (pipeline.training.tasks): every trial trains, reports and is ranked
    by it (`task.score`), its params (`task.params()`) in each trial's config."""

    backbone_ckpt: dict
    caches: dict
    space: list[Arch]
    candidates: list[str]
    boundary: str
    task: Task


@dataclass
class Experiment:
    """Where one search lives: its name (`search-<modality>-<fingerprint>`), its folder under storage_path
    (`dir`, a shared folder or a pyarrow URI) and its MLflow experiment id."""

    name: str
    storage: StoragePath
    dir: StoragePath
    experiment_id: str


def ray_trial_name(trial) -> str:
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
                task: Task) -> str:
    """A short hash of everything that decides the trial results (not the resources): the search params,
    the MLflow target, the space, the task's params (`task.params()`), the pretrained weights, the cached inputs
    and the code (`code_digest`)."""
    h = hashlib.sha256(code_digest().encode())
    keep = {k: v for k, v in search.model_dump().items()
            if k not in ("address", "max_concurrent", "storage_path", "cpus_per_trial", "gpus_per_trial")}
    h.update(json.dumps([keep, tracking_uri, experiment, space] + list(task.params().values()),
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
    `state_period`, and no automatic loggers (`_tuner` asks for the JSON and CSV ones: TensorBoard event files
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


def _experiment(search, mlflow_params, inputs: SearchInputs, tracker: Tracker, base_dir: Path,
                fresh: bool) -> Experiment:
    """The search's experiment: named by its `fingerprint`, its folder emptied first when `fresh`."""
    storage = StoragePath.resolve(search.storage_path, base_dir)  # a shared folder or a pyarrow URI
    name = f"search-{search.modality}-" + fingerprint(search, tracker.uri, mlflow_params.experiment,
                                                      inputs.backbone_ckpt, inputs.caches, inputs.space, inputs.task)
    exp_dir = storage / name
    if fresh and exp_dir.exists():
        exp_dir.rmtree()
    return Experiment(name, storage, exp_dir, tracker.ensure_experiment(mlflow_params.experiment))


def _info(search, inputs: SearchInputs, tracker: Tracker, exp: Experiment, journal: Optional[str]) -> dict:
    """search.json before the run: where it logs and stores, what it searches."""
    return {"experiment_id": exp.experiment_id, "tracking_uri": tracker.uri, "journal_mode": journal,
            "backbone": inputs.backbone_ckpt["config"]["name"], "modality": search.modality,
            "candidates": list(inputs.candidates), "trunk_boundary": inputs.boundary,
            "trunk_boundaries": [b for b in inputs.caches if b is not None], "num_trials": len(inputs.space),
            "storage_path": str(exp.storage), "experiment_dir": str(exp.dir),
            "class_names": inputs.backbone_ckpt.get("meta", {}).get("class_names")}


def _open_parent(tracker: Tracker, exp: Experiment, search, info: dict) -> str:
    """The parent run: reused from the driver state of an earlier run of the same search (restored, or killed
    before Ray saved any experiment state), else created."""
    state_file = exp.dir / DRIVER_STATE
    if state_file.exists():
        run_id = json.loads(state_file.read_text()).get("parent_run_id")
        if run_id and tracker.run_status(run_id) is not None:
            tracker.reopen_run(run_id)
            return run_id
    run_id = tracker.start_run(exp.experiment_id, exp.name,
                               params={"search": search.model_dump(), **{k: info[k] for k in
                                       ("backbone", "modality", "trunk_boundary", "num_trials")}},
                               tags={"kind": "search"}, stage="search")
    state_file.write_text(json.dumps({"parent_run_id": run_id, "experiment_id": exp.experiment_id}))
    return run_id


def _trainable(search, inputs: SearchInputs, exp: Experiment):
    """`train_trial` with the shared data (Ray's object store) and the resources of one trial."""
    data = {"backbone": {"config": inputs.backbone_ckpt["config"], "state_dict": inputs.backbone_ckpt["state_dict"]},
            "caches": inputs.caches, "task": inputs.task.entries()}
    use_gpu = search.gpus_per_trial > 0
    return tune.with_resources(
        tune.with_parameters(train_trial, data=data,
                             experiment_dir=str(exp.dir)),  # where a restarted trial finds its checkpoints
        {"cpu": search.cpus_per_trial, "gpu": search.gpus_per_trial if use_gpu else 0})


RAY_STATE = ("tuner.pkl", "*state*-*.json", "*state*-*.pkl")  # Ray's experiment-level state files
_SESSION = re.compile(r"-\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d\.\w+$")  # experiment_state-<session>.json


def _newest_state_files(exp_dir: StoragePath) -> list[StoragePath]:
    """The state files of `exp_dir` a restore reads: tuner.pkl and the newest (by name, as Tune picks it) of each
    kind of session file (`experiment_state-*.json`, the search algorithm's and the callbacks' state)."""
    newest: dict = {}
    for path in (p for pattern in RAY_STATE for p in exp_dir.glob(pattern)):
        kind = _SESSION.sub("", path.name)
        if kind not in newest or path.name > newest[kind].name:
            newest[kind] = path
    return [newest[k] for k in sorted(newest)]


def restore_problem(exp_dir: StoragePath) -> Optional[str]:
    """Why Ray cannot restore the search saved in `exp_dir` (one line: the file and what is wrong), or None when
    every file a restore reads loads (`_newest_state_files`): `tuner.pkl` and the other cloudpickles, the newest
    `experiment_state-*.json` with each trial's state in it. They are Ray's own files, written by this search's
    driver, and read the way Ray reads them."""
    from ray import cloudpickle
    from ray.tune.utils.serialization import _loads_with_cloudpickle

    files = _newest_state_files(exp_dir)
    for must in ("tuner.pkl", "experiment_state"):
        if not any(p.name.startswith(must) for p in files):
            return f"{exp_dir}: no {must if must.endswith('.pkl') else must + '-*.json'}"
    for path in files:
        try:
            data = path.read_bytes()
            if path.name.startswith("experiment_state-"):
                for trial_state, _ in _loads_with_cloudpickle(data)["trial_data"]:
                    _loads_with_cloudpickle(trial_state)
            else:
                cloudpickle.loads(data)
        except Exception as err:  # noqa: BLE001 - cut short, overwritten, unreadable: what Ray would stop on
            reason = " ".join(f"{type(err).__name__}: {err}".split())
            return f"{path} does not load ({reason[:200]})"
    return None


def _discard_ray_state(exp_dir: StoragePath) -> None:
    """Remove Ray's experiment-level state files from `exp_dir` (a new Tuner writes its own; the trial folders,
    their checkpoints and the driver state stay)."""
    for pattern in RAY_STATE:
        for path in exp_dir.glob(pattern):
            path.unlink()


def _tuner(search, inputs: SearchInputs, exp: Experiment, param_space: dict, restoring: bool,
           verbose: int) -> tune.Tuner:
    """A new Tuner over `param_space`, or the one Ray saved under the experiment folder (`restoring`)."""
    trainable = _trainable(search, inputs, exp)
    if restoring:
        log.warning("restoring the search from %s (finished trials are kept)", exp.dir)
        # resume_errored: a trial that failed in the run cut short (its checkpoint could not be written on a full
        # storage_path) continues from its newest whole checkpoint instead of staying failed
        return tune.Tuner.restore(str(exp.dir), trainable=trainable, param_space=param_space, resume_errored=True)
    task = inputs.task
    scheduler = (ASHAScheduler(max_t=search.epochs, grace_period=max(1, search.epochs // 4),
                               reduction_factor=2) if search.scheduler == "asha" else None)
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=task.score if scheduler else None, mode=task.mode if scheduler else None,
            scheduler=scheduler, max_concurrent_trials=search.max_concurrent or None, reuse_actors=True,
            trial_name_creator=ray_trial_name, trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=exp.name, storage_path=str(exp.storage), verbose=verbose,
            callbacks=[JsonLoggerCallback(), CSVLoggerCallback()],  # result.json, progress.csv per trial
            failure_config=tune.FailureConfig(max_failures=search.max_failures),
            # keep every epoch's checkpoint: with a limit, the driver deletes the previous one as soon
            # as a new one lands, and a driver killed before it saves its state leaves a restore that
            # points at a deleted checkpoint; and a restarted trial looks for the newest of them itself
            # (pipeline.search.trial_checkpoint), which Ray, counting by its own index, could delete
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None)),
    )


def _fit(tuner: tune.Tuner, tracker: Tracker, exp: Experiment, parent: str, num_trials: int):
    """Run the trials; the ResultGrid once every trial ended or failed. A tracking server silent for the outage
    bound stops the search (TrackingUnavailable); a stop before every trial ended (Ctrl-C, SIGTERM) marks the
    parent run KILLED (SearchInterrupted). Either way rerunning resumes it."""
    tune_log = logging.getLogger("ray.tune")
    level = tune_log.level
    try:
        with tune_environment(num_trials), tracker.outage.watch(_stop_tune) as watch:
            grid = tuner.fit()
    finally:
        tune_log.setLevel(level)
    unfinished = unfinished_trials(grid)
    if watch.tripped:
        raise TrackingUnavailable(
            f"{tracking_outage.outage_message(tracker.uri, tracker.outage.bound_s)}: the search stopped with "
            f"{unfinished} of {len(grid)} trials unfinished; start the server again and rerun the stage to "
            f"resume them from {exp.dir}")
    if unfinished:
        tracker.end_run(parent, "KILLED")
        raise SearchInterrupted(
            f"the search stopped with {unfinished} of {len(grid)} trials unfinished; rerun the stage with the "
            f"same params to resume them from {exp.dir}")
    return grid


def _collect_rows(tracker: Tracker, grid, exp: Experiment, parent: str, inputs: SearchInputs,
                  settings: TrialSettings) -> tuple[list[TrialRow], dict]:
    """(the trial rows in space order, {child run id: status}), the child runs read in one query."""
    child_runs = tracker.child_runs(exp.experiment_id, parent)
    children = {r.data.tags.get(TRIAL_TAG): r.info.run_id for r in child_runs}
    statuses = {r.info.run_id: r.info.status for r in child_runs}
    order = {a["name"]: i for i, a in enumerate(inputs.space)}
    archs = {a["name"]: a for a in inputs.space}
    rows = sorted((trial_row(result, archs, settings, children, inputs.task) for result in grid),
                  key=lambda r: order.get(r["name"], 1 << 30))
    return rows, statuses


def _finish_runs(tracker: Tracker, parent: str, rows: list[TrialRow], key: str,
                 statuses: Optional[dict] = None) -> None:
    """Close child runs Ray stopped early (ASHA) or killed, log the search summary (the best `key`), close the
    parent. `statuses`: {run id: status} of the child runs as one search returned them (else each run is read)."""
    for row in rows:
        rid = row["mlflow_run_id"]
        status = (statuses or {}).get(rid) or (tracker.run_status(rid) if rid else None)
        if rid and status == "RUNNING":
            tracker.end_run(rid, "FAILED" if row["status"] == "failed" else "KILLED")
    ok = [r for r in rows if r["status"] == "ok" and r[key] is not None]
    summary = {"num_ok": len(ok), "num_failed": len(rows) - len(ok)}
    if ok:
        summary[f"best_{key}"] = max(r[key] for r in ok)
    tracker.log_summary(parent, summary)
    tracker.log_json(parent, [{k: r[k] for k in ROW_KEYS} for r in rows], "trials_summary.json")
    tracker.end_run(parent, "FINISHED")


RESTORED_STATE, RESTORED_TRIALS = "experiment state", "trial checkpoints"  # search.json's `restored_from`


def _resume_from(exp: Experiment) -> Optional[str]:
    """How the search continues an earlier run of itself in `exp.dir` (its driver state is there):
    RESTORED_STATE (Tuner.restore), RESTORED_TRIALS (Ray's state is damaged or missing: one warning line, the
    state removed, and a new Tuner whose trials continue from their own checkpoints), or None (a new search)."""
    if not (exp.dir / DRIVER_STATE).exists():
        return None
    problem = restore_problem(exp.dir)
    if problem is None:
        return RESTORED_STATE
    log.warning("Ray cannot restore the search: %s; continuing each trial from its newest whole "
                "checkpoint in %s, in the same MLflow runs (nothing finished is trained again)", problem, exp.dir)
    _discard_ray_state(exp.dir)
    return RESTORED_TRIALS


def run_search(search, mlflow_params, inputs: SearchInputs, *, base_dir: str | os.PathLike | None = None,
               verbose: int = 1, fresh: bool = False) -> tuple[list[TrialRow], dict]:
    """Run (or restore) the search (module docstring); returns (trial rows in space order, search info).

    `fresh`: discard a previous experiment with the same fingerprint instead of restoring it. An http(s) tracking
    server that does not answer for `mlflow.outage_s` while the trials run stops the search (TrackingUnavailable,
    one line naming the URI; rerunning resumes it); shorter outages are ridden out (pipeline.core.tracking_outage).
    """
    t0 = time.perf_counter()
    base_dir = Path(base_dir or os.getcwd())
    tracker = Tracker.open(mlflow_params.tracking_uri, base_dir, mlflow_params.outage_s)
    # sqlite: WAL when every trial writes from this machine (a local Ray instance), set before MLflow opens the file
    journal = tracker.set_journal_mode(local=ray_cluster.resolve_address(search.address)[0] is None)
    started = ray_cluster.connect(search.address)
    try:
        check_resources(search)
        exp = _experiment(search, mlflow_params, inputs, tracker, base_dir, fresh)
        info = _info(search, inputs, tracker, exp, journal)
        restored_from = _resume_from(exp)
        parent = _open_parent(tracker, exp, search, info)
        settings = trial_settings(search, inputs.task, tracking_uri=tracker.uri, outage_s=mlflow_params.outage_s,
                                  experiment_id=exp.experiment_id, parent_run_id=parent)
        tuner = _tuner(search, inputs, exp, {"arch": tune.grid_search(inputs.space), **settings},
                       restored_from == RESTORED_STATE, verbose)
        grid = _fit(tuner, tracker, exp, parent, len(inputs.space))
        rows, statuses = _collect_rows(tracker, grid, exp, parent, inputs, settings)
        _finish_runs(tracker, parent, rows, inputs.task.score, statuses)
        info.update({"parent_run_id": parent, "restored": restored_from is not None,
                     "restored_from": restored_from, "wall_seconds": time.perf_counter() - t0,
                     "num_ok": sum(r["status"] == "ok" for r in rows),
                     "num_failed": sum(r["status"] == "failed" for r in rows)})
        return rows, info
    finally:
        if started:
            ray.shutdown()
