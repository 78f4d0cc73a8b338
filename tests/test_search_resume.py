"""A killed search resumes and repeats nothing (issue 17).

The search stage's driver is SIGKILLed at three moments, then the same command is run again:
- before the first checkpoint (every trial paused before its first epoch);
- mid-search (one trial has reported all its epochs and ended, the other has checkpointed epoch 1);
- after every trial reported its last epoch, before the search saw them end.
For the first and the last, Ray's experiment state at the kill is the one it saved as the search began
(TUNE_GLOBAL_CHECKPOINT_S=3600): the stalest bookkeeping a kill can leave, so the restored trials start from
no checkpoint at all, and must find the ones they wrote. Compared with an uninterrupted run of the same seed,
each trial's MLflow metric history (every key, step for step: the same steps, each once, the same values where
the value does not measure time) and its trials.json row are equal, every epoch was trained exactly once over
both runs, and the same MLflow parent run holds one child run per trial. The pauses and the record of trained
epochs come from the test-only fault plugin (tests/faults.py). The two trials run side by side (2 CPUs, as CI has):
a trial paused mid-search or at its end keeps its CPU."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.search_fixtures import pretrained_search_project, search_args

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 3
TRIALS = ("prernn-gru-fc7", "traditional-gru-1")
TIMING = {"epoch_seconds", "clips_per_sec", "mean_clips_per_sec"}  # measured, so never equal run to run
NOT_COMPARED = {"mlflow_run_id", "node_id", "node_ip", "clips_per_sec"}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return pretrained_search_project(tmp_path_factory.mktemp("resume"),
                                     {"epochs": EPOCHS, "layers": [["fc7"]], "max_concurrent": 2}, "resume")


def _copy(project: Path, root: Path) -> Path:
    """The project's clips, pretrained model and params, with storage and MLflow store of its own, under `root`."""
    root.mkdir(parents=True)
    for folder in ("clips", "pretrained"):
        shutil.copytree(project / folder, root / folder)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["search"]["storage_path"] = str(root / "ray")
    params["mlflow"]["tracking_uri"] = f"sqlite:///{root}/mlflow.db"
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    (root / "signals").mkdir()
    return root


def _stage(root: Path, faults=None) -> list[str]:
    """The search stage through the fault plugin (which also records each trained epoch in signals/)."""
    return [sys.executable, "-m", "tests.faults", json.dumps(faults or {}), str(root / "signals"), *search_args(root)]


def _env(stale: bool = False) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI",
                                                            "TUNE_GLOBAL_CHECKPOINT_S")}
    env["PYTHONPATH"] = str(REPO)
    if stale:
        env["TUNE_GLOBAL_CHECKPOINT_S"] = "3600"
    return env


def _run(root: Path) -> None:
    done = subprocess.run(_stage(root), cwd=root, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _trained(root: Path, name: str) -> list[int]:
    path = root / "signals" / f"{name}.trained"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def _paused(root: Path, *names: str, every: bool = True) -> bool:
    return (all if every else any)((root / "signals" / f"{n}.paused").exists() for n in names)


def _ended(root: Path, name: str) -> bool:
    """The trial's MLflow child run is FINISHED (its trainable returned)."""
    from pipeline.core import tracking
    client = tracking.Tracker(f"sqlite:///{root}/mlflow.db").client
    try:
        exp = client.get_experiment_by_name("resume")
        runs = client.search_runs([exp.experiment_id], f"tags.`{tracking.TRIAL_TAG}` = '{name}'") if exp else []
    except Exception:  # noqa: BLE001 - the driver's trials hold the sqlite lock now: ask again
        return False
    return bool(runs) and runs[0].info.status == "FINISHED"


def _children(root: Path) -> dict:
    from pipeline.core import tracking
    info = json.loads((root / "search" / "search.json").read_text())
    runs = tracking.Tracker(info["tracking_uri"]).child_runs(info["experiment_id"], info["parent_run_id"])
    assert len(runs) == len(TRIALS)
    return {r.data.tags[tracking.TRIAL_TAG]: r for r in runs}


def _histories(root: Path) -> dict:
    """{trial: {metric: [(step, value or None for a timing), ...] in logged order}}, `attempts` left out."""
    from pipeline.core import tracking
    client = tracking.Tracker(f"sqlite:///{root}/mlflow.db").client
    out = {}
    for name, run in _children(root).items():
        out[name] = {}
        for key in sorted(set(run.data.metrics) - {"attempts"}):
            history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: (m.step, m.timestamp))
            out[name][key] = [(m.step, None if key in TIMING else m.value) for m in history]
    return out


def _rows(root: Path) -> list[dict]:
    """trials.json with what is not reproducible (timings, run ids, nodes) left out."""
    rows = json.loads((root / "search" / "trials.json").read_text())
    for row in rows:
        for key in NOT_COMPARED:
            row.pop(key)
        row["history"] = [{k: v for k, v in h.items() if k not in TIMING} for h in row["history"]]
    return rows


@pytest.fixture(scope="module")
def uninterrupted(project, tmp_path_factory):
    root = _copy(project, tmp_path_factory.mktemp("uninterrupted") / "p")
    _run(root)
    assert {n: _trained(root, n) for n in TRIALS} == {n: list(range(1, EPOCHS + 1)) for n in TRIALS}
    return root


MOMENTS = {  # faults of the interrupted run, when to kill it, whether Ray's state is the one saved at the start
    "before_first_checkpoint": ({n: "pause:0" for n in TRIALS}, lambda root: _paused(root, *TRIALS, every=False),
                                True),
    "mid_search": ({"traditional-gru-1": "pause:1"},
                   lambda root: _paused(root, "traditional-gru-1") and _ended(root, "prernn-gru-fc7"), False),
    "after_last_report": ({n: "pause:end" for n in TRIALS}, lambda root: _paused(root, *TRIALS), True),
}


@pytest.mark.slow
@pytest.mark.parametrize("moment", list(MOMENTS))
def test_a_search_killed_at_any_moment_resumes_to_the_uninterrupted_result(moment, project, uninterrupted, tmp_path):
    from pipeline.core import tracking
    faults, ready, stale = MOMENTS[moment]
    root = _copy(project, tmp_path / "p")
    with open(root / "driver.log", "w") as log:
        proc = subprocess.Popen(_stage(root, faults), cwd=root, env=_env(stale), start_new_session=True,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while not ready(root):
            assert proc.poll() is None, (root / "driver.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the moment never came"
            time.sleep(0.2)
        if not stale:
            time.sleep(2.5)  # Ray saves its experiment state every second (TUNE_GLOBAL_CHECKPOINT_S=1)
        os.kill(proc.pid, signal.SIGKILL)  # the driver only; its local Ray fate-shares with it
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # leftovers of the driver's own process group
        except ProcessLookupError:
            pass
    assert not (root / "search").exists()  # nothing half-written
    before = {n: _trained(root, n) for n in TRIALS}
    state = json.loads(next(root.glob("ray/search-rgb-*/prernn_search.json")).read_text())
    runs_before = {r.data.tags[tracking.TRIAL_TAG]: r.info.run_id for r in tracking.Tracker(
                   f"sqlite:///{root}/mlflow.db").child_runs(state["experiment_id"], state["parent_run_id"])}

    _run(root)
    info = json.loads((root / "search" / "search.json").read_text())
    assert info["restored"] and info["parent_run_id"] == state["parent_run_id"]
    # every epoch trained exactly once over both runs; what was trained before the kill is not trained again
    for name in TRIALS:
        assert _trained(root, name) == list(range(1, EPOCHS + 1)), (name, before[name], _trained(root, name))
    # MLflow: the same child runs, each epoch logged once with the uninterrupted run's values
    children = _children(root)
    assert {n: children[n].info.run_id for n in runs_before} == runs_before
    assert all(r.info.status == "FINISHED" for r in children.values())
    for name, run in children.items():  # a new attempt is one more step of `attempts`, never a repeated one
        steps = [m.step for m in tracking.Tracker(info["tracking_uri"]).client.get_metric_history(run.info.run_id, "attempts")]
        assert steps == list(range(1, len(steps) + 1)), (name, steps)
    assert _histories(root) == _histories(uninterrupted)
    assert _rows(root) == _rows(uninterrupted)


def test_code_change_changes_the_fingerprint_so_no_stale_results_are_restored(tmp_path, monkeypatch):
    import torch

    from pipeline.core.params import SearchParams
    from pipeline.search import tuner
    from pipeline.search.trunk_cache import SplitTensors
    from pipeline.training.tasks import Classification

    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "sub" / "b.py").write_text("y = 2\n")
    before = tuner.code_digest([pkg])
    assert tuner.code_digest([pkg]) == before
    (pkg / "sub" / "b.py").write_text("y = 3\n")
    assert tuner.code_digest([pkg]) != before
    assert len(tuner.code_digest()) == 64  # the real packages are found and read

    args = (SearchParams(), "sqlite:///x.db", "e", {"state_dict": {"w": torch.ones(2)}},
            {"fc6": {"train": SplitTensors(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))}}, [{"name": "a"}],
            Classification())
    names = set()
    for digest in ("old code", "new code", "old code"):
        monkeypatch.setattr(tuner, "code_digest", lambda digest=digest: digest)
        names.add(tuner.fingerprint(*args))
    assert len(names) == 2
