"""Tampered or truncated clip files: `open_clip_file` refuses them naming the file, and every stage that reads
clips (pretrain, search, evaluate) stops with that one line and exit status 2 before any training."""
import json

import numpy as np
import pyarrow as pa
import pytest
import torch
import yaml

import prernn
from pipeline.data.clipstore import ClipFileError, open_clip_file, read_meta
from pipeline.data.dataset import ClipDataset
from tests.search_fixtures import CLASSES, make_clips


@pytest.fixture
def clips(tmp_path):
    return make_clips(tmp_path / "clips", per_split={"train": 4, "val": 1, "test": 1})


def _cut(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _zeros(data: bytes) -> bytes:
    return bytes(len(data))


def _random(data: bytes) -> bytes:
    return np.random.default_rng(0).integers(0, 256, len(data), dtype=np.uint8).tobytes()


def _footer(data: bytes) -> bytes:
    return data[:-64] + b"\xff" * 64


def _leading_schema(data: bytes) -> bytes:  # the schema message after the magic; the footer's copy intact
    return data[:200] + b"\xff" * 64 + data[264:]


def _batch_header(data: bytes) -> bytes:  # the first record batch's message header
    return data[:800] + b"\xff" * 64 + data[864:]


@pytest.mark.parametrize("damage", [_cut, _zeros, _random, _footer, _leading_schema, _batch_header])
def test_damaged_files_are_refused_naming_the_file(clips, damage):
    f = clips / "train-000.arrow"
    assert len(f.read_bytes()) > 2000 and open_clip_file(f).num_record_batches == 1  # the offsets above hit it
    f.write_bytes(damage(f.read_bytes()))
    with pytest.raises(ClipFileError, match=rf"^{f}: .*rerun the extract stage"):
        open_clip_file(f)
    with pytest.raises(ClipFileError, match=str(f)):
        ClipDataset(clips, "train", "rgb")


def test_other_arrow_files_are_refused(clips):
    f = clips / "val-000.arrow"
    table = pa.table({"x": [1, 2]})
    with pa.ipc.new_file(str(f), table.schema) as w:
        w.write_table(table)
    with pytest.raises(ClipFileError, match=r"columns \['x'\] lack \['label', 'video_id', 'path'\]"):
        read_meta(f)
    plain = clips / "test-000.arrow"  # the right columns without the prernn metadata (a half-finished write)
    schema = open_clip_file(clips / "train-000.arrow").schema.remove_metadata()
    pa.ipc.new_file(str(plain), schema).close()
    with pytest.raises(ClipFileError, match=rf"{plain}: not a finished clip file: metadata lacks"):
        open_clip_file(plain)


def test_a_shard_from_another_extract_run_is_refused(tmp_path, clips):
    other = make_clips(tmp_path / "other", per_split={"train": 1, "val": 1, "test": 1}, size=8)
    (other / "train-000.arrow").rename(clips / "train-001.arrow")  # a valid clip file, other frame size
    with pytest.raises(ClipFileError, match=r"train-001.arrow: not from the same extract run as .*train-000.arrow"):
        ClipDataset(clips, "train", "rgb")
    assert len(ClipDataset(clips, "val", "rgb")) == len(CLASSES)  # the other splits still open


def _project(root, clips):
    """params.yaml, a pretrained vgg_mini and a selection for the stages, over `clips` (rgb, 16 px, T = 4)."""
    params = {"extract": {"modalities": ["rgb"], "size": 16, "frames": 4},
              "pretrain": {"modalities": ["rgb"], "epochs": 1},
              "search": {"modality": "rgb", "cells": ["gru"], "sih": [False], "baselines": [1],
                         "storage_path": str(root / "ray")},
              "evaluate": {"modalities": ["rgb"], "epochs": 1},
              "mlflow": {"tracking_uri": f"sqlite:///{root}/mlflow.db"}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    (root / "pretrained").mkdir()
    bb = prernn.create_backbone("vgg_mini", len(CLASSES), input_size=16, width=16)
    torch.save({"config": bb.config, "state_dict": bb.state_dict(), "meta": {}}, root / "pretrained" / "rgb.pt")
    selected = {"name": "prernn-gru-fc6", "trial": "prernn-gru-fc6", "kind": "prernn", "cell": "gru", "sih": False,
                "layers": ["fc6"], "searched_layers": ["fc6"], "reverted_layers": [], "num_layers": 1,
                "config": {"batch_size": 4, "lr_inherited": 1e-3, "lr_new": 3e-3, "weight_decay": 0.0,
                           "hh_init": "orthogonal", "seed": 0}}
    (root / "selection.json").write_text(json.dumps({"selected": selected, "baseline": None}))


def _stage(name, root, clips):
    import importlib

    argv = {"pretrain": ["--out", str(root / "out")],
            "search": ["--pretrained", str(root / "pretrained"), "--out", str(root / "out"), "--quiet"],
            "evaluate": ["--pretrained", str(root / "pretrained"), "--selection", str(root / "selection.json"),
                         "--search", str(root / "search"), "--out", str(root / "out" / "final.pt"),
                         "--metrics", str(root / "out" / "metrics.json"), "--plots", str(root / "out")]}[name]
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(f"stages.{name}").main(["--params", str(root / "params.yaml"),
                                                        "--clips", str(clips)] + argv)
    return exit_info.value.code


@pytest.mark.parametrize("stage", ["pretrain", "search", "evaluate"])
def test_stages_stop_with_one_line_before_training(tmp_path, clips, capsys, stage):
    _project(tmp_path, clips)
    f = clips / "train-000.arrow"
    f.write_bytes(_cut(f.read_bytes()))
    code = _stage(stage, tmp_path, clips)
    out, err = capsys.readouterr()
    assert code == 2
    assert err.splitlines() == [f"{stage}: {f}: not a readable Arrow clip file (Not an Arrow file); "
                                "rerun the extract stage (dvc repro extract) to rewrite it"]
    assert "epoch" not in out and not (tmp_path / "out").exists() and not (tmp_path / "ray").exists()
