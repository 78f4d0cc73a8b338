"""MLflow on a real PostgreSQL: Debian's server started by the test (tests/postgres_server.py: installed with apt-get
when missing, run as the `postgres` user on a private data directory and a free loopback port), an MLflow tracking
server on it started by `make mlflow-server MLFLOW_BACKEND=postgresql://...` (tests/mlflow_server.py: the schema
made by `mlflow db upgrade` first), and the pipeline's search, select and evaluate stages logging to it; every
trial's runs and metrics are then read back from the database with SQL (psycopg2), not through MLflow. A search of
many short trials (bench.scale's run and store check) loses and doubles nothing.

Marked `faults`: it needs root (apt-get, and PostgreSQL runs as its own user); CI's `make test-faults` runs as root.
"""
import json
import math

import pytest
import yaml

from tests.postgres_server import postgres_server, skip_reason

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def postgres():
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    with postgres_server() as pg:
        yield pg


@pytest.fixture(scope="module")
def server(postgres, tmp_path_factory):
    from tests.mlflow_server import mlflow_server

    with mlflow_server(postgres.uri, tmp_path_factory.mktemp("pg-server")) as srv:
        yield srv


def test_the_schema_is_made_by_mlflow_db_upgrade_before_the_server_starts(postgres, server):
    """`make mlflow-server` ran `mlflow db upgrade`: MLflow's tables at the newest migration MLflow knows."""
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    head = ScriptDirectory.from_config(_get_alembic_config(postgres.uri)).get_current_head()
    assert postgres.query("SELECT version_num FROM alembic_version") == [(head,)]
    tables = {t for (t,) in postgres.query("SELECT table_name FROM information_schema.tables "
                                            "WHERE table_schema = 'public'")}
    assert {"experiments", "runs", "metrics", "latest_metrics", "params", "tags", "registered_models"} <= tables
    assert "mlflow db upgrade <postgresql store>" in server.log.read_text()
    assert "pg-test-secret" not in server.log.read_text()  # the database password is not echoed by make


@pytest.mark.slow  # a Ray search, select and evaluate
def test_search_select_and_evaluate_land_in_postgresql(postgres, server, tmp_path_factory, monkeypatch):
    from stages import evaluate, search, select
    from tests.search_fixtures import pretrained_search_project, search_args

    root = pretrained_search_project(tmp_path_factory.mktemp("pg-project"),
                                     {"epochs": 2, "layers": [["fc7"]]}, "postgres",
                                     per_split={"train": 3, "val": 2, "test": 2})
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["evaluate"].update(epochs=1, register_name="pg-final")
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.chdir(root)
    search.main(search_args(root))
    select.main(["--params", str(root / "params.yaml"), "--search", str(root / "search"), "--out", str(root / "reports")])
    evaluate.main(["--params", str(root / "params.yaml"), "--clips", str(root / "clips"), "--pretrained",
                   str(root / "pretrained"), "--selection", str(root / "reports" / "selection.json"), "--search",
                   str(root / "search"), "--out", str(root / "models" / "final.pt"), "--metrics",
                   str(root / "metrics.json"), "--plots", str(root / "reports")])

    info = json.loads((root / "search" / "search.json").read_text())
    trials = json.loads((root / "search" / "trials.json").read_text())
    assert info["tracking_uri"] == server.uri and len(trials) == 2 and all(t["status"] == "ok" for t in trials)
    parent = info["parent_run_id"]
    children = dict(postgres.query(
        "SELECT r.run_uuid, r.status FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
        "WHERE t.key = 'mlflow.parentRunId' AND t.value = %s AND r.experiment_id = %s", parent,
        int(info["experiment_id"])))
    trial_runs = {t["mlflow_run_id"]: t for t in trials}
    evaluate_runs = set(children) - set(trial_runs)
    assert set(trial_runs) <= set(children) and len(evaluate_runs) == 1  # one run per trial, one for evaluate
    assert set(children.values()) == {"FINISHED"}
    for run_id, trial in trial_runs.items():
        rows = postgres.query("SELECT step, value FROM metrics WHERE run_uuid = %s AND key = 'val_acc' ORDER BY step",
                              run_id)
        assert [step for step, _ in rows] == [1, 2]  # each epoch once
        assert all(math.isclose(v, h["val_acc"], rel_tol=1e-5) for (_, v), h in zip(rows, trial["history"]))
        name = postgres.query("SELECT value FROM tags WHERE run_uuid = %s AND key = 'prernn.trial'", run_id)
        assert name == [(trial["name"],)]
        assert postgres.query("SELECT count(*) FROM params WHERE run_uuid = %s", run_id)[0][0] > 5
    (evaluate_run,) = evaluate_runs
    assert postgres.query("SELECT name FROM runs WHERE run_uuid = %s", evaluate_run) == [("evaluate",)]
    final = json.loads((root / "metrics.json").read_text())
    (test_acc,) = postgres.query("SELECT value FROM latest_metrics WHERE run_uuid = %s AND key = 'test_acc'",
                                 evaluate_run)
    assert math.isclose(test_acc[0], final["test_acc"], rel_tol=1e-5)
    assert postgres.query("SELECT run_id FROM model_versions WHERE name = 'pg-final'") == [(evaluate_run,)]
    # select logged Table 1 to the parent: its tags are in the database too
    assert postgres.query("SELECT count(*) FROM tags WHERE run_uuid = %s", parent)[0][0] > 5


@pytest.mark.slow  # bench.scale's search of 24 short trials, 4 at a time
def test_many_short_trials_against_postgresql_lose_and_double_nothing(postgres, server, tmp_path):
    """bench.scale's search (4 slots of half a core, one epoch each) against the PostgreSQL-backed server: its
    store check (one FINISHED child run per trial, val_acc once at epoch 1, tags, artifact) finds nothing, and the
    database holds each trial's metric steps exactly once."""
    import torch

    from bench import scale

    torch.set_num_threads(1)
    m = scale.run_scale(tmp_path, configurations=12, seeds=2, clips=8, size=32, frames=4, cpus_per_trial=0.5,
                        tracking_uri=server.uri)
    assert m["trials"] == 24 and m["problems"] == [], m["problems"]
    (experiment,) = postgres.query("SELECT experiment_id FROM experiments WHERE name = 'bench-scale'")
    runs = postgres.query("SELECT r.run_uuid FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid AND "
                          "t.key = 'mlflow.parentRunId' WHERE r.experiment_id = %s", experiment[0])
    assert len(runs) == 24
    doubled = postgres.query(
        "SELECT m.run_uuid, m.key, m.step, count(*) FROM metrics m JOIN runs r ON r.run_uuid = m.run_uuid "
        "WHERE r.experiment_id = %s GROUP BY m.run_uuid, m.key, m.step HAVING count(*) > 1", experiment[0])
    assert doubled == []
    steps = postgres.query(
        "SELECT count(DISTINCT m.run_uuid) FROM metrics m JOIN runs r ON r.run_uuid = m.run_uuid "
        "WHERE r.experiment_id = %s AND m.key = 'val_acc' AND m.step = 1", experiment[0])
    assert steps == [(24,)]
