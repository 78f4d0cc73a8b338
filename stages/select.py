"""DVC stage `select`: claim 12 over the search's trials, the patent's Table 1 and FIG. 2A-2C.

In: `search/trials.json`, `search/search.json` (contract keys), params section `select`.
Out (under --out, all atomic): `selection.json` (every trial's decision and reason, per-layer saturation,
the selected configuration and the best traditional baseline), `table1.md`, `table1.csv`, `table1_cells.csv` (the
metric cells in long form, drawn by `dvc plots show`), and `plots/`
(`saturation_lstm_<layer>.png`, `histogram_gru_<layer>.png`, `convergence.png`), `convergence.csv` (the
validation metric per epoch of each family's best configuration, mean and 95% band over seeds, [0066]). Every
configuration is judged and ranked by its mean over seeds (`pipeline.report.seeds.aggregate`). The same files are logged to the search's
MLflow parent run under `select/`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.core.atomic import atomic_path, write_json, write_text
from pipeline.core.csv_text import csv_text
from pipeline.checks import load_stage_params


def read_search(search_dir: Path) -> tuple[list[dict], dict]:
    """(trials, search meta) from the search stage's folder, with errors naming the file."""
    out = []
    for name in ("trials.json", "search.json"):
        path = search_dir / name
        try:
            out.append(json.loads(path.read_text()))
        except FileNotFoundError:
            sys.exit(f"select: {path} is missing; run the search stage first (dvc repro search)")
        except json.JSONDecodeError as err:
            sys.exit(f"select: {path} is not valid JSON: {err}")
    trials, meta = out
    if not isinstance(trials, list):
        sys.exit(f"select: {search_dir / 'trials.json'}: expected a list of trials, got {type(trials).__name__}")
    return trials, meta


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--search", default="search", help="the search stage's output folder")
    ap.add_argument("--out", default="reports", help="folder for selection.json, table1.md/.csv and plots/")
    args = ap.parse_args(argv)

    from pipeline.report.convergence import convergence_plot, convergence_rows
    from pipeline.report.plots import write_plots
    from pipeline.report.seeds import aggregate
    from pipeline.report.selection import SelectionError, select_configuration
    from pipeline.report.table1 import build_table, to_cells_csv, to_csv, to_markdown

    p = load_stage_params(args.params, "select").select
    trials, meta = read_search(Path(args.search))
    configs = aggregate(trials, p.metric)  # one row per configuration: the mean over its seeds
    frames = (meta.get("frame_reference") or {}).get(p.metric)  # the CNN alone: every converted layer reverted
    try:
        selection = select_configuration(configs, low=p.low, high=p.high, metric=p.metric, mode=p.mode,
                                         gates=p.gates, frame_reference=frames)
    except SelectionError as err:
        sys.exit(f"select: {Path(args.search) / 'trials.json'}: {err}")
    selection["search"] = {k: meta.get(k) for k in ("backbone", "modality", "candidates", "trunk_boundary",
                                                    "parent_run_id", "experiment_id", "tracking_uri")}
    candidates = meta.get("candidates")
    table = build_table(configs, metric=p.metric, mode=p.mode, selection=selection, candidates=candidates,
                        frame_reference=frames)
    selection["frame_reference"] = meta.get("frame_reference")
    selection["seeds"] = meta.get("seeds")
    convergence = convergence_rows(trials, configs, p.metric, p.mode)
    title = f"{meta.get('backbone', '?')} on {meta.get('modality', '?')}"

    out = Path(args.out)
    with atomic_path(out / "plots") as tmp:
        tmp.mkdir()
        plots = write_plots(configs, tmp, low=p.low, high=p.high, candidates=candidates, gates=p.gates)
        if convergence:
            plots.append(convergence_plot(convergence, tmp / "convergence.png", metric=p.metric, title=title))
    selection["plots"] = [str(out / "plots" / f.name) for f in plots]
    write_text(out / "table1.md", to_markdown(table, title=title))
    write_text(out / "table1.csv", to_csv(table))
    write_text(out / "convergence.csv", csv_text(convergence, ("epoch", "family", "configuration", "mean", "ci_low",
                                                              "ci_high", "n")))
    write_text(out / "table1_cells.csv", to_cells_csv(table))  # the same cells in long form, a DVC plot
    write_json(out / "selection.json", selection)

    sel = selection["selected"]
    print(f"select: {selection['counts']} (gates: {p.gates}); selected: "
          + (f"{sel['name']} (layers {sel['layers'] or 'none'}, {p.metric} {sel['score']:.3f})" if sel
             else f"none: {selection['no_selection']}"))
    if meta.get("parent_run_id"):
        from pipeline.serve.mlflow_model import log_reports

        log_reports(meta, [out / "table1.md", out / "table1.csv", out / "selection.json", out / "convergence.csv",
                           out / "plots"],
                    artifact_path="select",
                    tags={"prernn.selected": sel["name"] if sel else "none",
                          **({f"selected_{p.metric}": sel["score"]} if sel else {})})


if __name__ == "__main__":
    main()
