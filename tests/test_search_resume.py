"""An interrupted search resumes: the search stage's driver is SIGKILLed once a trial has finished but not all
have, and the same command run again finishes the rest (Tuner.restore) without retraining finished trials or
epochs, under the same MLflow parent run with one child run per trial."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.search_fixtures import pretrained_search_project, search_args

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 3
TRIALS = ("prernn-gru-fc6", "prernn-gru-fc7", "prernn-gru-fc6+fc7", "traditional-gru-1")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return pretrained_search_project(tmp_path_factory.mktemp("resume"), {"epochs": EPOCHS, "max_concurrent": 1},
                                     "resume")


def _reports(trial_dir: Path) -> list[tuple[int, str]]:
    """(epoch, epoch_seconds) of every report of a trial, in order, from its Ray progress file."""
    path = trial_dir / "progress.csv"
    if not path.exists():
        return []
    with open(path) as fh:
        return [(int(float(row["epoch"])), row["epoch_seconds"]) for row in csv.DictReader(fh) if row.get("epoch")]


def _epochs(trial_dir: Path) -> list[int]:
    """The epochs a trial trained, in order: a report repeated unchanged (same epoch, same timing) counts once."""
    out = []
    for epoch, seconds in dict.fromkeys(_reports(trial_dir)):
        out.append(epoch)
    return out


def _trial_dirs(root: Path) -> dict[str, Path]:
    return {p.name.rsplit("_", 2)[0]: p for p in root.glob("ray/search-rgb-*/*_*") if p.is_dir()}


def _cmd(root):
    return [sys.executable, "-m", "stages.search", *search_args(root)]


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "PRERNN_TEST_FAULTS")}
    env["PYTHONPATH"] = str(REPO)
    # every trial takes EPOCHS x 2 s (the `slow` hook), so a kill right after the first trial ends finds the next
    # one mid-way; the same faults in both runs keep the search's fingerprint, so the rerun restores it
    env["PRERNN_TEST_FAULTS"] = json.dumps({name: "slow" for name in TRIALS})
    return env


def test_killed_search_resumes_without_repeating_finished_trials(workdir):
    from pipeline import tracking

    proc = subprocess.Popen(_cmd(workdir), cwd=workdir, env=_env(), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        finished = []
        while time.monotonic() < deadline and proc.poll() is None:
            finished = [n for n, d in _trial_dirs(workdir).items() if _epochs(d)[-1:] == [EPOCHS]]
            if finished:
                break
            time.sleep(0.2)
        assert finished and proc.poll() is None, proc.stdout.read().decode()[-3000:] if proc.poll() is not None else "timeout"
        time.sleep(2.5)  # the driver saves its experiment state every second (TUNE_GLOBAL_CHECKPOINT_S=1)
        os.kill(proc.pid, signal.SIGKILL)  # the driver only; its local Ray fate-shares with it
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # leftovers of this test's own process group
        except ProcessLookupError:
            pass
    assert not (workdir / "search").exists()  # nothing half-written
    before = {n: _epochs(d) for n, d in _trial_dirs(workdir).items()}
    assert 1 <= sum(e[-1:] == [EPOCHS] for e in before.values()) < 4, before
    state = json.loads(next(workdir.glob("ray/search-rgb-*/prernn_search.json")).read_text())
    uri = f"sqlite:///{workdir}/mlflow.db"
    runs_before = {r.data.tags[tracking.TRIAL_TAG]: r.info.run_id
                   for r in tracking.child_runs(uri, state["experiment_id"], state["parent_run_id"])}

    done = subprocess.run(_cmd(workdir), cwd=workdir, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    trials = json.loads((workdir / "search" / "trials.json").read_text())
    info = json.loads((workdir / "search" / "search.json").read_text())
    assert info["restored"] and info["parent_run_id"] == state["parent_run_id"]
    assert len(trials) == 4 and all(t["status"] == "ok" for t in trials), [t["error"] for t in trials]
    after = {n: _epochs(d) for n, d in _trial_dirs(workdir).items()}
    for name in finished:  # finished trials: no epoch trained again
        assert after[name] == before[name] == list(range(1, EPOCHS + 1)), (name, before[name], after[name])
    # the others completed; the one killed mid-way restarts from the last checkpoint the driver had recorded
    # (Ray saves its experiment state every few seconds), so it may train an epoch again
    for name, epochs in after.items():
        assert epochs[-EPOCHS:] == list(range(1, EPOCHS + 1)) or epochs[-1] == EPOCHS, (name, epochs)
    # MLflow: the same parent, one child run per trial name; finished trials keep their runs, epochs logged once
    children = tracking.child_runs(uri, state["experiment_id"], state["parent_run_id"])
    names = [c.data.tags[tracking.TRIAL_TAG] for c in children]
    assert sorted(names) == sorted(t["name"] for t in trials)
    by_name = {c.data.tags[tracking.TRIAL_TAG]: c for c in children}
    for name, run_id in runs_before.items():
        assert by_name[name].info.run_id == run_id
    for t in trials:  # a trial that finished just before the kill may be re-reported, never retrained
        assert [h["epoch"] for h in t["history"]] == list(range(1, EPOCHS + 1)) and t["gate_stats"], t["name"]
    client = tracking.client(uri)
    for t in trials:
        assert by_name[t["name"]].info.run_id == t["mlflow_run_id"] and by_name[t["name"]].info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(t["mlflow_run_id"], "val_acc")]
        if t["name"] in finished:
            assert sorted(steps) == list(range(1, EPOCHS + 1)), (t["name"], steps)
        else:
            assert set(steps) == set(range(1, EPOCHS + 1)), (t["name"], steps)
    parents = client.search_runs([state["experiment_id"]], filter_string="tags.kind = 'search'")
    assert len(parents) == 1


def test_code_change_changes_the_fingerprint_so_no_stale_results_are_restored(tmp_path, monkeypatch):
    import torch

    from pipeline import tuner
    from pipeline.features import SplitTensors
    from pipeline.params import SearchParams

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
            {"train": SplitTensors(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))}, [{"name": "a"}])
    names = set()
    for digest in ("old code", "new code", "old code"):
        monkeypatch.setattr(tuner, "code_digest", lambda digest=digest: digest)
        names.add(tuner.fingerprint(*args))
    assert len(names) == 2
