"""DVC stage `select`: claim 12 over the search's trials, the patent's Table 1 and FIG. 2A-2C.

In: `search/trials.json`, `search/search.json` (contract keys), params section `select`.
Out (under --out, all atomic; `pipeline.report.selection_report`): `selection.json` (every trial's decision and
reason, per-layer saturation, the selected configuration and the best traditional baseline), `table1.md`,
`table1.csv`, `table1_cells.csv` (the metric cells in long form, drawn by `dvc plots show`), `plots/`
(`saturation_lstm_<layer>.png`, `histogram_gru_<layer>.png`, `convergence.png`) and `convergence.csv` (the
validation metric per epoch of each family's best configuration, mean and 95% band over seeds, [0066]). Every
configuration is judged and ranked by its mean over seeds. The same files are logged to the search's MLflow parent
run under `select/`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.checks import load_stage_params
from pipeline.report.inputs import ReportInputError, read_search
from pipeline.report.selection import SelectionError
from pipeline.report.selection_report import selection_tags, summary_line, write_selection_report
from pipeline.serve.mlflow_model import log_reports


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--search", default="search", help="the search stage's output folder")
    ap.add_argument("--out", default="reports", help="folder for selection.json, table1.md/.csv and plots/")
    args = ap.parse_args(argv)
    params = load_stage_params(args.params, "select")
    p = params.select
    try:
        trials, meta = read_search(Path(args.search))
    except ReportInputError as err:
        sys.exit(f"select: {err}")
    try:
        selection, files = write_selection_report(trials, meta, p, Path(args.out))
    except SelectionError as err:
        sys.exit(f"select: {Path(args.search) / 'trials.json'}: {err}")
    print(summary_line(selection, p))
    if meta.get("parent_run_id"):
        log_reports(meta, files, artifact_path="select", tags=selection_tags(selection, p.metric))


if __name__ == "__main__":
    main()
