"""Faults through the real search and select stages: a NaN trial and a raising trial are retried per
search.max_failures, marked failed with their reason and never stop the others; a trial that fails once
continues from its last per-epoch checkpoint (no epoch is trained twice); a GPU count the cluster does
not have stops the stage before any trial, with exit code 2."""
import csv
import json
import time

import pytest
import yaml

from tests import faults
from tests.search_fixtures import pretrained_search_project, search_args

FAULTS = {"prernn-gru-fc6": "nan", "traditional-gru-1": "raise", "prernn-gru-fc7": "raise_once"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    # layers null: fc6, fc7, fc6+fc7, plus the 1-layer baseline = 4 trials
    return pretrained_search_project(tmp_path_factory.mktemp("faults"), {"epochs": 2, "max_failures": 1}, "faults")


@pytest.mark.slow  # Ray search
def test_faulty_trials_fail_alone_are_retried_and_show_as_failed(workdir, monkeypatch):
    from pipeline.core import tracking
    from stages import search, select

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    faults.install(monkeypatch, FAULTS)
    search.main(search_args(workdir))
    trials = {t["name"]: t for t in json.loads((workdir / "search" / "trials.json").read_text())}
    assert set(trials) == {"prernn-gru-fc6", "prernn-gru-fc7", "prernn-gru-fc6+fc7", "traditional-gru-1"}
    status = {n: t["status"] for n, t in trials.items()}
    assert status == {"prernn-gru-fc6": "failed", "traditional-gru-1": "failed",
                      "prernn-gru-fc7": "ok", "prernn-gru-fc6+fc7": "ok"}
    assert "NonFiniteLoss" in trials["prernn-gru-fc6"]["error"]
    assert "InjectedFault" in trials["traditional-gru-1"]["error"] and "(raise)" in trials["traditional-gru-1"]["error"]
    for name in ("prernn-gru-fc7", "prernn-gru-fc6+fc7"):
        assert trials[name]["error"] is None and [h["epoch"] for h in trials[name]["history"]] == [1, 2]

    # retries: 1 + max_failures attempts for the failing trials, one restart for raise_once, one for the clean one
    info = json.loads((workdir / "search" / "search.json").read_text())
    tracker = tracking.Tracker(info["tracking_uri"])
    runs = {r.data.tags[tracking.TRIAL_TAG]: r for r in tracker.child_runs(info["experiment_id"],
                                                                           info["parent_run_id"])}
    assert sorted(runs) == sorted(trials)  # one child run per trial, retries reuse it
    attempts = {n: int(r.data.metrics["attempts"]) for n, r in runs.items()}
    assert attempts == {"prernn-gru-fc6": 2, "traditional-gru-1": 2, "prernn-gru-fc7": 2, "prernn-gru-fc6+fc7": 1}
    assert runs["prernn-gru-fc6"].info.status == "FAILED" and runs["prernn-gru-fc7"].info.status == "FINISHED"

    # the restarted trial continued from its epoch-1 checkpoint: each epoch trained (and logged) exactly once
    client = tracker.client
    assert sorted(m.step for m in client.get_metric_history(runs["prernn-gru-fc7"].info.run_id, "val_acc")) == [1, 2]
    (trial_dir,) = (workdir / "ray").glob("search-rgb-*/prernn-gru-fc7_*")
    with open(trial_dir / "progress.csv") as fh:
        epochs = [int(float(row["epoch"])) for row in csv.DictReader(fh)]
    assert epochs == [1, 2]
    assert list(trial_dir.glob("checkpoint_*"))  # per-epoch checkpoints live in storage_path

    # select + Table 1 show the failed trials as failed, with their reasons
    select.main(["--params", str(workdir / "params.yaml"), "--search", str(workdir / "search"),
                 "--out", str(workdir / "reports")])
    selection = json.loads((workdir / "reports" / "selection.json").read_text())
    decisions = {r["name"]: r for r in selection["trials"]}
    assert decisions["prernn-gru-fc6"]["decision"] == "failed" and "NonFiniteLoss" in decisions["prernn-gru-fc6"]["reason"]
    assert decisions["traditional-gru-1"]["decision"] == "failed"
    assert selection["counts"]["failed"] == 2 and selection["selected"]["name"] in ("prernn-gru-fc7", "prernn-gru-fc6+fc7")
    table = (workdir / "reports" / "table1.md").read_text()
    gru_rows = [ln for ln in table.splitlines() if ln.startswith("| GRU")]
    assert gru_rows and all(ln.count("failed") == 2 for ln in gru_rows), table


@pytest.mark.slow  # Ray search
def test_more_gpus_per_trial_than_the_cluster_has_stops_before_any_trial(workdir, monkeypatch, capsys):
    from pipeline.core import tracking
    from stages import search

    raw = yaml.safe_load((workdir / "params.yaml").read_text())
    raw["search"]["gpus_per_trial"] = 2
    (workdir / "gpus.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    client = tracking.Tracker(f"sqlite:///{workdir}/mlflow.db").client
    exp = client.get_experiment_by_name("faults")
    before = len(client.search_runs([exp.experiment_id])) if exp else 0
    t0 = time.perf_counter()
    with pytest.raises(SystemExit) as exc:
        search.main(search_args(workdir, "gpus.yaml", "search_gpus"))
    assert exc.value.code == 2 and time.perf_counter() - t0 < 60
    err = capsys.readouterr().err
    assert "search.gpus_per_trial: 2: more than the Ray cluster has: 0 GPUs" in err, err
    assert not (workdir / "search_gpus").exists()
    # checked before the parent run is opened: no MLflow run was made for it
    runs = client.search_runs([exp.experiment_id]) if exp else []
    assert len(runs) == before


def test_the_fault_plugin_refuses_unknown_kinds_and_trials(monkeypatch):
    """A typo in a test's faults is an error, not a search that silently injects nothing."""
    from pipeline.search import tuner
    with pytest.raises(ValueError, match=r"'explode': expected one of .* or pause:N"):
        faults.install(monkeypatch, {"prernn-gru-fc7": "explode"})
    faults.install(monkeypatch, {"prernn-gru-fc9": "nan"})
    assert tuner.train_trial.__name__ == "train_trial"  # Tuner.restore matches trainables by name
    with pytest.raises(ValueError, match=r"\['prernn-gru-fc9'\]: not trials of this search"):
        tuner.run_search(None, None, tuner.SearchInputs({}, {}, [{"name": "prernn-gru-fc7"}], [], "", None))
