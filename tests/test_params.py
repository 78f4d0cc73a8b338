"""pipeline.core.params and pipeline.checks: the shipped params.yaml is accepted; every bad key, value and
combination is named, by the plain schema or by the registry checks above it, in the stages that use it."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import prernn
from pipeline import checks
from pipeline.checks import load_params, validate_params
from pipeline.core import params as schema
from pipeline.core.params import ParamsError
from pipeline.training.tasks import list_tasks

ROOT = Path(__file__).resolve().parents[1]


def _shipped() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_shipped_params_are_valid():
    params = load_params(ROOT / "params.yaml")
    assert params.data.source == "synthetic"
    assert params.search.modality in params.pretrain.modalities


def _errors(raw: dict) -> str:
    with pytest.raises(ParamsError) as info:
        validate_params(raw)
    return str(info.value)


def test_unknown_key_is_named():
    raw = _shipped()
    raw["search"]["celss"] = ["lstm"]
    assert "search.celss: unknown key" in _errors(raw)


def test_wrong_type_and_value_name_key_value_and_allowed():
    raw = _shipped()
    raw["search"]["cells"] = ["lstm", "transformer"]
    raw["extract"]["frames"] = "eight"
    message = _errors(raw)
    assert "search.cells.1: 'transformer'" in message and "'vrnn', 'lstm' or 'gru'" in message
    assert "extract.frames: 'eight'" in message
    assert len(message.splitlines()) == 3  # header + one line per problem


def test_unknown_backbone_lists_the_registry():
    raw = _shipped()
    raw["pretrain"]["backbone"] = "alexnet"
    message = _errors(raw)
    assert "pretrain.backbone: 'alexnet'" in message and "vgg_mini" in message


def test_dropout_for_a_backbone_without_one_is_refused():
    raw = _shipped()
    raw["pretrain"].update(backbone="resnet_mini", dropout=0.3)
    assert "pretrain.dropout: 0.3: backbone 'resnet_mini' has no fc dropout; expected null" in _errors(raw)
    raw["pretrain"]["backbone"] = "c3d_mini"  # a C3D has fc6 / fc7 dropout
    assert validate_params(raw).pretrain.dropout == 0.3


def test_modality_used_downstream_must_be_extracted():
    raw = _shipped()
    raw["extract"]["modalities"] = ["rgb"]
    assert "extract.modalities" in _errors(raw)


def test_folder_source_needs_a_root():
    raw = _shipped()
    raw["data"]["source"] = "folder"
    assert "data.root" in _errors(raw)


def test_bad_yaml_names_the_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("search: [unclosed\n")
    with pytest.raises(ParamsError, match=str(path)):
        load_params(path)


def test_search_layers_must_be_candidates_of_the_chosen_backbone():
    raw = _shipped()
    raw["pretrain"]["backbone"] = "resnet_mini"
    raw["search"]["layers"] = [["fc7"]]
    message = _errors(raw)
    assert "search.layers.0: ['fc7']" in message and "'resnet_mini'" in message
    assert "['layer1', 'layer2', 'layer3_1']" in message
    raw["search"]["layers"] = [["layer3_1"], ["layer1", "layer3_1"]]
    assert validate_params(raw).search.layers == [["layer3_1"], ["layer1", "layer3_1"]]


@pytest.mark.parametrize("layers,max_layers,line", [
    ("some", None, "search.layers: 'some': expected null (the default candidates' combinations), 'all'"),
    ([["fc6"], "fc7"], None, "search.layers: [['fc6'], 'fc7']: entry 1: 'fc7' is not a list of layer names"),
    (None, 0, "search.max_layers: 0: Input should be greater than or equal to 1"),
    ([["conv1", "conv3", "fc6"]], 2, "search.layers.0: ['conv1', 'conv3', 'fc6']: 3 layers, more than "
                                     "search.max_layers 2"),
])
def test_search_layers_and_max_layers_errors_name_the_key(layers, max_layers, line):
    raw = _shipped()
    raw["search"].update({"layers": layers, "max_layers": max_layers})
    assert line in _errors(raw)


def test_search_layers_all_and_mixed_sets_are_accepted():
    raw = _shipped()
    raw["search"].update({"layers": "all", "max_layers": 2})
    assert validate_params(raw).search.layers == "all" and validate_params(raw).search.max_layers == 2
    raw["search"].update({"layers": [["conv3", "fc6"], ["fc7"]], "max_layers": None})
    assert validate_params(raw).search.layers == [["conv3", "fc6"], ["fc7"]]


def test_sih_with_only_vrnn_is_refused():
    raw = _shipped()
    raw["search"].update({"sih": [True], "cells": ["vrnn"], "baselines": []})
    message = _errors(raw)
    assert "search.sih: [True]" in message and "['vrnn']" in message and "no trial is possible" in message
    assert len(message.splitlines()) == 2


STAGES = ["ingest", "extract", "pretrain", "search", "select", "evaluate"]


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_prints_the_params_error_and_exits_2(stage, tmp_path, capsys):
    import importlib

    raw = _shipped()
    raw["search"]["cells"] = ["transformer"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    main = importlib.import_module(f"stages.{stage}").main
    with pytest.raises(SystemExit) as exc:
        main(["--params", str(tmp_path / "params.yaml")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "search.cells.0: 'transformer'" in err and str(tmp_path / "params.yaml") in err


@pytest.mark.parametrize("search", [
    {"sih": [True], "cells": ["vrnn"], "baselines": []},
    {"sih": [True]},
    {"cells": []},
    {"layers": [["fc8"], []]},
    {"layers": [["fc6", "fc6"]]},
    {"layers": [["fc7", "fc6"], ["fc6", "fc7"]]},
    {"baselines": [1, 1]},
    {"layers": []},
    {"layers": [["conv3", "fc6", "fc7"]], "max_layers": 2},
])
def test_params_refuse_every_space_the_search_stage_refuses_with_the_same_lines(search):
    from pipeline.checks import backbone_candidates
    from pipeline.core.params import SearchParams
    from pipeline.search.space import SpaceError, build_space

    raw = _shipped()
    raw["search"].update(search)
    params_lines = _errors(raw).splitlines()[1:]
    with pytest.raises(SpaceError) as info:
        build_space(SearchParams(**raw["search"]), *backbone_candidates(raw["pretrain"]["backbone"]))
    space_lines = str(info.value).splitlines()
    assert [line.removesuffix(" (pretrain.backbone 'vgg_mini')") for line in params_lines] == space_lines


def test_the_tracking_outage_bound_is_a_positive_number_of_seconds():
    raw = _shipped()
    assert validate_params(raw).mlflow.outage_s == 120
    raw["mlflow"]["outage_s"] = 0
    assert "mlflow.outage_s: 0: Input should be greater than 0" in _errors(raw)


def test_evaluate_modalities_null_takes_the_tasks_streams_that_pretrain_trains():
    """classification fuses rgb and flow; regression evaluates rgb alone (flow cannot place a still face's
    landmarks); a stream pretrain does not train is left out; a list given is kept as it is."""
    raw = _shipped()
    assert raw["evaluate"]["modalities"] is None  # the shipped default leaves it to the task
    assert validate_params(raw).evaluate.modalities == ["rgb", "flow"]
    regression = {**raw, "task": "regression", "data": {**raw["data"], "source": "synthetic_landmarks"}}
    assert validate_params(regression).evaluate.modalities == ["rgb"]
    flow_only = {**raw, "pretrain": {**raw["pretrain"], "modalities": ["flow"]}, "search": {**raw["search"], "modality": "flow"}}
    assert validate_params(flow_only).evaluate.modalities == ["flow"]
    given = {**raw, "evaluate": {**raw["evaluate"], "modalities": ["flow", "rgb"]}}
    assert validate_params(given).evaluate.modalities == ["flow", "rgb"]
    assert "evaluate.modalities" in _errors({**raw, "evaluate": {**raw["evaluate"], "modalities": []}})


def test_the_schemas_fixed_lists_are_the_registries():
    """pipeline.core.params keeps the task and cell names as plain strings (no registry import): the same lists."""
    assert list(schema.TASKS) == list_tasks()
    assert schema.CELLS == prernn.CELLS


def test_the_schema_imports_no_torch_prernn_or_upper_package():
    code = ("import sys, pipeline.core.params; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'prernn') "
            "or m.startswith(('pipeline.training', 'pipeline.search', 'pipeline.report', 'pipeline.serve'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_the_plain_schema_leaves_the_task_defaults_and_registry_checks_to_pipeline_checks():
    raw = _shipped()
    raw["pretrain"]["backbone"] = "alexnet"
    plain = schema.validate_params(raw)  # what ingest and extract read: a backbone name is a string to them
    assert plain.pretrain.backbone == "alexnet" and plain.select.metric is None and plain.evaluate.modalities is None
    resolved = checks.with_task_defaults(plain)
    assert (resolved.select.metric, resolved.select.mode, resolved.evaluate.modalities) == ("val_acc", "max", ["rgb", "flow"])
    assert "pretrain.backbone: 'alexnet'" in _errors(raw)


def test_select_mode_beside_a_given_metric_defaults_to_max():
    raw = _shipped()
    raw["select"] = {**(raw.get("select") or {}), "metric": "val_loss"}
    raw["select"].pop("mode", None)
    assert (validate_params(raw).select.metric, validate_params(raw).select.mode) == ("val_loss", "max")
    raw["select"]["mode"] = "min"
    assert validate_params(raw).select.mode == "min"


def test_each_stage_runs_the_checks_it_needs():
    raw = _shipped()
    raw["search"]["layers"] = [["fc8"]]  # the search space: search (and the full check) refuse it
    with pytest.raises(ParamsError, match=r"search\.layers\.0: \['fc8'\]"):
        validate_params(raw, "search")
    assert validate_params(raw, "pretrain").search.layers == [["fc8"]]
    assert validate_params(raw, "select").select.metric == "val_acc"
    raw = _shipped()
    raw["pretrain"].update(backbone="resnet_mini", dropout=0.3)
    assert "pretrain.dropout" in _errors(raw) and validate_params(raw, "select").pretrain.dropout == 0.3
    with pytest.raises(ParamsError, match="pretrain.dropout"):
        validate_params(raw, "pretrain")
    with pytest.raises(ValueError, match="stage 'train': unknown"):
        validate_params(_shipped(), "train")


@pytest.mark.parametrize("stage", ["ingest", "extract"])
def test_ingest_and_extract_read_plain_params(stage, tmp_path):
    """Those stages load through pipeline.core.params (their DVC deps are the data code): a bad search space is
    for the stages that search; the full check (`python -m pipeline.checks`, first in `make repro`) names it."""
    raw = _shipped()
    raw["search"]["layers"] = [["fc8"]]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    assert schema.load_stage_params(tmp_path / "params.yaml", stage).search.layers == [["fc8"]]
    assert checks.main([str(tmp_path / "params.yaml")]) == 2
    assert checks.main([str(ROOT / "params.yaml")]) == 0


def test_the_full_check_names_the_file_and_exits_2(tmp_path, capsys):
    raw = _shipped()
    raw["search"]["layers"] = [["fc8"]]
    raw["pretrain"]["backbone"] = "alexnet"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = subprocess.run([sys.executable, "-m", "pipeline.checks", str(path)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2
    assert out.stderr.splitlines()[:2] == [f"{path}: invalid params:",
                                           "pretrain.backbone: 'alexnet': unknown backbone 'alexnet'; allowed: "
                                           + ", ".join(prernn.list_backbones())
                                           + ", or your own CNN's builder 'package.module:function'"]
