"""stages.pretrain + stages.search end to end on tiny Arrow clips; fail-fast errors of the search stage."""
import json
import socket
import time
import typing

import pytest
import torch
import yaml

from pipeline.search.trial_config import TrialRow
from tests.search_fixtures import CLASSES, make_clips

TRIAL_KEYS = {"name", "kind", "cell", "sih", "layers", "num_layers", "status", "error", "val_acc", "val_loss",
              "epochs_to_95", "clips_per_sec", "recurrent_params", "mlflow_run_id", "gate_stats", "history", "config"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Tiny clips, a params.yaml with a 3-trial search (a conv + fc combination among them), and the pretrain
    stage's output."""
    from stages import pretrain

    root = tmp_path_factory.mktemp("stage")
    make_clips(root / "clips")
    params = {
        "extract": {"modalities": ["rgb"], "size": 16, "frames": 4},
        "pretrain": {"modalities": ["rgb"], "epochs": 2, "batch_size": 16},
        "search": {"modality": "rgb", "cells": ["gru"], "sih": [False], "layers": [["fc7"], ["fc6", "conv3"]],
                   "baselines": [1],
                   "epochs": 2, "batch_size": 4, "storage_path": str(root / "ray")},
        "evaluate": {"modalities": ["rgb"]},
        "mlflow": {"tracking_uri": "sqlite:///mlflow.db", "experiment": "stage-test"},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    pretrain.main(["--params", str(root / "params.yaml"), "--clips", str(root / "clips"),
                   "--out", str(root / "pretrained")])
    return root


def _search_args(root, out="search"):
    return ["--params", str(root / "params.yaml"), "--clips", str(root / "clips"),
            "--pretrained", str(root / "pretrained"), "--out", str(root / out), "--quiet"]


def test_pretrain_writes_checkpoint_in_contract_format(workdir):
    import prernn

    ckpt = torch.load(workdir / "pretrained" / "rgb.pt", weights_only=True)
    model = prernn.build_from_config(ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    assert ckpt["config"]["name"] == "vgg_mini" and ckpt["config"]["kwargs"]["input_size"] == 16
    meta = ckpt["meta"]
    assert meta["class_names"] == CLASSES and meta["modality"] == "rgb"
    assert set(meta["normalization"]["rgb"]) == {"mean", "std"} and meta["extract"]["size"] == 16
    report = json.loads((workdir / "pretrained" / "pretrain.json").read_text())
    assert set(report) == {"rgb"} and 0 <= report["rgb"]["val_frame_acc"] <= 1
    assert len(report["rgb"]["history"]) == 2


def test_pretrain_keeps_user_weights_without_finetuning(workdir, tmp_path):
    import prernn
    from stages import pretrain

    user = prernn.create_backbone("vgg_mini", len(CLASSES), input_size=16)
    torch.save(user.state_dict(), tmp_path / "user.pt")
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    params["pretrain"].update({"weights": str(tmp_path / "user.pt"), "finetune": False})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    pretrain.main(["--params", str(tmp_path / "params.yaml"), "--clips", str(workdir / "clips"),
                   "--out", str(tmp_path / "out")])
    ckpt = torch.load(tmp_path / "out" / "rgb.pt", weights_only=True)
    assert all(torch.equal(ckpt["state_dict"][k], v) for k, v in user.state_dict().items())
    report = json.loads((tmp_path / "out" / "pretrain.json").read_text())["rgb"]
    assert report["epochs"] == 0 and not report["finetuned"] and 0 <= report["val_frame_acc"] <= 1


@pytest.mark.slow  # Ray search
def test_search_stage_writes_trials_and_nested_mlflow_runs(workdir, monkeypatch):
    """Also: search.layers with fc7 and conv3+fc6 makes two trunk caches (below conv3, and the default below fc6
    that fc7 and the baseline share); the conv trial trains on the conv3 features, and reports gate statistics
    and recurrent parameters for both of its layers."""
    import prernn
    from pipeline.core import tracking
    from stages import search

    uri = f"sqlite:///{workdir}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    search.main(_search_args(workdir))
    trials = json.loads((workdir / "search" / "trials.json").read_text())
    assert [t["name"] for t in trials] == ["prernn-gru-fc7", "prernn-gru-conv3+fc6", "traditional-gru-1"]
    assert all(TRIAL_KEYS <= set(t) and t["status"] == "ok" for t in trials), [t["error"] for t in trials]
    declared = set(typing.get_type_hints(TrialRow))  # every key a row has is declared in the record
    assert all(set(t) <= declared for t in trials), [set(t) - declared for t in trials]
    info = json.loads((workdir / "search" / "search.json").read_text())
    assert info["tracking_uri"] == uri and info["trunk_boundary"] == "fc6"
    assert info["trunk_boundaries"] == ["conv3", "fc6"] and info["candidates"] == ["conv1", "conv2", "conv3", "fc6", "fc7"]
    assert (workdir / "search" / "trials.csv").read_text().splitlines()[0].startswith("name,configuration,seed,kind,cell,sih,layers")
    children = tracking.Tracker(uri).child_runs(info["experiment_id"], info["parent_run_id"])
    assert sorted(r.info.run_id for r in children) == sorted(t["mlflow_run_id"] for t in trials)
    mixed = trials[1]
    assert mixed["layers"] == ["conv3", "fc6"] and set(mixed["gate_stats"]) == {"conv3", "fc6"}
    update = mixed["gate_stats"]["conv3"]["gates"]["update"]
    assert update["inside"] + update["outside"] == 2 * 3 * 4 * 64  # val clips x T x conv3's channels
    bb = prernn.build_from_config(torch.load(workdir / "pretrained" / "rgb.pt", weights_only=True)["config"])
    assert mixed["recurrent_params"] == prernn.count_recurrent_parameters(prernn.convert(bb, ["conv3", "fc6"], "gru"))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_search_stage_fails_fast_on_unreachable_ray_address(workdir, monkeypatch, capsys):
    from stages import search

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workdir}/mlflow.db")
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{_closed_port()}")
    t0 = time.perf_counter()
    with pytest.raises(SystemExit, match=r"RAY_ADDRESS=.*names no running Ray cluster"):
        search.main(_search_args(workdir, "search_bad"))
    assert time.perf_counter() - t0 < 20  # features + probe, not Ray's minute of retries
    assert not (workdir / "search_bad").exists()


def test_search_stage_fails_fast_on_unreachable_mlflow_server(workdir, monkeypatch):
    from stages import search

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    t0 = time.perf_counter()
    with pytest.raises(SystemExit, match=r"MLflow tracking server .* \(from MLFLOW_TRACKING_URI\) did not answer"
                                         r".*Start it .*--host 127\.0\.0\.1"):
        search.main(_search_args(workdir, "search_bad"))
    assert time.perf_counter() - t0 < 20  # before Ray starts, not after MLflow's retries
    assert not (workdir / "search_bad").exists()


def test_experiment_state_period_grows_with_the_trials_and_the_environment_wins(monkeypatch):
    import os

    from pipeline.search.tuner import state_period, tune_environment

    assert state_period(2) == state_period(100) == 1.0 and state_period(315) == 3.15 and state_period(2000) == 20.0
    monkeypatch.delenv("TUNE_GLOBAL_CHECKPOINT_S", raising=False)
    monkeypatch.setenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "0")  # a user's value
    with tune_environment(315):
        assert os.environ["TUNE_GLOBAL_CHECKPOINT_S"] == "3.15"
        assert os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] == "0"
    assert "TUNE_GLOBAL_CHECKPOINT_S" not in os.environ and os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] == "0"
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "3600")  # tests/test_search_resume.py's stale state
    with tune_environment(5):
        assert os.environ["TUNE_GLOBAL_CHECKPOINT_S"] == "3600"
