"""task: regression end to end on a tiny synthetic landmark set, through `dvc repro` in a temporary copy of the
project (tests/dvc_project.py): ingest, extract, pretrain, search (3 trials), select, evaluate, then `prernn predict`
and the MLflow pyfunc predictor the evaluate stage registered; plus a fast check that the landmark model learns
(AUC at the default NME threshold 0.08 above 0)."""
import csv
import json
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline.checks import validate_params
from pipeline.core.params import ParamsError
from tests.dvc_project import make_project, run
from tests.mlflow_store import use_mlflow_store

PARAMS = {
    "task": "regression",
    "data": {"source": "synthetic_landmarks", "val_fraction": 0.25, "test_fraction": 0.25,
             "landmarks": {"points": 8, "clips": 12, "frames": 8, "size": 32, "seed": 0}},
    "extract": {"frames": 6, "size": 16, "modalities": ["rgb"], "workers": 1, "flow_method": "farneback"},
    "pretrain": {"backbone": "vgg_mini", "modalities": ["rgb"], "epochs": 1, "batch_size": 8},
    "search": {"modality": "rgb", "cells": ["gru"], "layers": [["fc7"]], "sih": [False, True], "baselines": [1],
               "epochs": 1, "batch_size": 4, "cpus_per_trial": 1, "storage_path": "ray_results", "seeds": 1},
    "evaluate": {"epochs": 1, "modalities": ["rgb"], "register_name": "e2e-reg-final"},
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
    """A temporary copy of the project with the tiny regression params, reproduced once by `dvc repro`."""
    root = tmp_path_factory.mktemp("regression")
    env = make_project(root, PARAMS)
    out = run(["dvc", "repro"], root, env)
    for stage in ("ingest", "extract", "pretrain", "search", "select", "evaluate"):
        assert f"Running stage '{stage}'" in out
    return root


@pytest.mark.slow  # dvc repro
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

    from pipeline.data.dataset import ClipDataset, FrameDataset

    ds = ClipDataset(run_dir / "data/clips", "train", "rgb")
    x, y = ds[0]
    assert ds.task == "regression" and ds.num_classes == 16 and tuple(y.shape) == (6, 8, 2) and y.dtype.is_floating_point
    assert tuple(FrameDataset(run_dir / "data/clips", "val", "rgb")[0][1].shape) == (8, 2)


@pytest.mark.slow  # dvc repro
def test_pretrain_search_select_use_the_landmark_auc(run_dir):
    pre = json.loads((run_dir / "models/pretrained/pretrain.json").read_text())["rgb"]
    assert 0.0 <= pre["val_frame_auc"] <= 1.0 and pre["val_frame_nme"] > 0
    trials = json.loads((run_dir / "search/trials.json").read_text())
    assert [t["name"] for t in trials] == ["prernn-gru-fc7", "prernn-gru-sih-fc7", "traditional-gru-1"]
    assert all(t["status"] == "ok" and 0 <= t["val_auc"] <= 1 and t["val_nme"] > 0 for t in trials)
    assert all(t["val_acc"] is None for t in trials)
    sel = json.loads((run_dir / "reports/selection.json").read_text())
    # ranked by the landmark AUC: each PreRNN's searched score is its trial's val_auc, and the selected one has the
    # best score among the kept configurations, or, when none is kept, among the reverted ones scored as reverted
    ranked = {r["name"]: r for r in sel["trials"] if r["kind"] == "prernn"}
    assert sel["metric"] == "val_auc"
    assert all(ranked[t["name"]]["searched_score"] == t["val_auc"] for t in trials if t["kind"] == "prernn")
    kept = [r["score"] for r in ranked.values() if r["decision"] == "kept" and r["score"] is not None]
    scored = kept or [r["score"] for r in ranked.values() if r["score"] is not None]
    assert sel["selected"]["score"] == max(scored)
    table = (run_dir / "reports/table1.md").read_text()
    assert "val_auc" in table and f"{trials[0]['val_auc']:.3f}" in table


@pytest.mark.slow  # dvc repro
def test_evaluate_reports_auc_nme_and_predict_prints_landmarks(run_dir, capsys):
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["task"] == "regression" and 0 <= m["test_auc"] <= 1 and m["test_nme"] > 0
    assert 0 <= m["test_failure_rate"] <= 1 and m["baseline"] == "traditional-gru-1"
    assert m["gain"] == pytest.approx(m["test_auc"] - m["baseline_test_auc"])
    ced = list(csv.DictReader((run_dir / "reports/regression/ced.csv").open()))
    assert {r["role"] for r in ced} == {"selected", "baseline"}
    fr = [float(r["fraction"]) for r in ced if r["role"] == "selected"]
    assert fr == sorted(fr)  # a cumulative distribution
    history = list(csv.DictReader((run_dir / "reports/history.csv").open()))
    assert len(history) == 1 and "test_auc" in history[0]
    # dvc.yaml's `reports/${task}`: the CED is this task's plot, and no confusion matrix is declared
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    plots = json.loads(run(["dvc", "plots", "show", "--json"], run_dir, env))
    assert "errors" not in plots and "reports/regression/ced.csv" in plots["data"]
    assert not any("confusion" in p or "classification" in p for p in plots["data"])

    from pipeline.serve.cli import main

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


@pytest.mark.slow  # dvc repro
def test_mlflow_pyfunc_predictor_returns_landmarks(run_dir, monkeypatch):
    """The pyfunc predictor evaluate registered (`<register_name>-predictor`), loaded back from the temporary
    sqlite store: one row per video with the last sampled frame's landmarks as JSON, equal to `prernn predict`'s."""
    import mlflow
    import pandas as pd

    from pipeline.serve.predictor import Predictor

    use_mlflow_store(monkeypatch, f"sqlite:///{run_dir / 'mlflow.db'}")
    assert json.loads((run_dir / "reports/evaluation.json").read_text())["mlflow"]["predictor_uri"]
    model = mlflow.pyfunc.load_model("models:/e2e-reg-final-predictor/1")
    rows = [r for r in csv.DictReader((run_dir / "data/ingest/manifest.csv").open()) if r["split"] == "test"]
    paths = [str(run_dir / r["path"]) for r in rows[:2]] + [str(run_dir / "missing.avi")]
    out = model.predict(pd.DataFrame({"path": paths}))
    assert list(out.columns) == ["path", "frame", "landmarks", "error"] and len(out) == 3
    pred = Predictor.from_file(run_dir / "models/final.pt")
    for i, path in enumerate(paths[:2]):
        frame, pts = pred.clip_answers(path)[-1]
        got = np.array(json.loads(out["landmarks"][i]))
        assert got.shape == (8, 2) and int(out["frame"][i]) == frame and out["error"][i] == ""
        np.testing.assert_allclose(got, pts, atol=1e-4)
    assert pd.isna(out["landmarks"][2]) and out["frame"][2] == -1 and "no such file" in out["error"][2]


@pytest.mark.slow  # training to a landmark score
def test_pretrain_and_prernn_learn_landmarks(tmp_path):
    """The regression path learns, not just runs: on a slightly larger clean synthetic set (40 clips of 4 frames,
    16 px) the pretrain stage's backbone and then its PreRNN conversion (GRU at fc7) reach a validation AUC > 0 at
    the default NME threshold 0.08 (bbox-normalised), where the untrained model's AUC is 0."""
    import torch

    import prernn
    from pipeline.data.dataset import ClipDataset
    from pipeline.data.extraction import extract_manifest
    from pipeline.core.params import DataParams, ExtractParams, PretrainParams, SyntheticLandmarkParams
    from pipeline.data.sources import ingest
    from pipeline.training.pretrain import pretrain_modality
    from pipeline.training.tasks import LandmarkRegression
    from pipeline.training.trainer import Trainer, fit

    torch.set_num_threads(2)
    data = DataParams(source="synthetic_landmarks", val_fraction=0.2, test_fraction=0.0,
                      landmarks=SyntheticLandmarkParams(points=4, clips=40, frames=4, size=16, noise=0.0, blur=0.0,
                                                        occlusion=0.0))
    rows, names = ingest(data, tmp_path / "ingest")
    extract = ExtractParams(frames=4, size=16, modalities=["rgb"], workers=1)
    report = extract_manifest(rows, names, extract, tmp_path / "clips", workers=1, progress=False, task="regression")
    assert report["kept"] == 40, report["skipped"]
    task = LandmarkRegression({"normalize": "bbox", "threshold": 0.08})
    ckpt, metrics = pretrain_modality(PretrainParams(epochs=10, batch_size=32, lr=0.002), extract,
                                      tmp_path / "clips", "rgb", task)
    first = metrics["history"][0]
    print("pretrain", {k: metrics[k] for k in ("val_frame_auc", "val_frame_nme")}, "epoch 1", first["val_auc"])
    assert first["val_auc"] < 0.01 and metrics["val_frame_auc"] > 0.04 and metrics["val_frame_nme"] < 0.1, \
        metrics["history"]
    assert metrics["val_frame_nme"] < first["val_nme"]

    backbone = prernn.build_from_config(ckpt["config"])
    backbone.load_state_dict(ckpt["state_dict"])
    model = prernn.convert(backbone, ["fc7"], "gru")
    train, val = (ClipDataset(tmp_path / "clips", split, "rgb") for split in ("train", "val"))
    trainer = Trainer(model, lr_inherited=5e-4, lr_new=3e-3, batch_size=8, task=task)
    before = trainer.evaluate(val).metrics
    history = fit(trainer, train, val, epochs=8)
    print("prernn before", {k: before[k] for k in ("auc", "nme")},
          [(round(h["val_auc"], 3), round(h["val_nme"], 3)) for h in history])
    best = max(h["val_auc"] for h in history)
    assert before["auc"] < 0.01 and best > 0.04 and min(h["val_nme"] for h in history) < 0.1, history
