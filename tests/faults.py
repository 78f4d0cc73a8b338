"""Test-only fault injection for the search; none of it is in the product's code paths.

`with_faults(trainable, faults, signal_dir)` wraps the trainable the search driver runs
(pipeline.search.tuner.train_trial) so that, inside the Ray workers, the trials named in `faults` misbehave:
  "nan"         one new weight is NaN before the first epoch of every attempt, so its first loss is NaN;
  "raise"       InjectedFault before the first epoch, every attempt;
  "raise_once"  InjectedFault after epoch 1 was reported and checkpointed, on an attempt that started from
                scratch (a retry continues from that checkpoint);
  "slow"        SLOW_EPOCH_S more per epoch;
  "pause:N"     before training epoch N + 1 (N = 0: before the first), touch `<signal_dir>/<trial>.paused`
                and wait (a test kills the driver then);
  "pause:end"   the same after the trial's last report, before it returns (the driver has not seen it end);
  "stall:N"     mid-epoch N + 1 (trained, not yet validated nor reported), on an attempt that started from
                scratch: write `<signal_dir>/<trial>.paused` ({"pid", "node_id"} of the worker) and wait until
                `<signal_dir>/<trial>.release` exists (a test kills a node, or lets it go on); a retry that
                continues from a checkpoint does not stall.
With a `signal_dir`, every epoch a trial trains (faulted or not) is appended to `<signal_dir>/<trial>.trained`.
The wrapper keeps the trainable's name, so a search started with faults can be restored without them.

`install(monkeypatch, faults, signal_dir)` puts the wrapper in place for an in-process search and checks
that every faulted name is a trial of the search run (a typo cannot silently inject nothing);
`python -m tests.faults FAULTS_JSON SIGNAL_DIR STAGE_ARGS...` runs the search stage with them in a process
of its own (for tests that SIGKILL the driver).
"""
from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path

SLOW_EPOCH_S = 2.0
KINDS = ("nan", "raise", "raise_once", "slow", "pause:end")
_active: dict = {}  # in a Ray worker: {"fault", "signal_dir", "name"} of the trial running there now


class InjectedFault(RuntimeError):
    """Raised by the "raise" / "raise_once" faults."""


def check(faults: dict) -> dict:
    """`faults` ({trial name: kind}) if every kind is known, else ValueError naming the bad one."""
    for name, kind in faults.items():
        if kind not in KINDS and not (kind.startswith(("pause:", "stall:")) and kind[len("pause:"):].isdigit()):
            raise ValueError(f"fault for {name}: {kind!r}: expected one of {list(KINDS)}, stall:N or pause:N")
    return faults


def _signal_and_wait(trial: str) -> None:
    Path(_active["signal_dir"], f"{trial}.paused").touch()
    while True:
        time.sleep(60)


def _stall_until_released(trial: str) -> None:
    import os

    import ray

    signals = Path(_active["signal_dir"])
    tmp = signals / f".{trial}.paused.tmp"
    tmp.write_text(json.dumps({"pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id()}))
    tmp.rename(signals / f"{trial}.paused")
    while not (signals / f"{trial}.release").exists():
        time.sleep(0.2)


def _mid_epoch(trainer) -> None:
    """Called by the patched Trainer.evaluate in a worker: after an epoch's training pass, before its validation."""
    fault = _active.get("fault") or ""
    if (fault.startswith("stall:") and trainer.epoch == int(fault[len("stall:"):]) + 1
            and getattr(trainer, "_fault_start_epoch", None) == 0):
        _stall_until_released(_active["name"])


def _before_epoch(trainer) -> None:
    """Called by the patched Trainer.fit_epoch in a worker, before each epoch of the active trial."""
    fault = _active.get("fault") or ""
    if not hasattr(trainer, "_fault_start_epoch"):
        trainer._fault_start_epoch = trainer.epoch  # 0: this attempt started from scratch
    if fault == "nan" and trainer.epoch == trainer._fault_start_epoch:
        import torch

        params = list(trainer.model.new_parameters()) or list(trainer.model.parameters())
        with torch.no_grad():
            params[0].fill_(float("nan"))
    elif fault == "raise" and trainer.epoch == 0:
        raise InjectedFault("injected fault (raise) before the first epoch")
    elif fault == "raise_once" and trainer.epoch == 1 and trainer._fault_start_epoch == 0:
        raise InjectedFault("injected fault (raise_once) after epoch 1")
    elif fault == "slow":
        time.sleep(SLOW_EPOCH_S)
    elif fault.startswith("pause:") and fault != "pause:end" and trainer.epoch == int(fault[len("pause:"):]):
        _signal_and_wait(_active["name"])
    if _active.get("signal_dir"):  # record every epoch this process trains: `<signal_dir>/<trial>.trained`
        with open(Path(_active["signal_dir"], f"{_active['name']}.trained"), "a") as fh:
            fh.write(f"{trainer.epoch + 1}\n")


def _patch_trainer() -> None:
    """Route Trainer.fit_epoch through `_before_epoch` and Trainer.evaluate through `_mid_epoch` in this process
    (once; reused actors keep it)."""
    from pipeline.training.trainer import Trainer

    if getattr(Trainer.fit_epoch, "_with_faults", False):
        return
    original_fit, original_evaluate = Trainer.fit_epoch, Trainer.evaluate

    def fit_epoch(self, train_data, val_data):
        _before_epoch(self)
        return original_fit(self, train_data, val_data)

    def evaluate(self, *args, **kwargs):
        _mid_epoch(self)
        return original_evaluate(self, *args, **kwargs)

    fit_epoch._with_faults = True
    Trainer.fit_epoch, Trainer.evaluate = fit_epoch, evaluate


def _run(trainable, faults: dict, signal_dir, config: dict, *args, **kwargs):
    """The wrapped trainable's body, in the Ray worker."""
    name = config["arch"]["name"]
    _patch_trainer()
    _active.update(fault=faults.get(name), signal_dir=signal_dir, name=name)
    try:
        result = trainable(config, *args, **kwargs)
        if faults.get(name) == "pause:end":
            _signal_and_wait(name)
        return result
    finally:
        _active.clear()


def with_faults(trainable, faults: dict, signal_dir=None):
    """`trainable` with `faults` ({trial name: kind}) injected in its trials (module docstring)."""
    faults, signal_dir = dict(check(faults)), str(signal_dir) if signal_dir else None

    def wrapped(config, *args, **kwargs):
        return _run(trainable, faults, signal_dir, config, *args, **kwargs)

    wrapped.__name__ = trainable.__name__  # Tuner.restore checks the trainable's name
    return wrapped


def _patch(setattr_, faults: dict, signal_dir=None) -> None:
    from pipeline.search import tuner
    run_search = tuner.run_search

    @functools.wraps(run_search)
    def checked_run_search(search, mlflow_params, inputs, **kwargs):
        names = [a["name"] for a in inputs.space]
        unknown = sorted(set(faults) - set(names))
        if unknown:
            raise ValueError(f"faults for {unknown}: not trials of this search ({names})")
        return run_search(search, mlflow_params, inputs, **kwargs)

    setattr_(tuner, "train_trial", with_faults(tuner.train_trial, faults, signal_dir))
    setattr_(tuner, "run_search", checked_run_search)


def install(monkeypatch, faults: dict, signal_dir=None) -> None:
    """Inject `faults` into the searches this test runs in-process (undone with `monkeypatch`)."""
    _patch(monkeypatch.setattr, faults, signal_dir)


def main(argv=None) -> None:
    """`FAULTS_JSON SIGNAL_DIR STAGE_ARGS...`: the search stage with those faults."""
    argv = sys.argv[1:] if argv is None else argv
    from stages import search

    _patch(setattr, json.loads(argv[0]), argv[1])
    search.main(argv[2:])


if __name__ == "__main__":
    main()
