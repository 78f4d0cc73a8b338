"""A search whose Ray experiment state is damaged loses nothing (issue 29, item 4).

Ray restores a search only from whole state files (`tuner.pkl`, `experiment_state-*.json`); a kill or a full disk
can leave them cut short (ray #58179), and then `Tuner.restore` stops with a traceback. The stage says so in one
line and starts a new Tuner over the same space in the same experiment folder: each trial continues from the
newest whole checkpoint its name has there (pipeline.search.trial_checkpoint), in the MLflow child run found by
that checkpoint or by its name under the same parent run (pipeline.core.tracking.Tracker.find_child_run), and a
trial that had trained every epoch reports its last one again, untrained.

Tested the way it happens: the stage SIGKILLed mid-search (one trial ended, the other checkpointed epoch 1), then
its state files cut short; and `search.storage_path` on a disk that fills during the search, rerun with space.
Each rerun is compared with an uninterrupted run: every epoch trained once over both runs, the same trials.json
(timings left out), the same MLflow metric history step for step, one child run per trial under the same parent.
"""
import json
import os
import pickle
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pipeline.core.storage import StoragePath
from pipeline.search import tuner
from tests.disk_fixtures import small_fs  # noqa: F401 - the fixture
from tests.test_search_resume import (EPOCHS, TRIALS, _children, _copy, _ended, _env, _histories, _paused, _rows,
                                      _run, _stage, _trained, project, uninterrupted)  # noqa: F401 - fixtures

DAMAGE = {  # which state files are cut short after the kill
    "tuner_pkl": ("tuner.pkl",),
    "experiment_state": ("experiment_state-*.json",),
    "every_state_file": ("tuner.pkl", "experiment_state-*.json", "*-state-*.json"),
}


def _cut_short(exp_dir: Path, patterns) -> list[str]:
    """Truncate each file of `exp_dir` matching `patterns` to half its size (what an interrupted in-place write
    leaves); returns their names."""
    cut = []
    for pattern in patterns:
        for path in sorted(exp_dir.glob(pattern)):
            size = path.stat().st_size
            with open(path, "r+b") as fh:
                fh.truncate(size // 2)
            cut.append(path.name)
    assert cut, f"no {patterns} in {sorted(p.name for p in exp_dir.iterdir())}"
    return cut


def _start_until_one_ended(root: Path, fault: str) -> subprocess.Popen:
    """Start the stage with traditional-gru-1 held by `fault` after epoch 1; return once prernn-gru-fc7 has ended,
    the other is held, and Ray has saved its experiment state since."""
    with open(root / "driver.log", "w") as log:
        proc = subprocess.Popen(_stage(root, {"traditional-gru-1": fault}), cwd=root, env=_env(),
                                start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while not (_paused(root, "traditional-gru-1") and _ended(root, "prernn-gru-fc7")):
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError("the moment never came: " + (root / "driver.log").read_text()[-3000:])
        time.sleep(0.2)
    time.sleep(2.5)  # Ray saves its experiment state every second
    return proc


def _kill_mid_search(root: Path) -> None:
    """Run the stage until one trial ended and the other checkpointed epoch 1 and paused, then SIGKILL it."""
    proc = _start_until_one_ended(root, "pause:1")
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _child_run_ids(root: Path, storage: Path) -> tuple[str, dict]:
    """(the parent run id in the driver state under `storage`, {trial: its child run id})."""
    from pipeline.core import tracking
    state = json.loads(next(storage.glob("search-rgb-*/prernn_search.json")).read_text())
    runs = tracking.Tracker(f"sqlite:///{root}/mlflow.db").child_runs(state["experiment_id"], state["parent_run_id"])
    return state["parent_run_id"], {r.data.tags[tracking.TRIAL_TAG]: r.info.run_id for r in runs}


def _assert_as_uninterrupted(root: Path, uninterrupted: Path, parent: str, runs_before: dict) -> dict:
    """The rerun's outputs equal the uninterrupted run's (module docstring); returns search.json."""
    from pipeline.core import tracking
    info = json.loads((root / "search" / "search.json").read_text())
    assert info["parent_run_id"] == parent
    for name in TRIALS:  # every epoch trained exactly once over both runs
        assert _trained(root, name) == list(range(1, EPOCHS + 1)), (name, _trained(root, name))
    children = _children(root)  # one child run per trial
    assert {n: children[n].info.run_id for n in runs_before} == runs_before
    assert all(r.info.status == "FINISHED" for r in children.values())
    client = tracking.Tracker(info["tracking_uri"]).client
    for name, run in children.items():
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "attempts")]
        assert steps == list(range(1, len(steps) + 1)), (name, steps)
    assert _histories(root) == _histories(uninterrupted)  # each step once, the same values
    assert _rows(root) == _rows(uninterrupted)
    return info


@pytest.mark.slow
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_killed_search_whose_state_was_cut_short_resumes_from_its_trials(damage, project, uninterrupted, tmp_path):
    root = _copy(project, tmp_path / "p")
    _kill_mid_search(root)
    exp_dir = next(root.glob("ray/search-rgb-*"))
    cut = _cut_short(exp_dir, DAMAGE[damage])
    parent, runs_before = _child_run_ids(root, root / "ray")

    done = subprocess.run(_stage(root), cwd=root, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    said = [line for line in (done.stdout + done.stderr).splitlines() if "cannot restore" in line]
    assert len(said) == 1 and "Traceback" not in done.stderr, said
    assert str(exp_dir) in said[0] and any(name in said[0] for name in cut), said
    info = _assert_as_uninterrupted(root, uninterrupted, parent, runs_before)
    assert info["restored_from"] == "trial checkpoints"

    _run(root)  # the state the resumed search saved restores as usual
    info = json.loads((root / "search" / "search.json").read_text())
    assert info["restored_from"] == "experiment state"
    assert {n: _trained(root, n) for n in TRIALS} == {n: list(range(1, EPOCHS + 1)) for n in TRIALS}


def test_restore_problem_names_the_state_file_that_does_not_load(tmp_path):
    """Only what a restore reads counts: tuner.pkl and the newest file of each kind of session state."""
    import pickle

    exp = StoragePath("", tmp_path)
    assert tuner.restore_problem(exp) == f"{tmp_path}: no tuner.pkl"
    (tmp_path / "tuner.pkl").write_bytes(pickle.dumps({"_param_space": {}}))
    assert tuner.restore_problem(exp) == f"{tmp_path}: no experiment_state-*.json"
    (tmp_path / "experiment_state-2026-12-07_10-00-00.json").write_text('{"trial_data": [')  # cut short
    assert tuner.restore_problem(exp).startswith(
        f"{tmp_path / 'experiment_state-2026-12-07_10-00-00.json'} does not load (JSONDecodeError: ")
    (tmp_path / "experiment_state-2026-12-07_11-00-00.json").write_text('{"trial_data": []}')
    assert tuner.restore_problem(exp) is None  # Tune reads only the newest state
    (tmp_path / "basic-variant-state-2026-12-07_11-00-00.json").write_bytes(pickle.dumps({"a": 1})[:-3])
    problem = tuner.restore_problem(exp)
    assert problem == (f"{tmp_path / 'basic-variant-state-2026-12-07_11-00-00.json'} does not load "
                       "(UnpicklingError: pickle data was truncated)")
    (tmp_path / "tuner.pkl").write_bytes(b"")
    assert tuner.restore_problem(exp).startswith(f"{tmp_path / 'basic-variant-state-'}")  # the first in name order

    (tmp_path / "prernn-gru-fc7_abc12_00000").mkdir()
    (tmp_path / tuner.DRIVER_STATE).write_text("{}")
    tuner._discard_ray_state(exp)  # the trial folders and the driver state stay
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prernn-gru-fc7_abc12_00000", tuner.DRIVER_STATE]


@pytest.mark.slow
def test_a_search_whose_disk_filled_resumes_from_its_trials(project, uninterrupted, tmp_path, small_fs):
    """storage_path on a tmpfs that fills while one trial has ended and the other is mid-epoch 2 (epoch 1
    checkpointed): the stage stops with one line; rerun with space, it ends as an uninterrupted run, trains
    nothing the first run had checkpointed again (only the epoch whose checkpoint did not fit), and logs each
    MLflow step once."""
    import yaml

    from tests.disk_fixtures import fill

    root = _copy(project, tmp_path / "p")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["search"]["storage_path"] = str(small_fs / "ray")
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_fs)], check=True)  # room until the test fills it
    proc = _start_until_one_ended(root, "stall:1")
    try:
        filler = fill(small_fs, leave=0)
        (root / "signals" / "traditional-gru-1.release").touch()  # epoch 2 is reported onto the full disk
        assert proc.wait(300) == 1, (root / "driver.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    said = (root / "driver.log").read_text().splitlines()
    assert said[-1].startswith(f"search: search.storage_path: {small_fs / 'ray'}: no space left on device"), said[-5:]
    assert not (root / "search").exists()
    parent, runs_before = _child_run_ids(root, small_fs / "ray")
    trained_before = {n: _trained(root, n) for n in TRIALS}
    assert trained_before["prernn-gru-fc7"] == [1, 2, 3] and trained_before["traditional-gru-1"][0] == 1

    filler.unlink()  # space again
    done = subprocess.run(_stage(root), cwd=root, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    # epoch 2 of the stalled trial never landed whole: trained again, each attempt from epoch 1's checkpoint
    again = _trained(root, "traditional-gru-1")
    assert again.count(1) == 1 and again.count(3) == 1 and set(again) == {1, 2, 3}, again
    info = json.loads((root / "search" / "search.json").read_text())
    said = [line for line in (done.stdout + done.stderr).splitlines() if "cannot restore" in line]
    # either the final state sync onto the full disk cut Ray's state short (the stage removed it: one line says so)
    # or the state is whole and Ray restores it, the failed trial resumed (resume_errored); which one depends on
    # when Ray's clean-up ran: both must end as the uninterrupted run, below
    assert (info["restored_from"], len(said)) in {("trial checkpoints", 1), ("experiment state", 0)}, (info, said)
    assert info["parent_run_id"] == parent
    children = _children(root)
    assert {n: children[n].info.run_id for n in runs_before} == runs_before
    assert all(r.info.status == "FINISHED" for r in children.values())
    assert _trained(root, "prernn-gru-fc7") == [1, 2, 3]
    assert _histories(root) == _histories(uninterrupted)
    assert _rows(root) == _rows(uninterrupted)


@pytest.mark.parametrize("error", [pickle.UnpicklingError("pickle data was truncated"), EOFError("Ran out of input")])
def test_a_pickle_ray_wrote_cut_short_stops_the_stage_as_a_full_storage_path(monkeypatch, tmp_path, error):
    """Ray reads a trial's error.pkl back after the disk filled; by then its clean-up may have freed space again
    (seen in CI: the full-disk test's UnpicklingError came with room on the tmpfs). The stage still says, in one
    line, that storage_path ran out of space, instead of a traceback."""
    from pipeline.search import stage

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(stage.tuner, "run_search", fail)
    with pytest.raises(stage.SearchStageError, match=r"search.storage_path: .*no space left on device.*"
                                                     r"a file it wrote there is cut short"):
        stage._search(None, None, None, tmp_path, quiet=True, fresh=False)
    monkeypatch.setattr(stage.tuner, "run_search", lambda *a, **k: (_ for _ in ()).throw(ValueError("other")))
    with pytest.raises(ValueError, match="other"):  # any other error is not taken for a full disk
        stage._search(None, None, None, tmp_path, quiet=True, fresh=False)
