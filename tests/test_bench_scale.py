"""bench.scale's machinery at a tiny size (no timing asserted): the space it builds, the store check finding lost
and doubled runs, and a whole 6-trial run through the real tuner printing its three `target` lines."""
import re

import pytest

from bench import scale
from pipeline.core.tracking import TRIAL_TAG, Tracker
from pipeline.core.params import SearchParams


def test_space_repeats_the_default_configurations_under_distinct_names_once_per_seed():
    space = scale.scale_space(SearchParams(seeds=2), ["fc6", "fc7"], 23)
    configurations = {a["configuration"] for a in space}
    assert len(space) == 46 and len(configurations) == 23 and len({a["name"] for a in space}) == 46
    assert {"prernn-vrnn-fc6-r0", "prernn-vrnn-fc6-r1", "traditional-gru-2-r0"} <= configurations
    assert {a["seed"] for a in space} == {0, 1}


def test_store_check_names_lost_doubled_and_unfinished_runs(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db")
    uri, exp = tracker.uri, tracker.ensure_experiment("t")
    parent = tracker.start_run(exp, "search")

    def child(name, status="FINISHED"):
        run = tracker.start_run(exp, name, parent_run_id=parent, tags={TRIAL_TAG: name})
        tracker.log_batch(run, metrics={"val_acc": 0.5}, tags={"best_val_acc": "0.5"}, step=1)
        tracker.log_json(run, {}, "gate_stats.json")
        tracker.end_run(run, status)
        return run

    rows = [{"name": n, "status": "ok", "error": None, "mlflow_run_id": None} for n in ("a", "b", "c", "d")]
    a = rows[0]["mlflow_run_id"] = child("a")
    b = rows[1]["mlflow_run_id"] = child("b", "KILLED")
    child("c"), child("c")                                       # doubled; "d" has none
    assert scale.store_problems(uri, exp, parent, rows[:1] + rows[2:3]) == ["4 child runs for 2 trials",
                                                                             "c: 2 child runs"]
    assert scale.store_problems(uri, exp, parent, rows) == ["b: run KILLED", "c: 2 child runs", "d: 0 child runs"]
    rows[0]["mlflow_run_id"] = b                                 # trials.json naming another trial's run
    assert f"a: trials.json names run {b}, the store {a}" in scale.store_problems(uri, exp, parent, rows)


@pytest.mark.slow  # Ray search
def test_tiny_run_prints_the_three_targets(capsys):
    scale.main(["--configurations", "3", "--seeds", "2"])
    out = capsys.readouterr().out
    assert re.search(r"^search: 6 trials on \d+ slots in [\d.]+ s", out, re.M), out
    assert re.search(r"^store: 0 problem\(s\), 0 lock retries$", out, re.M), out
    for name in ("scale_overhead_per_trial_s", "scale_select_s"):
        assert re.search(rf"^target {name}: \d+\.\d{{3}} \(goal < \d+(\.\d+)?\) (ok|miss)$", out, re.M), out
    assert re.search(r"^target scale_store_problems: 0 \(goal <= 0\) ok$", out, re.M), out
