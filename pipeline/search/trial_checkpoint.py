"""A search trial's per-epoch checkpoints, and the newest one a restarted trial continues from.

Each report of a trial carries a checkpoint folder holding one file, `epoch-NNNN.pt` ({"trainer":
Trainer.state_dict(), "mlflow_run_id"}; NNNN = epochs trained). Ray keeps every one of them under
`<experiment folder>/<trial name>_<trial id>/checkpoint_*/`, but after a killed driver it restores a trial
from the last checkpoint its experiment state had recorded, which can be epochs older than the last one the
trial wrote (the state is saved every few seconds), and a search restarted without any state gives its
trials new ids. `newest_state(experiment_dir, name, given)` therefore looks at every checkpoint of the
trial's name in the experiment folder (and at the one Ray gave) and returns the state with the most epochs
that loads, so no reported epoch is trained again. The experiment folder is named by a fingerprint of
everything that decides the results (pipeline.search.tuner), so a checkpoint found there belongs to this trial.
"""
from __future__ import annotations

import glob
import io
import logging
import pickle
import re
from pathlib import Path
from typing import Optional

import torch

from pipeline.core.storage import StoragePath

log = logging.getLogger(__name__)
PATTERN = re.compile(r"epoch-(\d+)\.pt$")


def filename(epoch: int) -> str:
    """The checkpoint file of a state after `epoch` epochs: `epoch-0003.pt`."""
    return f"epoch-{epoch:04d}.pt"


def save(folder: Path, trainer_state: dict, mlflow_run_id: str) -> None:
    """Write the checkpoint file of `trainer_state` (Trainer.state_dict()) into `folder`."""
    torch.save({"trainer": trainer_state, "mlflow_run_id": mlflow_run_id}, Path(folder) / filename(trainer_state["epoch"]))


def _epoch(path: str) -> Optional[int]:
    match = PATTERN.search(path)
    return int(match.group(1)) if match else None


def _load(data, epoch: int, device) -> Optional[dict]:
    """The state in `data` (a path or bytes) if it loads and holds `epoch` epochs, else None (logged)."""
    try:
        state = torch.load(io.BytesIO(data) if isinstance(data, bytes) else data, map_location=device,
                           weights_only=True)
        if int(state["trainer"]["epoch"]) == epoch:
            return state
        log.warning("trial checkpoint for epoch %d holds epoch %s; skipped", epoch, state["trainer"]["epoch"])
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower():
            raise  # pickled code or objects: refused (nothing of it ran), never silently replaced by an older one
        log.warning("trial checkpoint for epoch %d does not load (%s); trying an older one", epoch, err)
    except Exception as err:  # noqa: BLE001 - a file cut short by a kill, or overwritten while we read it
        log.warning("trial checkpoint for epoch %d does not load (%s); trying an older one", epoch, err)
    return None


def newest_state(experiment_dir: Optional[StoragePath], name: str, given=None, device="cpu") -> dict:
    """The loadable checkpoint state of trial `name` with the most epochs, from the `given` Ray checkpoint
    (tune.get_checkpoint()) and every `<name>_*/checkpoint_*/epoch-*.pt` under `experiment_dir`; {} if none."""
    best: dict = {}
    if given is not None:
        with given.as_directory() as folder:  # a temporary download for a remote filesystem
            for path in sorted(Path(folder).glob("epoch-*.pt"), key=lambda p: -(_epoch(p.name) or -1)):
                best = _load(str(path), _epoch(path.name), device) or {}
                if best:
                    break
    have = int(best["trainer"]["epoch"]) if best else -1
    found = experiment_dir.glob(f"{glob.escape(name)}_*/checkpoint_*/epoch-*.pt") if experiment_dir else []
    for path in sorted((p for p in found if (_epoch(str(p)) or -1) > have), key=lambda p: -_epoch(str(p))):
        state = _load(path.read_bytes(), _epoch(str(path)), device)
        if state:
            return state
    return best
