"""An authenticated tracking server: MLflow's basic-auth app started by `make mlflow-server MLFLOW_AUTH=1`
(tests/mlflow_server.py). A client without credentials or with a wrong password is refused in one line naming the
tracking URI and MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (not a traceback), a user without permission on
the experiment likewise; with the right ones the search logs everything, and the password lands nowhere: not in
MLflow's database, params or tags, the search's files, Ray's logs, the stage's output or the checkout.

The server tests are marked `slow` (an MLflow server and a Ray search; no root needed).
"""
import secrets
import subprocess
from pathlib import Path

import pytest

from pipeline.core import ray_cluster, tracking

REPO = Path(__file__).resolve().parents[1]


def test_a_password_in_the_tracking_uri_is_refused_without_repeating_it(monkeypatch):
    """user:password@host would be written to search.json and pickled into every trial: refused, in one line."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:hunter2-secret@127.0.0.1:5000")
    with pytest.raises(tracking.TrackingRefused, match=r"from MLFLOW_TRACKING_URI carries a password.*"
                                                       r"MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD") as err:
        tracking.resolve_tracking_uri()
    assert "hunter2-secret" not in str(err.value) and "\n" not in str(err.value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice@127.0.0.1:5000")  # a user alone is no secret
    assert tracking.resolve_tracking_uri()[0] == "http://alice@127.0.0.1:5000"


def test_refusals_name_the_uri_the_user_and_what_to_set(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    text = tracking.refused_message("http://h:5000", "MLFLOW_TRACKING_URI", 401)
    assert text.startswith("MLflow tracking server http://h:5000 (from MLFLOW_TRACKING_URI) asks for credentials")
    assert "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD are not set" in text
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    assert "refused the credentials of MLFLOW_TRACKING_USERNAME='alice'" in tracking.refused_message("http://h", "x", 401)
    text = tracking.refused_message("http://h", "x", 403, "Permission denied")
    assert "denied user 'alice' (HTTP 403: Permission denied)" in text and "EDIT permission" in text


def test_a_cluster_job_carries_the_drivers_mlflow_credentials_a_local_one_inherits_them(monkeypatch):
    """Joining a cluster, the credentials go to the trials through the job's runtime_env (env_vars), not params."""
    calls = []
    monkeypatch.setattr(ray_cluster.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray_cluster.ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setattr(ray_cluster, "probe", lambda address, source: None)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw")
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    assert ray_cluster.connect() is True
    assert calls[0]["runtime_env"]["env_vars"] == {"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": "pw"}
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    ray_cluster.connect()
    assert calls[1]["runtime_env"]["env_vars"] == {}


# --- a real basic-auth server -------------------------------------------------------------------------------------

ADMIN_PASSWORD = secrets.token_hex(12)
ALICE_PASSWORD = secrets.token_hex(12)   # the user who runs the search
BOB_PASSWORD = secrets.token_hex(12)     # a user with the default (READ) permission only


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """A basic-auth server on a sqlite store, users alice and bob made by the admin (as docs/guide/mlflow.md says)."""
    from mlflow.server.auth.client import AuthServiceClient

    from tests.mlflow_server import ADMIN, mlflow_server

    root = tmp_path_factory.mktemp("auth-server")
    with mlflow_server(f"sqlite:///{root}/mlflow.db", root, auth=ADMIN_PASSWORD) as srv:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
            mp.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
            admin = AuthServiceClient(srv.uri)
            admin.create_user("alice", ALICE_PASSWORD)
            admin.create_user("bob", BOB_PASSWORD)
        yield srv, root


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    from tests.search_fixtures import pretrained_search_project

    return pretrained_search_project(tmp_path_factory.mktemp("auth-project"), {"epochs": 2, "layers": [["fc7"]]},
                                     "auth")


def _search(project, monkeypatch, uri, user, password, out):
    from stages import search
    from tests.search_fixtures import search_args

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for var, value in (("MLFLOW_TRACKING_USERNAME", user), ("MLFLOW_TRACKING_PASSWORD", password)):
        if value is None:
            monkeypatch.delenv(var, raising=False)
        else:
            monkeypatch.setenv(var, value)
    search.main(search_args(project, out=out))


@pytest.mark.slow  # an MLflow server with basic auth
@pytest.mark.parametrize("user, password, says", [
    (None, None, "asks for credentials (HTTP 401) and MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD are not set"),
    ("alice", "not-" + ALICE_PASSWORD, "refused the credentials of MLFLOW_TRACKING_USERNAME='alice' (HTTP 401"),
], ids=["no-credentials", "wrong-password"])  # ids: no password in the test's name
def test_a_client_without_the_right_credentials_is_refused_in_one_line(auth_server, project, monkeypatch, capfd,
                                                                       user, password, says):
    srv, _ = auth_server
    with pytest.raises(SystemExit) as stop:
        _search(project, monkeypatch, srv.uri, user, password, "search_refused")
    message = str(stop.value.code)
    assert f"MLflow tracking server {srv.uri} (from MLFLOW_TRACKING_URI) {says}" in message, message
    assert "MLFLOW_TRACKING_PASSWORD" in message and "\n" not in message
    assert "Traceback" not in capfd.readouterr().err
    assert not (project / "search_refused").exists()  # stopped before the search began


@pytest.mark.slow  # a Ray search against an MLflow server with basic auth
def test_the_right_credentials_log_everything_and_the_password_lands_nowhere(auth_server, project, monkeypatch,
                                                                             capfd):
    import json

    from mlflow.tracking import MlflowClient

    srv, server_root = auth_server
    _search(project, monkeypatch, srv.uri, "alice", ALICE_PASSWORD, "search")
    output = capfd.readouterr()
    trials = json.loads((project / "search" / "trials.json").read_text())
    info = json.loads((project / "search" / "search.json").read_text())
    assert len(trials) == 2 and all(t["status"] == "ok" for t in trials), [t["error"] for t in trials]
    client = MlflowClient(srv.uri)  # as alice (the environment)
    tracker = tracking.Tracker(srv.uri)
    children = tracker.child_runs(info["experiment_id"], info["parent_run_id"])
    assert sorted(r.info.run_id for r in children) == sorted(t["mlflow_run_id"] for t in trials)
    for run in children:
        assert run.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [1, 2]
        assert "gate_stats.json" in {a.path for a in client.list_artifacts(run.info.run_id)}

    secret = ALICE_PASSWORD.encode()
    runs = [client.get_run(info["parent_run_id"]), *children]
    assert not any(ALICE_PASSWORD in v for r in runs for v in [*r.data.params.values(), *r.data.tags.values()])
    assert secret not in (output.out + output.err).encode()
    places = [project, server_root, Path(info["storage_path"]), *Path("/tmp/ray").glob("session_*/logs")]
    found = [str(p) for place in places if place.exists() for p in place.rglob("*")
             if p.is_file() and not p.is_symlink() and p.stat().st_size < 200 << 20 and secret in p.read_bytes()]
    assert found == []  # MLflow's database, its artifacts, the server's log, the search's files, Ray's logs
    tracked = subprocess.run(["git", "grep", "-l", "--untracked", "-F", ALICE_PASSWORD], cwd=REPO,
                             capture_output=True, text=True)
    assert tracked.returncode == 1 and tracked.stdout == ""  # nothing in the checkout either


@pytest.mark.slow  # a search against an MLflow server with basic auth
def test_a_user_without_permission_on_the_experiment_is_refused_in_one_line(auth_server, project, monkeypatch):
    """bob (the default READ permission) may read alice's experiment but not log to it: HTTP 403, one line."""
    srv, _ = auth_server
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ALICE_PASSWORD)
    experiment = tracking.Tracker(srv.uri).ensure_experiment("auth")  # alice's (params.yaml's mlflow.experiment)
    with pytest.raises(SystemExit) as stop:
        _search(project, monkeypatch, srv.uri, "bob", BOB_PASSWORD, "search_bob")
    message = str(stop.value.code)
    assert f"MLflow tracking server {srv.uri} (from MLFLOW_TRACKING_URI) denied user 'bob' (HTTP 403" in message, message
    assert "EDIT permission" in message and "\n" not in message
    # the admin grants it (docs/guide/mlflow.md): bob's runs are then accepted
    from mlflow.server.auth.client import AuthServiceClient

    from tests.mlflow_server import ADMIN

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
    AuthServiceClient(srv.uri).grant_user_permission("bob", "experiment", experiment, "EDIT")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "bob")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", BOB_PASSWORD)
    bobs = tracking.Tracker(srv.uri)
    assert bobs.run_status(bobs.start_run(experiment, "bob-run")) == "RUNNING"
