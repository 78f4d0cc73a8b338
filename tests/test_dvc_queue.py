"""Queued DVC experiments side by side (issue 15, item 3).

In a temporary copy of the project (tests/dvc_project.py) with tiny params, the data stages are reproduced and
committed; then two experiments with different search spaces are queued (`dvc exp run --queue -S
search.cells=[gru]` and `[lstm]`) and run by two queue workers at once (`dvc queue start -j 2`; DVC runs each in
a temporary copy of the workspace under .dvc/tmp/exps). Both share one `search.storage_path` and one MLflow
sqlite store outside those copies, each starts a local Ray instance of its own. Both succeed, their searches
overlap in time, `dvc exp show` lists each with its params and metrics, each search has its own experiment
folder under storage_path holding the trials of its own space, and MLflow holds one FINISHED parent run per
search with that search's trials as children: no port, folder or SQLite-lock collision between them. Every
process the test starts (the queue workers, their Ray instances) is stopped at the end, pass or fail.
"""
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.dvc_project import make_project
from tests.dvc_project import run as _run

pytestmark = [pytest.mark.slow, pytest.mark.faults]

SPACES = {"gru": "[gru]", "lstm": "[lstm]"}  # experiment name -> search.cells


def _tiny(root: Path) -> dict:
    return {
        "data": {"synthetic": {"classes": ["swipe_left", "swipe_right", "push", "pull"], "clips_per_class": 5,
                               "frames": 8, "size": 24}},
        "extract": {"frames": 4, "size": 16, "modalities": ["rgb"], "workers": 1},
        "pretrain": {"epochs": 1, "modalities": ["rgb"]},
        "search": {"cells": ["gru"], "layers": [["fc6"]], "sih": [False], "baselines": [1], "epochs": 1,
                   "batch_size": 4, "seeds": 1, "augment_copies": 1, "storage_path": str(root / "shared" / "ray")},
        "evaluate": {"epochs": 1, "modalities": ["rgb"], "register_name": "queue-final"},
        "mlflow": {"tracking_uri": f"sqlite:///{root}/shared/mlflow.db", "experiment": "queue"},
    }


def _queue_status(root: Path, env) -> dict:
    """{experiment name: status} from `dvc queue status` (Task, Name, Created, Status columns)."""
    out = subprocess.run(["dvc", "queue", "status"], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    status = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] in SPACES:
            status[parts[1]] = parts[-1]
    return status


def _stop_everything_under(root: Path, env) -> None:
    """Stop the queue workers, then kill whatever still runs in or names the project (Ray instances included)."""
    subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=root, env=env, capture_output=True, timeout=120)
    here = str(root)
    for proc in psutil.process_iter(["pid", "cwd", "cmdline"]):
        try:
            if (proc.info["cwd"] or "").startswith(here) or any(here in a for a in proc.info["cmdline"] or []):
                proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


def _exp_show(root: Path, env) -> dict:
    """{experiment name: its `dvc exp show` row (dvc.api.exp_show: flat columns)}."""
    code = "import dvc.api, json; print(json.dumps(dvc.api.exp_show(), default=str))"
    rows = json.loads(_run([sys.executable, "-c", code], root, env).strip().splitlines()[-1])
    return {row["Experiment"]: row for row in rows if row.get("Experiment") in SPACES}


def test_two_queued_experiments_run_side_by_side_without_collisions(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    env = make_project(root, _tiny(root))
    try:
        _run(["dvc", "repro", "pretrain"], root, env)  # the data stages once; the experiments start from their cache
        _run(["git", "add", "-A"], root, env)
        _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny"], root, env)
        for name, cells in SPACES.items():
            _run(["dvc", "exp", "run", "--queue", "-n", name, "-S", f"search.cells={cells}"], root, env)
        t0 = time.monotonic()
        _run(["dvc", "queue", "start", "-j", "2"], root, env)
        deadline = t0 + 600
        while True:
            status = _queue_status(root, env)
            if len(status) == len(SPACES) and all(s in ("Success", "Failed") for s in status.values()):
                break
            assert time.monotonic() < deadline, f"the queue did not finish within 600 s: {status}"
            time.sleep(3)
        print(f"both queued experiments done {time.monotonic() - t0:.0f} s after `dvc queue start -j 2`")
        logs = {n: subprocess.run(["dvc", "queue", "logs", n], cwd=root, env=env, capture_output=True, text=True,
                                  timeout=120).stdout for n in SPACES}
        assert status == {n: "Success" for n in SPACES}, {n: logs[n][-3000:] for n in SPACES}
        shown = _exp_show(root, env)
    finally:
        _stop_everything_under(root, env)

    # dvc exp show: each experiment with its own space and its metrics
    assert set(shown) == set(SPACES), shown
    for name, row in shown.items():
        assert str(row["search.cells"]) == str([name]), row  # shown as the string "['gru']"
        assert 0.0 <= float(row["test_acc"]) <= 1.0, row
    # its own experiment folder under the shared storage_path, holding the trials of its own space
    folders = sorted((root / "shared" / "ray").glob("search-rgb-*"))
    trials = {f.name: sorted(p.name.rsplit("_", 2)[0] for p in f.iterdir() if p.is_dir() and "_" in p.name)
              for f in folders}
    assert sorted(trials.values()) == [[f"prernn-{c}-fc6", f"traditional-{c}-1"] for c in sorted(SPACES)], trials
    # MLflow: one FINISHED parent run per search, named by its folder, with its own trials and its own evaluate
    # run as children; each evaluate run registered its model once; the two searches ran at the same time
    with sqlite3.connect(root / "shared" / "mlflow.db") as db:
        runs = db.execute("SELECT run_uuid, name, status, start_time, end_time FROM runs").fetchall()
        tags = db.execute("SELECT run_uuid, key, value FROM tags").fetchall()
        versions = db.execute("SELECT run_id FROM model_versions WHERE name = 'queue-final'").fetchall()
    tag = {(r, k): v for r, k, v in tags}
    parents = {name: (run, status, start, end) for run, name, status, start, end in runs
               if tag.get((run, "kind")) == "search"}
    assert sorted(parents) == sorted(trials) and all(p[1] == "FINISHED" for p in parents.values()), parents
    evaluate_runs = []
    for folder, (run, *_rest) in parents.items():
        children = [(r, name, status) for r, name, status, *_ in runs if tag.get((r, "mlflow.parentRunId")) == run]
        assert sorted(n for r, n, _ in children if (r, "prernn.trial") in tag) == trials[folder], (folder, children)
        evaluate_runs += [r for r, n, _ in children if n == "evaluate"]
        assert all(status == "FINISHED" for *_, status in children), children
    assert len(evaluate_runs) == 2 and sorted(v for (v,) in versions) == sorted(evaluate_runs), (evaluate_runs,
                                                                                                 versions)
    (_, _, start_a, end_a), (_, _, start_b, end_b) = parents.values()
    assert start_a < end_b and start_b < end_a, "the two searches did not run side by side"
