"""Start a local Ray instance or join an existing cluster.

The address comes from RAY_ADDRESS in the environment, else `search.address`:

- none (or "local"): this run starts its own Ray instance, sized to this machine, no dashboard, even when
  `ray start` left a cluster (or, after its processes died, the address file it records in Ray's temp folder,
  e.g. /tmp/ray/ray_current_cluster) on the machine; a plain `ray.init()` would join that cluster instead and
  refuse the local sizing. One line on stderr names the cluster it did not join and how to join it.
- "auto": join the cluster `ray start` recorded on this machine; `host:port` or `ray://host:port`: join that
  cluster. One line on stderr names the address and where it came from. Before joining, the address is probed:
  when nothing answers within a few seconds the stage stops with a message naming the address, where it came
  from, and how to fix it (instead of Ray's long connection retries).

Network exposure. A local instance listens on loopback only: its GCS server, raylet, runtime-env agent and
every worker (the driver included) bind 127.0.0.1, so nothing on the network can reach it (unauthenticated Ray
accepts code from whoever connects: CVE-2023-48022, "ShadowRay"). Ray 2.x binds its gRPC servers to 0.0.0.0
unless the node's IP is 127.0.0.1, and on Linux it rewrites a requested 127.0.0.1 to the machine's reachable
address; this module turns on, for the local start only, Ray's single-machine mode (the one Ray uses on macOS
and Windows, `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`), which keeps 127.0.0.1. tests/test_ray_local.py lists what
a local run listens on. A cluster (`ray start` on each node) listens on the nodes' addresses by design, so it
needs token authentication (RAY_AUTH_MODE=token with one RAY_AUTH_TOKEN on every node and the driver) and a
network only the team reaches.
"""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Optional

import ray

from pipeline.core.tracking import CREDENTIAL_VARS

REPO = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"


class ClusterUnavailable(RuntimeError):
    """The Ray address names no running cluster."""


def resolve_address(param_address: Optional[str] = None) -> tuple[Optional[str], str]:
    """(address, or None for a local instance; where it came from). "local" is no address."""
    env = os.environ.get("RAY_ADDRESS")
    if env:
        return (None, "RAY_ADDRESS=local (a local Ray instance)") if env == "local" else (env, "RAY_ADDRESS")
    if param_address and param_address != "local":
        return param_address, "search.address"
    return None, "none (a local Ray instance)"


def recorded_address() -> Optional[str]:
    """The address `ray start` last recorded on this machine (what `ray.init()` and "auto" join), or None."""
    return ray._private.utils.read_ray_address()  # <Ray temp dir>/ray_current_cluster; `ray stop` removes it


def _host_port(address: str) -> Optional[tuple[str, int]]:
    """host and port of `host:port` or `ray://host:port`; None for "auto"/"local"."""
    if address in ("auto", "local"):
        return None
    rest = address.split("://", 1)[-1].rstrip("/")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterUnavailable(f"Ray address {address!r}: expected host:port, ray://host:port or auto")
    return host, int(port)


def probe(address: str, source: str, timeout: float = 3.0) -> None:
    """Raise ClusterUnavailable unless something listens at the address's host:port within `timeout` s
    ("auto": the address `ray start` recorded, when there is one)."""
    target = (recorded_address() or "auto") if address == "auto" else address
    hp = _host_port(target)
    if hp is None:
        return
    try:
        socket.create_connection(hp, timeout=timeout).close()
    except OSError as err:
        named = f"{address!r}" if target == address else f"{address!r} (recorded by `ray start`: {target})"
        raise ClusterUnavailable(
            f"{source}={named} names no running Ray cluster: nothing answered at {hp[0]}:{hp[1]} within "
            f"{timeout:g} s ({err}). Start one with `ray start --head --port {hp[1]}` on that machine, fix the "
            f"address, or unset {source} to run on a local Ray instance."
        ) from None


def tracking_credentials() -> dict[str, str]:
    """The MLflow credentials of this driver's environment (MLFLOW_TRACKING_USERNAME / _PASSWORD / _TOKEN, those
    set), for the job's runtime_env: a trial on another node logs to an authenticated tracking server as the user
    who started the search. A local instance's workers inherit the driver's environment and need nothing."""
    return {k: os.environ[k] for k in CREDENTIAL_VARS if os.environ.get(k)}


def _say(line: str) -> None:
    print(f"ray_cluster: {line}", file=sys.stderr, flush=True)


def _start_local(num_cpus: int, num_gpus: Optional[int], common: dict) -> None:
    """A new Ray instance of this process (`address="local"`: never a cluster `ray start` left behind), every
    process of it listening on 127.0.0.1 only (module docstring)."""
    recorded = recorded_address()
    if recorded:
        _say(f"a Ray cluster started with `ray start` is recorded at {recorded}; this run starts its own local "
             "instance (set RAY_ADDRESS=auto or search.address to join that cluster)")
    pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    constants = ray._private.ray_constants
    cluster_mode = constants.ENABLE_RAY_CLUSTER
    constants.ENABLE_RAY_CLUSTER = False  # single-machine mode: 127.0.0.1 stays the node IP
    try:
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, _node_ip_address=LOOPBACK,
                 runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, **common)
    finally:
        constants.ENABLE_RAY_CLUSTER = cluster_mode


def connect(param_address: Optional[str] = None, *, num_cpus: Optional[int] = None, num_gpus: Optional[int] = None,
            log_to_driver: bool = True) -> bool:
    """Make sure Ray is initialised; returns True when this call started it (so the caller shuts it down).

    Local: `num_cpus` defaults to the machine's cores. Joining: the code of `prernn` and `pipeline`
    is shipped to the workers (`runtime_env.py_modules`; the nodes need the pinned requirements installed), and
    the driver's MLflow credentials with it (`runtime_env.env_vars`: `tracking_credentials`); paths given to
    trials (search.storage_path, a sqlite MLflow store) must be on shared storage.
    """
    if ray.is_initialized():
        return False
    address, source = resolve_address(param_address)
    # Tune warns on every per-epoch checkpoint of these short trials (pipeline.search.trainable quiets the workers)
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # how often Ray saves its experiment state: pipeline.search.tuner.state_period, set per search
    common = dict(include_dashboard=False, log_to_driver=log_to_driver, logging_level="warning",
                  configure_logging=True)
    if address is None:
        _start_local(num_cpus or os.cpu_count() or 1, num_gpus, common)
        return True
    probe(address, source)
    _say(f"joining the Ray cluster at {address} ({source})")
    runtime_env = {"py_modules": [str(REPO / "prernn"), str(REPO / "pipeline")], "env_vars": tracking_credentials()}
    try:
        ray.init(address=address, runtime_env=runtime_env, **common)
    except ConnectionError as err:
        raise ClusterUnavailable(
            f"{source}={address!r}: could not join the Ray cluster ({err}). Start one with `ray start --head`, "
            f"fix the address, or unset {source} to run on a local Ray instance."
        ) from None
    return True
