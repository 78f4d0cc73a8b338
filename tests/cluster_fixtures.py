"""A real cluster on loopback for the tests: a Ray head and a second Ray node started as separate `ray start`
processes (each with its own --temp-dir and ports) and an MLflow tracking server (`mlflow server`, sqlite store,
artifacts in a temp dir), all in a private network namespace.

The namespace is held by a process `unshare --net sleep infinity`; every command, including the readiness probes
and the MLflow queries, is started through `nsenter --net=/proc/PID/ns/net`, and its only interface is `lo`. Ray
rewrites --node-ip-address 127.0.0.1 to the machine's own interface address when it has one; here it has none, so
every node registers as 127.0.0.1 and all traffic stays on loopback. This needs root (or CAP_SYS_ADMIN): without
it the test fails saying so. `start_cluster(...)` is a context manager; every process it started, the holder
included, is killed when it exits, pass or fail (its own process groups, then anything left that names its temp
dir), and `Cluster.kill_node2()` SIGKILLs every process of the second node while the rest runs on.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

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


def netns(procs, root: Path, env) -> list[str]:
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


def ns_python(prefix, code: str, env, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run a Python snippet inside the namespace (the test process itself stays outside it)."""
    return subprocess.run([*prefix, sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=timeout)


def free_ports(n: int) -> list[int]:
    """`n` distinct port numbers (bound and released outside the namespace; nothing else listens inside it)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind((LOOPBACK, 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def wait_for(check, timeout: float, what: str, procs=()):
    """Poll `check()` every 0.5 s until it is true; AssertionError after `timeout` s or when one of `procs` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"{what}: process {p.args[:3]} exited with {p.returncode}")
        time.sleep(0.5)
    raise AssertionError(f"{what}: not ready within {timeout} s")


def _tree(pid: int) -> list[psutil.Process]:
    try:
        parent = psutil.Process(pid)
        return [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def descends_from(pid: int, ancestor: int) -> bool:
    """Whether process `pid` is `ancestor` or one of its descendants."""
    try:
        return any(p.pid == ancestor for p in [psutil.Process(pid), *psutil.Process(pid).parents()])
    except psutil.NoSuchProcess:
        return False


class Processes:
    """Processes started in their own sessions; `close()` kills their groups and any straggler naming `marker`."""

    def __init__(self, marker: Path):
        self.marker, self.procs = str(marker), []

    def start(self, cmd, log: Path, env, cwd=None) -> subprocess.Popen:
        fh = open(log, "ab")
        p = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((p, fh))
        return p

    def stop(self, proc: subprocess.Popen, sig=signal.SIGKILL, naming: str | None = None) -> None:
        """Send `sig` to `proc`'s process group, every descendant of it and every process whose command line
        names `naming` (all collected first, so none escapes by being re-parented), then reap `proc`."""
        victims = {p.pid: p for p in _tree(proc.pid)}
        if naming:
            for p in psutil.process_iter(["pid", "cmdline"]):
                try:
                    if any(naming in part for part in (p.info["cmdline"] or [])):
                        victims.setdefault(p.pid, p)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        for p in victims.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)

    def close(self):
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for p, _ in self.procs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, sig)
            time.sleep(1 if sig == signal.SIGTERM else 0)
        for p, fh in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(10)
            fh.close()
        for proc in psutil.process_iter(["pid", "cmdline"]):  # Ray daemons that left the process groups
            try:
                if any(self.marker in part for part in (proc.info["cmdline"] or [])):
                    proc.kill()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass


@dataclass
class Cluster:
    root: Path
    address: str
    uri: str
    env: dict
    ns: list[str]
    procs: Processes
    node2: subprocess.Popen
    extra: dict = field(default_factory=dict)

    def kill_node2(self) -> None:
        """SIGKILL the second Ray node: its `ray start`, raylet, agents and workers (everything under it or naming
        its --temp-dir); the head, the MLflow server and the driver run on."""
        self.procs.stop(self.node2, signal.SIGKILL, naming=str(self.root / "node2"))

    def children(self, experiment_id: str, parent_run_id: str) -> list[dict]:
        """`child_runs` of `parent_run_id` on the cluster's MLflow server."""
        return child_runs(self.ns, self.env, self.uri, experiment_id, parent_run_id)


def _node_flags(ports):
    return ["--dashboard-agent-listen-port", str(ports[0]), "--dashboard-agent-grpc-port", str(ports[1]),
            "--metrics-export-port", str(ports[2]), "--runtime-env-agent-port", str(ports[3])]


@contextlib.contextmanager
def start_cluster(head_env: dict | None = None, node_env: dict | None = None):
    """A Ray head, a second Ray node (1 CPU each) and an MLflow server in a private network namespace; yields a
    Cluster. `head_env` / `node_env`: extra environment of the head / of both nodes' processes (Ray system config
    as RAY_<name>, a PYTHONPATH for their workers)."""
    # short: Ray's unix socket paths under --temp-dir must stay below 108 bytes
    root = Path(tempfile.mkdtemp(prefix="prernn-cluster-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "PYTHONPATH")}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", RAY_USAGE_STATS_ENABLED="0",
               # one shared secret for every node and the driver (Ray's token authentication)
               RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    nodes_env = {**env, **(node_env or {})}
    procs = Processes(root)
    try:
        ns = netns(procs, root, env)
        gcs, mlflow_port, *node_ports = free_ports(10)
        common = ["--num-cpus", "1", "--num-gpus", "0", "--node-ip-address", LOOPBACK, "--disable-usage-stats",
                  "--block"]
        (root / "head").mkdir()
        (root / "node2").mkdir()
        head = procs.start([*ns, str(BIN / "ray"), "start", "--head", "--port", str(gcs), "--include-dashboard=false",
                            "--temp-dir", str(root / "head"), *common, *_node_flags(node_ports[:4])],
                           root / "head.log", {**nodes_env, **(head_env or {})})
        address = f"{LOOPBACK}:{gcs}"

        def listening():
            return ns_python(ns, f"import socket; socket.create_connection(({LOOPBACK!r}, {gcs}), timeout=1).close()",
                             env).returncode == 0

        wait_for(listening, 90, "ray head", [head])
        node2 = procs.start([*ns, str(BIN / "ray"), "start", "--address", address, "--temp-dir", str(root / "node2"),
                             *common, *_node_flags(node_ports[4:8])], root / "node2.log", nodes_env)
        mlflow = procs.start([*ns, str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
                              "--artifacts-destination", str(root / "artifacts"), "--host", LOOPBACK,
                              "--port", str(mlflow_port), "--workers", "1"], root / "mlflow.log", env)
        uri = f"http://{LOOPBACK}:{mlflow_port}"

        def healthy():
            code = (f"import sys, urllib.request; "
                    f"sys.exit(urllib.request.urlopen({uri + '/health'!r}, timeout=2).status != 200)")
            return ns_python(ns, code, env).returncode == 0

        def two_nodes():
            out = subprocess.run([*ns, str(BIN / "ray"), "status", "--address", address], env=env, capture_output=True,
                                 text=True, timeout=30)
            return out.returncode == 0 and "/2.0 CPU" in out.stdout

        wait_for(healthy, 90, "mlflow server", [mlflow])
        wait_for(two_nodes, 90, "second ray node", [head, node2])
        yield Cluster(root, address, uri, env, ns, procs, node2)
    finally:
        procs.close()
        for log in sorted(root.glob("*.log")):  # shown by pytest when the test fails
            print(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-25:]))
        shutil.rmtree(root, ignore_errors=True)


CHILDREN = """
import json, sys
from mlflow.tracking import MlflowClient
uri, experiment, parent = sys.argv[1:]
client = MlflowClient(tracking_uri=uri)
runs = client.search_runs([experiment], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
history = {r.info.run_id: {k: sorted((m.step, m.value) for m in client.get_metric_history(r.info.run_id, k))
                           for k in r.data.metrics} for r in runs}
print(json.dumps([{"run_id": r.info.run_id, "status": r.info.status, "node_id": r.data.tags.get("ray.node_id"),
                   "trial": r.data.tags.get("prernn.trial"), "metrics": sorted(r.data.metrics),
                   "history": history[r.info.run_id],
                   "steps": {k: [s for s, _ in h] for k, h in history[r.info.run_id].items()}} for r in runs]))
"""


def child_runs(ns: list[str], env: dict, uri: str, experiment_id: str, parent_run_id: str) -> list[dict]:
    """The child runs of `parent_run_id`, queried through the MLflow server at `uri` from inside the namespace:
    [{"run_id", "status", "node_id", "trial", "metrics": [keys], "history": {key: [[step, value], ...]},
      "steps": {key: [logged steps, sorted]}}]."""
    import json

    query = subprocess.run([*ns, sys.executable, "-c", CHILDREN, uri, experiment_id, parent_run_id],
                           env=env, capture_output=True, text=True, timeout=120)
    assert query.returncode == 0, query.stderr[-3000:]
    return json.loads(query.stdout.strip().splitlines()[-1])
