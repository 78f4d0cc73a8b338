"""The MLflow tracking server down for a while (issue 15, item 2): pipeline.core.tracking_outage and MetricLog's
buffer on their own (a closed port, a stub server that answers /health, a sqlite store), then for real.

The search stage logs to a real `mlflow server` (sqlite store, artifacts through the server) in a private network
namespace the test creates (tests/cluster_fixtures.py; the stage and its local Ray run inside it too, so the
server comes back on the same port for certain). Two trials of 4 epochs run side by side; both stall mid-epoch 2
(the test-only `stall:1` fault of tests/faults.py), the server is stopped, and they are let go on.
- Down for about 20 s (less than `mlflow.outage_s`): no trial fails or is retried, the trials train on while the
  server is down (their metrics wait in tracking.MetricLog, bounded), and once it is back every epoch's metrics
  are in MLflow once, with the values of trials.json; one child run per trial.
- Down for longer than `mlflow.outage_s` (5 s here): the stage stops soon after the bound with one line naming
  the tracking URI (no traceback) and writes no outputs; started again, the server gets the rest from a rerun,
  which restores the search: the same parent and child runs, every epoch's metrics once, epoch 1 not trained
  again, one more `attempts` step per trial.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.cluster_fixtures import BIN, LOOPBACK, Processes, child_runs, free_ports, netns, ns_python, wait_for
from tests.search_fixtures import pretrained_search_project, search_args

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 4
TRIALS = ("prernn-gru-fc7", "traditional-gru-1")
STALL = {name: "stall:1" for name in TRIALS}
EPOCH_KEYS = {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "clips_per_sec", "epoch_seconds"}


@pytest.fixture()
def outage(monkeypatch):
    """pipeline.core.tracking_outage probing every 0.1 s (restored afterwards)."""
    from pipeline.core import tracking_outage
    monkeypatch.setattr(tracking_outage, "PROBE_EVERY_S", 0.1)
    return tracking_outage


@pytest.fixture()
def answering():
    """The URI of a stub HTTP server on loopback that answers every request (so /health answers)."""
    import http.server
    import threading

    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer((LOOPBACK, 0), Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://{LOOPBACK}:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _closed() -> str:
    return f"http://{LOOPBACK}:{free_ports(1)[0]}"


def _refused():
    raise ConnectionError("connection refused")


def test_a_call_while_the_server_is_down_waits_up_to_the_bound_then_names_the_uri(outage, monkeypatch):
    import threading

    uri = _closed()
    store = outage.Outage(uri, 1)
    with pytest.raises(outage.ServerDown):  # a caller that buffers is told at once
        store.call(_refused, wait=False)
    with pytest.raises(outage.TrackingUnavailable, match=rf"^MLflow tracking server {uri} did not answer for 1 s "
                                                         r"\(mlflow.outage_s\)$"):
        store.call(_refused)
    local = outage.Outage("sqlite:///x.db", 1)
    assert local.call(lambda: "local") == "local"
    with pytest.raises(ConnectionError):  # a local store has no outages: its errors are its own
        local.call(_refused)

    # down for 0.4 s, less than the bound: the call waits and goes through, once the server answers again
    store = outage.Outage(uri, 1)
    up, calls = threading.Event(), []
    monkeypatch.setattr(outage, "answers", lambda *a, **k: up.is_set())

    def store_call():
        calls.append(up.is_set())
        if not up.is_set():
            raise ConnectionError("connection refused")
        return "ok"

    threading.Timer(0.4, up.set).start()
    assert store.call(store_call) == "ok"
    assert calls[0] is False and calls[-1] is True and store.down_since is None


def test_an_error_from_a_server_that_answers_is_raised_as_it_is(outage, answering):
    def bad():
        raise ValueError("RESOURCE_DOES_NOT_EXIST")

    store = outage.Outage(answering, 1)
    with pytest.raises(ValueError, match="RESOURCE_DOES_NOT_EXIST"):
        store.call(bad)
    assert store.down_since is None


def test_the_watch_calls_back_once_when_the_server_has_been_silent_for_the_bound(outage, answering):
    tripped = []
    with outage.Outage(_closed(), 0.5).watch(lambda: tripped.append(time.monotonic())) as watch:
        deadline = time.monotonic() + 10
        while not tripped and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)
    assert watch.tripped and len(tripped) == 1
    with outage.Watch(answering, 0.5, lambda: tripped.append("again")) as watch:
        time.sleep(2.5)
    assert not watch.tripped and len(tripped) == 1


def test_the_tracker_holds_its_bound_and_cuts_mlflow_s_own_retries_unless_the_environment_sets_them(outage, monkeypatch):
    import pickle

    from pipeline.core.tracking import Tracker
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    driver = Tracker(_closed(), 30)
    assert driver.outage.bound_s == 30 and os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "5")
    trial = Tracker(driver.uri, outage.trial_bound(40))
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "5"
    assert trial.outage.bound_s > 40  # the driver stops the search before a waiting trial gives up
    assert driver.outage.bound_s == 30  # each tracker its own bound: no process-wide setting
    assert pickle.loads(pickle.dumps(trial)).outage.bound_s == trial.outage.bound_s


def test_metric_log_keeps_values_while_the_server_is_down_and_sends_each_once(outage, monkeypatch, tmp_path):
    """MetricLog over a real sqlite store whose sends are made to fail as in an outage: `log` returns at once and
    keeps the values; a send that landed before its answer was lost is not repeated; beyond `max_pending` values
    `log` waits for the server."""
    from pipeline.core import tracking
    tracker = tracking.Tracker(f"sqlite:///{tmp_path}/m.db", 1)
    uri = tracker.uri
    run = tracker.start_run(tracker.ensure_experiment("t"), "trial")
    send, down, waited = tracker._write, {"now": True, "landed": True}, []

    def outage_send(run_id, values, wait=True, **kw):
        if down["now"]:
            if down["landed"]:  # the first send reached the store, its answer did not come back
                down["landed"] = False
                send(run_id, values, **kw)
            raise tracking.ServerDown(uri, time.monotonic())
        send(run_id, values, **kw)

    def server_back(since):
        waited.append(uri)
        down["now"] = False

    monkeypatch.setattr(tracker, "_write", outage_send)
    monkeypatch.setattr(tracker.outage, "wait_until_back", server_back)
    log = tracking.MetricLog(tracker, run, new_run=True, max_pending=4)
    log.log({"val_acc": 0.5, "name": "skipped"}, step=1)  # landed, but the log cannot know
    assert set(log.pending) == {("val_acc", 1)}
    log.log({"val_acc": 0.6}, step=2)  # reads back what the run holds first: step 1 is there
    assert not waited and set(log.pending) == {("val_acc", 2)}
    log.log({"val_acc": 0.7, "val_loss": 1.0, "train_loss": 2.0, "train_acc": 0.1}, step=3)  # 5 > 4: wait
    assert waited == [uri] and log.pending == {}
    history = tracker.client.get_metric_history(run, "val_acc")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.5), (2, 0.6), (3, 0.7)]
    log.log({"val_acc": 0.8}, step=4)  # the server is back: sent at once
    assert log.pending == {} and len(tracker.client.get_metric_history(run, "val_acc")) == 4


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return pretrained_search_project(tmp_path_factory.mktemp("outage"),
                                     {"epochs": EPOCHS, "layers": [["fc7"]], "max_concurrent": 2}, "outage")


class Server:
    """An `mlflow server` in the namespace, on one port and one store however often it is stopped and started."""

    def __init__(self, lab: "Lab"):
        self.lab, self.port = lab, free_ports(1)[0]
        self.uri = f"http://{LOOPBACK}:{self.port}"
        self.proc = None

    def healthy(self) -> bool:
        code = (f"import sys, urllib.request; "
                f"sys.exit(urllib.request.urlopen({self.uri + '/health'!r}, timeout=2).status != 200)")
        return ns_python(self.lab.ns, code, self.lab.env).returncode == 0

    def start(self) -> None:
        root = self.lab.root
        self.proc = self.lab.procs.start(
            [*self.lab.ns, str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
             "--artifacts-destination", str(root / "artifacts"), "--host", LOOPBACK, "--port", str(self.port),
             "--workers", "1"], root / "mlflow.log", self.lab.env)
        wait_for(self.healthy, 120, "mlflow server", [self.proc])

    def ensure_up(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.start()

    def stop(self) -> None:
        self.lab.procs.stop(self.proc, signal.SIGTERM)
        if self.proc.poll() is None:
            self.lab.procs.stop(self.proc, signal.SIGKILL)
        assert not self.healthy()


class Lab:
    """The namespace, the server, and the environment the stage runs in (local Ray under `root`, so that the
    cleanup finds whatever Ray leaves behind by its temp dir)."""

    def __init__(self, root: Path, procs: Processes, ns: list[str], env: dict):
        self.root, self.procs, self.ns, self.env = root, procs, ns, env
        self.server = Server(self)
        self.stage_env = {**env, "MLFLOW_TRACKING_URI": self.server.uri, "PYTHONPATH": str(REPO),
                          "RAY_TMPDIR": str(root / "rt")}

    def children(self, experiment_id: str, parent_run_id: str) -> dict:
        runs = child_runs(self.ns, self.env, self.server.uri, experiment_id, parent_run_id)
        named = {r["trial"]: r for r in runs}
        assert len(runs) == len(named) == len(TRIALS), runs  # one child run per trial
        return named

    def stage(self, root: Path, faults: dict, log: str):
        """The search stage through the fault plugin, inside the namespace (a started process)."""
        cmd = [*self.ns, sys.executable, "-m", "tests.faults", json.dumps(faults), str(root / "signals"),
               *search_args(root)]
        return self.procs.start(cmd, root / log, self.stage_env, cwd=root)

    @contextlib.contextmanager
    def project(self, project: Path, name: str, **mlflow):
        """A copy of `project` under the lab (`_copy`), the server up; any stage still running there is killed
        at the end (its process group, and the processes naming the copy: its local Ray)."""
        self.server.ensure_up()
        root = _copy(project, self.root / name, **mlflow)
        try:
            yield root
        finally:
            for proc, _ in self.procs.procs:
                if proc.poll() is None and str(root) in " ".join(map(str, proc.args)):
                    self.procs.stop(proc, signal.SIGKILL, naming=str(root))


@pytest.fixture(scope="module")
def the_lab():
    """The namespace and the server both real-process tests use (each its own project copy and runs)."""
    root = Path(tempfile.mkdtemp(prefix="prernn-outage-", dir="/tmp"))  # short: Ray's socket paths live below
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "PYTHONPATH")}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", RAY_USAGE_STATS_ENABLED="0")
    procs = Processes(root)
    try:
        (root / "rt").mkdir()
        the_lab = Lab(root, procs, netns(procs, root, env), env)
        the_lab.server.start()
        yield the_lab
    finally:
        procs.close()
        for log in sorted(root.rglob("*.log")):  # shown by pytest when the test fails
            print(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-30:]))
        shutil.rmtree(root, ignore_errors=True)


def _copy(project: Path, root: Path, **mlflow) -> Path:
    """The project's clips, pretrained model and params (storage_path of its own, `mlflow` keys over them)."""
    root.mkdir(parents=True)
    for folder in ("clips", "pretrained"):
        shutil.copytree(project / folder, root / folder)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["search"]["storage_path"] = str(root / "ray")
    params["mlflow"].update(mlflow)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    (root / "signals").mkdir()
    return root


def _trained(root: Path, name: str) -> list[int]:
    path = root / "signals" / f"{name}.trained"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def _stop_server_mid_epoch_2(the_lab: Lab, root: Path, driver) -> dict:
    """Wait until both trials stall mid-epoch 2 (epoch 1 reported and logged), stop the server, let them go on;
    returns the epochs each had begun."""
    wait_for(lambda: all((root / "signals" / f"{n}.paused").exists() for n in TRIALS), 180,
             "both trials mid-epoch 2", [driver])
    the_lab.server.stop()
    begun = {n: _trained(root, n) for n in TRIALS}
    for name in TRIALS:
        (root / "signals" / f"{name}.release").touch()
    return begun


def _every_epoch_once(children: dict) -> None:
    for name, child in children.items():
        assert child["status"] == "FINISHED", (name, child["status"])
        epochs = {k: v for k, v in child["steps"].items() if k != "attempts"}
        assert set(epochs) >= EPOCH_KEYS, (name, sorted(epochs))
        assert all(steps == list(range(1, EPOCHS + 1)) for steps in epochs.values()), (name, epochs)


@pytest.mark.slow
@pytest.mark.faults
def test_a_tracking_server_down_for_20_s_fails_no_trial_and_loses_or_repeats_no_metric(project, the_lab):
    with the_lab.project(project, "down20") as root:
        driver = the_lab.stage(root, STALL, "driver.log")
        at_stop = _stop_server_mid_epoch_2(the_lab, root, driver)
        down_at = time.monotonic()
        time.sleep(20)
        at_restart = {n: _trained(root, n) for n in TRIALS}
        the_lab.server.start()
        print(f"the server was down for {time.monotonic() - down_at:.1f} s; epochs begun at the stop {at_stop}, "
              f"at the restart {at_restart}")
        driver.wait(300)
        out = (root / "driver.log").read_text(errors="replace")
        assert driver.returncode == 0, out[-4000:]
        trials = {t["name"]: t for t in json.loads((root / "search" / "trials.json").read_text())}
        info = json.loads((root / "search" / "search.json").read_text())
        children = the_lab.children(info["experiment_id"], info["parent_run_id"])
        trained = {n: _trained(root, n) for n in TRIALS}

    assert {n: t["status"] for n, t in trials.items()} == {n: "ok" for n in TRIALS}
    # the trials trained on while the server was down; no epoch was trained twice, no attempt was retried
    assert all(len(at_restart[n]) > len(at_stop[n]) for n in TRIALS), (at_stop, at_restart)
    assert trained == {n: list(range(1, EPOCHS + 1)) for n in TRIALS}
    _every_epoch_once(children)
    assert {n: c["steps"]["attempts"] for n, c in children.items()} == {n: [1] for n in TRIALS}
    assert {n: c["run_id"] for n, c in children.items()} == {n: t["mlflow_run_id"] for n, t in trials.items()}
    for name, trial in trials.items():  # the values trained are the values logged (6 significant digits)
        logged = [value for _, value in children[name]["history"]["val_acc"]]
        assert logged == pytest.approx([h["val_acc"] for h in trial["history"]], rel=1e-5), name


@pytest.mark.slow
@pytest.mark.faults
def test_a_tracking_server_gone_past_outage_s_stops_the_search_in_one_line_and_a_rerun_resumes(project, the_lab):
    bound = 5
    with the_lab.project(project, "gone", outage_s=bound) as root:
        driver = the_lab.stage(root, STALL, "driver.log")
        _stop_server_mid_epoch_2(the_lab, root, driver)
        down_at = time.monotonic()
        state = json.loads(next((root / "ray").glob("search-rgb-*/prernn_search.json")).read_text())
        driver.wait(bound + 170)
        stopped_after = time.monotonic() - down_at
        out = (root / "driver.log").read_text(errors="replace")
        print(f"the stage stopped {stopped_after:.1f} s after the server (mlflow.outage_s: {bound})")
        assert driver.returncode == 1, out[-4000:]
        last = out.strip().splitlines()[-1]
        assert last.startswith(f"search: MLflow tracking server {the_lab.server.uri} did not answer for {bound} s "
                               "(mlflow.outage_s): the search stopped with 2 of 2 trials unfinished"), out[-4000:]
        assert "rerun the stage" in last and "Traceback" not in out, out[-4000:]
        assert stopped_after < bound + 120  # MLflow's own retries alone would take minutes per call
        assert not (root / "search").exists()
        trained_before = {n: _trained(root, n) for n in TRIALS}

        the_lab.server.start()
        rerun = the_lab.stage(root, {}, "rerun.log")
        rerun.wait(300)
        assert rerun.returncode == 0, (root / "rerun.log").read_text(errors="replace")[-4000:]
        info = json.loads((root / "search" / "search.json").read_text())
        trials = {t["name"]: t for t in json.loads((root / "search" / "trials.json").read_text())}
        children = the_lab.children(info["experiment_id"], info["parent_run_id"])
        trained = {n: _trained(root, n) for n in TRIALS}

    assert info["restored"] and info["parent_run_id"] == state["parent_run_id"]
    assert {n: t["status"] for n, t in trials.items()} == {n: "ok" for n in TRIALS}
    _every_epoch_once(children)
    assert {n: c["steps"]["attempts"] for n, c in children.items()} == {n: [1, 2] for n in TRIALS}
    for name in TRIALS:  # epoch 1 was checkpointed before the outage: it is not trained again
        assert trained[name].count(1) == 1 and sorted(set(trained[name])) == list(range(1, EPOCHS + 1)), (
            name, trained_before[name], trained[name])
