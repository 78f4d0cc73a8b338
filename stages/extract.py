"""extract stage: data/ingest/manifest.csv -> data/clips/{split}-{shard:03d}.arrow + reports/extract.json.

Sampled RGB frames, optical flow (dx, dy, magnitude as uint8, patent [0024]) and depth per clip
(`pipeline.data.extraction.extract_manifest`).
Unusable videos are skipped and listed in the report; strict mode or too many skipped -> exit 1.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.core.atomic import DiskFull, atomic_path, space_for, write_json
from pipeline.core.params import load_stage_params
from pipeline.data.extraction import extract_manifest, failure
from pipeline.data.sources import SourceError, manifest_class_names, read_manifest


def exit_with(err) -> None:
    """One line `extract: <err>` on stderr, exit 1."""
    print(f"extract: {err}", file=sys.stderr)
    sys.exit(1)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--manifest", default="data/ingest/manifest.csv")
    ap.add_argument("--out", default="data/clips")
    ap.add_argument("--report", default="reports/extract.json")
    ap.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    args = ap.parse_args(argv)
    params = load_stage_params(args.params, "extract")
    p = params.extract
    try:
        rows = read_manifest(Path(args.manifest))
    except SourceError as err:
        exit_with(err)
    class_names = manifest_class_names(Path(args.manifest), rows)
    out = Path(args.out)
    try:  # a full disk: one line naming the path; the partial files are removed, the previous output kept
        with space_for(out), atomic_path(out) as tmp:
            try:
                report = extract_manifest(rows, class_names, p, tmp, p.workers, progress=not args.no_progress,
                                          task=params.task)
            except SourceError as err:
                exit_with(err)
            problem = failure(report, p)
            with space_for(args.report):
                write_json(args.report, {**report, "failed": problem})  # before the clips replace the old ones
            if problem:
                exit_with(problem)
    except DiskFull as err:
        exit_with(err)
    print(f"extract: kept {report['kept']}, skipped {len(report['skipped'])} of {report['total']} videos "
          f"({report['clips_per_sec']} clips/s, {report['workers']} workers) -> {out}"
          + "".join(f"\n  skipped {s['path']}: {s['reason']}" for s in report["skipped"]))


if __name__ == "__main__":
    main()
