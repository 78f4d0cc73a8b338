"""A real cluster on loopback: a Ray head and a second Ray node started as separate `ray start` processes (each
with its own --temp-dir and ports), an MLflow tracking server (`mlflow server`, sqlite store, artifacts in a
temp dir), and the search stage run with RAY_ADDRESS / MLFLOW_TRACKING_URI: its trials run on both nodes
(their recorded Ray node ids), checkpoint to the shared storage_path and log to the server.

All of it runs in a private network namespace this test creates (a holder process `unshare --net sleep
infinity`; every command, including the readiness probes and the MLflow queries, is started through
`nsenter --net=/proc/PID/ns/net`), whose only interface is `lo`. Ray rewrites --node-ip-address 127.0.0.1
to the machine's own interface address when it has one; here it has none, so every node registers as
127.0.0.1 and all traffic stays on loopback. This needs root (or CAP_SYS_ADMIN): without it the test fails
saying so. Every process this test starts, the holder included, is killed at the end, pass or fail (its own
process groups, then anything left that names its temp dir)."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import secrets

import psutil
import pytest
import yaml

from tests.search_fixtures import make_clips

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LOOPBACK = "127.0.0.1"

# run inside the namespace through nsenter: set IFF_UP on `lo` (SIOCGIFFLAGS / SIOCSIFFLAGS; no iproute2 needed)
_LO_UP = """
import fcntl, socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
flags = struct.unpack("16sH14x", fcntl.ioctl(s, 0x8913, struct.pack("16sH14x", b"lo", 0)))[1]
fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", flags | 1))
print(sorted(n for _, n in socket.if_nameindex()))
"""


def _netns(procs, root: Path, env) -> list[str]:
    """Start the namespace holder, bring `lo` up in it; the `nsenter` prefix that runs a command inside it."""
    own = os.stat("/proc/self/ns/net").st_ino
    holder = procs.start(["unshare", "--net", "sleep", "infinity"], root / "netns.log", env)
    path = f"/proc/{holder.pid}/ns/net"
    deadline = time.monotonic() + 10
    while True:
        if holder.poll() is not None:
            pytest.fail(f"`unshare --net` is not permitted here (exit {holder.returncode}: "
                        f"{(root / 'netns.log').read_text(errors='replace').strip()}); this test runs its cluster in "
                        "a private network namespace and needs root or CAP_SYS_ADMIN", pytrace=False)
        try:
            if os.stat(path).st_ino != own:  # unshare has unshared and exec'd sleep
                break
        except FileNotFoundError:
            pass
        if time.monotonic() > deadline:
            pytest.fail("`unshare --net sleep infinity` did not enter a new network namespace within 10 s")
        time.sleep(0.05)
    prefix = ["nsenter", f"--net={path}"]
    up = subprocess.run([*prefix, sys.executable, "-c", _LO_UP], env=env, capture_output=True, text=True, timeout=30)
    assert up.returncode == 0, f"bringing lo up in the namespace failed: {up.stderr[-2000:]}"
    assert up.stdout.split() == ["['lo']"], f"the namespace has interfaces other than lo: {up.stdout}"
    return prefix


def _ns_python(prefix, code: str, env, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run a Python snippet inside the namespace (the test process itself stays outside it)."""
    return subprocess.run([*prefix, sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _free_ports(n: int) -> list[int]:
    # distinct port numbers (bound and released outside the namespace; nothing else listens inside it)
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
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", RAY_USAGE_STATS_ENABLED="0",
               # one shared secret for every node and the driver (Ray's token authentication)
               RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    procs = _Processes(root)
    try:
        ns = _netns(procs, root, env)
        gcs, mlflow_port, *node_ports = _free_ports(10)
        common = ["--num-cpus", "1", "--num-gpus", "0", "--node-ip-address", LOOPBACK, "--disable-usage-stats", "--block"]

        def node_flags(ports):
            return ["--dashboard-agent-listen-port", str(ports[0]), "--dashboard-agent-grpc-port", str(ports[1]),
                    "--metrics-export-port", str(ports[2]), "--runtime-env-agent-port", str(ports[3])]

        (root / "head").mkdir()
        (root / "node2").mkdir()
        head = procs.start([*ns, str(BIN / "ray"), "start", "--head", "--port", str(gcs), "--include-dashboard=false",
                            "--temp-dir", str(root / "head"), *common,
                            *node_flags(node_ports[:4])], root / "head.log", env)
        address = f"{LOOPBACK}:{gcs}"

        def listening():
            return _ns_python(ns, f"import socket; socket.create_connection(({LOOPBACK!r}, {gcs}), timeout=1).close()",
                              env).returncode == 0

        _wait(listening, 90, "ray head", [head])
        node2 = procs.start([*ns, str(BIN / "ray"), "start", "--address", address, "--temp-dir", str(root / "node2"),
                             *common, *node_flags(node_ports[4:8])], root / "node2.log", env)
        mlflow = procs.start([*ns, str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
                              "--artifacts-destination", str(root / "artifacts"), "--host", LOOPBACK,
                              "--port", str(mlflow_port), "--workers", "1"], root / "mlflow.log", env)
        uri = f"http://{LOOPBACK}:{mlflow_port}"

        def healthy():
            code = (f"import sys, urllib.request; "
                    f"sys.exit(urllib.request.urlopen({uri + '/health'!r}, timeout=2).status != 200)")
            return _ns_python(ns, code, env).returncode == 0

        def two_nodes():
            out = subprocess.run([*ns, str(BIN / "ray"), "status", "--address", address], env=env, capture_output=True,
                                 text=True, timeout=30)
            return out.returncode == 0 and "/2.0 CPU" in out.stdout

        _wait(healthy, 90, "mlflow server", [mlflow])
        _wait(two_nodes, 90, "second ray node", [head, node2])
        yield {"root": root, "address": address, "uri": uri, "env": env, "ns": ns}
    finally:
        procs.close()
        for log in sorted(root.glob("*.log")):  # shown by pytest when the test fails
            print(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-25:]))
        shutil.rmtree(root, ignore_errors=True)


_CHILDREN = """
import json, sys
from mlflow.tracking import MlflowClient
uri, experiment, parent = sys.argv[1:]
runs = MlflowClient(tracking_uri=uri).search_runs([experiment], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
print(json.dumps([{"run_id": r.info.run_id, "status": r.info.status, "node_id": r.data.tags.get("ray.node_id"),
                   "metrics": sorted(r.data.metrics)} for r in runs]))
"""


def test_search_runs_trials_on_both_nodes_and_logs_to_the_tracking_server(cluster):
    from stages import pretrain

    root, env, ns = cluster["root"], cluster["env"], cluster["ns"]
    shared = root / "shared"  # what every node sees: clips, pretrained model, Ray storage_path
    make_clips(shared / "clips", per_split={"train": 3, "val": 2})
    params = {
        "extract": {"modalities": ["rgb"], "size": 16, "frames": 4},
        "pretrain": {"modalities": ["rgb"], "epochs": 1, "batch_size": 16},
        "search": {"modality": "rgb", "cells": ["gru"], "sih": [False], "layers": [["fc7"]], "baselines": [1],
                   # through a pyarrow filesystem URI, as an object store (s3://, gs://) would be
                   "epochs": 2, "batch_size": 4, "storage_path": (shared / "ray").as_uri()},
        "evaluate": {"modalities": ["rgb"]},
        "mlflow": {"experiment": "cluster"},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    pretrain.main(["--params", str(root / "params.yaml"), "--clips", str(shared / "clips"),
                   "--out", str(shared / "pretrained")])
    run_env = {**env, "RAY_ADDRESS": cluster["address"], "MLFLOW_TRACKING_URI": cluster["uri"]}
    done = subprocess.run([*ns, sys.executable, "-m", "stages.search", "--params", str(root / "params.yaml"),
                           "--clips", str(shared / "clips"), "--pretrained", str(shared / "pretrained"),
                           "--out", str(root / "search"), "--quiet"],
                          cwd=REPO, env=run_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    trials = json.loads((root / "search" / "trials.json").read_text())
    info = json.loads((root / "search" / "search.json").read_text())
    assert [t["status"] for t in trials] == ["ok", "ok"], [t["error"] for t in trials]
    # two distinct Ray nodes ran them, both on loopback: in the namespace Ray finds no other interface to put in
    # place of --node-ip-address 127.0.0.1, so only the node ids tell the nodes apart
    assert len({t["node_id"] for t in trials}) == 2, trials
    assert all(t["node_ip"] == LOOPBACK for t in trials), [t["node_ip"] for t in trials]
    assert info["tracking_uri"] == cluster["uri"]
    for t in trials:  # per-epoch checkpoints written by each node to the shared storage_path
        assert list((shared / "ray").glob(f"search-rgb-*/{t['name']}_*/checkpoint_*/epoch-*.pt")), t["name"]

    # queried through the server, from inside the namespace
    query = subprocess.run([*ns, sys.executable, "-c", _CHILDREN, cluster["uri"], info["experiment_id"],
                            info["parent_run_id"]], env=env, capture_output=True, text=True, timeout=120)
    assert query.returncode == 0, query.stderr[-3000:]
    children = json.loads(query.stdout.strip().splitlines()[-1])
    assert sorted(c["run_id"] for c in children) == sorted(t["mlflow_run_id"] for t in trials)
    assert {c["node_id"] for c in children} == {t["node_id"] for t in trials}
    assert all(c["status"] == "FINISHED" and "val_acc" in c["metrics"] for c in children), children
    # artifacts go through the server into its --artifacts-destination
    assert list((root / "artifacts").rglob("gate_stats.json"))
