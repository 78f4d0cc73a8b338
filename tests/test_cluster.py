"""A real cluster on loopback: a Ray head and a second Ray node started as separate `ray start` processes (each
with its own --temp-dir and ports), an MLflow tracking server (`mlflow server`, sqlite store, artifacts in a
temp dir), and the search stage run with RAY_ADDRESS / MLFLOW_TRACKING_URI: its trials run on both nodes
(their recorded Ray node ids), checkpoint to the shared storage_path and log to the server. Every process
this test starts is killed at the end, pass or fail (its own process groups, then anything left that
names its temp dir)."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml

from tests.search_fixtures import make_clips

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LOOPBACK = "127.0.0.1"


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind((LOOPBACK, 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _wait(check, timeout: float, what: str, procs=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"{what}: process {p.args[:3]} exited with {p.returncode}")
        time.sleep(0.5)
    raise AssertionError(f"{what}: not ready within {timeout} s")


class _Processes:
    """Processes started in their own sessions; `close()` kills their groups and any straggler naming `marker`."""

    def __init__(self, marker: Path):
        self.marker, self.procs = str(marker), []

    def start(self, cmd, log: Path, env) -> subprocess.Popen:
        fh = open(log, "wb")
        p = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((p, fh))
        return p

    def close(self):
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for p, _ in self.procs:
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    pass
            time.sleep(1 if sig == signal.SIGTERM else 0)
        for p, fh in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                pass
            fh.close()
        for proc in psutil.process_iter(["pid", "cmdline"]):  # Ray daemons that left the process groups
            try:
                if any(self.marker in part for part in (proc.info["cmdline"] or [])):
                    proc.kill()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass


@pytest.fixture()
def cluster():
    # short: Ray's unix socket paths under --temp-dir must stay below 108 bytes
    root = Path(tempfile.mkdtemp(prefix="prernn-cluster-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "PYTHONPATH")}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", RAY_USAGE_STATS_ENABLED="0")
    procs = _Processes(root)
    try:
        gcs, mlflow_port, *node_ports = _free_ports(10)
        common = ["--num-cpus", "1", "--num-gpus", "0", "--node-ip-address", LOOPBACK, "--disable-usage-stats", "--block"]

        def node_flags(ports):
            return ["--dashboard-agent-listen-port", str(ports[0]), "--dashboard-agent-grpc-port", str(ports[1]),
                    "--metrics-export-port", str(ports[2]), "--runtime-env-agent-port", str(ports[3])]

        (root / "head").mkdir()
        (root / "node2").mkdir()
        head = procs.start([str(BIN / "ray"), "start", "--head", "--port", str(gcs), "--include-dashboard=false",
                            "--temp-dir", str(root / "head"), *common,
                            *node_flags(node_ports[:4])], root / "head.log", env)
        address = f"{LOOPBACK}:{gcs}"

        def listening():
            try:
                socket.create_connection((LOOPBACK, gcs), timeout=1).close()
                return True
            except OSError:
                return False

        _wait(listening, 90, "ray head", [head])
        node2 = procs.start([str(BIN / "ray"), "start", "--address", address, "--temp-dir", str(root / "node2"),
                             *common, *node_flags(node_ports[4:8])], root / "node2.log", env)
        mlflow = procs.start([str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
                              "--artifacts-destination", str(root / "artifacts"), "--host", LOOPBACK,
                              "--port", str(mlflow_port), "--workers", "1"], root / "mlflow.log", env)
        uri = f"http://{LOOPBACK}:{mlflow_port}"

        def healthy():
            try:
                return urllib.request.urlopen(uri + "/health", timeout=2).status == 200
            except OSError:
                return False

        def two_nodes():
            out = subprocess.run([str(BIN / "ray"), "status", "--address", address], env=env, capture_output=True,
                                 text=True, timeout=30)
            return out.returncode == 0 and "/2.0 CPU" in out.stdout

        _wait(healthy, 90, "mlflow server", [mlflow])
        _wait(two_nodes, 90, "second ray node", [head, node2])
        yield {"root": root, "address": address, "uri": uri, "env": env}
    finally:
        procs.close()
        shutil.rmtree(root, ignore_errors=True)


def test_search_runs_trials_on_both_nodes_and_logs_to_the_tracking_server(cluster):
    from mlflow.tracking import MlflowClient

    from stages import pretrain

    root, env = cluster["root"], cluster["env"]
    shared = root / "shared"  # what every node sees: clips, pretrained model, Ray storage_path
    make_clips(shared / "clips", per_split={"train": 3, "val": 2})
    params = {
        "extract": {"modalities": ["rgb"], "size": 16, "frames": 4},
        "pretrain": {"modalities": ["rgb"], "epochs": 1, "batch_size": 16},
        "search": {"modality": "rgb", "cells": ["gru"], "sih": [False], "layers": [["fc7"]], "baselines": [1],
                   "epochs": 2, "batch_size": 4, "storage_path": str(shared / "ray")},
        "evaluate": {"modalities": ["rgb"]},
        "mlflow": {"experiment": "cluster"},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    pretrain.main(["--params", str(root / "params.yaml"), "--clips", str(shared / "clips"),
                   "--out", str(shared / "pretrained")])
    run_env = {**env, "RAY_ADDRESS": cluster["address"], "MLFLOW_TRACKING_URI": cluster["uri"]}
    done = subprocess.run([sys.executable, "-m", "stages.search", "--params", str(root / "params.yaml"),
                           "--clips", str(shared / "clips"), "--pretrained", str(shared / "pretrained"),
                           "--out", str(root / "search"), "--quiet"],
                          cwd=REPO, env=run_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    trials = json.loads((root / "search" / "trials.json").read_text())
    info = json.loads((root / "search" / "search.json").read_text())
    assert [t["status"] for t in trials] == ["ok", "ok"], [t["error"] for t in trials]
    assert len({t["node_id"] for t in trials}) == 2 and all(t["node_ip"] == LOOPBACK for t in trials), trials
    assert info["tracking_uri"] == cluster["uri"]
    for t in trials:  # per-epoch checkpoints written by each node to the shared storage_path
        assert list((shared / "ray").glob(f"search-rgb-*/{t['name']}_*/checkpoint_*/trial.pt")), t["name"]

    client = MlflowClient(tracking_uri=cluster["uri"])
    children = client.search_runs([info["experiment_id"]],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{info['parent_run_id']}'")
    assert sorted(c.info.run_id for c in children) == sorted(t["mlflow_run_id"] for t in trials)
    assert {c.data.tags["ray.node_id"] for c in children} == {t["node_id"] for t in trials}
    assert all(c.info.status == "FINISHED" and "val_acc" in c.data.metrics for c in children)
    # artifacts go through the server into its --artifacts-destination
    assert list((root / "artifacts").rglob("gate_stats.json"))
