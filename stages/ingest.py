"""ingest stage: params.yaml `data` -> data/ingest/manifest.csv (+ data/ingest/videos/ for the synthetic source).

Manifest columns: video_id,path,depth_path,label,class_name,split,frames,fps,width,height,offset.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from pipeline.core.atomic import atomic_path
from pipeline.core.params import load_stage_params
from pipeline.data.sources import SourceError, ingest, write_ingest


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default="data/ingest", help="output folder (manifest.csv, classes.json, videos/)")
    args = ap.parse_args(argv)
    params = load_stage_params(args.params, "ingest")
    data = params.data
    out = Path(args.out)
    try:
        with atomic_path(out) as tmp:
            tmp.mkdir(parents=True)
            rows, class_names = ingest(data, tmp, final_dir=out)
            write_ingest(rows, class_names, tmp)
    except SourceError as err:
        print(f"ingest: {err}", file=sys.stderr)
        sys.exit(1)
    splits = Counter(r["split"] for r in rows)
    depth = sum(bool(r["depth_path"]) for r in rows)
    print(f"ingest: {len(rows)} videos, {len(class_names)} classes, source {data.source}; "
          f"train {splits['train']} / val {splits['val']} / test {splits['test']}; {depth} with depth -> {out}/manifest.csv")


if __name__ == "__main__":
    main()
