"""pipeline.report.inputs (the select / evaluate stages' JSON inputs) and final_evaluation.mlflow_metrics."""
import json

import pytest

from pipeline.report.final_evaluation import mlflow_metrics
from pipeline.report.inputs import ReportInputError, read_choices, read_json, read_search


def test_read_json_names_the_file_and_what_to_run(tmp_path):
    with pytest.raises(ReportInputError, match=rf"^{tmp_path}/x.json is missing; run stage x$"):
        read_json(tmp_path / "x.json", "run stage x")
    assert read_json(tmp_path / "x.json", "", required=False) == {}
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(ReportInputError, match=rf"^{tmp_path}/x.json is not valid JSON: "):
        read_json(tmp_path / "x.json", "", required=False)  # present but broken: an error even when optional


def test_read_search_wants_a_list_of_trials(tmp_path):
    (tmp_path / "trials.json").write_text(json.dumps({"name": "t"}))
    (tmp_path / "search.json").write_text(json.dumps({"backbone": "vgg_mini"}))
    with pytest.raises(ReportInputError, match="trials.json: expected a list of trials, got dict"):
        read_search(tmp_path)
    (tmp_path / "trials.json").write_text(json.dumps([{"name": "t"}]))
    assert read_search(tmp_path) == ([{"name": "t"}], {"backbone": "vgg_mini"})


def test_read_choices_refuses_a_selection_without_a_configuration(tmp_path):
    path = tmp_path / "selection.json"
    path.write_text(json.dumps({"selected": None, "no_selection": "no PreRNN trial succeeded here"}))
    with pytest.raises(ReportInputError, match=r"no configuration was selected \(no PreRNN trial succeeded here\)"):
        read_choices(str(path))
    path.write_text(json.dumps({"selected": {"name": "a"}}))
    assert read_choices(str(path))[1] == {"selected": {"name": "a"}, "baseline": None}


def test_mlflow_metrics_flattens_differences_and_streams_and_drops_none():
    diff = {"mean": 0.1, "ci_low": -0.05, "ci_high": 0.2}
    metrics = {"test_acc": 0.9, "gain": None, "selected": "prernn-gru-fc6", "n_test": 4,
               "comparison": {"fused": {"test_acc": {"selected": {}, "difference": diff}},
                              "rgb": {"test_acc": {"selected": {}}}},
               "streams": {"rgb": {"test_acc": 0.8, "baseline_test_acc": None}}}
    assert mlflow_metrics(metrics) == {"test_acc": 0.9, "n_test": 4, "fused_test_acc_difference": 0.1,
                                       "fused_test_acc_difference_ci_low": -0.05,
                                       "fused_test_acc_difference_ci_high": 0.2, "rgb_test_acc": 0.8}
