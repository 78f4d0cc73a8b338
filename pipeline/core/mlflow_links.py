"""Links into the MLflow UI that land where a person wants to look.

MLflow 3's UI opens an experiment in its GenAI view ("Traces"); `?workflowType=machine_learning` opens the
runs list of classic training runs. `python -m pipeline.core.mlflow_links --db mlflow.db --port 5000` prints one
line per experiment of the store (what `make mlflow-ui` shows before starting the UI).
"""
from __future__ import annotations

import argparse
import sqlite3
from pathlib import Path

WORKFLOW = "workflowType=machine_learning"


def runs_url(base: str, experiment_id: str) -> str:
    """The UI address of experiment `experiment_id`'s runs list (model training view)."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{WORKFLOW}"


def experiments(db: Path) -> list[tuple[str, str]]:
    """(experiment id, name) of the live experiments in the sqlite store `db` that hold runs; [] if none."""
    if not db.exists():
        return []
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        try:
            rows = con.execute(
                "SELECT e.experiment_id, e.name FROM experiments e WHERE e.lifecycle_stage = 'active' AND EXISTS "
                "(SELECT 1 FROM runs r WHERE r.experiment_id = e.experiment_id) ORDER BY e.experiment_id").fetchall()
        except sqlite3.DatabaseError:
            return []
    return [(str(i), n) for i, n in rows]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", default="mlflow.db", help="the sqlite store (mlflow.tracking_uri)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=5000)
    args = ap.parse_args(argv)
    base = f"http://{args.host}:{args.port}"
    found = experiments(Path(args.db))
    if not found:
        print(f"MLflow UI: {base} (no runs in {args.db} yet: run `make repro`)")
    for exp_id, name in found:
        print(f"MLflow runs of experiment {name!r}: {runs_url(base, exp_id)}")


if __name__ == "__main__":
    main()
