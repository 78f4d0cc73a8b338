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

from tools.stage_deps import module_file
from tests.browser import needs_chromium, page, page_with
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
    assert "pipeline/search/trainable.py" in loaded["search:child"]  # the Ray workers' imports were recorded


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


def test_dvc_compares_commits_and_declares_the_plots_of_the_task(project):
    """metrics.json and reports/ are in git, so DVC compares commits; the task's own plot only (no CED here)."""
    root, env, _ = project
    _run(["git", "add", "-A"], root, env)
    for message in ("views", "a second commit"):  # HEAD~1 exists whichever tests ran before
        _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message, "--allow-empty"], root, env)
    tracked = _run(["git", "ls-files", "metrics.json", "reports"], root, env).split()
    assert {"metrics.json", "reports/table1_cells.csv", "reports/curves.csv",
            "reports/classification/confusion.csv"} <= set(tracked)
    diff = json.loads(_run(["dvc", "metrics", "diff", "HEAD~1", "--all", "--json"], root, env))
    assert diff["metrics.json"]["test_acc"]["old"] == json.loads((root / "metrics.json").read_text())["test_acc"]
    plots = json.loads(_run(["dvc", "plots", "diff", "HEAD~1", "--json"], root, env))
    assert "errors" not in plots, plots.get("errors")
    ids = set(plots["data"])
    assert {"reports/curves.csv", "reports/classification/confusion.csv"} <= ids and not any("ced" in i for i in ids)
    assert any(i.startswith("Table 1") for i in ids) and any(i.endswith(".png") for i in ids)
    curves = next(p for p in plots["data"]["reports/curves.csv"])
    series = {d["series"] for d in curves["content"]["data"]["values"]}
    assert {"fused, selected", "fused, baseline", "rgb, selected", "flow, baseline"} <= series


@needs_chromium
def test_dvc_plots_page_draws_its_charts_offline(project, tmp_path):
    root, env, _ = project
    _run(["dvc", "plots", "show", "-o", str(tmp_path / "dvc_plots")], root, env)
    html = (tmp_path / "dvc_plots" / "index.html").read_text()
    assert "cdn.jsdelivr" not in html and "<script src=" not in html  # vega, vega-lite, vega-embed inlined
    dom = page((tmp_path / "dvc_plots" / "index.html").as_uri(), budget_ms=8000, screenshot=str(tmp_path / "dvc.png"))
    assert dom.count('<canvas width="') >= 3  # Table 1, the test curves, the confusion matrix: drawn by vega
    assert dom.count('<img src="static/') >= 1  # FIG. 2A saturation plot


@needs_chromium
def test_mlflow_ui_shows_runs_curves_table1_and_the_champion(project, tmp_path):
    import socket
    import subprocess
    import time
    import urllib.request

    from mlflow.tracking import MlflowClient

    from pipeline.core.mlflow_links import experiments, runs_url

    root, env, _ = project
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ui = subprocess.Popen(["mlflow", "ui", "--backend-store-uri", "sqlite:///mlflow.db", "--host", "127.0.0.1",
                           "--port", str(port), "--workers", "1"], cwd=root,
                          env={**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # no job workers to start
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                urllib.request.urlopen(base + "/health", timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        [(exp_id, name)] = experiments(root / "mlflow.db")
        search = json.loads((root / "search" / "search.json").read_text())
        trial = json.loads((root / "search" / "trials.json").read_text())[0]
        dom = page_with(runs_url(base, exp_id), "matching runs", screenshot=str(tmp_path / "runs.png"))
        assert "matching runs" in dom and "search-rgb-" in dom  # the runs list, not the GenAI traces view
        run = f"{base}/#/experiments/{exp_id}/runs"
        dom = page_with(f"{run}/{trial['mlflow_run_id']}/model-metrics?workflowType=machine_learning",
                        "scatterlayer", budget_ms=25000, size="1400,2400", screenshot=str(tmp_path / "trial.png"))
        assert "val_acc" in dom and "scatterlayer" in dom  # a plotly chart of the trial's metric, drawn
        dom = page_with(f"{run}/{search['parent_run_id']}/artifacts/select/table1.md?workflowType=machine_learning",
                        "Recurrent parameters</h2>", screenshot=str(tmp_path / "table1.png"))
        # the markdown rendered: headings, and the tables as MLflow's table component (role="cell")
        assert "Recurrent parameters</h2>" in dom and 'role="cell"' in dom and "tie-break" in dom
    finally:
        ui.terminate()
        ui.wait(timeout=30)
    store = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store, registry_uri=store)  # not a registry an earlier test left set
    champion = client.get_model_version_by_alias("e2e-final-predictor", "champion")
    assert champion.tags["selected"] == json.loads((root / "reports" / "selection.json").read_text())["selected"]["name"]
    runs = client.search_runs([exp_id], max_results=100)
    assert all(r.data.tags.get("mlflow.source.name", "").startswith("stages/") for r in runs)
    commit = {r.info.run_id: r.data.tags["mlflow.source.git.commit"] for r in runs}
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert children and all(commit[r.info.run_id] == commit[r.data.tags["mlflow.parentRunId"]] for r in children)
