"""A real cluster on loopback (tests/cluster_fixtures.py): a Ray head and a second Ray node started as separate
`ray start` processes, an MLflow tracking server (`mlflow server`, sqlite store, artifacts in a temp dir), all in
a private network namespace whose only interface is `lo`, and the search stage run with RAY_ADDRESS /
MLFLOW_TRACKING_URI: its trials run on both nodes (their recorded Ray node ids), checkpoint to the shared
storage_path and log to the server. The nodes' workers get the code shipped by the driver
(`runtime_env.py_modules`), no PYTHONPATH. Every process the test starts is killed at the end, pass or fail."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.cluster_fixtures import LOOPBACK, start_cluster
from tests.search_fixtures import make_clips

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def cluster():
    with start_cluster() as c:
        yield {"root": c.root, "address": c.address, "uri": c.uri, "env": c.env, "ns": c.ns, "cluster": c}


@pytest.mark.slow  # Ray cluster
def test_search_runs_trials_on_both_nodes_and_logs_to_the_tracking_server(cluster):
    from stages import pretrain

    root, env, ns = cluster["root"], cluster["env"], cluster["ns"]
    shared = root / "shared"  # what every node sees: clips, pretrained model, Ray storage_path
    make_clips(shared / "clips", per_split={"train": 3, "val": 2})
    params = {
        "extract": {"modalities": ["rgb"], "size": 16, "frames": 4},
        "pretrain": {"modalities": ["rgb"], "epochs": 1, "batch_size": 16},
        "search": {"modality": "rgb", "cells": ["gru"], "sih": [False], "layers": [["fc7"]], "baselines": [1],
                   # through a pyarrow filesystem URI, as an object store (s3://, gs://) would be
                   "epochs": 2, "batch_size": 4, "storage_path": (shared / "ray").as_uri()},
        "evaluate": {"modalities": ["rgb"]},
        "mlflow": {"experiment": "cluster"},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    pretrain.main(["--params", str(root / "params.yaml"), "--clips", str(shared / "clips"),
                   "--out", str(shared / "pretrained")])
    run_env = {**env, "RAY_ADDRESS": cluster["address"], "MLFLOW_TRACKING_URI": cluster["uri"]}
    done = subprocess.run([*ns, sys.executable, "-m", "stages.search", "--params", str(root / "params.yaml"),
                           "--clips", str(shared / "clips"), "--pretrained", str(shared / "pretrained"),
                           "--out", str(root / "search"), "--quiet"],
                          cwd=REPO, env=run_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    trials = json.loads((root / "search" / "trials.json").read_text())
    info = json.loads((root / "search" / "search.json").read_text())
    assert [t["status"] for t in trials] == ["ok", "ok"], [t["error"] for t in trials]
    # two distinct Ray nodes ran them, both on loopback: in the namespace Ray finds no other interface to put in
    # place of --node-ip-address 127.0.0.1, so only the node ids tell the nodes apart
    assert len({t["node_id"] for t in trials}) == 2, trials
    assert all(t["node_ip"] == LOOPBACK for t in trials), [t["node_ip"] for t in trials]
    assert info["tracking_uri"] == cluster["uri"]
    for t in trials:  # per-epoch checkpoints written by each node to the shared storage_path
        assert list((shared / "ray").glob(f"search-rgb-*/{t['name']}_*/checkpoint_*/epoch-*.pt")), t["name"]

    # queried through the server, from inside the namespace
    children = cluster["cluster"].children(info["experiment_id"], info["parent_run_id"])
    assert sorted(c["run_id"] for c in children) == sorted(t["mlflow_run_id"] for t in trials)
    assert {c["node_id"] for c in children} == {t["node_id"] for t in trials}
    assert all(c["status"] == "FINISHED" and "val_acc" in c["metrics"] for c in children), children
    # artifacts go through the server into its --artifacts-destination
    assert list((root / "artifacts").rglob("gate_stats.json"))
