"""pipeline.search.trial_checkpoint: a restarted trial finds the newest loadable checkpoint of its own name, wherever Ray
left it (stale experiment state, new trial ids after a restart without state), on a folder or a pyarrow URI."""
import pytest
import torch

from pipeline.search import trial_checkpoint
from pipeline.core.storage import StoragePath


def _state(epoch: int) -> dict:
    return {"model": {"w": torch.full((2,), float(epoch))}, "optimizer": {}, "epoch": epoch,
            "history": [{"epoch": e} for e in range(1, epoch + 1)]}


def _write(folder, epoch: int):
    folder.mkdir(parents=True, exist_ok=True)
    trial_checkpoint.save(folder, _state(epoch), "run-1")
    return folder / trial_checkpoint.filename(epoch)


@pytest.mark.parametrize("form", ["path", "uri"])
def test_newest_loadable_checkpoint_of_the_trial_wins_over_the_one_ray_gave(tmp_path, form):
    from ray import tune

    exp = tmp_path / "search-rgb-abc"
    given = _write(exp / "prernn-gru-fc7_a1_00000" / "checkpoint_000000", 1).parent  # what Ray's stale state knew
    _write(exp / "prernn-gru-fc7_a1_00000" / "checkpoint_000001", 2)
    _write(exp / "prernn-gru-fc7_b2_00000" / "checkpoint_000000", 3)  # the same trial, restarted under a new id
    cut = _write(exp / "prernn-gru-fc7_b2_00000" / "checkpoint_000001", 4)
    cut.write_bytes(cut.read_bytes()[:100])  # killed while it was written
    _write(exp / "prernn-gru-fc7+fc6_c3_00000" / "checkpoint_000000", 9)  # another trial whose name starts alike
    _write(exp / "prernn-gru-fc7-again_d4_00000" / "checkpoint_000000", 9)
    folder = StoragePath.resolve(str(exp) if form == "path" else exp.as_uri(), tmp_path)

    state = trial_checkpoint.newest_state(folder, "prernn-gru-fc7", tune.Checkpoint.from_directory(str(given)))
    assert state["trainer"]["epoch"] == 3 and state["mlflow_run_id"] == "run-1"
    assert torch.equal(state["trainer"]["model"]["w"], torch.full((2,), 3.0))
    assert trial_checkpoint.newest_state(folder, "traditional-gru-1") == {}
    assert trial_checkpoint.newest_state(None, "prernn-gru-fc7", tune.Checkpoint.from_directory(str(given))
                                         )["trainer"]["epoch"] == 1
    assert trial_checkpoint.newest_state(StoragePath.resolve(str(tmp_path / "missing"), tmp_path), "x") == {}


def test_a_checkpoint_holding_pickled_code_is_refused_not_skipped(tmp_path):
    import os
    import pickle

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'ran'}",)

    folder = tmp_path / "exp" / "prernn-gru-fc7_a1_00000" / "checkpoint_000000"
    _write(folder, 1)
    torch.save({"trainer": _state(2), "payload": Evil()}, folder / trial_checkpoint.filename(2))
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        trial_checkpoint.newest_state(StoragePath.resolve(str(tmp_path / "exp"), tmp_path), "prernn-gru-fc7")
    assert not (tmp_path / "ran").exists()
