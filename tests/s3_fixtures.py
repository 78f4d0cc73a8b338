"""An S3-compatible object store on loopback for the tests: moto's server (`moto[server]`, an emulator of the S3
API that Ray's own tests use; no real object store is installed here), and an MLflow tracking server whose
artifacts it keeps.

`s3_server()`: a context manager that starts `moto_server` (a process of its own) on a free 127.0.0.1 port,
creates bucket `BUCKET` and yields an `S3` (its `endpoint`, the `env` a client needs to reach it: test credentials,
a region, the endpoint as `AWS_ENDPOINT_URL_S3` for pyarrow, boto3 and s3fs, `MLFLOW_S3_ENDPOINT_URL` for MLflow;
`keys(prefix)`: the bucket's object keys under `prefix`, folder markers left out). `mlflow_server(root, s3)`: a
tracking server on sqlite in `root` whose artifacts go to `s3://BUCKET/mlflow` (proxied: clients log
`mlflow-artifacts:` URIs through the server); yields its URI and stops it afterwards.
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

BUCKET = "bucket"
ACCESS_KEY, SECRET_KEY = "moto-test-key", "moto-test-secret"  # moto accepts any; never a real one


@dataclass
class S3:
    endpoint: str
    env: dict

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name="us-east-1")

    def keys(self, prefix: str = "") -> list[str]:
        """The object keys of BUCKET under `prefix`, sorted, without the empty `folder/` markers pyarrow writes."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []) if not obj["Key"].endswith("/"))


@contextlib.contextmanager
def s3_server():
    """moto's server in a process of its own (its buckets live in that process: each server starts empty)."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(endpoint + "/moto-api/data.json", proc, "moto_server")
        env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_EC2_METADATA_DISABLED": "true",  # no instance-metadata lookups for credentials or region
               "AWS_ENDPOINT_URL_S3": endpoint, "MLFLOW_S3_ENDPOINT_URL": endpoint}
        s3 = S3(endpoint, env)
        s3.client().create_bucket(Bucket=BUCKET)
        yield s3
    finally:
        _stop(proc)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(root: Path, s3: S3):
    """An MLflow tracking server on `root`/mlflow.db, artifacts proxied to s3://BUCKET/mlflow; yields its URI."""
    port = free_port()
    env = {**os.environ, **s3.env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job workers
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
           "--artifacts-destination", f"s3://{BUCKET}/mlflow", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    with open(root / "mlflow-server.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    try:
        _wait_for(uri + "/health", proc, f"mlflow server (log: {root / 'mlflow-server.log'})")
        yield uri
    finally:
        _stop(proc)


def _wait_for(url: str, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:  # an answer
            return
        except OSError:
            assert proc.poll() is None, f"{what} exited with {proc.returncode}"
            assert time.monotonic() < deadline, f"{what} did not answer on {url} within {timeout:g} s"
            time.sleep(0.25)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
