"""`prernn predict` and the MLflow pyfunc predictor, on tiny synthetic videos and tiny untrained models."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

import prernn
from pipeline.data.clipstore import split_files
from pipeline.data.dataset import ClipDataset
from pipeline.report.evaluation import FusedModel, final_checkpoint
from pipeline.data.extraction import extract_manifest
from pipeline.core.params import DataParams, ExtractParams, SyntheticParams
from pipeline.serve.errors import PredictError
from pipeline.serve.inputs import expand_inputs
from pipeline.serve.model_uri import resolve_model
from pipeline.serve.predictor import Predictor
from pipeline.training.tasks import Classification
from pipeline.data.sources import ingest, resolve
from tests.mlflow_store import use_mlflow_store

ROOT = Path(__file__).resolve().parents[1]
T, SIZE = 6, 16


def _model(in_channels: int, layers, cell: str, sih: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    bb = prernn.create_backbone("vgg_mini", 2, in_channels=in_channels, input_size=SIZE, width=16)
    return prernn.convert(bb, layers, cell, sih=sih).eval()


def _save(path: Path, models: dict, clip_meta: dict) -> Path:
    mods = list(models)
    meta = {"class_names": clip_meta["prernn.class_names"],
            "normalization": {m: clip_meta["prernn.normalization"][m] for m in mods},
            "extract": clip_meta["prernn.extract"], "modalities": mods, "fusion": "mean" if len(mods) > 1 else None,
            "selected": "test"}
    torch.save(final_checkpoint(models, meta), path)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Synthetic videos of exactly T frames, their clips (consecutive, stride 1), and final.pt files."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("predict")
    data = DataParams(synthetic=SyntheticParams(classes=["swipe_left", "swipe_right"], clips_per_class=4, frames=T,
                                                size=24, fps=15), test_fraction=0.5, val_fraction=0.0)
    rows, names = ingest(data, tmp / "ingest")
    params = ExtractParams(frames=T, sampling="consecutive", stride=1, size=SIZE, modalities=["rgb", "flow", "depth"])
    report = extract_manifest(rows, names, params, tmp / "clips", workers=1, progress=False)
    assert report["kept"] == len(rows), report["skipped"]
    meta = ClipDataset(tmp / "clips", "train", "rgb").meta
    two = {"rgb": _model(3, ["fc6"], "lstm", seed=1), "flow": _model(3, ["fc7"], "gru", sih=True, seed=2)}
    final = _save(tmp / "final.pt", two, meta)
    depth = _save(tmp / "depth.pt", {"depth": _model(1, ["fc6", "fc7"], "vrnn", seed=3)}, meta)
    test_paths = []
    for f in split_files(tmp / "clips", "test"):
        test_paths += pa.ipc.open_file(pa.memory_map(str(f))).read_all().column("path").to_pylist()
    return {"tmp": tmp, "rows": rows, "clips": tmp / "clips", "final": final, "depth": depth, "models": two,
            "test_paths": [resolve(p) for p in test_paths]}


def test_clip_mode_agrees_with_evaluation(world):
    """Same test clips: predict (from the video files) and the evaluate code (from the Arrow clips) agree."""
    pred = Predictor.from_file(world["final"])
    assert pred.modalities == ["rgb", "flow"]
    ds = {m: ClipDataset(world["clips"], "test", m) for m in ("rgb", "flow")}
    x = torch.cat([torch.stack([ds[m][i][0] for i in range(len(ds[m]))]) for m in ("rgb", "flow")], dim=2)
    with torch.no_grad():
        ref = FusedModel(world["models"], {"rgb": 3, "flow": 3}, Classification())(x)  # (N, K), as evaluation fuses
    ours = torch.from_numpy(np.stack([pred.clip_outputs(p) for p in world["test_paths"]]))
    assert len(world["test_paths"]) == len(ds["rgb"]) >= 2
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)
    labels = torch.from_numpy(ds["rgb"].labels)
    task = pred.task
    assert task == Classification()  # a final.pt without a stored task is classification
    assert task.test_report(ours, labels, pred.class_names)["acc"] == task.test_report(ref, labels, pred.class_names)["acc"]
    assert ours.argmax(-1).tolist() == ref.argmax(-1).tolist()


def test_stream_final_frame_equals_clip_mode(world):
    pred = Predictor.from_file(world["final"])
    video = world["test_paths"][0]
    outs = list(pred.stream(video))
    assert [f for f, _ in outs] == list(range(T))
    np.testing.assert_allclose(outs[-1][1], pred.clip_outputs(video), atol=1e-5)
    assert not np.allclose(outs[0][1], outs[-1][1], atol=1e-7)  # the state carries: frames change the output
    assert len(list(pred.stream(video, max_frames=2))) == 2


def test_stream_equals_clip_mode_for_a_3d_backbone(world, tmp_path):
    """c3d_mini: stream mode keeps the last L frames (first one repeated), as ClipDataset builds snippets."""
    torch.manual_seed(4)
    bb = prernn.create_backbone("c3d_mini", 2, in_channels=3, snippet=3, width=16)
    meta = ClipDataset(world["clips"], "train", "rgb").meta
    path = _save(tmp_path / "c3d.pt", {"flow": prernn.convert(bb, ["fc6"], "gru").eval()}, meta)
    pred = Predictor.from_file(path)
    video = world["test_paths"][1]
    ds = ClipDataset(world["clips"], "test", "flow", snippet=3)
    i = [str(p) for p in world["test_paths"]].index(str(video))
    with torch.no_grad():
        ref = pred.models["flow"](ds[i][0][None]).softmax(-1)[0, -1].numpy()  # a recurrent model answers at its last step
    np.testing.assert_allclose(pred.clip_outputs(video), ref, atol=1e-5)
    np.testing.assert_allclose(list(pred.stream(video))[-1][1], ref, atol=1e-5)


def test_depth_model_needs_a_depth_pair(world):
    pred = Predictor.from_file(world["depth"])
    color = next(Path(resolve(r["path"])) for r in world["rows"])
    probs = pred.clip_outputs(color)  # x_color.avi with its x_depth.avi partner
    assert probs.shape == (2,) and abs(probs.sum() - 1) < 1e-5
    assert len(list(pred.stream(color))) == T
    plain = world["tmp"] / "plain.avi"
    plain.write_bytes(color.read_bytes())
    with pytest.raises(PredictError, match="needs modality 'depth'"):
        pred.clip_outputs(plain)
    with pytest.raises(PredictError, match="needs modality 'depth'"):
        list(pred.stream(plain))


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_model_file_with_pickled_code_is_refused(world):
    marker = world["tmp"] / "pwned"
    evil = world["tmp"] / "evil.pt"
    torch.save({"config": {}, "state_dict": {}, "meta": {}, "x": _Evil(marker)}, evil)
    torch.load(evil, weights_only=False)  # the crafted file really runs code when unpickled unsafely
    assert marker.exists()
    marker.unlink()
    with pytest.raises(PredictError, match="not a prernn model file"):
        Predictor.from_file(evil)
    assert not marker.exists()
    other = world["tmp"] / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(PredictError, match="not a prernn model file"):
        Predictor.from_file(other)
    with pytest.raises(PredictError, match="no final.pt"):
        resolve_model(str(world["tmp"] / "clips"))


def test_inputs_expand_folders_and_cameras(world):
    folder = Path(resolve(world["rows"][0]["path"])).parent
    items = expand_inputs([str(folder), "0"])
    assert items[-1] == 0
    assert items[:-1] and all(p.stem.endswith("_color") for p in items[:-1])  # depth partners are not inputs


def _cli(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "pipeline.serve.cli", "predict", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_clip_and_stream(world):
    bad = world["tmp"] / "notavideo.avi"
    bad.write_text("this is not a video\n")
    good = world["test_paths"][:2]
    res = _cli(world["final"], good[0], bad, good[1], "--json", "--top-k", "2")
    assert res.returncode == 1, res.stderr
    recs = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["video"] for r in recs] == [str(good[0]), str(good[1])]
    pred = Predictor.from_file(world["final"])
    for r, path in zip(recs, good):
        probs = pred.clip_outputs(path)
        assert r["class"] == pred.class_names[int(probs.argmax())] and r["frame"] is None
        assert abs(r["probability"] - probs.max()) < 1e-5 and len(r["top_k"]) == 2
    err = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and "notavideo.avi" in err[0], res.stderr

    res = _cli(world["final"], good[0], "--stream")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert "class" in lines[0] and len(lines) == 1 + T
    assert lines[-1].split()[1] == str(T - 1)

    res = _cli(world["tmp"] / "missing.pt", good[0])
    assert res.returncode == 2 and "no such model file" in res.stderr


@pytest.mark.slow  # MLflow model logged and loaded
def test_mlflow_pyfunc_round_trip(world, tmp_path, monkeypatch):
    import mlflow
    import pandas as pd

    from pipeline.serve.pyfunc import log_predictor

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    use_mlflow_store(monkeypatch, uri)  # resolve_model below sets the URIs again; restored after the test
    exp = mlflow.create_experiment("predict-test", artifact_location=str(tmp_path / "artifacts"))
    with mlflow.start_run(experiment_id=exp) as run:
        info = log_predictor(world["final"], registered_model_name="predict-test")
        mlflow.log_artifact(str(world["final"]), "final")  # as evaluate logs it, beside a PyTorch-flavour model
        import mlflow.pytorch
        mlflow.pytorch.log_model(torch.nn.Linear(1, 1), name="torch", serialization_format="pickle")
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/predictor")
    paths = [str(p) for p in world["test_paths"][:2]] + [str(world["tmp"] / "missing.avi")]
    out = model.predict(pd.DataFrame({"path": paths}))
    pred = Predictor.from_file(world["final"])
    assert list(out.columns) == ["path", "class", "probability", "error"] and len(out) == 3
    for i, p in enumerate(paths[:2]):
        probs = pred.clip_outputs(p)
        assert out["class"][i] == pred.class_names[int(probs.argmax())] and out["error"][i] == ""
        assert abs(out["probability"][i] - probs.max()) < 1e-5
    assert pd.isna(out["class"][2]) and "no such file" in out["error"][2]
    # prernn predict finds the final.pt inside the logged model, by run URI and by registry version
    for spec in (f"runs:/{run.info.run_id}/predictor", "models:/predict-test/1", info.model_uri,
                 f"runs:/{run.info.run_id}/torch"):  # the last: no final.pt inside, taken from its run
        local = resolve_model(spec, uri, tmp_path / spec.replace("/", "_").replace(":", ""))
        np.testing.assert_allclose(Predictor.from_file(local).clip_outputs(paths[0]), pred.clip_outputs(paths[0]))
    # the MLflow CLI on the logged model: a CSV of paths in, predictions out
    csv = tmp_path / "in.csv"
    csv.write_text("path\n" + "\n".join(paths[:2]) + "\n")
    res = subprocess.run([sys.executable, "-m", "mlflow", "models", "predict", "-m",
                          f"runs:/{run.info.run_id}/predictor", "-i", str(csv), "-t", "csv", "--env-manager", "local",
                          "-o", str(tmp_path / "out.json")], env={**os.environ, "MLFLOW_TRACKING_URI": uri},
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads((tmp_path / "out.json").read_text())["predictions"]
    assert [g["class"] for g in got] == list(out["class"][:2])
