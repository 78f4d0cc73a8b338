"""Untrusted files: a crafted pickle given as pretrain.weights, as the search's pretrained model, or as a restored
trial checkpoint is refused by torch.load(weights_only=True); the code in it never runs. Every torch.load in the
repository passes weights_only=True."""
import os
import re
from pathlib import Path

import pytest
import torch
import yaml

from tests.search_fixtures import make_clips

REPO = Path(__file__).resolve().parents[1]


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _evil_file(path: Path, marker: Path) -> Path:
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Evil(marker)}, path)
    return path


def test_the_crafted_file_really_runs_code_when_loaded_unsafely(tmp_path):
    marker = tmp_path / "ran"
    torch.load(_evil_file(tmp_path / "evil.pt", marker), weights_only=False)
    assert marker.exists()  # so the tests below would notice if it ran


def test_every_torch_load_in_the_repo_is_weights_only():
    offenders = []
    for path in list((REPO / "prernn").rglob("*.py")) + list((REPO / "pipeline").rglob("*.py")) + \
            list((REPO / "stages").rglob("*.py")) + list((REPO / "bench").rglob("*.py")):
        text = path.read_text()
        for m in re.finditer(r"torch\.load\(([^()]*(?:\([^()]*\)[^()]*)*)\)", text):
            if "weights_only=True" not in m.group(1):
                offenders.append(f"{path.relative_to(REPO)}: {m.group(0)}")
    assert not offenders, offenders


def test_pretrain_weights_with_pickled_code_are_refused(tmp_path):
    from stages import pretrain

    marker = tmp_path / "ran"
    make_clips(tmp_path / "clips", per_split={"train": 2, "val": 1})
    params = {"extract": {"modalities": ["rgb"], "size": 16, "frames": 4},
              "pretrain": {"modalities": ["rgb"], "epochs": 1, "weights": str(_evil_file(tmp_path / "w.pt", marker))},
              "search": {"modality": "rgb"}, "evaluate": {"modalities": ["rgb"]}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(SystemExit, match=r"pretrain\.weights: .*weights_only"):
        pretrain.main(["--params", str(tmp_path / "params.yaml"), "--clips", str(tmp_path / "clips"),
                       "--out", str(tmp_path / "out")])
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_search_refuses_a_pretrained_model_with_pickled_code(tmp_path):
    from stages import search

    marker = tmp_path / "ran"
    (tmp_path / "pretrained").mkdir()
    _evil_file(tmp_path / "pretrained" / "rgb.pt", marker)
    params = {"extract": {"modalities": ["rgb"]}, "pretrain": {"modalities": ["rgb"]},
              "search": {"modality": "rgb"}, "evaluate": {"modalities": ["rgb"]}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(SystemExit, match=r"rgb\.pt: not a plain-tensor checkpoint.*weights_only=True\) refused"):
        search.main(["--params", str(tmp_path / "params.yaml"), "--pretrained", str(tmp_path / "pretrained"),
                     "--clips", str(tmp_path / "clips"), "--out", str(tmp_path / "search")])
    assert not marker.exists()


def test_a_restored_trial_checkpoint_with_pickled_code_is_refused(tmp_path, monkeypatch):
    """The trainable's own restore path (tune.get_checkpoint -> epoch-NNNN.pt), fed a crafted checkpoint."""
    from ray import tune

    from pipeline.search import trainable

    from pipeline.search import trial_checkpoint
    marker = tmp_path / "ran"
    ckpt_dir = tmp_path / "checkpoint_000000"
    ckpt_dir.mkdir()
    _evil_file(ckpt_dir / trial_checkpoint.filename(1), marker)
    monkeypatch.setattr(tune, "get_checkpoint", lambda: tune.Checkpoint.from_directory(str(ckpt_dir)))
    config = {"arch": {"name": "prernn-gru-fc7", "kind": "prernn", "cell": "gru", "sih": False, "layers": ["fc7"],
                       "num_layers": 1, "hidden_size": None},
              "epochs": 1, "batch_size": 2, "lr_inherited": 1e-3, "lr_new": 1e-3, "weight_decay": 0.0,
              "hh_init": "orthogonal", "seed": 0, "tracking_uri": f"sqlite:///{tmp_path}/m.db",
              "experiment_id": "0", "parent_run_id": "none"}
    with pytest.raises(Exception, match="Weights only load failed"):
        trainable.train_trial(config, data={})
    assert not marker.exists()


def test_evaluate_refuses_a_pretrained_model_with_pickled_code(tmp_path):
    import json

    from stages import evaluate

    marker = tmp_path / "ran"
    (tmp_path / "pretrained").mkdir()
    _evil_file(tmp_path / "pretrained" / "rgb.pt", marker)
    choice = {"name": "prernn-gru-fc6", "kind": "prernn", "cell": "gru", "sih": False, "layers": ["fc6"],
              "reverted_layers": [], "num_layers": 1, "config": {"seed": 0}}
    (tmp_path / "selection.json").write_text(json.dumps({"selected": choice, "baseline": None}))
    params = {"extract": {"modalities": ["rgb"]}, "pretrain": {"modalities": ["rgb"]},
              "search": {"modality": "rgb"}, "evaluate": {"modalities": ["rgb"]}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(SystemExit, match=r"evaluate: .*rgb\.pt: not a plain-tensor checkpoint.*weights_only=True\) refused"):
        evaluate.main(["--params", str(tmp_path / "params.yaml"), "--pretrained", str(tmp_path / "pretrained"),
                       "--clips", str(tmp_path / "clips"), "--selection", str(tmp_path / "selection.json"),
                       "--search", str(tmp_path / "search"), "--out", str(tmp_path / "final.pt"),
                       "--metrics", str(tmp_path / "metrics.json"), "--plots", str(tmp_path / "reports")])
    assert not marker.exists()
