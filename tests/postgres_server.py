"""A private PostgreSQL server for a test: Debian's `postgresql` package (installed with apt-get when missing and
this process is root), `initdb` of a fresh data directory and `pg_ctl start` on a free loopback port, run as the
`postgres` user (PostgreSQL refuses to run as root), stopped and removed at the end.

`postgres_server()` is a context manager yielding a `Postgres` (its URI for SQLAlchemy / MLflow, `connect()`
for psycopg2); `skip_reason()` says why this machine cannot run one (None when it can).
"""
from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

USER = "postgres"          # the system user Debian's package creates; it owns the data directory
DATABASE = "mlflow"
ROLE, PASSWORD = "mlflow", "pg-test-secret"


def bin_dir() -> Optional[Path]:
    """/usr/lib/postgresql/<newest>/bin, or None when no server is installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def install() -> None:
    """Debian's PostgreSQL server, when it is missing and apt-get can install it (as root); otherwise nothing."""
    if bin_dir() is not None or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", "postgresql"], env=env, capture_output=True, timeout=900)


def skip_reason() -> Optional[str]:
    """Why no test server can start here (not root, no `postgres` user, no PostgreSQL), or None."""
    if os.geteuid() != 0:
        return "starting PostgreSQL as its own user needs root (make test-faults runs as root in CI)"
    install()
    if bin_dir() is None:
        return "PostgreSQL is not installed and apt-get could not install it (apt-get install postgresql)"
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return f"no {USER!r} system user (Debian's postgresql package creates it)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Postgres:
    port: int
    data: Path

    @property
    def uri(self) -> str:
        """The SQLAlchemy URI of the test database, as `mlflow server --backend-store-uri` takes it."""
        return f"postgresql://{ROLE}:{PASSWORD}@127.0.0.1:{self.port}/{DATABASE}"

    def connect(self):
        """A psycopg2 connection to the test database (autocommit)."""
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, dbname=DATABASE, user=ROLE, password=PASSWORD)
        conn.autocommit = True
        return conn

    def query(self, sql: str, *args) -> list[tuple]:
        """The rows of one SQL query on the test database."""
        with contextlib.closing(self.connect()) as conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()


def _as_postgres(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", USER, "--", *args], capture_output=True, text=True, check=True, **kw)


@contextlib.contextmanager
def postgres_server() -> Iterator[Postgres]:
    """A PostgreSQL server on 127.0.0.1:<free port> with a fresh data directory (a temp folder owned by `postgres`:
    pytest's own folders are private to root), role `mlflow` (password auth) owning database `mlflow`; stopped
    (`pg_ctl stop -m fast`) and removed at the end."""
    bins = bin_dir()
    data = Path(tempfile.mkdtemp(prefix="prernn-pg-"))
    shutil.chown(data, USER, USER)
    port = _free_port()
    _as_postgres([str(bins / "initdb"), "-D", str(data), "-U", USER, "--auth-local=trust", "--auth-host=md5",
                  "--encoding=UTF8", "--no-sync"], timeout=120)
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {data} -c fsync=off"
    _as_postgres([str(bins / "pg_ctl"), "-D", str(data), "-l", str(data / "server.log"), "-o", opts, "-w", "-t", "60",
                  "start"], timeout=90)
    try:
        psql = [str(bins / "psql"), "-h", str(data), "-p", str(port), "-U", USER, "-v", "ON_ERROR_STOP=1", "-qc"]
        _as_postgres([*psql, f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'"], timeout=30)
        _as_postgres([*psql, f"CREATE DATABASE {DATABASE} OWNER {ROLE}"], timeout=30)
        yield Postgres(port, data)
    finally:
        subprocess.run(["runuser", "-u", USER, "--", str(bins / "pg_ctl"), "-D", str(data), "-m", "fast", "-w",
                        "stop"], capture_output=True, timeout=60)
        shutil.rmtree(data, ignore_errors=True)
