"""DVC stage `search`: one Ray Tune trial per configuration (PreRNN conversions + traditional baselines).

In: `--clips` (extract stage), `--pretrained` (pretrain stage: `{modality}.pt`), params sections
`search` and `mlflow`. The frozen trunk is run once per clip (`search.cache_trunk`), trials train the
layers above it: one cache per distinct trial boundary (the lower of a trial's lowest converted layer and the
default boundary, pipeline.search.trunk_cache), shared by the trials with that boundary. Out (under --out, one atomic folder): `trials.json`, `trials.csv`, `search.json`
(contract keys). Ray trial results and checkpoints: `search.storage_path`/search-<modality>-<fingerprint
of params and inputs>; rerunning with the same inputs (after a kill) restores that experiment: finished
trials are kept, unfinished ones continue from the newest epoch they checkpointed (`--fresh` retrains all). MLflow: one
parent run, one child run per trial.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path


RERUN_AFTER_FULL = ("free some space and rerun the stage (it restores what Ray wrote whole, else it starts the "
                    "search over)")


def frame_reference(backbone, val, task) -> dict:
    """The trained CNN alone on the val clips (per frame, outputs averaged over the clip; regression: per frame):
    Table 1's reference column. {"val_<key>"} for the task's metric keys: {"val_acc"} or {"val_auc", "val_nme",
    "val_failure_rate"}."""
    import prernn
    from pipeline.training.trainer import evaluate_model

    return {f"val_{k}": v for k, v in evaluate_model(prernn.frame_model(backbone), val, task=task).metrics.items()}


def storage_full(storage, since: float, what: str) -> None:
    """Exit with one line: search.storage_path ran out of space; first remove what Ray's writes cut short there
    (pipeline.core.storage.remove_partial_writes), so that the rerun restores from whole files."""
    from pipeline.core.atomic import disk_full_message
    from pipeline.core.storage import remove_partial_writes

    removed = remove_partial_writes(storage, since) if isinstance(storage, Path) else []
    cut = f"; removed {len(removed)} file(s) cut short" if removed else ""
    sys.exit(f"search: search.storage_path: {disk_full_message(storage, RERUN_AFTER_FULL)} ({what}{cut})")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--clips", default="data/clips", help="the extract stage's Arrow clip folder")
    ap.add_argument("--pretrained", default="models/pretrained", help="the pretrain stage's folder")
    ap.add_argument("--out", default="search", help="folder for trials.json, trials.csv, search.json")
    ap.add_argument("--quiet", action="store_true", help="no Ray Tune progress table")
    ap.add_argument("--fresh", action="store_true",
                    help="retrain every trial instead of restoring an earlier run of the same search from storage_path")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="search: %(message)s")

    # deferred past argparse (`--help`, a bad argument answer at once): torch, Ray, MLflow take seconds to import
    import prernn
    from pipeline.core.atomic import DiskFull, nearly_full, out_of_space, space_for
    from pipeline.data.clipstore import ClipFileError
    from pipeline.data.dataset import ClipDataset, snippet_length
    from pipeline.data.augment import from_params
    from pipeline.search.trunk_cache import space_boundaries, trunk_caches
    from pipeline.checks import load_stage_params
    from pipeline.core.params import ParamsError
    from pipeline.core.ray_cluster import ClusterUnavailable
    from pipeline.report.seeds import seed_values, with_seeds
    from pipeline.search.space import SpaceError, build_space
    from pipeline.core.tracking import TrackingUnavailable
    from pipeline.training.trainer import seed_everything
    from pipeline.core.checkpoint import backbone_from, load_checkpoint
    from pipeline.search.tuner import SearchInterrupted, run_search, write_outputs
    from pipeline.training.tasks import task_from_params

    params = load_stage_params(args.params, "search")
    search = params.search
    task = task_from_params(params)
    storage = search.storage_path if "://" in search.storage_path else Path(search.storage_path).resolve()
    ckpt_path = Path(args.pretrained) / f"{search.modality}.pt"
    try:
        ckpt = load_checkpoint(ckpt_path)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f"search: {err}")
    backbone = backbone_from(ckpt)
    candidates, boundary = prernn.candidate_layers(backbone), prernn.trunk_boundary(backbone)
    try:
        space = with_seeds(build_space(search, candidates, prernn.default_candidates(backbone)), seed_values(search))
    except SpaceError as err:
        print(f"search: {args.params}: {err}", file=sys.stderr)
        sys.exit(2)

    seed_everything(search.seed)
    snippet = snippet_length(backbone.config)
    try:
        datasets = {split: ClipDataset(args.clips, split, search.modality, snippet=snippet, raw=True)
                    for split in ("train", "val")}
    except ClipFileError as err:  # a clip file cut short or overwritten: one line naming it, before any trial
        print(f"search: {err}", file=sys.stderr)
        sys.exit(2)
    except (FileNotFoundError, ValueError) as err:  # no clips yet, a modality that was not extracted
        sys.exit(f"search: {err}")
    def train_augment():  # cached trunk: `augment_copies` augmented passes of the train clips, alike for every cache
        augment = from_params(search, search.seed, points=task.points)
        return (augment, search.augment_copies) if augment else None

    boundaries = space_boundaries(backbone, space)
    caches = trunk_caches(backbone, datasets, boundaries, cache_trunk=search.cache_trunk, train_augment=train_augment)
    splits = caches.get(boundary) or next(iter(caches.values()))  # the default boundary's when a trial has it
    frames = frame_reference(backbone, splits["val"], task)
    print(f"search: {len(space)} trials on {search.modality} ({ckpt['config']['name']}, candidates {candidates}, "
          f"{'cached trunk below ' + ', '.join(boundaries) if search.cache_trunk else 'whole net fine-tuned'}; "
          f"train {len(splits['train'])} / val {len(splits['val'])} clips)")
    started = time.time()
    try:
        rows, info = run_search(search, params.mlflow, ckpt, caches, candidates=candidates, boundary=boundary,
                                space=space, base_dir=Path.cwd(), verbose=0 if args.quiet else 1, fresh=args.fresh,
                                task=task)
    except ParamsError as err:  # a value only the running cluster can refute (search.gpus_per_trial)
        print(f"search: {args.params}: {err}", file=sys.stderr)
        sys.exit(2)
    except (TrackingUnavailable, ClusterUnavailable, SearchInterrupted) as err:
        sys.exit(f"search: {err}")
    except Exception as err:  # Ray's own writes (trial errors, experiment state) on a full storage_path
        if not (out_of_space(err) or nearly_full(storage)):
            raise
        storage_full(storage, started, f"{type(err).__name__} in Ray")
    full = [r["name"] for r in rows if out_of_space(r["error"])]
    if full:
        storage_full(storage, started, f"{len(full)} trial(s) could not write their checkpoints: {', '.join(full)}")
    info["cache_trunk"] = search.cache_trunk
    info["seeds"] = seed_values(search)
    info["frame_reference"] = frames
    try:
        with space_for(args.out):
            write_outputs(args.out, rows, info)
    except DiskFull as err:
        sys.exit(f"search: {err}")
    failed = [r for r in rows if r["status"] == "failed"]
    print(f"search: {len(rows) - len(failed)} ok, {len(failed)} failed in {info['wall_seconds']:.1f} s -> {args.out}/; "
          f"MLflow parent run {info['parent_run_id']} ({info['tracking_uri']})")
    for r in failed:
        print(f"search: trial {r['name']} failed: {r['error']}")
    if rows and len(failed) == len(rows):
        sys.exit(f"search: every trial failed (see {args.out}/trials.json and the MLflow runs)")


if __name__ == "__main__":
    main()
