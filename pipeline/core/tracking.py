"""MLflow tracking: a `Tracker` per store, one parent run per search, one nested child run per trial.

`Tracker(uri, outage_s)` holds the store's URI, its outage bound (pipeline.core.tracking_outage.Outage) and an
`MlflowClient` (tracking and registry on the same store), like MLflow's own client; every call goes through the
outage rules and uses run ids explicitly, so nothing depends on MLflow's global active run. A Tracker pickles
as (uri, outage_s, source): a Ray trial rebuilds it in its own process. `Tracker.open(params_uri, base, outage_s)`
resolves the URI (MLFLOW_TRACKING_URI in the environment, else `mlflow.tracking_uri` from params.yaml; a
relative `sqlite:///x.db` made absolute, as trials run in their own working directories, possibly on other
nodes) and checks an http(s) server first: one that does not answer within a few seconds stops the stage with a
message saying what to do, and so does one that refuses this client (`TrackingRefused`: HTTP 401 without or with
wrong credentials, 403 without the permission; MLflow's basic-auth app, `make mlflow-server MLFLOW_AUTH=1`).
Credentials come from MLflow's own variables (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, or
MLFLOW_TRACKING_TOKEN), never from the URI, which is written to search.json and pickled into every trial.

Every run is tagged with the git commit (a trial, running in a Ray worker's own directory, takes its parent's),
`mlflow.source.name` (the stage's script) and the DVC stage. Per-epoch values are metrics (curves in the UI);
values a run has once (best score, epochs to 95%, parameter count, clips/s) are tags (`log_summary`), rounded
for reading. MLflow's telemetry is off unless MLFLOW_DISABLE_TELEMETRY is set otherwise (like DVC's analytics).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import sqlite3
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Optional

from pipeline.core.tracking_outage import DEFAULT_BOUND_S, Outage, ServerDown, TrackingUnavailable, is_http

# MLflow 3.17 reads MLFLOW_DISABLE_TELEMETRY (mlflow/telemetry/utils.py); off by default, a user's value wins
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

PARENT_TAG = "mlflow.parentRunId"
COMMIT_TAG = "mlflow.source.git.commit"
TRIAL_TAG = "prernn.trial"
TRIAL_ID_TAG = "ray.trial_id"
SQLITE = "sqlite:///"
CREDENTIAL_VARS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


class TrackingRefused(TrackingUnavailable):
    """The MLflow tracking server answers but refuses this client: HTTP 401 (no or wrong credentials) or 403 (no
    permission), or credentials were put in the URI; one line naming the URI and the variables to set."""


def refused_message(uri: str, source: str, status: int, detail: str = "") -> str:
    """The one-line error of a server that answered `status` (401 or 403) to this client."""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if status == 401:
        who = (f"refused the credentials of MLFLOW_TRACKING_USERNAME={user!r} (HTTP 401: wrong password?)" if user
               else "asks for credentials (HTTP 401) and MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD are not set")
        advice = ("Set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD in the environment to your account on "
                  "that server (its admin creates it), not in params.yaml or the URI.")
    else:
        who = f"denied user {user!r} (HTTP 403{': ' + detail if detail else ''})"
        advice = "Ask the server's admin for EDIT permission on the experiment (mlflow.experiment in params.yaml)."
    return f"MLflow tracking server {uri} (from {source}) {who}. {advice}"


def sqlite_path(uri: str) -> Optional[Path]:
    """The database file of a `sqlite:///<path>` URI (relative as written); None for any other store (and for
    :memory:). The one place that reads the prefix."""
    if not uri.startswith(SQLITE) or uri == SQLITE + ":memory:":
        return None
    return Path(uri[len(SQLITE):])


def resolve_tracking_uri(params_uri: Optional[str] = None, base: str | os.PathLike | None = None) -> tuple[str, str]:
    """(uri, where it came from). MLFLOW_TRACKING_URI wins over params; relative sqlite paths become absolute."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    uri, source = (env, "MLFLOW_TRACKING_URI") if env else (params_uri or "sqlite:///mlflow.db", "mlflow.tracking_uri")
    path = sqlite_path(uri)
    if path is not None and not path.is_absolute():
        uri = SQLITE + str((Path(base or os.getcwd()) / path).resolve())
    elif "://" not in uri:  # a bare path: MLflow's (deprecated) file store
        uri = str((Path(base or os.getcwd()) / uri).resolve())
    elif is_http(uri) and urllib.parse.urlsplit(uri).password is not None:
        raise TrackingRefused(
            f"The tracking URI from {source} carries a password (user:password@host): it would be written to "
            "search.json and every trial. Put the host alone in the URI and the credentials in "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD.")
    return uri, source


def check_reachable(uri: str, source: str = "the tracking URI", timeout: float = 3.0) -> None:
    """For an http(s) URI, raise TrackingUnavailable within `timeout` s unless the server answers."""
    if not uri.startswith(("http://", "https://")):
        return
    url = uri.rstrip("/") + "/health"
    try:
        urllib.request.urlopen(url, timeout=timeout).close()
    except urllib.error.HTTPError:
        return  # it answered (a proxy in front may not serve /health)
    except OSError as err:  # URLError included
        reason = getattr(err, "reason", err)
        raise TrackingUnavailable(
            f"MLflow tracking server {uri} (from {source}) did not answer within {timeout:g} s: {reason}. "
            "Start it (e.g. `mlflow server --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000`; "
            "bind another address only on a trusted network), "
            "fix the address, or unset MLFLOW_TRACKING_URI to log to the local sqlite:///mlflow.db."
        ) from None


@contextlib.contextmanager
def _one_at_a_time(uri: str):
    """For a sqlite store, hold an exclusive lock (a file in the temp dir named by the database path) while the
    client opens it: MLflow creates the tables of a new database on first use, and two processes doing so at once
    (two queued DVC experiments sharing one mlflow.db) fail with `table _alembic_tmp_experiments already exists`."""
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    key = hashlib.sha256(str(path).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"prernn-mlflow-{key}.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def git_commit(cwd: str | os.PathLike | None = None) -> str:
    """The checked-out commit, or "unknown" outside a git work tree / before the first commit."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _param_items(params: dict, prefix: str = "") -> dict[str, str]:
    """Flatten nested params to dotted keys with string values (MLflow params are strings <= 6000 chars)."""
    out = {}
    for k, v in params.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_param_items(v, key + "."))
        else:
            out[key] = (json.dumps(v) if not isinstance(v, str) else v)[:6000]
    return out


def _readable(value: float) -> float:
    """`value` to 6 significant digits; whole numbers as they are (float32 noise such as 0.5833333134651184 is
    not what a person should read)."""
    return value if value.is_integer() or not math.isfinite(value) else float(f"{value:.6g}")


def _numeric(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def summary_text(value) -> str:
    """A summary value as a person reads it: integers as they are, other numbers to 3 decimals (as Table 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return str(value) if isinstance(value, int) else f"{value:.3f}"


def summary_tags(values: dict) -> dict[str, str]:
    """Values a run has once as tag values (`summary_text`); None values are skipped."""
    return {k: summary_text(v) for k, v in values.items() if v is not None}


class Tracker:
    """One MLflow store: its URI, its outage bound (`outage`, pipeline.core.tracking_outage.Outage) and its
    MlflowClient (`client`, made on first use); `source`: where the URI came from (errors name it). Pickles as
    (uri, outage_s, source)."""

    def __init__(self, uri: str, outage_s: float = DEFAULT_BOUND_S, source: str = "the tracking URI"):
        self.uri, self.source = uri, source  # source: where the URI came from, for the errors that name it
        self.outage = Outage(uri, outage_s)
        self._client = None
        self._parent_commits: dict[str, str] = {}  # parent run id -> its commit tag, read once

    @classmethod
    def open(cls, params_uri: Optional[str] = None, base: str | os.PathLike | None = None,
             outage_s: float = DEFAULT_BOUND_S) -> "Tracker":
        """The Tracker of `resolve_tracking_uri(params_uri, base)`, its server checked: it answers
        (`check_reachable`) and accepts this client (`check_access`)."""
        uri, source = resolve_tracking_uri(params_uri, base)
        check_reachable(uri, source)
        tracker = cls(uri, outage_s, source)
        tracker.check_access()
        return tracker

    def check_access(self) -> None:
        """For an http(s) server, one authenticated request (search one experiment): TrackingRefused, one line,
        when the server refuses this client's credentials (`refused_message`). Nothing for a local store."""
        if is_http(self.uri):
            self.call("search_experiments", max_results=1)

    def __reduce__(self):
        return type(self), (self.uri, self.outage.bound_s, self.source)

    def __repr__(self) -> str:
        return f"Tracker({self.uri!r}, outage_s={self.outage.bound_s:g})"

    @property
    def client(self):
        """The MlflowClient of the store, its registry the same store: the models are registered where their runs
        are (pipeline.serve.mlflow_model), whatever MLFLOW_REGISTRY_URI an environment carries."""
        if self._client is None:
            from mlflow.tracking import MlflowClient  # mlflow takes ~1 s to import

            with _one_at_a_time(self.uri):
                self._client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        return self._client

    @property
    def lock_retries(self) -> int:
        """How many store calls this Tracker retried because the sqlite file was locked (`Outage.lock_retries`)."""
        return self.outage.lock_retries

    def call(self, method: str, *args, wait: bool = True, **kwargs):
        """`client.<method>(*args, **kwargs)` through outages (`Outage.call`); a server that refuses the client
        (HTTP 401 / 403) raises TrackingRefused (`refused_message`), not MLflow's traceback."""
        from mlflow.exceptions import MlflowException

        try:
            return self.outage.call(getattr(self.client, method), *args, wait=wait, **kwargs)
        except MlflowException as err:
            status = err.get_http_status_code()  # from the error code MLflow read off the response
            if not is_http(self.uri) or status not in (401, 403):
                raise
            raise TrackingRefused(refused_message(self.uri, self.source, status, err.message[:200])) from None

    def set_journal_mode(self, local: bool) -> Optional[str]:
        """Put a sqlite store (created empty if missing; MLflow makes its tables on first use) in the journal mode
        its users can share, before this process opens it with MLflow; returns the file's mode afterwards (None:
        not a sqlite store, or the file was busy: another connection holds it, and it keeps its mode).

        `local` (every process that writes runs on this machine: a local Ray instance): WAL, SQLite's write-ahead
        log, where a commit costs one append instead of rewriting a rollback journal (on this project's disk 6 ms
        against 22 ms per commit) and readers do not block the writer; it persists in the file. Otherwise (a Ray
        cluster whose nodes open the file on shared storage): the rollback journal (DELETE), since WAL needs every
        process on one host (https://www.sqlite.org/wal.html) -- though a cluster should log to an MLflow server."""
        path = sqlite_path(self.uri)
        if path is None:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with contextlib.closing(sqlite3.connect(path, timeout=5)) as conn:
                return conn.execute(f"PRAGMA journal_mode={'WAL' if local else 'DELETE'}").fetchone()[0].lower()
        except sqlite3.OperationalError:  # another process holds the file (a UI, a running search): keep its mode
            return None

    def default_artifact_location(self) -> Optional[str]:
        """For a sqlite store, `mlruns/` beside the database file (not the current directory); else the server's."""
        path = sqlite_path(self.uri)
        return path.parent.joinpath("mlruns").as_uri() if path is not None else None

    def ensure_experiment(self, name: str) -> str:
        """The id of experiment `name`, created if needed (restored when it was deleted)."""
        exp = self.call("get_experiment_by_name", name)
        if exp is None:
            return self.call("create_experiment", name, artifact_location=self.default_artifact_location())
        if exp.lifecycle_stage == "deleted":
            self.call("restore_experiment", exp.experiment_id)
        return exp.experiment_id

    def find_child_run(self, experiment_id: str, parent_run_id: str, trial_id: str,
                       name: Optional[str] = None) -> Optional[str]:
        """The child run of `parent_run_id` already made for Ray trial `trial_id` (a retried trial), else the one
        made for trial `name` (a search restarted after Ray lost its experiment state), or None: one child run per
        trial."""
        for tag, value in ((TRIAL_ID_TAG, trial_id), (TRIAL_TAG, name)):
            if value is not None:
                run_id = self._run_with_tags(experiment_id, {PARENT_TAG: parent_run_id, tag: value})
                if run_id:
                    return run_id
        return None

    def _run_with_tags(self, experiment_id: str, tags: dict) -> Optional[str]:
        """The id of a run of the experiment that has all of `tags`, or None."""
        where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        runs = self.call("search_runs", [experiment_id], filter_string=where, max_results=1)
        return runs[0].info.run_id if runs else None

    def child_runs(self, experiment_id: str, parent_run_id: str) -> list:
        """The runs whose parent is `parent_run_id`."""
        return self.call("search_runs", [experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
                         max_results=10_000)

    def _parent_commit(self, parent_run_id: str, default: str) -> str:
        if parent_run_id not in self._parent_commits:
            tags = self.call("get_run", parent_run_id).data.tags
            self._parent_commits[parent_run_id] = tags.get(COMMIT_TAG, default)
        return self._parent_commits[parent_run_id]

    def start_run(self, experiment_id: str, name: str, *, parent_run_id: Optional[str] = None,
                  params: Optional[dict] = None, tags: Optional[dict] = None, stage: Optional[str] = None,
                  unique_tags: Optional[dict] = None, metrics: Optional[dict] = None, step: int = 0) -> str:
        """Create a run (a child of `parent_run_id` if given) with its tags (git commit, source, DVC stage, `tags`);
        then `params` and `metrics` (at `step`) in one store write (`log_batch`). `unique_tags` (tags no other run
        of the experiment has): a create cut off by a server outage is not repeated when it had created the run
        (one run per trial)."""
        commit = git_commit()
        if commit == "unknown" and parent_run_id:  # a trial in a Ray worker's directory: the search's commit
            commit = self._parent_commit(parent_run_id, commit)
        all_tags = {"mlflow.runName": name, COMMIT_TAG: commit, "mlflow.source.type": "LOCAL",
                    **{k: str(v)[:5000] for k, v in (tags or {}).items()}}
        if stage:
            all_tags.update({"dvc_stage": stage, "mlflow.source.name": f"stages/{stage}.py"})
        if parent_run_id:
            all_tags[PARENT_TAG] = parent_run_id
        run_id = None
        while run_id is None:
            try:
                run_id = self.call("create_run", experiment_id, tags=all_tags, run_name=name,
                                   wait=unique_tags is None).info.run_id
            except ServerDown as down:  # the request may have created the run before the server went
                self.outage.wait_until_back(down.since)
                run_id = self._run_with_tags(experiment_id, unique_tags)
        self.log_batch(run_id, params=params, metrics=metrics, step=step)
        return run_id

    def log_batch(self, run_id: str, *, metrics: Optional[dict] = None, params: Optional[dict] = None,
                  tags: Optional[dict] = None, step: Optional[int] = 0) -> None:
        """Metrics (numeric entries only, at `step`; others are skipped), params (nested dicts flattened to dotted
        keys) and tags (values as text, at most 5000 characters), in as few store writes as MLflow allows."""
        now = int(time.time() * 1000)
        self._write(run_id, {(k, step or 0): (v, now) for k, v in _numeric(metrics or {}).items()},
                    params=_param_items(params or {}), tags=tags or {})

    def log_summary(self, run_id: str, values: dict) -> None:
        """Values a run has once (best score, epochs to 95%, parameter count, clips/s) as tags (`summary_text`),
        not one-point metric series; None values are skipped."""
        self.log_batch(run_id, tags=summary_tags(values))

    def _write(self, run_id: str, metrics: dict, *, params: Optional[dict] = None, tags: Optional[dict] = None,
               wait: bool = True) -> None:
        """The one path to the store's `log_batch`. metrics: {(key, step): (value, timestamp ms)} (6 significant
        digits, `_readable`), params / tags: {key: value} (tag values as text, at most 5000 characters). One write
        per 100 params / 100 tags / 1000 entries in all (MLflow's limits): each write to a sqlite store is a
        transaction with its own disk sync, the main cost a short trial pays for tracking (bench.scale).
        `wait=False`: ServerDown at once while an http(s) server does not answer (Outage.call)."""
        from mlflow.entities import Metric, Param, RunTag

        ms = [Metric(k, _readable(float(v)), ts, step) for (k, step), (v, ts) in metrics.items()]
        ps = [Param(k, v) for k, v in (params or {}).items()]
        ts = [RunTag(k, str(v)[:5000]) for k, v in (tags or {}).items()]
        while ms or ps or ts:
            chunk_p, chunk_t = ps[:100], ts[:100]
            chunk_m = ms[:1000 - len(chunk_p) - len(chunk_t)]
            self.call("log_batch", run_id, metrics=chunk_m, params=chunk_p, tags=chunk_t, wait=wait)
            ms, ps, ts = ms[len(chunk_m):], ps[len(chunk_p):], ts[len(chunk_t):]

    def logged_steps(self, run_id: str, wait: bool = True) -> set[tuple[str, int]]:
        """(metric key, step) of every value already logged to the run."""
        return {(key, m.step) for key in self.call("get_run", run_id, wait=wait).data.metrics
                for m in self.call("get_metric_history", run_id, key, wait=wait)}

    def log_json(self, run_id: str, obj, filename: str) -> None:
        """Store `obj` as a JSON artifact `filename` of the run."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / filename
            path.write_text(json.dumps(obj, indent=1, default=str))
            self.call("log_artifact", run_id, str(path))

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        """Mark the run FINISHED / FAILED / KILLED."""
        self.call("set_terminated", run_id, status)

    def reopen_run(self, run_id: str) -> None:
        """Mark the run RUNNING again (a resumed search or trial logs to it)."""
        self.call("update_run", run_id, status="RUNNING")

    def run_status(self, run_id: str) -> Optional[str]:
        """The run's status, or None for a run id this store does not have (TrackingUnavailable in an outage)."""
        try:
            return self.call("get_run", run_id).info.status
        except TrackingUnavailable:
            raise
        except Exception:  # noqa: BLE001 - a run id from another store
            return None


class MetricLog:
    """Logs metrics to one run at most once per (key, step): what a run already holds is skipped, so a trial
    that resumes (after a killed driver, a lost node, a tracking outage) never logs an epoch twice.
    `new_run`: the run was just created (nothing to read back).

    While an http(s) server does not answer, `log` keeps the values (with the time they were logged) and the
    summary tags, and the trial trains on; the next `log` or `flush` sends them, metrics and tags in the same
    write (`Tracker._write`), after reading back what the run holds (a request the outage cut off may have landed).
    At most `max_pending` values are kept: beyond that `log` waits for the server (Outage.call: TrackingUnavailable
    past the bound), so memory stays bounded."""

    MAX_PENDING = 10_000

    def __init__(self, tracker: Tracker, run_id: str, new_run: bool = False, max_pending: int = MAX_PENDING):
        self.tracker, self.run_id, self.max_pending = tracker, run_id, int(max_pending)
        self.logged = set() if new_run else tracker.logged_steps(run_id)
        self.pending: dict[tuple[str, int], tuple[float, int]] = {}  # (key, step) -> (value, timestamp ms)
        self._cut_off = False  # a send failed: read back what the run holds before sending again
        self.pending_tags: dict[str, str] = {}  # summary tags to set (the newest value of each wins)

    def log(self, metrics: dict, step: int = 0, tags: Optional[dict] = None) -> None:
        """Log the numeric entries of `metrics` at `step` that the run does not have yet, and `tags` (summary
        values, `summary_text`: set again, so nothing to read back)."""
        now = int(time.time() * 1000)
        for key, value in _numeric(metrics).items():
            if (key, step) not in self.logged:
                self.pending.setdefault((key, step), (value, now))
        self.pending_tags.update(summary_tags(tags or {}))
        self.flush(wait=len(self.pending) > self.max_pending)

    def flush(self, wait: bool = True) -> bool:
        """Send what is pending (metrics and tags, one write); True when nothing is left. `wait=False`: keep it
        while the server is down."""
        while self.pending or self.pending_tags:
            try:
                if self._cut_off and self.pending:
                    self.logged |= self.tracker.logged_steps(self.run_id, wait=False)
                    self.pending = {k: v for k, v in self.pending.items() if k not in self.logged}
                    self._cut_off = False
                self.tracker._write(self.run_id, self.pending, tags=self.pending_tags, wait=False)
            except ServerDown as down:
                self._cut_off = True
                if not wait:
                    return False
                self.tracker.outage.wait_until_back(down.since)
                continue
            self.logged |= set(self.pending)
            self.pending, self.pending_tags = {}, {}
        return True
