"""pipeline.core.ray_cluster's local instance, as a user meets it: beside a cluster `ray start` left running (or
left recorded after its processes died), and on the network.

Each case runs its driver in a subprocess (`connect(None, num_cpus=1)` as the search stage calls it, then a tiny
remote task), so no Ray state leaks between tests. Every Ray process of a test uses one private temp folder
(RAY_TMPDIR): the address file `ray start` writes, and that a plain `ray.init()` reads, lies there instead of
/tmp/ray, so the test reproduces Ray's rule without touching other Ray users of the machine. The `ray start` head is
stopped by killing its own process group and whatever names that folder (`ray stop` would stop every Ray instance
of the user).
"""
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pipeline.core import ray_cluster
from tests.cluster_fixtures import BIN, LOOPBACK, Processes, free_ports, wait_for

REPO = Path(__file__).resolve().parents[1]


DRIVER = """
import json, sys
import ray
from pipeline.core.ray_cluster import ClusterUnavailable, connect
try:
    started = connect(None, num_cpus=1, log_to_driver=False)
except ClusterUnavailable as err:
    sys.exit(f"search: {err}")  # as stages/search.py reports it

@ray.remote
def square(x):
    return x * x

out = {"started": started, "square": ray.get(square.remote(7)),
       "gcs": ray._private.worker.global_worker.node.gcs_address}
ray.shutdown()
print(json.dumps(out))
"""

# the TCP sockets listened on by this driver's Ray processes: its process tree (GCS server, raylet, agents,
# workers) and anything naming the private temp folder
LISTENING = """
import json, os, sys
import psutil
import ray
from pipeline.core.ray_cluster import connect
connect(None, num_cpus=1, log_to_driver=False)

@ray.remote
def pid():
    return os.getpid()

ray.get(pid.remote())  # a worker is up and listening too
me = psutil.Process()
procs = {p.pid: p for p in [me, *me.children(recursive=True)]}
for p in psutil.process_iter(["cmdline"]):
    if any(sys.argv[1] in part for part in p.info["cmdline"] or []):
        procs.setdefault(p.pid, p)
names = {pid: p.name() for pid, p in procs.items()}
sockets = [{"process": names[c.pid], "pid": c.pid, "ip": c.laddr.ip, "port": c.laddr.port}
           for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.pid in procs]
ray.shutdown()
print(json.dumps({"processes": sorted(set(names.values())), "sockets": sockets}))
"""


def test_local_is_no_address_and_auto_probes_the_address_ray_start_recorded(monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # Ray's address file: tmp_path/ray/ray_current_cluster
    monkeypatch.setenv("RAY_ADDRESS", "local")
    assert ray_cluster.resolve_address("10.0.0.1:6379") == (None, "RAY_ADDRESS=local (a local Ray instance)")
    monkeypatch.delenv("RAY_ADDRESS")
    assert ray_cluster.resolve_address("local") == (None, "none (a local Ray instance)")
    assert ray_cluster.resolve_address("auto") == ("auto", "search.address")

    assert ray_cluster.recorded_address() is None
    ray_cluster.probe("auto", "search.address", timeout=1)  # nothing recorded: Ray's own search decides
    recorded = f"{LOOPBACK}:{free_ports(1)[0]}"  # nothing listens there
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text(recorded)
    assert ray_cluster.recorded_address() == recorded
    with pytest.raises(ray_cluster.ClusterUnavailable,
                       match=rf"search\.address='auto' \(recorded by `ray start`: {recorded}\) names no running"):
        ray_cluster.probe("auto", "search.address", timeout=1)


@pytest.fixture()
def ray_tmp():
    """(private Ray temp root, environment of every process of the test, Processes to stop at the end)."""
    root = Path(tempfile.mkdtemp(prefix="prernn-rl-", dir="/tmp"))  # short: Ray's unix sockets live under it
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONPATH")}
    env.update(RAY_TMPDIR=str(root), RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1",
               PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    procs = Processes(root)
    try:
        yield root, env, procs
    finally:
        procs.close()  # the head's process group, then every Ray process naming the folder
        shutil.rmtree(root, ignore_errors=True)


def start_head(root: Path, env: dict, procs: Processes) -> tuple:
    """`ray start --head` on a free port, as a user starts one; (its `ray start` process, port, recorded address)."""
    port, *agents = free_ports(5)
    head = procs.start([str(BIN / "ray"), "start", "--head", "--port", str(port), "--num-cpus", "1",
                        "--include-dashboard=false", "--disable-usage-stats", "--block",
                        "--dashboard-agent-listen-port", str(agents[0]), "--dashboard-agent-grpc-port",
                        str(agents[1]), "--metrics-export-port", str(agents[2]), "--runtime-env-agent-port",
                        str(agents[3])], root / "head.log", env)
    address_file = root / "ray" / "ray_current_cluster"  # Ray's address file, under RAY_TMPDIR

    def up():
        try:
            socket.create_connection((LOOPBACK, port), timeout=1).close()
        except OSError:
            return False
        return address_file.exists()

    wait_for(up, 90, "ray start --head", [head])
    recorded = address_file.read_text().strip()
    assert recorded.endswith(f":{port}"), recorded
    return head, port, recorded


def run_driver(env: dict, code: str = DRIVER, *args: str, **extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], env={**env, **extra}, cwd=REPO, capture_output=True,
                          text=True, timeout=180)


def started_its_own(run: subprocess.CompletedProcess, recorded: str) -> None:
    """The driver started a local instance (not the recorded cluster), ran a task, and said so in one line."""
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr[-3000:]
    out = json.loads(run.stdout.splitlines()[-1])
    assert out["started"] and out["square"] == 49, out
    assert out["gcs"] != recorded and out["gcs"].startswith(f"{LOOPBACK}:"), (out, recorded)
    notes = [line for line in run.stderr.splitlines() if line.startswith("ray_cluster:")]
    assert len(notes) == 1 and f"recorded at {recorded}" in notes[0] and "RAY_ADDRESS=auto" in notes[0], notes


@pytest.mark.slow  # starts one or two Ray instances: 20-60 s on 2 cores
def test_local_run_beside_a_running_ray_start_head_starts_its_own_instance_or_joins_on_purpose(ray_tmp):
    root, env, procs = ray_tmp
    _, _, recorded = start_head(root, env, procs)

    started_its_own(run_driver(env), recorded)  # a plain ray.init() joins the head and refuses num_cpus

    joined = run_driver(env, RAY_ADDRESS="auto")
    assert joined.returncode == 0 and "Traceback" not in joined.stderr, joined.stderr[-3000:]
    out = json.loads(joined.stdout.splitlines()[-1])
    assert out["square"] == 49 and out["gcs"] == recorded, (out, recorded)
    assert "ray_cluster: joining the Ray cluster at auto (RAY_ADDRESS)" in joined.stderr.splitlines(), joined.stderr


@pytest.mark.slow  # starts one or two Ray instances: 20-60 s on 2 cores
def test_local_run_after_the_head_was_killed_ignores_the_address_file_left_behind(ray_tmp):
    root, env, procs = ray_tmp
    head, port, recorded = start_head(root, env, procs)
    procs.stop(head, signal.SIGKILL, naming=str(root))  # killed, not `ray stop`: the address file stays

    def closed():
        try:
            socket.create_connection((LOOPBACK, port), timeout=1).close()
        except OSError:
            return True
        return False

    wait_for(closed, 30, "the killed head's port to close")
    assert (root / "ray" / "ray_current_cluster").read_text().strip() == recorded

    started_its_own(run_driver(env), recorded)

    auto = run_driver(env, RAY_ADDRESS="auto")  # joining on purpose names the dead address, in one line
    assert auto.returncode == 1 and "Traceback" not in auto.stderr, auto.stderr[-3000:]
    assert auto.stderr.strip().splitlines()[-1].startswith(
        f"search: RAY_ADDRESS='auto' (recorded by `ray start`: {recorded}) names no running Ray cluster"), auto.stderr


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    if addr.version == 6 and addr.ipv4_mapped:  # a dual-stack socket bound to ::ffff:127.0.0.1
        addr = addr.ipv4_mapped
    return addr.is_loopback


@pytest.mark.slow  # starts one or two Ray instances: 20-60 s on 2 cores
def test_local_instance_listens_on_loopback_only(ray_tmp):
    root, env, _ = ray_tmp
    run = run_driver(env, LISTENING, str(root))
    assert run.returncode == 0, run.stderr[-3000:]
    seen = json.loads(run.stdout.splitlines()[-1])
    listeners = {s["process"] for s in seen["sockets"]}
    assert {"gcs_server", "raylet"} <= listeners, seen  # the listing found Ray's servers
    exposed = [f"{s['process']} (pid {s['pid']}) on {s['ip']}:{s['port']}" for s in seen["sockets"]
               if not _loopback(s["ip"])]
    assert not exposed, f"Ray processes listening beyond loopback: {exposed}"
