"""pipeline.core.tracking (MLflow) and pipeline.core.ray_cluster: URIs, fail-fast checks, nested runs."""
import json
import pickle
import socket
import time
from pathlib import Path

import pytest

from pipeline.core import ray_cluster, tracking
from pipeline.core.tracking import MetricLog, Tracker


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed once the socket is


def test_tracking_uri_env_wins_and_sqlite_paths_become_absolute(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri, source = tracking.resolve_tracking_uri("sqlite:///runs/m.db", tmp_path)
    assert (uri, source) == (f"sqlite:///{tmp_path.resolve()}/runs/m.db", "mlflow.tracking_uri")
    assert tracking.resolve_tracking_uri("sqlite:////abs/m.db", tmp_path)[0] == "sqlite:////abs/m.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example.invalid:5000")
    assert tracking.resolve_tracking_uri("sqlite:///m.db") == ("http://example.invalid:5000", "MLFLOW_TRACKING_URI")


def test_unreachable_http_tracking_uri_fails_fast_with_advice():
    uri = f"http://127.0.0.1:{_closed_port()}"
    t0 = time.perf_counter()
    with pytest.raises(tracking.TrackingUnavailable, match=r"did not answer.*MLFLOW_TRACKING_URI") as err:
        tracking.check_reachable(uri, "MLFLOW_TRACKING_URI", timeout=2)
    assert time.perf_counter() - t0 < 5
    assert uri in str(err.value) and "mlflow server" in str(err.value)
    tracking.check_reachable("sqlite:///x.db")  # nothing to check for a local store


def test_unreachable_ray_address_fails_fast_naming_the_source(monkeypatch):
    address = f"127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("RAY_ADDRESS", address)
    assert ray_cluster.resolve_address("10.0.0.1:6379") == (address, "RAY_ADDRESS")
    t0 = time.perf_counter()
    with pytest.raises(ray_cluster.ClusterUnavailable, match=r"RAY_ADDRESS=.*names no running Ray cluster.*ray start --head"):
        ray_cluster.connect()
    assert time.perf_counter() - t0 < 5
    monkeypatch.delenv("RAY_ADDRESS")
    with pytest.raises(ray_cluster.ClusterUnavailable, match=r"search\.address="):
        ray_cluster.probe(address, "search.address", timeout=2)
    with pytest.raises(ray_cluster.ClusterUnavailable, match="expected host:port"):
        ray_cluster.probe("nonsense", "search.address")


def test_parent_and_nested_child_runs_in_sqlite(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db")
    exp = tracker.ensure_experiment("t")
    assert tracker.ensure_experiment("t") == exp
    parent = tracker.start_run(exp, "search", params={"search": {"cells": ["gru"], "epochs": 2}}, stage="search")
    child = tracker.start_run(exp, "trial-a", parent_run_id=parent, params={"lr": 0.1},
                              tags={tracking.TRIAL_TAG: "trial-a", tracking.TRIAL_ID_TAG: "abc"}, stage="search")
    tracker.log_batch(child, metrics={"val_acc": 0.5, "name": "skipped", "ok": True}, step=1)
    tracker.log_batch(child, metrics={"val_acc": 0.75}, step=2)
    tracker.log_json(child, {"fc6": {"cell": "gru"}}, "gate_stats.json")
    tracker.end_run(child)
    c = tracker.client
    run = c.get_run(child)
    assert run.data.tags[tracking.PARENT_TAG] == parent and run.data.tags["dvc_stage"] == "search"
    assert len(run.data.tags["mlflow.source.git.commit"]) == 40 and run.data.params["lr"] == "0.1"
    assert [m.value for m in c.get_metric_history(child, "val_acc")] == [0.5, 0.75]
    assert [a.path for a in c.list_artifacts(child)] == ["gate_stats.json"]
    assert run.info.status == "FINISHED"
    assert c.get_run(parent).data.params["search.cells"] == '["gru"]'
    assert [r.info.run_id for r in tracker.child_runs(exp, parent)] == [child]
    assert tracker.find_child_run(exp, parent, "abc") == child
    assert tracker.find_child_run(exp, parent, "other") is None
    # a new Ray trial id for the same trial (Ray lost its experiment state): found by the trial's name
    assert tracker.find_child_run(exp, parent, "other", name="trial-a") == child
    assert tracker.find_child_run(exp, parent, "other", name="trial-b") is None
    assert run.info.artifact_uri.startswith((tmp_path / "mlruns").as_uri())


def test_metric_log_logs_each_key_and_step_once_across_instances(tmp_path):
    """A resumed trial's MetricLog reads back what the run holds and skips it; what is new is logged once."""
    tracker = Tracker(f"sqlite:///{tmp_path}/m.db")
    run_id = tracker.start_run(tracker.ensure_experiment("metric-log"), "trial")
    first = MetricLog(tracker, run_id, new_run=True)
    first.log({"val_acc": 0.5, "name": "not a number"}, step=1)
    first.log({"val_acc": 0.5}, step=1)  # the same step again: skipped
    first.log({"recurrent_params": 10})
    resumed = MetricLog(Tracker(tracker.uri), run_id)  # a restarted attempt (its own Tracker), on the same run
    assert resumed.logged >= {("val_acc", 1), ("recurrent_params", 0)}
    resumed.log({"val_acc": 0.75, "val_loss": 1.0}, step=1)  # val_acc@1 is there: only val_loss@1 is new
    resumed.log({"val_acc": 0.8}, step=2)
    resumed.log({"recurrent_params": 10})
    history = lambda key: [(m.step, m.value) for m in tracker.client.get_metric_history(run_id, key)]  # noqa: E731
    assert sorted(history("val_acc")) == [(1, 0.5), (2, 0.8)]
    assert history("val_loss") == [(1, 1.0)] and history("recurrent_params") == [(0, 10.0)]


def test_metric_log_sends_an_epochs_metrics_and_summary_tags_in_one_store_write(tmp_path, monkeypatch):
    """A trial's epoch (its metrics and its summary tags) costs one `log_batch` on the store, not one per kind."""
    tracker = Tracker(f"sqlite:///{tmp_path}/m.db")
    run_id = tracker.start_run(tracker.ensure_experiment("one-write"), "trial")
    log = MetricLog(tracker, run_id, new_run=True)
    store_client = tracker.client
    writes = []
    real = store_client.log_batch
    monkeypatch.setattr(store_client, "log_batch", lambda *a, **kw: (writes.append(kw), real(*a, **kw))[1])
    log.log({"val_acc": 0.5, "train_loss": 1.25}, step=3, tags={"best_val_acc": 0.5, "epochs_to_95": 2})
    assert len(writes) == 1
    assert {m.key for m in writes[0]["metrics"]} == {"val_acc", "train_loss"}
    run = store_client.get_run(run_id)
    assert run.data.tags["best_val_acc"] == "0.500" and run.data.tags["epochs_to_95"] == "2"
    assert log.pending == {} and log.pending_tags == {}
    log.log({"val_acc": 0.5}, step=3)  # nothing new: no write at all
    assert len(writes) == 1


def test_a_trial_outside_the_checkout_takes_its_parents_commit_and_summaries_are_rounded_tags(tmp_path, monkeypatch):
    """Ray runs a trial in its own directory, where `git rev-parse` finds no repository: the run still carries the
    search's commit; one-off values are tags, rounded; per-epoch metrics lose float32 noise."""
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db")
    exp = tracker.ensure_experiment("t")
    parent = tracker.start_run(exp, "search", stage="search")  # in the checkout: its commit
    commit = tracker.client.get_run(parent).data.tags[tracking.COMMIT_TAG]
    assert len(commit) == 40
    monkeypatch.chdir(tmp_path)  # not a git work tree, like a Ray worker's directory
    assert tracking.git_commit() == "unknown"
    trial_tracker = pickle.loads(pickle.dumps(tracker))  # rebuilt in the trial's process from (uri, bound)
    assert (trial_tracker.uri, trial_tracker.outage.bound_s) == (tracker.uri, tracker.outage.bound_s)
    child = trial_tracker.start_run(exp, "trial", parent_run_id=parent, stage="search")
    trial_tracker.log_summary(child, {"best_val_acc": 0.5833333134651184, "recurrent_params": 66048,
                                      "epochs_to_95": None})
    trial_tracker.log_batch(child, metrics={"val_acc": 0.5833333134651184}, step=1)
    run = tracker.client.get_run(child)
    assert run.data.tags[tracking.COMMIT_TAG] == commit
    assert run.data.tags["mlflow.source.name"] == "stages/search.py"
    assert run.data.tags["best_val_acc"] == "0.583" and run.data.tags["recurrent_params"] == "66048"
    assert "epochs_to_95" not in run.data.tags and set(run.data.metrics) == {"val_acc"}
    assert run.data.metrics["val_acc"] == 0.583333


def test_mlflow_telemetry_is_off_unless_the_user_says_otherwise():
    import os
    import subprocess
    import sys

    code = "import pipeline.core.tracking, os; print(os.environ['MLFLOW_DISABLE_TELEMETRY'])"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_DISABLE_TELEMETRY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "true"
    out = subprocess.run([sys.executable, "-c", code], env={**env, "MLFLOW_DISABLE_TELEMETRY": "false"},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "false"


@pytest.mark.slow  # two MLflow servers
def test_artifacts_of_the_local_server_follow_a_moved_checkout(tmp_path, monkeypatch):
    """`make mlflow-server` (artifacts in ./mlartifacts, proxied `mlflow-artifacts:` URIs): after the folder is
    moved, a server started in the new place still serves a finished run's artifacts."""
    import os
    import shutil
    import socket
    import subprocess
    import sys
    import urllib.request
    from pathlib import Path

    def serve(cwd):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mlflow = str(Path(sys.executable).parent / "mlflow")
        proc = subprocess.Popen([mlflow, "server", "--backend-store-uri", "sqlite:///mlflow.db", "--artifacts-destination",
                                 "./mlartifacts", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"], cwd=cwd,
                                env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # no job workers
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        uri = f"http://127.0.0.1:{port}"
        for _ in range(240):
            try:
                urllib.request.urlopen(uri + "/health", timeout=1).close()
                return proc, uri
            except OSError:
                time.sleep(0.25)
        proc.kill()
        raise AssertionError("mlflow server did not start")

    first = tmp_path / "checkout"
    first.mkdir()
    proc, uri = serve(first)
    try:
        tracker = Tracker(uri)
        exp = tracker.ensure_experiment("moved")
        run = tracker.start_run(exp, "search", stage="search")
        tracker.log_json(run, {"table": 1}, "table1.json")
        tracker.end_run(run)
        assert tracker.client.get_run(run).info.artifact_uri.startswith("mlflow-artifacts:/")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    moved = tmp_path / "elsewhere" / "checkout"
    moved.parent.mkdir()
    shutil.move(str(first), str(moved))
    proc, uri = serve(moved)
    try:
        c = Tracker(uri).client
        assert [a.path for a in c.list_artifacts(run)] == ["table1.json"]
        local = c.download_artifacts(run, "table1.json", str(tmp_path))
        assert json.loads(Path(local).read_text()) == {"table": 1}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_client_registers_where_it_tracks_whatever_the_environment_says(tmp_path, monkeypatch):
    """MLFLOW_REGISTRY_URI left pointing elsewhere (mlflow.set_registry_uri sets it in os.environ): the registry
    descriptions and aliases still go to the store the runs are in."""
    uri = f"sqlite:///{tmp_path}/runs.db"
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", f"sqlite:///{tmp_path}/elsewhere.db")
    c = Tracker(uri).client
    c.create_registered_model("m")
    assert c._registry_uri == uri and [m.name for m in c.search_registered_models()] == ["m"]


def test_log_batch_writes_params_tags_and_metrics_together_in_chunks_mlflow_accepts(tmp_path, monkeypatch):
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db")
    run = tracker.start_run(tracker.ensure_experiment("t"), "trial", params={"a": 1}, metrics={"attempts": 1}, step=1)
    calls = []
    real = tracker.client.log_batch
    monkeypatch.setattr(tracker.client, "log_batch", lambda *a, **k: (calls.append(k), real(*a, **k))[1])
    tracker.log_batch(run, tags={"x": 1, "y": "two", "z": "z" * 6000})
    assert len(calls) == 1                                   # one store write, not one per tag
    tracker.log_batch(run, params={f"p{i}": i for i in range(150)}, tags={f"t{i}": i for i in range(120)},
                      metrics={"val_acc": 0.5, "skipped": "text"}, step=3)
    assert [(len(c["params"]), len(c["tags"]), len(c["metrics"])) for c in calls[1:]] == [(100, 100, 1), (50, 20, 0)]
    data = tracker.client.get_run(run).data
    assert len(data.params) == 151 and data.tags["t119"] == "119" and len(data.tags["z"]) == 5000
    assert data.metrics == {"attempts": 1.0, "val_acc": 0.5}
    assert [m.step for m in tracker.client.get_metric_history(run, "attempts")] == [1]


def test_journal_mode_wal_for_a_local_search_rollback_journal_for_a_cluster(tmp_path):
    import sqlite3
    from contextlib import closing

    def mode(path):
        with closing(sqlite3.connect(path)) as conn:
            return conn.execute("PRAGMA journal_mode").fetchone()[0]

    tracker = Tracker(f"sqlite:///{tmp_path}/new/mlflow.db")
    assert tracker.set_journal_mode(local=True) == "wal"   # a new store is made in WAL mode
    assert mode(tmp_path / "new" / "mlflow.db") == "wal"    # which the file keeps
    run = tracker.start_run(tracker.ensure_experiment("t"), "r")  # MLflow makes its tables in it
    tracker.log_batch(run, metrics={"val_acc": 0.5}, step=1)
    assert tracker.client.get_run(run).data.metrics == {"val_acc": 0.5}
    shared = Tracker(f"sqlite:///{tmp_path}/shared.db")
    assert shared.set_journal_mode(local=True) == "wal"
    assert shared.set_journal_mode(local=False) == "delete" == mode(tmp_path / "shared.db")
    assert Tracker("http://127.0.0.1:5000").set_journal_mode(local=True) is None


def test_the_sqlite_prefix_is_read_in_one_place(tmp_path):
    assert tracking.sqlite_path("sqlite:///runs/m.db") == Path("runs/m.db")
    assert tracking.sqlite_path("sqlite:////abs/m.db") == Path("/abs/m.db")
    assert tracking.sqlite_path("sqlite:///:memory:") is None and tracking.sqlite_path("http://h:5000") is None
    assert Tracker(f"sqlite:///{tmp_path}/m.db").default_artifact_location() == (tmp_path / "mlruns").as_uri()
    assert Tracker("http://h:5000").default_artifact_location() is None
    assert Path(tracking.__file__).read_text().count('"sqlite:///"') == 1  # SQLITE, read by sqlite_path alone
