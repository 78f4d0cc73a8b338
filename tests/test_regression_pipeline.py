"""task: regression end to end on a tiny synthetic landmark set: ingest, extract, pretrain, search (3 trials),
select, evaluate and `prernn predict`, by calling the stage mains in order (as `dvc repro` would)."""
import csv
import json
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from pipeline.params import ParamsError, validate_params

PARAMS = {
    "task": "regression",
    "data": {"source": "synthetic_landmarks", "val_fraction": 0.25, "test_fraction": 0.25,
             "landmarks": {"points": 8, "clips": 12, "frames": 8, "size": 32, "seed": 0}},
    "extract": {"frames": 6, "size": 16, "modalities": ["rgb"], "workers": 1, "flow_method": "farneback"},
    "pretrain": {"backbone": "vgg_mini", "modalities": ["rgb"], "epochs": 4, "batch_size": 8},
    "search": {"modality": "rgb", "cells": ["gru"], "layers": [["fc7"]], "sih": [False, True], "baselines": [1],
               "epochs": 2, "batch_size": 4, "cpus_per_trial": 1, "storage_path": "ray_results"},
    "evaluate": {"epochs": 2, "modalities": ["rgb"]},
    "regression": {"threshold": 0.5, "normalize": "bbox"},  # a loose threshold: the tiny models are coarse
}


def test_params_regression_defaults_and_checks():
    p = validate_params(PARAMS)
    assert p.task == "regression" and p.select.metric == "val_auc" and p.select.mode == "max"
    assert validate_params({**PARAMS, "select": {"metric": "val_nme", "mode": "min"}}).select.metric == "val_nme"
    assert validate_params({}).select.metric == "val_acc"  # classification unchanged
    with pytest.raises(ParamsError, match="task regression needs landmark annotations"):
        validate_params({**PARAMS, "data": {"source": "synthetic"}})
    with pytest.raises(ParamsError, match="set task: regression"):
        validate_params({"data": {"source": "synthetic_landmarks"}})
    with pytest.raises(ParamsError, match="data.root"):
        validate_params({**PARAMS, "data": {"source": "300vw"}})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    import os

    from stages import evaluate, extract, ingest, pretrain, search, select

    root = tmp_path_factory.mktemp("regression")
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    old = os.getcwd()
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
    mp.delenv("RAY_ADDRESS", raising=False)
    os.chdir(root)
    try:
        prm = ["--params", "params.yaml"]
        ingest.main(prm + ["--out", "data/ingest"])
        extract.main(prm + ["--manifest", "data/ingest/manifest.csv", "--out", "data/clips",
                            "--report", "reports/extract.json", "--no-progress"])
        pretrain.main(prm + ["--clips", "data/clips", "--out", "models/pretrained"])
        search.main(prm + ["--clips", "data/clips", "--pretrained", "models/pretrained", "--out", "search", "--quiet"])
        select.main(prm + ["--search", "search", "--out", "reports"])
        evaluate.main(prm + ["--clips", "data/clips", "--pretrained", "models/pretrained", "--selection",
                             "reports/selection.json", "--search", "search", "--out", "models/final.pt",
                             "--metrics", "metrics.json", "--plots", "reports"])
        yield root
    finally:
        os.chdir(old)
        mp.undo()


def test_ingest_and_extract_write_landmarks(run_dir):
    rows = list(csv.DictReader((run_dir / "data/ingest/manifest.csv").open()))
    assert len(rows) == 12 and {r["split"] for r in rows} == {"train", "val", "test"}
    video = run_dir / rows[0]["path"]
    assert video.name == "vid.avi" and len(list((video.parent / "annot").glob("*.pts"))) == 8
    f = run_dir / "data/clips/train-000.arrow"
    with pa.memory_map(str(f)) as src:
        table = pa.ipc.open_file(src).read_all()
    col = table.column("landmarks").combine_chunks()
    assert col.type.value_type == pa.float32() and tuple(col.type.shape) == (6, 8, 2)
    pts = col.to_numpy_ndarray()
    assert 0.0 < pts.min() and pts.max() < 1.0

    from pipeline.dataset import ClipDataset, FrameDataset

    ds = ClipDataset(run_dir / "data/clips", "train", "rgb")
    x, y = ds[0]
    assert ds.task == "regression" and ds.num_classes == 16 and tuple(y.shape) == (6, 8, 2) and y.dtype.is_floating_point
    assert tuple(FrameDataset(run_dir / "data/clips", "val", "rgb")[0][1].shape) == (8, 2)


def test_pretrain_search_select_use_the_landmark_auc(run_dir):
    pre = json.loads((run_dir / "models/pretrained/pretrain.json").read_text())["rgb"]
    assert 0.0 <= pre["val_frame_auc"] <= 1.0 and pre["val_frame_nme"] > 0
    trials = json.loads((run_dir / "search/trials.json").read_text())
    assert [t["name"] for t in trials] == ["prernn-gru-fc7", "prernn-gru-sih-fc7", "traditional-gru-1"]
    assert all(t["status"] == "ok" and 0 <= t["val_auc"] <= 1 and t["val_nme"] > 0 for t in trials)
    assert all(t["val_acc"] is None for t in trials)
    sel = json.loads((run_dir / "reports/selection.json").read_text())
    assert sel["metric"] == "val_auc" and sel["selected"]["score"] == max(
        t["val_auc"] for t in trials if t["kind"] == "prernn")
    table = (run_dir / "reports/table1.md").read_text()
    assert "val_auc" in table and f"{trials[0]['val_auc']:.3f}" in table


def test_evaluate_reports_auc_nme_and_predict_prints_landmarks(run_dir, capsys):
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["task"] == "regression" and 0 <= m["test_auc"] <= 1 and m["test_nme"] > 0
    assert 0 <= m["test_failure_rate"] <= 1 and m["baseline"] == "traditional-gru-1"
    assert m["gain"] == pytest.approx(m["test_auc"] - m["baseline_test_auc"])
    ced = list(csv.DictReader((run_dir / "reports/ced.csv").open()))
    assert {r["role"] for r in ced} == {"selected", "baseline"}
    fr = [float(r["fraction"]) for r in ced if r["role"] == "selected"]
    assert fr == sorted(fr)  # a cumulative distribution
    history = list(csv.DictReader((run_dir / "reports/history.csv").open()))
    assert len(history) == 2 and "test_auc" in history[0]

    from pipeline.cli import main

    rows = list(csv.DictReader((run_dir / "data/ingest/manifest.csv").open()))
    video = str(run_dir / rows[0]["path"])
    capsys.readouterr()
    assert main(["predict", str(run_dir / "models/final.pt"), video, "--json"]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(out) == 6 and all(len(r["landmarks"]) == 8 for r in out)
    assert [r["frame"] for r in out] == sorted(r["frame"] for r in out)
    assert main(["predict", str(run_dir / "models/final.pt"), video, "--stream", "--max-frames", "3", "--json"]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["frame"] for r in out] == [0, 1, 2] and all(len(r["landmarks"]) == 8 for r in out)
