"""Start a local Ray instance or join an existing cluster.

The address comes from RAY_ADDRESS in the environment, else `search.address`; none starts a local
instance sized to this machine (no dashboard). Before joining, the address is probed: when nothing
answers within a few seconds the stage stops with a message naming the address, where it came
from, and how to fix it (instead of Ray's long connection retries).
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Optional

import ray

REPO = Path(__file__).resolve().parents[2]


class ClusterUnavailable(RuntimeError):
    """The Ray address names no running cluster."""


def resolve_address(param_address: Optional[str] = None) -> tuple[Optional[str], str]:
    """(address or None, where it came from)."""
    env = os.environ.get("RAY_ADDRESS")
    if env:
        return env, "RAY_ADDRESS"
    if param_address:
        return param_address, "search.address"
    return None, "none (a local Ray instance)"


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
    """Raise ClusterUnavailable unless something listens at the address's host:port within `timeout` s."""
    hp = _host_port(address)
    if hp is None:
        return
    try:
        socket.create_connection(hp, timeout=timeout).close()
    except OSError as err:
        raise ClusterUnavailable(
            f"{source}={address!r} names no running Ray cluster: nothing answered at {hp[0]}:{hp[1]} within "
            f"{timeout:g} s ({err}). Start one with `ray start --head --port {hp[1]}` on that machine, fix the "
            f"address, or unset {source} to run on a local Ray instance."
        ) from None


def connect(param_address: Optional[str] = None, *, num_cpus: Optional[int] = None, num_gpus: Optional[int] = None,
            log_to_driver: bool = True) -> bool:
    """Make sure Ray is initialised; returns True when this call started it (so the caller shuts it down).

    Local: `num_cpus` defaults to the machine's cores. Joining: the code of `prernn` and `pipeline`
    is shipped to the workers (`runtime_env.py_modules`; the nodes need the pinned requirements installed);
    paths given to trials (search.storage_path, a sqlite MLflow store) must be on shared storage.
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
        pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        ray.init(num_cpus=num_cpus or os.cpu_count() or 1, num_gpus=num_gpus,
                 runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, **common)
        return True
    probe(address, source)
    try:
        ray.init(address=address, runtime_env={"py_modules": [str(REPO / "prernn"), str(REPO / "pipeline")]}, **common)
    except ConnectionError as err:
        raise ClusterUnavailable(
            f"{source}={address!r}: could not join the Ray cluster ({err}). Start one with `ray start --head`, "
            f"fix the address, or unset {source} to run on a local Ray instance."
        ) from None
    return True
