"""CNNs the project never saw through `dvc repro`: `pretrain.backbone: tests.own_models:tiny_resnet` (a builder,
pipeline.core.own_model), a ResNet-shaped net with torchvision's layer names, pretrained, searched at its
qualified layers ("fc", "layer4.1"), selected (Table 1's columns are those names), evaluated and predicted with;
and MTCNN's ONet with facenet-pytorch's trained weights kept (`finetune: false`), its landmark head on the
synthetic landmark set, dense5 converted.

The project is a temporary copy (tests/dvc_project.py) with tests/own_models.py and tools/ beside the code; its
dvc.yaml is rederived there (`python -m tools.stage_deps --write`), which adds the builder's file to the deps of
the stages that build the model. The fast checks (params, the builder's weights) run without DVC.
"""
import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.checks import validate_params
from pipeline.core.own_model import OwnModelError, build_own, check_output, load_own_weights, model_config
from pipeline.core.params import ParamsError, PretrainParams
from tests.dvc_project import make_project, run
from tests.own_models import data_file
from tools.stage_deps import PACKAGES, builder_code, code_files

ROOT = Path(__file__).resolve().parents[1]


BUILDER = "tests.own_models:tiny_resnet"
OWN = {
    "data": {"synthetic": {"classes": ["swipe_left", "swipe_right", "push", "pull"], "clips_per_class": 5,
                           "frames": 8, "size": 24}},
    "extract": {"frames": 4, "size": 16, "modalities": ["rgb"]},
    "pretrain": {"backbone": BUILDER, "backbone_kwargs": {"width": 4}, "epochs": 1, "modalities": ["rgb"],
                 "phase_bins": 0},
    "search": {"cells": ["gru"], "layers": [["fc"], ["layer4.1"]], "sih": [False], "baselines": [], "epochs": 1,
               "batch_size": 4, "seeds": 1},
    "evaluate": {"epochs": 1, "modalities": ["rgb"], "register_name": "own-final"},
}


def test_params_take_a_builder_and_refuse_what_only_a_registered_backbone_has():
    params = validate_params({"pretrain": {"backbone": BUILDER}, "search": {"baselines": [], "layers": "all"}})
    assert params.pretrain.backbone == BUILDER
    for raw, message in [
        ({"pretrain": {"backbone": BUILDER}}, r"search.baselines: \[1, 2\]: .* expected \[\]"),
        ({"pretrain": {"backbone": BUILDER, "dropout": 0.5}, "search": {"baselines": []}}, "pretrain.dropout: 0.5"),
        ({"pretrain": {"backbone": "tests.own_models:nope"}}, "pretrain.backbone: 'tests.own_models:nope': .*nope"),
        ({"pretrain": {"backbone": "vgg_mini", "backbone_kwargs": {"width": 4}}}, "pretrain.backbone_kwargs"),
        ({"pretrain": {"backbone": BUILDER}, "search": {"baselines": [], "layers": [["fc6"]]}},
         r"search.layers.0: \['fc6'\].*\['features', 'layer1.0', 'layer4.0', 'layer4.1', 'fc'\]"),
    ]:
        with pytest.raises(ParamsError, match=message):
            validate_params(raw)


def test_builder_spec_weights_strictly_and_one_output(tmp_path):
    p = PretrainParams(backbone=BUILDER, backbone_kwargs={"width": 4})
    net = build_own(p, 3)  # tiny_resnet takes num_classes, not in_channels
    assert model_config(net) == {"builder": BUILDER, "kwargs": {"width": 4, "num_classes": 3}, "name": BUILDER,
                                 "num_classes": 3, "in_channels": 3}
    torch.save(net.state_dict(), tmp_path / "w.pt")
    again = build_own(p, 3)
    load_own_weights(again, str(tmp_path / "w.pt"))
    torch.testing.assert_close(again.state_dict(), net.state_dict())
    with pytest.raises(OwnModelError, match="does not fit the builder's module"):
        load_own_weights(build_own(p, 5), str(tmp_path / "w.pt"))
    with pytest.raises(OwnModelError, match=r"maps frames \(3, 16, 16\) to \(3,\); the task needs \(4,\)"):
        check_output(net, (3, 16, 16), 4, BUILDER)
    onet = build_own(PretrainParams(backbone="tests.own_models:onet"), 10)
    with pytest.raises(OwnModelError, match="returns a tuple"):
        check_output(onet, (3, 48, 48), 10, "tests.own_models:onet")


def test_stage_deps_add_the_builders_file_to_the_stages_that_build_the_model(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"pretrain": {"backbone": BUILDER}}))
    top, builder = builder_code(ROOT, params)
    assert top == ("tests",) and set(builder) == {"tests.own_models"}  # and what it imports from tests/
    for stage, builds in (("pretrain", True), ("search", True), ("evaluate", True), ("ingest", False)):
        files = code_files(ROOT, f"stages.{stage}", PACKAGES + top, builder)
        assert ("tests/own_models.py" in files) is builds, stage
    params.write_text(yaml.safe_dump({"pretrain": {"backbone": "vgg_mini"}}))
    assert builder_code(ROOT, params) == ((), {})
    params.write_text(yaml.safe_dump({"pretrain": {"backbone": "installed_pkg.nets:build"}}))  # not DVC's to track
    assert builder_code(ROOT, params) == ((), {})


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    env = make_project(root, OWN)
    (root / "tests").mkdir()
    shutil.copy(ROOT / "tests" / "own_models.py", root / "tests" / "own_models.py")
    shutil.copytree(ROOT / "tools", root / "tools", ignore=shutil.ignore_patterns("__pycache__"))
    run(["python", "-m", "tools.stage_deps", "--write"], root, env)
    out = run(["dvc", "repro"], root, env, timeout=900)
    return root, env, out


@pytest.mark.slow  # dvc repro
def test_own_cnn_goes_through_dvc_repro_and_predict(project, capsys):
    root, env, out = project
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    building = {s for s, spec in stages.items() if "tests/own_models.py" in spec.get("deps", [])}
    assert {"pretrain", "search", "evaluate"} <= building and "ingest" not in building
    assert "whole net fine-tuned" in out  # the user's graph is not cut: every trial runs the whole net
    trials = json.loads((root / "search" / "trials.json").read_text())
    assert sorted(t["configuration"] for t in trials) == ["prernn-gru-fc", "prernn-gru-layer4.1"]
    assert all(t["status"] == "ok" for t in trials)
    table = (root / "reports" / "table1.md").read_text()
    header = next(line for line in table.splitlines() if "layer4.1" in line)
    assert "fc" in header and "CNN alone per frame" in table
    selection = json.loads((root / "reports" / "selection.json").read_text())
    assert selection["selected"]["name"].startswith("prernn-gru")
    metrics = json.loads((root / "metrics.json").read_text())
    assert 0.0 <= metrics["test_acc"] <= 1.0 and set(metrics["streams"]) == {"rgb"}
    ckpt = torch.load(root / "models" / "final.pt", weights_only=True)
    entry = ckpt["streams"]["rgb"] if "streams" in ckpt else ckpt
    assert entry["config"]["backbone"]["builder"] == BUILDER

    from pipeline.serve.cli import main

    rows = list(csv.DictReader((root / "data/ingest/manifest.csv").open()))
    capsys.readouterr()
    assert main(["predict", str(root / "models/final.pt"), str(root / rows[0]["path"]), "--json"]) == 0
    answers = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert answers and all(a["class"] in OWN["data"]["synthetic"]["classes"] for a in answers)


ONET_WEIGHTS = data_file("facenet_pytorch", "data/onet.pt")
ONET = {
    "task": "regression",
    "data": {"source": "synthetic_landmarks", "val_fraction": 0.25, "test_fraction": 0.25,
             "landmarks": {"points": 5, "clips": 12, "frames": 8, "size": 48, "seed": 0}},
    "extract": {"frames": 6, "size": 48, "modalities": ["rgb"], "workers": 1, "flow_method": "farneback"},
    "pretrain": {"backbone": "tests.own_models:onet_landmarks", "weights": ONET_WEIGHTS, "finetune": False,
                 "modalities": ["rgb"], "phase_bins": 0},
    "search": {"modality": "rgb", "cells": ["gru"], "layers": [["dense5"]], "sih": [True], "baselines": [],
               "epochs": 1, "batch_size": 4, "seeds": 1},
    "evaluate": {"epochs": 1, "modalities": ["rgb"], "register_name": "onet-final"},
    "regression": {"threshold": 0.5, "normalize": "bbox"},
}


@pytest.mark.slow  # dvc repro
@pytest.mark.skipif(ONET_WEIGHTS is None, reason="facenet-pytorch's data/onet.pt not installed (requirements-test.txt)")
def test_onet_with_its_trained_weights_goes_through_dvc_repro(tmp_path, capsys):
    """MTCNN's ONet, facenet-pytorch's trained weights kept as they are (`finetune: false`), its landmark head
    (five points) on the synthetic landmark set: the search converts dense5 into a PreGRU-SIH layer."""
    root = tmp_path / "onet"
    root.mkdir()
    env = make_project(root, ONET)
    (root / "tests").mkdir()
    shutil.copy(ROOT / "tests" / "own_models.py", root / "tests" / "own_models.py")
    run(["dvc", "repro"], root, env, timeout=900)
    pretrain = json.loads((root / "models" / "pretrained" / "pretrain.json").read_text())["rgb"]
    assert pretrain["epochs"] == 0 and pretrain["weights"] == ONET_WEIGHTS
    trials = json.loads((root / "search" / "trials.json").read_text())
    assert [t["configuration"] for t in trials] == ["prernn-gru-sih-dense5"] and trials[0]["status"] == "ok"
    assert "dense5" in (root / "reports" / "table1.md").read_text()
    metrics = json.loads((root / "metrics.json").read_text())
    assert metrics["task"] == "regression" and 0 <= metrics["test_auc"] <= 1

    from pipeline.serve.cli import main

    rows = list(csv.DictReader((root / "data/ingest/manifest.csv").open()))
    capsys.readouterr()
    assert main(["predict", str(root / "models/final.pt"), str(root / rows[0]["path"]), "--json"]) == 0
    answers = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert answers and all(len(a["landmarks"]) == 5 for a in answers)


def test_guide_own_cnn_example_runs_and_its_comments_hold():
    """docs/guide/library.md "Your own CNN": the block runs as written; its last line is refused as it says."""
    text = (ROOT / "docs" / "guide" / "library.md").read_text()
    block = text.split("--8<-- [start:own-cnn] -->")[1].split("```python\n")[1].split("```")[0]
    *lines, refused = block.strip().splitlines()
    scope: dict = {}
    exec(compile("\n".join(lines), "library.md", "exec"), scope)
    assert scope["prernn"].convertible_layers(scope["onet"]) == ["dense5", "dense6_1", "dense6_2", "dense6_3"]
    assert [t.shape for t in (scope["boxes"], scope["landmarks"], scope["probs"])] == [(2, 8, 4), (2, 8, 10), (2, 8, 2)]
    torch.testing.assert_close(scope["out"][1], scope["landmarks"][:, 0], rtol=1e-4, atol=1e-5)
    assert set(scope["stats"]) == {"dense5"}
    with pytest.raises(ValueError, match="layer 'conv2' is a bare Conv2d whose activation is a separate module"):
        exec(compile(refused, "library.md", "exec"), scope)
