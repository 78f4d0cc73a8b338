"""pipeline.search.trainable + pipeline.search.tuner: real Ray trials on a local Ray, MLflow child runs, NaN trial, restore."""
import json

import pytest
import torch

import prernn
from pipeline.core import tracking
from pipeline.core.params import MlflowParams, SearchParams
from pipeline.search.results import write_outputs
from pipeline.search.space import build_space
from pipeline.search.trial_config import ROW_KEYS
from pipeline.search.trunk_cache import SplitTensors, trunk_features
from pipeline.search.tuner import SearchInputs, run_search
from pipeline.training.tasks import Classification
from tests import faults
from tests.search_fixtures import toy_tensors

CONTRACT_KEYS = set(ROW_KEYS) | {"gate_stats", "history", "config"}


@pytest.fixture(scope="module")
def ray_session():
    import ray
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="error")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs():
    torch.manual_seed(0)
    bb = prernn.create_backbone("vgg_mini", 3, input_size=16, width=16)
    boundary = prernn.trunk_boundary(bb)
    splits = {}
    for split, seed in (("train", 0), ("val", 1)):
        x, y = toy_tensors(n_per_class=4 if split == "train" else 2, seed=seed)
        splits[split] = trunk_features(bb, torch.utils.data.TensorDataset(x, y), boundary)
    ckpt = {"config": bb.config, "state_dict": bb.state_dict(), "meta": {"class_names": ["a", "b", "c"]}}
    return ckpt, splits, prernn.candidate_layers(bb), boundary


def _search(tmp, **kw):
    return SearchParams(cells=["gru", "lstm"], sih=[True], layers=[["fc7"]], baselines=[], epochs=2, batch_size=4,
                        max_failures=0, storage_path=str(tmp / "ray"), **kw)


@pytest.mark.slow  # Ray search
def test_search_runs_trials_logs_child_runs_and_marks_nan_trial_failed(ray_session, inputs, tmp_path, monkeypatch):
    from pipeline.search import tuner
    ckpt, splits, candidates, boundary = inputs
    search = _search(tmp_path, baseline_hidden_size=8)
    space = build_space(search, candidates) + [build_space(SearchParams(cells=["vrnn"], sih=[False],
                                                baselines=[1]), candidates)[-1]]
    faults.install(monkeypatch, {"traditional-vrnn-1": "nan"})
    run_search = tuner.run_search
    assert [a["name"] for a in space] == ["prernn-gru-sih-fc7", "prernn-lstm-sih-fc7", "traditional-vrnn-1"]
    mlflow = MlflowParams(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="t")
    inputs = SearchInputs(ckpt, {boundary: splits}, space, candidates, boundary, Classification())
    rows, info = run_search(search, mlflow, inputs, base_dir=tmp_path, verbose=0)
    assert [r["name"] for r in rows] == [a["name"] for a in space]
    assert all(CONTRACT_KEYS <= set(r) for r in rows)
    ok, bad = rows[:2], rows[2]
    assert [r["status"] for r in ok] == ["ok", "ok"] and bad["status"] == "failed"
    assert "NonFiniteLoss" in bad["error"] and "nan" in bad["error"]
    for r in ok:
        assert r["error"] is None and len(r["history"]) == 2 and 0 <= r["val_acc"] <= 1
        assert r["recurrent_params"] > 0 and r["epochs_to_95"] in (1, 2) and r["clips_per_sec"] > 0
        assert list(r["gate_stats"]) == ["fc7"] and r["gate_stats"]["fc7"]["cell"] == r["cell"]
        assert r["config"]["lr_new"] == search.lr_new and r["config"]["layers"] == ["fc7"]
    # one MLflow child run per trial under the one parent run
    tracker = tracking.Tracker(info["tracking_uri"])
    children = tracker.child_runs(info["experiment_id"], info["parent_run_id"])
    assert sorted(c.data.tags[tracking.TRIAL_TAG] for c in children) == sorted(r["name"] for r in rows)
    by_id = {c.info.run_id: c for c in children}
    assert {r["mlflow_run_id"] for r in rows} == set(by_id)
    assert by_id[bad["mlflow_run_id"]].info.status == "FAILED"
    assert by_id[ok[0]["mlflow_run_id"]].info.status == "FINISHED"
    assert by_id[ok[0]["mlflow_run_id"]].data.params["cell"] == "gru"
    client = tracker.client
    assert len(client.get_metric_history(ok[0]["mlflow_run_id"], "val_acc")) == 2
    assert client.get_run(info["parent_run_id"]).info.status == "FINISHED"
    write_outputs(tmp_path / "search", rows, info)
    trials = json.loads((tmp_path / "search" / "trials.json").read_text())
    assert [t["status"] for t in trials] == ["ok", "ok", "failed"]
    meta = json.loads((tmp_path / "search" / "search.json").read_text())
    assert {"parent_run_id", "experiment_id", "tracking_uri", "backbone", "modality", "candidates",
            "trunk_boundary"} <= set(meta)

    # same inputs again: the finished experiment is restored from storage_path, nothing is retrained
    again, info2 = run_search(search, mlflow, inputs, base_dir=tmp_path, verbose=0)
    assert info2["restored"] and info2["parent_run_id"] == info["parent_run_id"]
    assert [(r["name"], r["status"], r["val_acc"]) for r in again] == [(r["name"], r["status"], r["val_acc"]) for r in rows]
    assert len(tracker.child_runs(info["experiment_id"], info["parent_run_id"])) == 3

    # fresh: retrained from scratch under a new parent run, the same metrics run to run
    fresh, info3 = run_search(search, mlflow, inputs, base_dir=tmp_path, verbose=0, fresh=True)
    assert not info3["restored"] and info3["parent_run_id"] != info["parent_run_id"]
    key = lambda rs: [(r["name"], r["status"], r["val_acc"], r["val_loss"], r["gate_stats"]) for r in rs]  # noqa: E731
    assert key(fresh) == key(rows)


@pytest.mark.slow  # Ray search
def test_same_seed_same_trial_metrics_without_cached_trunk(ray_session, inputs, tmp_path):
    """Two trials with the same config (under two names) in one search train to the same metrics, on uint8 clips
    that travel through Ray's object store with their normaliser and are normalised in the trial."""
    from pipeline.data.dataset import Normalize
    from tests.search_fixtures import TOY_MEAN, TOY_STD

    ckpt, _, candidates, boundary = inputs
    raw = {s: SplitTensors(*toy_tensors(n_per_class=2, seed=i, raw=True), None, Normalize(TOY_MEAN, TOY_STD))
           for i, s in enumerate(("train", "val"))}
    assert raw["train"].x.dtype == torch.uint8
    search = SearchParams(cells=["gru"], sih=[False], layers=[["fc6"]], baselines=[], epochs=2, batch_size=3,
                          cache_trunk=False, storage_path=str(tmp_path / "ray"))
    (arch,) = build_space(search, candidates)
    space = [arch, {**arch, "name": arch["name"] + "-again"}]
    rows, info = run_search(search, MlflowParams(tracking_uri=f"sqlite:///{tmp_path}/m.db"),
                            SearchInputs(ckpt, {None: raw}, space, candidates, boundary, Classification()),
                            base_dir=tmp_path, verbose=0)
    assert [r["status"] for r in rows] == ["ok", "ok"], [r["error"] for r in rows]
    a, b = ([{k: v for k, v in h.items() if k not in ("clips_per_sec", "epoch_seconds")} for h in r["history"]]
            for r in rows)
    assert len(a) == 2 and a == b
    assert rows[0]["gate_stats"] == rows[1]["gate_stats"]
