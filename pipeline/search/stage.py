"""The search stage's work: `run_search_stage(params, clips, pretrained, out, quiet, fresh) -> summary`.

In: the validated params (sections `search`, `mlflow` and the task's), the extract stage's Arrow clip folder,
the pretrain stage's folder (`{modality}.pt`). It loads the checkpoint and the clips, builds the space (one trial
per configuration and seed), runs the frozen trunk once per distinct trial boundary (pipeline.search.trunk_cache),
measures the trained CNN alone on the val clips (`frame_reference`, Table 1's reference column), runs the search
(pipeline.search.tuner.run_search) and writes trials.json, trials.csv and search.json under `out` (one atomic
folder). Progress lines go to stdout; what stops the stage is a `SearchStageError` (one line, and the exit
status: 2 for bad input, else 1), or ParamsError / SpaceError for params only the backbone or the running
cluster can refute.
"""
from __future__ import annotations

import pickle
import time
from pathlib import Path

import prernn
from pipeline.core.atomic import DiskFull, disk_full_message, nearly_full, out_of_space, space_for
from pipeline.core.checkpoint import backbone_from, load_checkpoint
from pipeline.core.own_model import model_config
from pipeline.core.ray_cluster import ClusterUnavailable
from pipeline.core.storage import remove_partial_writes
from pipeline.core.tracking import TrackingUnavailable
from pipeline.data.augment import from_params
from pipeline.data.clipstore import ClipFileError
from pipeline.data.dataset import ClipDataset, snippet_length
from pipeline.search import tuner
from pipeline.search.results import write_outputs
from pipeline.search.space import build_space
from pipeline.search.trial_config import seed_values, with_seeds
from pipeline.search.trunk_cache import default_boundary, space_boundaries, trunk_caches
from pipeline.training.tasks import task_from_params
from pipeline.training.trainer import evaluate_model, seed_everything

RERUN_AFTER_FULL = ("free some space and rerun the stage (it continues each trial from its newest whole "
                    "checkpoint)")


class SearchStageError(RuntimeError):
    """What stops the search stage, in one line; `exit_code` 2 for bad input (a clip file), else 1."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def frame_reference(backbone, val, task) -> dict:
    """The trained CNN alone on the val clips (per frame, outputs averaged over the clip; regression: per frame):
    Table 1's reference column. {"val_<key>"} for the task's metric keys: {"val_acc"} or {"val_auc", "val_nme",
    "val_failure_rate"}."""
    return {f"val_{k}": v for k, v in evaluate_model(prernn.frame_model(backbone), val, task=task).metrics.items()}


def storage_full(storage, since: float, what: str) -> SearchStageError:
    """The error for a search.storage_path out of space; first removes what Ray's writes cut short there
    (pipeline.core.storage.remove_partial_writes), so that the rerun continues from whole files (Ray's state
    where it is whole, else each trial's newest checkpoint: pipeline.search.tuner.restore_problem)."""
    removed = remove_partial_writes(storage, since) if isinstance(storage, Path) else []
    cut = f"; removed {len(removed)} file(s) cut short" if removed else ""
    return SearchStageError(f"search.storage_path: {disk_full_message(storage, RERUN_AFTER_FULL)} ({what}{cut})")


def _load_pretrained(pretrained, modality: str) -> dict:
    try:
        return load_checkpoint(Path(pretrained) / f"{modality}.pt")
    except (FileNotFoundError, ValueError) as err:
        raise SearchStageError(str(err)) from None


def _datasets(clips, modality: str, snippet) -> dict:
    """{"train", "val": the raw ClipDataset}; SearchStageError naming a clip file cut short or overwritten (exit
    2, before any trial), or a missing folder / modality."""
    try:
        return {split: ClipDataset(clips, split, modality, snippet=snippet, raw=True) for split in ("train", "val")}
    except ClipFileError as err:
        raise SearchStageError(str(err), exit_code=2) from None
    except (FileNotFoundError, ValueError) as err:  # no clips yet, a modality that was not extracted
        raise SearchStageError(str(err)) from None


def _cut_short(err: BaseException) -> bool:
    """Whether Ray failed reading back a pickle it wrote itself (a trial's error.pkl cut short): what a full
    storage_path leaves behind, even when Ray's clean-up has freed some space again by the time it is read."""
    return isinstance(err, (pickle.UnpicklingError, EOFError))


def _search(search, mlflow_params, inputs: tuner.SearchInputs, storage, quiet: bool, fresh: bool):
    """tuner.run_search, its stops as SearchStageError (storage_path full: `storage_full`)."""
    started = time.time()
    try:
        rows, info = tuner.run_search(search, mlflow_params, inputs, base_dir=Path.cwd(), verbose=0 if quiet else 1,
                                      fresh=fresh)
    except (TrackingUnavailable, ClusterUnavailable, tuner.SearchInterrupted) as err:
        raise SearchStageError(str(err)) from None
    except Exception as err:  # Ray's own writes (trial errors, experiment state) on a full storage_path
        if not (out_of_space(err) or nearly_full(storage) or _cut_short(err)):
            raise
        raise storage_full(storage, started, f"{type(err).__name__} in Ray"
                                             + (": a file it wrote there is cut short" if _cut_short(err) else "")
                                             ) from None
    full = [r["name"] for r in rows if out_of_space(r["error"])]
    if full:
        raise storage_full(storage, started, f"{len(full)} trial(s) could not write their checkpoints: "
                                             f"{', '.join(full)}")
    return rows, info


def run_search_stage(params, clips, pretrained, out, quiet: bool = False, fresh: bool = False) -> dict:
    """Run the search stage (module docstring); returns {"ok", "failed": [(name, error)], "wall_seconds",
    "parent_run_id", "tracking_uri", "out"}."""
    search = params.search
    task = task_from_params(params)
    storage = search.storage_path if "://" in search.storage_path else Path(search.storage_path).resolve()
    ckpt = _load_pretrained(pretrained, search.modality)
    backbone = backbone_from(ckpt)
    candidates, boundary = prernn.candidate_layers(backbone), default_boundary(backbone)
    space = with_seeds(build_space(search, candidates, prernn.default_candidates(backbone)), seed_values(search))
    seed_everything(search.seed)
    datasets = _datasets(clips, search.modality, snippet_length(model_config(backbone)))

    def train_augment():  # cached trunk: `augment_copies` augmented passes of the train clips, alike for every cache
        augment = from_params(search, search.seed, points=task.points)
        return (augment, search.augment_copies) if augment else None

    boundaries = space_boundaries(backbone, space)
    caches = trunk_caches(backbone, datasets, boundaries, cache_trunk=search.cache_trunk, train_augment=train_augment)
    splits = caches.get(boundary) or next(iter(caches.values()))  # the default boundary's when a trial has it
    frames = frame_reference(backbone, splits["val"], task)
    cached = search.cache_trunk and None not in caches  # a user's module: the whole net per trial (trunk not cut)
    print(f"search: {len(space)} trials on {search.modality} ({ckpt['config']['name']}, candidates {candidates}, "
          f"{'cached trunk below ' + ', '.join(boundaries) if cached else 'whole net fine-tuned'}; "
          f"train {len(splits['train'])} / val {len(splits['val'])} clips)")
    inputs = tuner.SearchInputs(ckpt, caches, space, candidates, boundary, task)
    rows, info = _search(search, params.mlflow, inputs, storage, quiet, fresh)
    info.update(cache_trunk=cached, seeds=seed_values(search), frame_reference=frames)
    try:
        with space_for(out):
            write_outputs(out, rows, info)
    except DiskFull as err:
        raise SearchStageError(str(err)) from None
    failed = [(r["name"], r["error"]) for r in rows if r["status"] == "failed"]
    return {"ok": len(rows) - len(failed), "failed": failed, "wall_seconds": info["wall_seconds"],
            "parent_run_id": info["parent_run_id"], "tracking_uri": info["tracking_uri"], "out": str(out)}
