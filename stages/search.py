"""DVC stage `search`: one Ray Tune trial per configuration (PreRNN conversions + traditional baselines).

In: `--clips` (extract stage), `--pretrained` (pretrain stage: `{modality}.pt`), params sections `search` and
`mlflow`. The frozen trunk is run once per clip (`search.cache_trunk`), trials train the layers above it: one
cache per distinct trial boundary (pipeline.search.trunk_cache). Out (under --out, one atomic folder):
`trials.json`, `trials.csv`, `search.json` (contract keys). Ray trial results and checkpoints:
`search.storage_path`/search-<modality>-<fingerprint of params and inputs>; rerunning with the same inputs (after
a kill) restores that experiment: finished trials are kept, unfinished ones continue from the newest epoch they
checkpointed (`--fresh` retrains all). MLflow: one parent run, one child run per trial. The work is
pipeline.search.stage.run_search_stage.
"""
from __future__ import annotations

import argparse
import logging
import sys

from pipeline.checks import load_stage_params
from pipeline.core.params import ParamsError
from pipeline.search.space import SpaceError
from pipeline.search.stage import SearchStageError, run_search_stage


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

    params = load_stage_params(args.params, "search")
    try:
        summary = run_search_stage(params, args.clips, args.pretrained, args.out, quiet=args.quiet, fresh=args.fresh)
    except (ParamsError, SpaceError) as err:  # values only the backbone or the running cluster can refute
        print(f"search: {args.params}: {err}", file=sys.stderr)
        sys.exit(2)
    except SearchStageError as err:
        if err.exit_code != 1:
            print(f"search: {err}", file=sys.stderr)
            sys.exit(err.exit_code)
        sys.exit(f"search: {err}")
    failed = summary["failed"]
    print(f"search: {summary['ok']} ok, {len(failed)} failed in {summary['wall_seconds']:.1f} s -> {args.out}/; "
          f"MLflow parent run {summary['parent_run_id']} ({summary['tracking_uri']})")
    for name, error in failed:
        print(f"search: trial {name} failed: {error}")
    if failed and not summary["ok"]:
        sys.exit(f"search: every trial failed (see {args.out}/trials.json and the MLflow runs)")


if __name__ == "__main__":
    main()
