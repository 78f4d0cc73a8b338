"""A worker node lost mid-search (issue 15, item 1): on a real two-node Ray cluster with an MLflow server
(tests/cluster_fixtures.py), the search stage runs three trials, one per CPU of the two nodes. The first ends;
the other two stall mid-epoch 2 (trained, not yet validated: the test-only `stall:1` fault of tests/faults.py),
one on each node. Then every process of the second node is SIGKILLed (raylet, agents, the trial's worker) and
the head's trial is let go on. The search finishes on the head: the lost trial is retried
(`search.max_failures`) and continues from the epoch-1 checkpoint it had written to the shared storage_path
(epoch 1 trained once, epoch 2 trained again after the one cut off), the finished trial is not trained again,
and MLflow holds exactly one child run per trial, FINISHED, with every epoch's metrics logged once and one
`attempts` step per attempt. The head's health checks are shortened (RAY_health_check_*) so that Ray declares
the node dead within seconds instead of about half a minute."""
import json
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.cluster_fixtures import descends_from, start_cluster, wait_for
from tests.search_fixtures import make_clips, search_args

REPO = Path(__file__).resolve().parents[1]
FINISHED_FIRST = "prernn-gru-fc6"
STALLED = ("prernn-gru-fc7", "traditional-gru-1")
FAULTS = {name: "stall:1" for name in STALLED}
EPOCHS = 2
HEALTH_CHECKS = {"RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "1000",
                 "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3"}


def _trained(signals: Path, name: str) -> list[int]:
    path = signals / f"{name}.trained"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


@pytest.mark.slow
@pytest.mark.faults
def test_a_node_lost_mid_epoch_costs_only_the_epoch_it_was_training():
    from stages import pretrain

    # the nodes' workers import the fault plugin (tests/) from the checkout; the product code is still shipped
    with start_cluster(head_env=HEALTH_CHECKS, node_env={"PYTHONPATH": str(REPO)}) as cluster:
        root = cluster.root
        shared, signals = root / "shared", root / "signals"  # what every node sees: clips, model, storage_path
        signals.mkdir()
        make_clips(shared / "clips", per_split={"train": 3, "val": 2})
        params = {
            "extract": {"modalities": ["rgb"], "size": 16, "frames": 4},
            "pretrain": {"modalities": ["rgb"], "epochs": 1, "batch_size": 16},
            "search": {"modality": "rgb", "cells": ["gru"], "sih": [False], "layers": [["fc6"], ["fc7"]],
                       "baselines": [1], "epochs": EPOCHS, "batch_size": 4, "max_failures": 1,
                       "storage_path": str(shared / "ray")},
            "evaluate": {"modalities": ["rgb"]},
            "mlflow": {"experiment": "node-loss"},
        }
        (shared / "params.yaml").write_text(yaml.safe_dump(params))
        pretrain.main(["--params", str(shared / "params.yaml"), "--clips", str(shared / "clips"),
                       "--out", str(shared / "pretrained")])
        run_env = {**cluster.env, "RAY_ADDRESS": cluster.address, "MLFLOW_TRACKING_URI": cluster.uri,
                   "PYTHONPATH": str(REPO)}
        driver = cluster.procs.start([*cluster.ns, sys.executable, "-m", "tests.faults", json.dumps(FAULTS),
                                      str(signals), *search_args(shared)], root / "driver.log", run_env)

        wait_for(lambda: all((signals / f"{n}.paused").exists() for n in STALLED), 180,
                 "both stalled trials mid-epoch 2", [driver])
        stalled = {n: json.loads((signals / f"{n}.paused").read_text()) for n in STALLED}
        on_node2 = [n for n in STALLED if descends_from(stalled[n]["pid"], cluster.node2.pid)]
        assert len(on_node2) == 1, f"expected one stalled trial on each node: {stalled}, node2 pid {cluster.node2.pid}"
        (lost,), (kept,) = on_node2, [n for n in STALLED if n not in on_node2]
        state = json.loads(next((shared / "ray").glob("search-rgb-*/prernn_search.json")).read_text())
        before = {r["trial"]: r for r in cluster.children(state["experiment_id"], state["parent_run_id"])}
        assert before[FINISHED_FIRST]["status"] == "FINISHED", before  # it ended before the loss
        assert _trained(signals, lost) == [1, 2]  # epoch 2 begun on node2, not reported

        cluster.kill_node2()
        lost_at = time.monotonic()
        for name in STALLED:  # a retry that started from scratch would stall again: released, it shows as retraining
            (signals / f"{name}.release").touch()
        driver.wait(240)
        print(f"the search finished {time.monotonic() - lost_at:.1f} s after node2 was killed")
        assert driver.returncode == 0, (root / "driver.log").read_text(errors="replace")[-4000:]
        after = cluster.children(state["experiment_id"], state["parent_run_id"])
        trials = {t["name"]: t for t in json.loads((shared / "search" / "trials.json").read_text())}
        info = json.loads((shared / "search" / "search.json").read_text())
        trained = {n: _trained(signals, n) for n in trials}


    assert info["parent_run_id"] == state["parent_run_id"] and not info["restored"]
    assert {n: t["status"] for n, t in trials.items()} == {n: "ok" for n in (FINISHED_FIRST, *STALLED)}
    assert all([h["epoch"] for h in t["history"]] == [1, 2] for t in trials.values())
    assert trials[lost]["node_id"] == stalled[kept]["node_id"] != stalled[lost]["node_id"]  # it finished on the head
    # the finished trial and the head's trial trained each epoch once; the lost one continued from its epoch-1
    # checkpoint: only the epoch cut off by the kill was trained twice
    assert trained == {FINISHED_FIRST: [1, 2], kept: [1, 2], lost: [1, 2, 2]}
    children = {c["trial"]: c for c in after}
    assert len(after) == 3 and set(children) == set(trials)
    assert {n: c["run_id"] for n, c in children.items()} == {n: t["mlflow_run_id"] for n, t in trials.items()}
    assert all(c["status"] == "FINISHED" for c in after), after
    for name, child in children.items():
        epochs = {k: v for k, v in child["steps"].items() if k != "attempts"}
        assert epochs and all(steps == [1, 2] for steps in epochs.values()), (name, epochs)
        assert child["steps"]["attempts"] == ([1, 2] if name == lost else [1]), (name, child["steps"]["attempts"])
