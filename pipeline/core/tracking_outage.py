"""Riding out an MLflow tracking server that stops answering for a while (a restart, a network cut).

Only http(s) tracking URIs have outages; for a sqlite store every call runs as it is (a "database is locked"
from concurrent trials is retried a few times).
- `Outage(uri, bound_s)`: the calls to one store (a `pipeline.core.tracking.Tracker` holds one). `bound_s`: how
  long they wait for a server that stopped answering (`mlflow.outage_s` in the search driver; a trial waits
  longer, `trial_bound`, so that the driver, not a failing trial, decides). MLflow's own HTTP retries
  (MLFLOW_HTTP_REQUEST_MAX_RETRIES, 7 by default, minutes of backoff per call) are cut to one unless the
  environment sets them, so the wait is this module's.
- `Outage.call(fn, *args)`: a store call. When it fails and the server does not answer `/health`, it waits for
  the server (probing every second) and calls again; an error from a server that answers is raised as it is.
  Past the bound, counted from when the outage began: TrackingUnavailable, one line naming the URI.
  `wait=False`: ServerDown at once instead, for a caller that buffers (pipeline.core.tracking.MetricLog).
- `Watch(uri, bound_s, on_outage)` (`Outage.watch(on_outage)`): a thread (the search driver's) that probes
  `/health` every second and calls `on_outage()` once when the server has not answered for `bound_s`.
"""
from __future__ import annotations

import os
import threading
import time
import urllib.error
import urllib.request
from typing import Callable, Optional

DEFAULT_BOUND_S = 120.0
PROBE_EVERY_S = 1.0


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking server named by the URI does not answer."""


class ServerDown(TrackingUnavailable):
    """A call failed while the server does not answer (`call(..., wait=False)`); `since`: when the outage began."""

    def __init__(self, uri: str, since: float):
        super().__init__(f"MLflow tracking server {uri} does not answer")
        self.uri, self.since = uri, since


def trial_bound(driver_bound_s: float) -> float:
    """A trial's bound: longer than the driver's, which stops the search first (Watch)."""
    return 2 * float(driver_bound_s) + 30


def outage_message(uri: str, seconds: float) -> str:
    return f"MLflow tracking server {uri} did not answer for {seconds:g} s (mlflow.outage_s)"


def is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def answers(uri: str, timeout: float = 3.0) -> bool:
    """Whether the server at an http(s) `uri` answers `/health` within `timeout` s (any HTTP status counts: a
    proxy in front may not serve /health); True for other stores."""
    if not is_http(uri):
        return True
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False
    return True


class Outage:
    """The calls to the store at `uri` through outages of up to `bound_s` seconds (module docstring).
    `down_since`: time.monotonic() when its calls began to fail, while they do; `lock_retries`: the calls retried
    because a sqlite store was locked by another writer (bench.scale reads it through the trials' results)."""

    def __init__(self, uri: str, bound_s: float = DEFAULT_BOUND_S):
        self.uri, self.bound_s = uri, float(bound_s)
        self.down_since: Optional[float] = None
        self.lock_retries = 0
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")

    def wait_until_back(self, since: float) -> None:
        """Return once the server answers; TrackingUnavailable when `bound_s` has passed since `since`."""
        while not answers(self.uri, timeout=min(3.0, max(0.5, self.bound_s))):
            if time.monotonic() - since > self.bound_s:
                raise TrackingUnavailable(outage_message(self.uri, self.bound_s))
            time.sleep(PROBE_EVERY_S)

    def call(self, fn: Callable, *args, wait: bool = True, **kwargs):
        """`fn(*args, **kwargs)`, a call to the store, through outages (module docstring)."""
        locked = 0
        while True:
            try:
                result = fn(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - MLflow wraps connection errors and sqlite locks in MlflowException
                if "locked" in str(err).lower() and locked < 4:  # concurrent trials share one sqlite file
                    locked += 1
                    self.lock_retries += 1
                    time.sleep(0.2 * locked)
                    continue
                if not is_http(self.uri) or answers(self.uri):
                    raise
                if self.down_since is None:
                    self.down_since = time.monotonic()
                if time.monotonic() - self.down_since > self.bound_s:
                    raise TrackingUnavailable(outage_message(self.uri, self.bound_s)) from None
                if not wait:
                    raise ServerDown(self.uri, self.down_since) from None
                self.wait_until_back(self.down_since)
                continue
            self.down_since = None
            return result

    def watch(self, on_outage: Callable[[], None]) -> "Watch":
        """A `Watch` of this store with this bound."""
        return Watch(self.uri, self.bound_s, on_outage)


class Watch:
    """`with Watch(uri, bound_s, on_outage) as watch:` probes the server every second in a daemon thread and calls
    `on_outage()` once when it has not answered for `bound_s` (then `watch.tripped` is True). Nothing for a
    store that is not http(s)."""

    def __init__(self, uri: str, bound: float, on_outage: Callable[[], None]):
        self.uri, self.bound, self.on_outage = uri, float(bound), on_outage
        self.tripped = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tracking-outage-watch", daemon=True)

    def _run(self) -> None:
        since = None
        while not self._stop.wait(PROBE_EVERY_S):
            if answers(self.uri, timeout=min(3.0, max(0.5, self.bound))):
                since = None
                continue
            since = since if since is not None else time.monotonic()
            if time.monotonic() - since >= self.bound:
                self.tripped = True
                self.on_outage()
                return

    def __enter__(self) -> "Watch":
        if is_http(self.uri):
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
