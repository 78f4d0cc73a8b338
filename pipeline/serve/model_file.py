"""The evaluate stage's `models/final.pt` read for prediction (either layout of
`pipeline.report.evaluation.final_checkpoint`), weights only (`pipeline.core.checkpoint.read_weights_only`).

`load_model_file(path)` -> `ModelFile`: {modality: SequenceModel in eval mode}, the meta (class_names,
normalization, extract, modalities, ...) and the task stored in it (`pipeline.training.tasks.task_from_entries`;
files without one are classification). A file that is not such a model -> PredictError naming it and why.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import prernn
from pipeline.core.checkpoint import RefusedFile, read_weights_only
from pipeline.serve.errors import PredictError
from pipeline.training.tasks import Task, task_from_entries

REQUIRED_META = ("class_names", "modalities", "extract", "normalization")


@dataclass
class ModelFile:
    """A loaded final.pt: `models` {modality: SequenceModel (eval)}, `meta`, its `task`, and `source` (the path)."""

    models: dict
    meta: dict
    task: Task
    source: str


def check_checkpoint(ckpt, where: str) -> None:
    """Raise PredictError unless `ckpt` has one of the final.pt layouts."""
    if not isinstance(ckpt, dict):
        raise PredictError(f"{where}: not a prernn model file (holds a {type(ckpt).__name__}, expected the dict "
                           "written by the evaluate stage)")
    meta = ckpt.get("meta")
    if not isinstance(meta, dict):
        raise PredictError(f"{where}: not a prernn model file (no 'meta' dict; keys: {sorted(map(str, ckpt))})")
    streams = ckpt.get("streams")
    if streams is None and not ("config" in ckpt and "state_dict" in ckpt):
        raise PredictError(f"{where}: not a prernn model file (expected keys 'config' and 'state_dict', or "
                           f"'streams'; got {sorted(map(str, ckpt))})")
    missing = [k for k in REQUIRED_META if not meta.get(k)]
    if missing:
        raise PredictError(f"{where}: model metadata lacks {missing}; re-run the evaluate stage to write a "
                           "complete models/final.pt")


def load_model_file(path) -> ModelFile:
    """Load a final.pt (weights_only: no pickled code runs); PredictError with the reason otherwise."""
    path = Path(path)
    if not path.is_file():
        raise PredictError(f"{path}: no such model file")
    try:
        ckpt = read_weights_only(path)
    except (RefusedFile, OSError) as err:  # pickled code, not a torch file, truncated, unreadable
        raise PredictError(f"{path}: not a prernn model file ({err})") from None
    check_checkpoint(ckpt, str(path))
    meta = ckpt["meta"]
    try:
        task = task_from_entries(meta)
    except ValueError as err:
        raise PredictError(f"{path}: {err}") from None
    streams = ckpt["streams"] if "streams" in ckpt else {meta["modalities"][0]: ckpt}
    models = {}
    for m, entry in streams.items():
        try:
            model = prernn.build_from_config(entry["config"])
            model.load_state_dict(entry["state_dict"])
        except Exception as err:  # noqa: BLE001
            raise PredictError(f"{path}: stream {m!r} cannot be rebuilt: {type(err).__name__}: "
                               f"{str(err).splitlines()[0][:200]}") from None
        models[m] = model.eval()
    outputs = int(next(iter(models.values())).config["backbone"]["num_classes"])
    if len(meta["class_names"]) != outputs:
        raise PredictError(f"{path}: {len(meta['class_names'])} class names but the model has {outputs} outputs")
    return ModelFile(models, meta, task, str(path))
