"""An MLflow tracking server for a test, started by `make mlflow-server` itself (the Makefile's recipe: the schema
made or upgraded first with `mlflow db upgrade <backend>`, then `mlflow server`, loopback only, no job workers), in
the test's folder (artifacts in `<root>/mlartifacts`) and on a free port; with `auth`, MLflow's basic-auth app
(`MLFLOW_AUTH=1`) whose config (`MLFLOW_AUTH_CONFIG_PATH`) keeps its users in `<root>/basic_auth.db`, admin `ADMIN`
with the password `auth`. make and the server write to `<root>/mlflow-server.log` (a test greps it for secrets).
`-o <venv stamp>`: make uses the installed venv as it is, never reinstalling it."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
ADMIN = "admin"


@dataclass
class Server:
    uri: str
    log: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(backend: str, root: Path, auth: Optional[str] = None) -> Iterator[Server]:
    """A tracking server on `backend` (a SQLAlchemy URI as MLFLOW_BACKEND takes it), `auth`: the admin password
    of a basic-auth server (None: no authentication). Stopped at the end."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    venv = BIN.parent
    args = ["make", "-f", str(REPO / "Makefile"), "-o", str(venv / ".installed"), f"VENV={venv}", "mlflow-server",
            f"MLFLOW_BACKEND={backend}", f"MLFLOW_PORT={port}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING_", "MAKE", "MFLAGS"))}
    if auth is not None:
        config = root / "basic_auth.ini"
        config.write_text(f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{root}/basic_auth.db\n"
                          f"admin_username = {ADMIN}\nauthorization_function = "
                          "mlflow.server.auth:authenticate_request_basic_auth\n")
        env.update(MLFLOW_AUTH_CONFIG_PATH=str(config), MLFLOW_AUTH_ADMIN_PASSWORD=auth,
                   MLFLOW_FLASK_SERVER_SECRET_KEY="test-only-flask-key")
        args.append("MLFLOW_AUTH=1")
    log = root / "mlflow-server.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        for _ in range(960):
            if proc.poll() is not None:
                raise AssertionError(f"mlflow server exited {proc.returncode}: {log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(uri + "/health", timeout=1).close()
                break
            except OSError:
                time.sleep(0.25)
        else:
            raise AssertionError(f"mlflow server did not answer in 240 s: {log.read_text()[-3000:]}")
        yield Server(uri, log)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)  # the server and its gunicorn/uvicorn worker
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=30)
