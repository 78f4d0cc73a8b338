"""The whole pipeline through `dvc repro` in a temporary copy of the project, on a tiny synthetic set.

Checks the acceptance of the search issue end to end: every stage runs, Table 1, the selection, the
plots, metrics.json, the final model and the MLflow runs exist; a second `dvc repro` reruns nothing;
`dvc exp run -S` with a narrower search space reruns only the stages that depend on it; every project module a
stage's processes load (Ray workers included, recorded by tests/import_recorder) is among its dvc.yaml deps.
"""
import json
import os
import sqlite3
from pathlib import Path

import pytest
import yaml

from pipeline.stage_deps import module_file
from tests.dvc_project import make_project
from tests.dvc_project import run as _run

pytestmark = pytest.mark.slow

TINY = {
    "data": {"synthetic": {"classes": ["swipe_left", "swipe_right", "push", "pull"], "clips_per_class": 5,
                           "frames": 8, "size": 24}},
    "extract": {"frames": 4, "size": 16, "modalities": ["rgb", "flow"]},
    "pretrain": {"epochs": 1, "modalities": ["rgb", "flow"]},
    "search": {"cells": ["lstm"], "layers": [["fc6"]], "sih": [False, True], "baselines": [1], "epochs": 2,
               "batch_size": 4, "seeds": 2},
    "evaluate": {"epochs": 1, "modalities": ["rgb", "flow"], "register_name": "e2e-final"},
}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A git + DVC project holding a copy of this one's code and a tiny params.yaml, reproduced once."""
    root = tmp_path_factory.mktemp("project")
    env = make_project(root, TINY)
    recorder = Path(__file__).parent / "import_recorder"
    env.update(PRERNN_IMPORT_LOG=str(tmp_path_factory.mktemp("import_log")),
               PYTHONPATH=os.pathsep.join(p for p in (str(recorder), env.get("PYTHONPATH")) if p))
    out = _run(["dvc", "repro"], root, env)
    return root, env, out


def test_repro_writes_every_output(project):
    root, _, out = project
    for stage in ("ingest", "extract", "pretrain", "search", "select", "evaluate"):
        assert f"Running stage '{stage}'" in out
    trials = json.loads((root / "search" / "trials.json").read_text())
    configs = ["prernn-lstm-fc6", "prernn-lstm-sih-fc6", "traditional-lstm-1"]
    assert sorted(t["name"] for t in trials) == sorted(f"{c}-seed{s}" for c in configs for s in (0, 1))
    assert sorted({t["configuration"] for t in trials}) == configs and {t["seed"] for t in trials} == {0, 1}
    assert all(t["status"] == "ok" for t in trials)
    table = (root / "reports" / "table1.md").read_text()
    assert "| LSTM |" in table and "| VRNN |" in table and "CNN alone per frame" in table
    csv_rows = [r.split(",")[0] for r in (root / "reports" / "table1.csv").read_text().splitlines()]
    assert {"val_acc", "val_acc_ci_low", "val_acc_ci_high", "val_acc_seed0", "val_acc_seed1"} <= set(csv_rows)
    convergence = (root / "reports" / "convergence.csv").read_text().splitlines()
    assert convergence[0] == "epoch,family,configuration,mean,ci_low,ci_high,n" and len(convergence) == 1 + 3 * 2
    assert (root / "reports" / "plots" / "convergence.png").stat().st_size > 0
    selection = json.loads((root / "reports" / "selection.json").read_text())
    assert selection["selected"]["name"].startswith("prernn-lstm")
    assert list((root / "reports" / "plots").glob("saturation_lstm_*.png"))
    metrics = json.loads((root / "metrics.json").read_text())
    assert 0.0 <= metrics["test_acc"] <= 1.0 and set(metrics["streams"]) == {"rgb", "flow"}
    assert metrics["seeds"] == [0, 1] and set(metrics["comparison"]) == {"fused", "rgb", "flow"}
    diff = metrics["comparison"]["rgb"]["test_acc"]["difference"]
    assert diff["ci_low"] <= diff["mean"] <= diff["ci_high"]
    assert len(metrics["comparison"]["fused"]["test_acc"]["selected"]["per_seed"]) == 2
    assert set(metrics["frame_reference"]) == {"rgb", "flow"}
    assert (root / "models" / "final.pt").stat().st_size > 0


def test_mlflow_has_one_parent_and_a_child_per_trial(project):
    root, _, _ = project
    with sqlite3.connect(root / "mlflow.db") as db:
        rows = db.execute(
            "SELECT r.run_uuid, t.value FROM runs r LEFT JOIN tags t "
            "ON t.run_uuid = r.run_uuid AND t.key = 'mlflow.parentRunId'").fetchall()
    search = json.loads((root / "search" / "search.json").read_text())
    children = [run for run, parent in rows if parent == search["parent_run_id"]]
    trial_runs = {t["mlflow_run_id"] for t in json.loads((root / "search" / "trials.json").read_text())}
    assert trial_runs <= set(children)
    assert search["parent_run_id"] in {run for run, _ in rows}


def test_every_module_a_stage_loads_is_one_of_its_deps(project):
    root, env, _ = project
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    loaded: dict[str, set] = {}
    for log in Path(env["PRERNN_IMPORT_LOG"]).glob("*.txt"):
        _, stage, _, role, _ = log.name.split(".")  # stages.<stage>.<pid>.<stage|child>.txt
        files = {module_file(root, m).relative_to(root).as_posix() for m in log.read_text().split()
                 if module_file(root, m)}
        loaded.setdefault(stage, set()).update(files)
        loaded.setdefault(f"{stage}:{role}", set()).update(files)
    assert set(stages) <= set(loaded)
    for stage, spec in stages.items():
        assert loaded[stage] - set(spec["deps"]) == set(), stage
    assert "pipeline/trainable.py" in loaded["search:child"]  # the Ray workers' imports were recorded


def test_second_repro_reruns_nothing(project):
    root, env, _ = project
    out = _run(["dvc", "repro"], root, env)
    assert "Running stage" not in out
    assert "up to date" in out


def test_exp_run_with_narrower_space_reruns_only_dependants(project):
    root, env, _ = project
    _run(["git", "add", "-A"], root, env)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny"], root, env)
    out = _run(["dvc", "exp", "run", "-S", "search.sih=[false]"], root, env)
    for stage in ("ingest", "extract", "pretrain"):
        assert f"Running stage '{stage}'" not in out
    for stage in ("search", "select", "evaluate"):
        assert f"Running stage '{stage}'" in out
    trials = json.loads((root / "search" / "trials.json").read_text())
    assert sorted(t["configuration"] for t in trials) == ["prernn-lstm-fc6"] * 2 + ["traditional-lstm-1"] * 2
