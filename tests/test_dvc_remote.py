"""The team recipe (docs/guide/team.md) on the S3 protocol: a DVC remote, Ray's storage_path and MLflow's artifacts
in one bucket of an S3-compatible server on loopback.

No real object store installs here: the server is moto's (`moto[server]`, tests/s3_fixtures.py), an emulator of
the S3 API that Ray's own tests use; DVC (dvc-s3), pyarrow (Ray Tune) and MLflow (boto3) talk to it as to any
S3 endpoint. In a temporary copy of the project (tests/dvc_project.py) with tiny params, `search.storage_path:
s3://bucket/ray` and an MLflow tracking server whose artifacts go to `s3://bucket/mlflow`:

- `dvc remote add -d team s3://bucket/dvcstore` + `endpointurl`, credentials from the environment (never in
  .dvc/config), `dvc repro`, `dvc push`, `git push` to a bare repository on disk; the cache, the Ray results and
  the MLflow artifacts (Table 1 of the select stage, the evaluate stage's model) are objects in the bucket;
- a fresh `git clone` with its credentials in `.dvc/config.local` (`dvc remote modify --local`) `dvc pull`s, and
  `dvc status` / `dvc repro` find everything up to date: no stage runs, no output changes;
- `dvc exp push` of an experiment queued and run in the project, `dvc exp pull` + `dvc exp apply` in the clone:
  its model comes from the bucket, byte for byte;
- rerunning the search stage restores the search from the bucket: no trial trains again, the same MLflow runs.

Quick ones beside them: StoragePath (pipeline.core.storage) over `s3://`, and an artifact that
`pipeline.serve.mlflow_model.log_reports` logs straight to the bucket (no server: `MLFLOW_S3_ENDPOINT_URL`).
"""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.dvc_project import make_project
from tests.dvc_project import run as _run
from tests.s3_fixtures import ACCESS_KEY, BUCKET, SECRET_KEY, mlflow_server, s3_server

STAGES = ("ingest", "extract", "pretrain", "search", "select", "evaluate")
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
EXP = "longer-evaluate"


def _tiny(tracking_uri: str) -> dict:
    return {
        "data": {"synthetic": {"classes": ["swipe_left", "swipe_right", "push", "pull"], "clips_per_class": 5,
                               "frames": 8, "size": 24}},
        "extract": {"frames": 4, "size": 16, "modalities": ["rgb"], "workers": 1},
        "pretrain": {"epochs": 1, "modalities": ["rgb"]},
        "search": {"cells": ["gru"], "layers": [["fc6"]], "sih": [False], "baselines": [1], "epochs": 1,
                   "batch_size": 4, "seeds": 1, "augment_copies": 1, "storage_path": f"s3://{BUCKET}/ray"},
        "evaluate": {"epochs": 1, "modalities": ["rgb"], "register_name": "remote-final"},
        "mlflow": {"tracking_uri": tracking_uri, "experiment": "remote"},
    }


def _outputs(root: Path) -> dict[str, tuple[str, int]]:
    """{path: (sha256, mtime_ns)} of every file the pipeline wrote (DVC-cached and git-kept outputs)."""
    out = {}
    for top in ("data", "models", "search", "reports", "metrics.json"):
        for f in sorted([root / top] if (root / top).is_file() else (root / top).rglob("*")):
            if f.is_file():
                out[f.relative_to(root).as_posix()] = (hashlib.sha256(f.read_bytes()).hexdigest(), f.stat().st_mtime_ns)
    return out


def _md5_in_remote(s3, path: Path) -> bool:
    """Whether DVC's cache object of file `path` (md5, DVC 3 layout files/md5/xx/yyyy) is in the S3 remote."""
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    return f"dvcstore/files/md5/{md5[:2]}/{md5[2:]}" in s3.keys("dvcstore/")


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    """The project reproduced against the bucket and pushed (DVC remote + bare git repository), and its clone."""
    base = tmp_path_factory.mktemp("team")
    with s3_server() as s3, mlflow_server(base, s3) as tracking_uri:
        root = base / "project"
        root.mkdir()
        env = {**make_project(root, _tiny(tracking_uri)), **s3.env}
        env.pop("MLFLOW_S3_ENDPOINT_URL")  # the stages log through the server: only it needs the bucket's endpoint
        (root / ".gitignore").write_text("__pycache__/\n")
        _run(["dvc", "remote", "add", "-d", "team", f"s3://{BUCKET}/dvcstore"], root, env)
        _run(["dvc", "remote", "modify", "team", "endpointurl", s3.endpoint], root, env)
        repro = _run(["dvc", "repro"], root, env)
        _run(["dvc", "push"], root, env)
        _run(["git", "init", "-q", "--bare", str(base / "origin.git")], root, env)
        _run(["git", "remote", "add", "origin", str(base / "origin.git")], root, env)
        _run(["git", "add", "-A"], root, env)
        _run([*GIT, "commit", "-qm", "tiny project"], root, env)
        _run(["git", "push", "-q", "origin", "HEAD:main"], root, env)
        clone = base / "clone"
        _run(["git", "clone", "-q", "-b", "main", str(base / "origin.git"), str(clone)], base, env)
        # the clone: credentials in its git-ignored .dvc/config.local, none in the environment
        clone_env = {k: v for k, v in env.items() if not k.startswith("AWS_")}
        _run(["dvc", "remote", "modify", "--local", "team", "access_key_id", ACCESS_KEY], clone, clone_env)
        _run(["dvc", "remote", "modify", "--local", "team", "secret_access_key", SECRET_KEY], clone, clone_env)
        yield {"s3": s3, "root": root, "env": env, "clone": clone, "clone_env": clone_env, "repro": repro,
               "tracking_uri": tracking_uri}


@pytest.mark.slow
def test_push_puts_the_cache_the_ray_results_and_the_mlflow_artifacts_in_the_bucket(team):
    s3, root, env = team["s3"], team["root"], team["env"]
    for stage in STAGES:
        assert f"Running stage '{stage}'" in team["repro"]
    config = (root / ".dvc" / "config").read_text()
    assert f"url = s3://{BUCKET}/dvcstore" in config and f"endpointurl = {s3.endpoint}" in config
    assert ACCESS_KEY not in config and SECRET_KEY not in config  # credentials never in the committed config
    assert "Everything is up to date" in _run(["dvc", "push"], root, env)
    for out in ("models/final.pt", "data/clips", "models/pretrained", "search/trials.json"):
        path = root / out
        files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
        assert files and all(_md5_in_remote(s3, f) for f in files), out
    # Ray's results: the experiment state and every trial's checkpoint on S3, none on disk
    search = json.loads((root / "search" / "search.json").read_text())
    assert search["storage_path"] == f"s3://{BUCKET}/ray" and search["experiment_dir"].startswith(f"s3://{BUCKET}/ray/")
    exp = search["experiment_dir"][len(f"s3://{BUCKET}/"):]
    keys = s3.keys(exp + "/")
    assert f"{exp}/prernn_search.json" in keys and any(re.search(r"/experiment_state-[^/]+\.json$", k) for k in keys)
    trials = json.loads((root / "search" / "trials.json").read_text())
    assert len(trials) == 2 and all(t["status"] == "ok" for t in trials)
    for t in trials:
        assert any(re.search(rf"/{t['configuration']}_[^/]+/checkpoint_\d+/", k) for k in keys), (t, keys)
    assert not (root / "ray_results").exists()
    # MLflow's artifacts, proxied by the server to s3://bucket/mlflow: the select stage's Table 1 on the parent
    # run, the evaluate stage's model
    mlflow_keys = s3.keys("mlflow/")
    run = search["parent_run_id"]
    assert any(k.endswith(f"/{run}/artifacts/select/table1.md") for k in mlflow_keys), mlflow_keys
    assert any(re.search(r"/MLmodel$", k) for k in mlflow_keys)


@pytest.mark.slow
def test_a_fresh_clone_pulls_and_recomputes_nothing(team):
    root, clone, env = team["root"], team["clone"], team["clone_env"]
    assert not (clone / "models" / "final.pt").exists()
    assert "access_key_id" in (clone / ".dvc" / "config.local").read_text()
    assert "config.local" in _run(["git", "check-ignore", ".dvc/config.local"], clone, env)
    _run(["dvc", "pull"], clone, env)
    pulled = _outputs(clone)
    original = _outputs(root)
    assert {k: v[0] for k, v in pulled.items()} == {k: v[0] for k, v in original.items()}
    assert "Data and pipelines are up to date" in _run(["dvc", "status"], clone, env)
    out = _run(["dvc", "repro"], clone, env)
    assert "Running stage" not in out, out
    for stage in STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in out, out
    assert _outputs(clone) == pulled  # same bytes, same mtimes: nothing rewritten
    assert _run(["git", "status", "--porcelain"], clone, env).strip() == ""


@pytest.mark.slow
def test_a_queued_experiment_goes_through_git_and_the_bucket(team):
    s3, root, env, clone, clone_env = team["s3"], team["root"], team["env"], team["clone"], team["clone_env"]
    _run(["dvc", "exp", "run", "--queue", "-n", EXP, "-S", "evaluate.epochs=2"], root, env)
    try:
        out = _run(["dvc", "exp", "run", "--run-all"], root, env)  # the queue's worker, until the queue is empty
    finally:
        subprocess.run(["dvc", "queue", "stop"], cwd=root, env=env, capture_output=True, timeout=120)
    assert "Running stage 'evaluate'" in out and "Running stage 'search'" not in out, out
    _run(["dvc", "exp", "push", "origin", EXP], root, env)
    assert EXP in _run(["git", "ls-remote", "origin", "refs/exps/*"], root, env)
    _run(["dvc", "exp", "apply", EXP], root, env)  # its results, from the project's own cache
    model = (root / "models" / "final.pt").read_bytes()
    assert _md5_in_remote(s3, root / "models" / "final.pt")  # pushed to the DVC remote with the experiment
    _run(["dvc", "exp", "pull", "origin", EXP], clone, clone_env)
    assert EXP in _run(["dvc", "exp", "list", "--all-commits"], clone, clone_env)
    _run(["dvc", "exp", "apply", EXP], clone, clone_env)
    assert (clone / "models" / "final.pt").read_bytes() == model
    assert json.loads((clone / "metrics.json").read_text()) == json.loads((root / "metrics.json").read_text())
    assert "Data and pipelines are up to date" in _run(["dvc", "status"], clone, clone_env)


@pytest.mark.slow
def test_rerunning_the_search_restores_it_from_the_bucket(team, tmp_path):
    root, env = team["root"], team["env"]
    before = json.loads((root / "search" / "trials.json").read_text())
    _run([sys.executable, "-m", "stages.search", "--params", "params.yaml", "--clips", "data/clips", "--pretrained",
          "models/pretrained", "--out", str(tmp_path / "search"), "--quiet"], root, env)
    info = json.loads((tmp_path / "search" / "search.json").read_text())
    after = json.loads((tmp_path / "search" / "trials.json").read_text())
    assert info["restored"] is True and info["experiment_dir"].startswith(f"s3://{BUCKET}/ray/")
    assert info["parent_run_id"] == json.loads((root / "search" / "search.json").read_text())["parent_run_id"]
    assert [(t["name"], t["mlflow_run_id"], t["val_acc"]) for t in after] == \
           [(t["name"], t["mlflow_run_id"], t["val_acc"]) for t in before]


def test_storage_path_reads_writes_globs_and_removes_on_s3(monkeypatch):
    from pipeline.core.storage import StoragePath

    with s3_server() as s3:
        for key, value in s3.env.items():
            monkeypatch.setenv(key, value)  # pyarrow's S3FileSystem reads AWS_ENDPOINT_URL_S3
        root = StoragePath.resolve(f"s3://{BUCKET}/ray/", "/nonexistent")
        assert str(root) == f"s3://{BUCKET}/ray" and root.local is None
        exp = root / "search-rgb-abc"
        (exp / "prernn_search.json").write_text('{"parent_run_id": "p"}')
        (exp / "gru_1" / "checkpoint_000000" / "trial.pt").write_text("x")
        assert s3.keys("ray/") == ["ray/search-rgb-abc/gru_1/checkpoint_000000/trial.pt",
                                   "ray/search-rgb-abc/prernn_search.json"]
        assert (exp / "prernn_search.json").read_text() == '{"parent_run_id": "p"}'
        assert [p.name for p in exp.glob("*/checkpoint_*/*.pt")] == ["trial.pt"]
        exp.rmtree()
        assert not exp.exists() and s3.keys("ray/") == []


@pytest.mark.slow  # about 15 s: a new sqlite store's migrations
def test_log_reports_puts_an_artifact_straight_into_the_bucket(tmp_path, monkeypatch):
    """No server: the client writes to s3:// itself, so it needs MLFLOW_S3_ENDPOINT_URL (mlflow #1813)."""
    from mlflow.tracking import MlflowClient

    from pipeline.serve.mlflow_model import log_reports

    with s3_server() as s3:
        for key, value in s3.env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("AWS_ENDPOINT_URL_S3")  # MLflow's own variable alone
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        uri = f"sqlite:///{tmp_path}/mlflow.db"
        client = MlflowClient(uri)
        exp = client.create_experiment("direct", artifact_location=f"s3://{BUCKET}/mlflow-direct")
        run = client.create_run(exp).info.run_id
        (tmp_path / "table1.md").write_text("| LSTM |\n")
        assert log_reports({"tracking_uri": uri, "parent_run_id": run}, [tmp_path / "table1.md"],
                           artifact_path="select")
        assert s3.keys("mlflow-direct/") == [f"mlflow-direct/{run}/artifacts/select/table1.md"]
        obj = s3.client().get_object(Bucket=BUCKET, Key=f"mlflow-direct/{run}/artifacts/select/table1.md")
        assert obj["Body"].read() == b"| LSTM |\n"


def test_a_storage_path_with_uri_options_is_refused_with_the_fix():
    from pipeline.core.params import ParamsError
    from pipeline.core.storage import StoragePath

    with pytest.raises(ParamsError, match=r"search.storage_path: 's3://b/ray\?endpoint_override=h:9000'.*AWS_ENDPOINT_URL_S3"):
        StoragePath.resolve("s3://b/ray?endpoint_override=h:9000", "/")
