"""extract stage: data/ingest/manifest.csv -> data/clips/{split}-{shard:03d}.arrow + reports/extract.json.

Sampled RGB frames, optical flow (dx, dy, magnitude as uint8, patent [0024]) and depth per clip.
Unusable videos are skipped and listed in the report; strict mode or too many skipped -> exit 1.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.core.atomic import DiskFull, atomic_path, space_for, write_json
from pipeline.data.extraction import extract_manifest, failure
from pipeline.core.params import load_stage_params
from pipeline.data.sources import SourceError, read_manifest


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--manifest", default="data/ingest/manifest.csv")
    ap.add_argument("--out", default="data/clips")
    ap.add_argument("--report", default="reports/extract.json")
    ap.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    args = ap.parse_args(argv)
    all_params = load_stage_params(args.params, "extract")
    params = all_params.extract
    try:
        rows = read_manifest(Path(args.manifest))
    except SourceError as err:
        print(f"extract: {err}", file=sys.stderr)
        sys.exit(1)
    classes_file = Path(args.manifest).parent / "classes.json"
    if classes_file.is_file():
        class_names = json.loads(classes_file.read_text())
    else:
        names = {r["label"]: r["class_name"] for r in rows}
        class_names = [names.get(i, f"class_{i}") for i in range(max(names) + 1)]
    out = Path(args.out)
    try:  # a full disk: one line naming the path; the partial files are removed, the previous output kept
        with space_for(out), atomic_path(out) as tmp:
            try:
                report = extract_manifest(rows, class_names, params, tmp, params.workers,
                                          progress=not args.no_progress, task=all_params.task)
            except SourceError as err:
                print(f"extract: {err}", file=sys.stderr)
                sys.exit(1)
            problem = failure(report, params)
            with space_for(args.report):
                write_json(args.report, {**report, "failed": problem})  # before the clips replace the old ones
            if problem:
                print(f"extract: {problem}", file=sys.stderr)
                sys.exit(1)
    except DiskFull as err:
        print(f"extract: {err}", file=sys.stderr)
        sys.exit(1)
    print(f"extract: kept {report['kept']}, skipped {len(report['skipped'])} of {report['total']} videos "
          f"({report['clips_per_sec']} clips/s, {report['workers']} workers) -> {out}"
          + "".join(f"\n  skipped {s['path']}: {s['reason']}" for s in report["skipped"]))


if __name__ == "__main__":
    main()
