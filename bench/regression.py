"""The regression default, measured: `python -m bench.regression [--keep DIR]`.

Runs the whole pipeline (`dvc repro`) in a fresh copy of the project with the default params and only
`task: regression` and `data.source: synthetic_landmarks` set (the built-in landmark set, claim 4), then prints
Table 1 (val AUC@threshold), the CNN alone, and the test comparison of the selected configuration with the best
traditional RNN over seeds, with `target` lines: the best configuration's val AUC and the selected one's test
AUC against issue 12's goal 0.5. A few minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from bench.heldout import run_pipeline


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", help="make the project here instead of a temporary folder")
    args = ap.parse_args(argv)
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="prernn-regression-"))
    t0 = time.perf_counter()
    run_pipeline(base / "project", {"task": "regression", "data": {"source": "synthetic_landmarks"},
                                    "select": {"metric": "val_auc"}})
    print(f"bench.regression: dvc repro took {time.perf_counter() - t0:.0f} s")
    project = base / "project"
    print((project / "reports" / "table1.md").read_text().split("## Recurrent")[0])
    selection = json.loads((project / "reports" / "selection.json").read_text())
    metrics = json.loads((project / "metrics.json").read_text())
    scored = [t for t in selection["trials"] if t.get("score") is not None]
    best = max(scored, key=lambda t: t["score"])
    auc = metrics["comparison"]["fused"]["test_auc"]
    print(f"CNN alone (per frame), test: {metrics['frame_reference']}")
    for metric, e in metrics["comparison"]["fused"].items():
        line = f"  fused {metric}: selected {e['selected']['mean']:.3f} [{e['selected']['ci_low']:.3f}, {e['selected']['ci_high']:.3f}]"
        if "difference" in e:
            d = e["difference"]
            line += (f", baseline {e['baseline']['mean']:.3f}, difference {d['mean']:+.4f} "
                     f"[{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]")
        print(line)
    print(f"target regression_best_val_auc: {best['name']} {best['score']:.3f} (goal >= 0.5; "
          f"{'ok' if best['score'] >= 0.5 else 'MISSED'})")
    print(f"target regression_selected_test_auc: {metrics['selected']} {auc['selected']['mean']:.3f} (goal >= 0.5; "
          f"{'ok' if auc['selected']['mean'] >= 0.5 else 'MISSED'})")
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
