"""stages.evaluate end to end on tiny crafted clips (rgb + flow) and a tiny pretrained vgg_mini per stream."""
import csv
import json

import numpy as np
import pytest
import torch
import yaml

import prernn
from pipeline.data.clipstore import ClipWriter
from pipeline.serve.predictor import Predictor
from stages import evaluate

CLASSES = ["left", "right"]
T, SIZE = 3, 16


def _clips(root):
    rng = np.random.default_rng(0)
    w = ClipWriter(root, ["rgb", "flow"], T, SIZE, shard_bytes=1 << 20)
    for split, n in (("train", 6), ("val", 2), ("test", 4)):
        for i in range(n):
            label = i % 2
            base = 40 + 160 * label  # a class-dependent brightness, so the stream can learn it
            clip = {m: np.clip(rng.normal(base, 20, (T, SIZE, SIZE, 3)), 0, 255).astype(np.uint8) for m in ("rgb", "flow")}
            w.add(split, clip, label, f"{split}{i}", f"{split}{i}.avi")
    norm = {m: {"mean": [0.5] * 3, "std": [0.3] * 3} for m in ("rgb", "flow")}
    w.finish({"prernn.class_names": CLASSES, "prernn.extract": {"frames": T, "size": SIZE},
              "prernn.normalization": norm, "prernn.modalities": ["rgb", "flow"]})


def _pretrained(root):
    root.mkdir()
    for i, m in enumerate(("rgb", "flow")):
        torch.manual_seed(i)
        bb = prernn.create_backbone("vgg_mini", len(CLASSES), input_size=SIZE, width=16)
        torch.save({"config": bb.config, "state_dict": bb.state_dict(), "meta": {}}, root / f"{m}.pt")


def _selected(layers, reverted, kind="prernn", cell="lstm", sih=False, num_layers=1, name="prernn-lstm-fc6+fc7"):
    return {"name": name, "trial": name, "kind": kind, "cell": cell, "sih": sih, "layers": layers,
            "searched_layers": layers + reverted, "reverted_layers": reverted, "num_layers": num_layers,
            "score": 0.5, "fallback": False, "reason": "test",
            "config": {"batch_size": 4, "lr_inherited": 1e-3, "lr_new": 3e-3, "weight_decay": 0.0,
                       "hh_init": "orthogonal", "seed": 0}}


@pytest.fixture
def workdir(tmp_path):
    _clips(tmp_path / "clips")
    _pretrained(tmp_path / "pretrained")
    params = {"extract": {"modalities": ["rgb", "flow"], "size": SIZE, "frames": T},
              "pretrain": {"backbone": "vgg_mini", "modalities": ["rgb", "flow"]},
              "search": {"batch_size": 4},
              "evaluate": {"epochs": 2, "modalities": ["rgb", "flow"], "register_name": "test-final"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path


def _run(tmp, selection, search_json=None):
    (tmp / "selection.json").write_text(json.dumps(selection))
    (tmp / "search").mkdir(exist_ok=True)
    if search_json is not None:
        (tmp / "search" / "search.json").write_text(json.dumps(search_json))
    evaluate.main(["--params", str(tmp / "params.yaml"), "--clips", str(tmp / "clips"),
                   "--pretrained", str(tmp / "pretrained"), "--selection", str(tmp / "selection.json"),
                   "--search", str(tmp / "search"), "--out", str(tmp / "models" / "final.pt"),
                   "--metrics", str(tmp / "metrics.json"), "--plots", str(tmp / "reports")])


def test_two_streams_fused_with_baseline(workdir):
    torch.set_num_threads(1)
    sel = {"selected": _selected(["fc6"], ["fc7"]),
           "baseline": _selected([], [], kind="traditional", cell="gru", name="traditional-gru-1")}
    _run(workdir, sel)
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert set(metrics["streams"]) == {"rgb", "flow"} and metrics["n_test"] == 4
    for key in ("test_acc", "baseline_test_acc", "gain"):
        assert isinstance(metrics[key], float)
    assert metrics["gain"] == pytest.approx(metrics["test_acc"] - metrics["baseline_test_acc"])
    assert set(metrics["per_class_acc"]) == set(CLASSES)
    rows = list(csv.DictReader((workdir / "reports" / "classification" / "confusion.csv").open()))
    assert len(rows) == 4 and {r["actual"] for r in rows} == set(CLASSES)
    hist = list(csv.DictReader((workdir / "reports" / "history.csv").open()))
    assert [int(r["epoch"]) for r in hist] == [1, 2]
    assert {"test_acc", "baseline_test_acc", "rgb_test_acc", "flow_baseline_test_acc"} <= set(hist[0])
    assert float(hist[-1]["test_acc"]) == pytest.approx(metrics["test_acc"])
    report = json.loads((workdir / "reports" / "evaluation.json").read_text())
    assert np.array(report["fused"]["selected"]["confusion"]).sum() == 4
    loaded = Predictor.from_file(workdir / "models" / "final.pt")  # what `prernn predict` reads
    models, meta = loaded.models, loaded.meta
    assert set(models) == {"rgb", "flow"} and meta["class_names"] == CLASSES and meta["modalities"] == ["rgb", "flow"]
    assert list(models["rgb"].recurrent_layers()) == ["fc6"]  # fc7 reverted to feedforward
    assert set(meta["normalization"]) == {"rgb", "flow"} and meta["fusion"]


def test_all_reverted_is_the_plain_backbone_and_single_stream(workdir):
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    params["evaluate"].update(modalities=["rgb"], epochs=1)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    _run(workdir, {"selected": _selected([], ["fc6"]), "baseline": None})
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert metrics["baseline"] is None and metrics["baseline_test_acc"] is None
    ckpt = torch.load(workdir / "models" / "final.pt", weights_only=True)
    assert ckpt["config"]["kind"] == "frames" and ckpt["meta"]["modalities"] == ["rgb"]
    models = Predictor.from_file(workdir / "models" / "final.pt").models
    assert models["rgb"].recurrent_layers() == {}
    x = torch.zeros(1, T, 3, SIZE, SIZE)
    assert models["rgb"](x).shape == (1, T, len(CLASSES))


def test_a_conv_and_fc_selection_trains_on_its_own_trunk_cache(workdir):
    """A selected conv3+fc6 configuration (and the baseline on the default cache below fc6): the evaluate stage
    caches the trunk below conv3 for it; the saved model steps frame by frame as it runs over a clip."""
    torch.set_num_threads(1)
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    params["evaluate"].update(modalities=["rgb"], epochs=1)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    sel = {"selected": _selected(["conv3", "fc6"], [], cell="gru", num_layers=2, name="prernn-gru-conv3+fc6"),
           "baseline": _selected([], [], kind="traditional", cell="gru", name="traditional-gru-1")}
    _run(workdir, sel)
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert metrics["selected"] == "prernn-gru-conv3+fc6" and 0 <= metrics["test_acc"] <= 1
    model = Predictor.from_file(workdir / "models" / "final.pt").models["rgb"].eval()
    assert list(model.recurrent_layers()) == ["conv3", "fc6"] and prernn.trunk_boundary(model) == "conv3"
    x = torch.randn(1, T, 3, SIZE, SIZE)
    with torch.no_grad():
        clip = model(x)
        state, steps = None, []
        for t in range(T):
            out, state = model.step(x[:, t], state)
            steps.append(out)
    assert torch.allclose(torch.stack(steps, 1), clip, atol=1e-5)


def test_no_selection_stops_with_a_clear_message(workdir):
    with pytest.raises(SystemExit, match="no configuration was selected"):
        _run(workdir, {"selected": None, "baseline": None})


@pytest.mark.slow  # MLflow registry
def test_select_then_evaluate_log_to_the_parent_run_and_register(workdir, monkeypatch):
    """select + evaluate with MLflow: reports on the search's parent run, the final model registered."""
    import mlflow
    from pipeline.core import tracking
    from report_fixtures import layer, trial
    from stages import select

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    tracker = tracking.Tracker(uri)
    exp = tracker.ensure_experiment("prernn-test")
    parent = tracker.start_run(exp, "search")
    trials = [trial("prernn-lstm-fc6", layers=["fc6"], val_acc=0.7, stats={"fc6": layer("lstm", 2, 8)}),
              trial("prernn-lstm-fc6+fc7", layers=["fc6", "fc7"], val_acc=0.9,
                    stats={"fc6": layer("lstm", 2, 8), "fc7": layer("lstm", 8, 2)}),
              trial("traditional-lstm-1", kind="traditional", num_layers=1, val_acc=0.6,
                    stats={"rnn1": layer("lstm", 8, 2)})]
    for t in trials:
        t["config"].update({"batch_size": 4, "lr_inherited": 1e-3, "lr_new": 3e-3, "weight_decay": 0.0,
                            "hh_init": "orthogonal", "seed": 0})
    search_json = {"parent_run_id": parent, "experiment_id": exp, "tracking_uri": uri, "backbone": "vgg_mini",
                   "modality": "rgb", "candidates": ["fc6", "fc7"], "trunk_boundary": "fc6"}
    (workdir / "search").mkdir()
    (workdir / "search" / "trials.json").write_text(json.dumps(trials))
    (workdir / "search" / "search.json").write_text(json.dumps(search_json))
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    params["evaluate"].update(modalities=["rgb"], epochs=1)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    select.main(["--params", str(workdir / "params.yaml"), "--search", str(workdir / "search"),
                 "--out", str(workdir / "reports")])
    selection = json.loads((workdir / "reports" / "selection.json").read_text())
    assert selection["selected"]["name"] == "prernn-lstm-fc6"
    assert (workdir / "reports" / "plots" / "saturation_lstm_fc7.png").stat().st_size > 0

    evaluate.main(["--params", str(workdir / "params.yaml"), "--clips", str(workdir / "clips"),
                   "--pretrained", str(workdir / "pretrained"), "--selection", str(workdir / "reports" / "selection.json"),
                   "--search", str(workdir / "search"), "--out", str(workdir / "models" / "final.pt"),
                   "--metrics", str(workdir / "metrics.json"), "--plots", str(workdir / "reports")])
    client = tracker.client
    names = {a.path for a in client.list_artifacts(parent, "select")} | {a.path for a in client.list_artifacts(parent, "evaluate")}
    assert {"select/table1.md", "select/selection.json", "select/plots", "evaluate/confusion.csv"} <= names
    assert client.get_run(parent).data.tags["prernn.selected"] == "prernn-lstm-fc6"
    report = json.loads((workdir / "reports" / "evaluation.json").read_text())
    assert report["mlflow"] and report["mlflow"]["registered"] == "test-final"
    assert report["mlflow"]["format"] in ("pt2", "pickle")
    versions = client.search_model_versions("name='test-final'")
    assert len(versions) == 1
    mlflow.set_tracking_uri(uri)
    model = mlflow.pytorch.load_model(f"models:/test-final/{versions[0].version}")
    probs = model(torch.zeros(2, T, 3, SIZE, SIZE))
    assert probs.shape == (2, len(CLASSES)) and torch.allclose(probs.sum(-1), torch.ones(2), atol=1e-5)
    info = mlflow.models.get_model_info(f"models:/test-final/{versions[0].version}")
    assert info.metadata["class_names"] == CLASSES
    # the registry says what to use: alias, descriptions, the selection and its scores on the version
    for name in ("test-final", "test-final-predictor"):
        registered = client.get_registered_model(name)
        assert registered.description and registered.tags["serve"] == "models:/test-final-predictor@champion"
        version = client.get_model_version_by_alias(name, "champion")
        assert version.tags["selected"] == "prernn-lstm-fc6" and version.tags["table1_score"] == "0.700"
        assert version.tags["git_commit"] == client.get_run(parent).data.tags["mlflow.source.git.commit"]
        assert "prernn-lstm-fc6: Table 1 val_acc 0.700" in version.description
    assert mlflow.pytorch.load_model("models:/test-final@champion") is not None
    # summary values are tags on the parent, not one-point metrics; the evaluate run has per-epoch curves
    evaluate_run = client.get_run(report["mlflow"]["run_id"])
    assert evaluate_run.data.tags["mlflow.source.name"] == "stages/evaluate.py"
    assert evaluate_run.data.tags["dvc_stage"] == "evaluate"
    assert [m.step for m in client.get_metric_history(evaluate_run.info.run_id, "test_acc")] == [1]
    parent_data = client.get_run(parent).data
    assert "final_test_acc" in parent_data.tags and not parent_data.metrics


def test_results_do_not_depend_on_what_drew_random_numbers_before(workdir):
    """The new weights are initialised from the choice's seed, not from whatever state the global RNG was left in
    (it once was: the number of DataLoader passes before the first model decided the test accuracy)."""
    from pipeline.report.evaluation import run_evaluation
    from pipeline.core.params import SearchParams
    from pipeline.training.tasks import Classification

    choices = {"selected": _selected(["fc6"], []), "baseline": None}
    runs = []
    for draws in (0, 7):
        torch.manual_seed(123)
        torch.rand(draws)  # some earlier work consumed random numbers
        out = run_evaluation(workdir / "clips", workdir / "pretrained", choices, modalities=["rgb"], epochs=2,
                             search_params=SearchParams(batch_size=4), task=Classification(), log=lambda *_: None)
        runs.append([h["train_loss"] for h in out["streams"]["rgb"]["selected"]["history"]])
    assert runs[0] == runs[1]


def test_the_search_and_evaluate_build_a_configuration_alike():
    """One builder (prernn.build_from_config on the trained backbone): evaluate's model of a selection choice is the
    search trial's model, with the trial's hh_init and gru_reset (the search's own builder once dropped gru_reset),
    its reverted layers back in feedforward form, and the CNN per frame when every layer was reverted."""
    from pipeline.report.evaluation import model_for

    bb = prernn.create_backbone("vgg_mini", len(CLASSES), input_size=SIZE, width=16)
    trial = {"kind": "prernn", "cell": "gru", "sih": False, "layers": ["fc6", "fc7"], "num_layers": 2,
             "hidden_size": None, "hh_init": "xavier", "gru_reset": "after", "seed": 0}
    torch.manual_seed(0)
    searched = prernn.build_from_config(trial, bb)
    assert searched.config["gru_reset"] == "after" and searched.config["hh_init"] == "xavier"
    torch.manual_seed(0)
    same = model_for({**_selected(["fc6", "fc7"], [], cell="gru", num_layers=2), "config": trial}, bb, trial)
    assert same.config == searched.config
    assert all(torch.equal(v, searched.state_dict()[k]) for k, v in same.state_dict().items())
    kept = model_for({**_selected(["fc6"], ["fc7"], cell="gru", num_layers=2), "config": trial}, bb, trial)
    assert list(kept.recurrent_layers()) == ["fc6"] and kept.config["gru_reset"] == "after"
    assert torch.equal(kept.stages["fc7"].linear.weight, bb.stages["fc7"].linear.weight)  # feedforward, as trained
    none = model_for({**_selected([], ["fc6", "fc7"]), "config": trial}, bb, trial)
    assert none.config["kind"] == "frames" and prernn.readout(none) == "mean"
    base = {"kind": "traditional", "cell": "lstm", "sih": False, "layers": [], "num_layers": 1, "hidden_size": 8,
            "hh_init": "orthogonal", "seed": 0}
    torch.manual_seed(1)
    a = prernn.build_from_config(base, bb)
    torch.manual_seed(1)
    b = model_for({**_selected([], [], kind="traditional", num_layers=1), "config": base}, bb, base)
    assert a.config == b.config and b.config["hidden_size"] == 8
    assert all(torch.equal(v, a.state_dict()[k]) for k, v in b.state_dict().items())
