"""The select stage's outputs: claim 12 over the search's trials, the patent's Table 1 and FIG. 2A-2C.

In: the search stage's trials and meta (`pipeline.report.inputs.read_search`) and the `select` params section.
Every configuration is judged and ranked by its mean over seeds (`pipeline.report.seeds.aggregate`).
Out (`write_selection_report(trials, meta, p, out)`, every file atomic):
`selection.json` (every trial's decision and reason, per-layer saturation, the selected configuration and the best
traditional baseline, `pipeline.report.selection`), `table1.md`, `table1.csv`, `table1_cells.csv` (the metric
cells in long form, drawn by `dvc plots show`), `plots/` (`saturation_lstm_<layer>.png`,
`histogram_gru_<layer>.png`, `convergence.png`) and `convergence.csv` (the validation metric per epoch of each
family's best configuration, mean and 95% band over seeds, [0066]).
"""
from __future__ import annotations

from pathlib import Path

from pipeline.core.atomic import atomic_path, write_json, write_text
from pipeline.core.csv_text import csv_text
from pipeline.report.convergence import convergence_plot, convergence_rows
from pipeline.report.plots import write_plots
from pipeline.report.seeds import aggregate
from pipeline.report.selection import select_configuration
from pipeline.report.table1 import build_table, to_cells_csv, to_csv, to_markdown

SEARCH_KEYS = ("backbone", "modality", "candidates", "trunk_boundary", "parent_run_id", "experiment_id",
               "tracking_uri")  # search.json's keys that selection.json repeats under "search"
CONVERGENCE_COLUMNS = ("epoch", "family", "configuration", "mean", "ci_low", "ci_high", "n")


def write_selection_report(trials: list[dict], meta: dict, p, out: Path) -> tuple[dict, list[Path]]:
    """Select a configuration (`p`: the `select` params) and write the reports under `out`; returns (selection,
    the files to log to MLflow). SelectionError (pipeline.report.selection) when the trials cannot be judged."""
    configs = aggregate(trials, p.metric)  # one row per configuration: the mean over its seeds
    frames = (meta.get("frame_reference") or {}).get(p.metric)  # the CNN alone: every converted layer reverted
    selection = select_configuration(configs, low=p.low, high=p.high, metric=p.metric, mode=p.mode,
                                     gates=p.gates, frame_reference=frames)
    selection["search"] = {k: meta.get(k) for k in SEARCH_KEYS}
    candidates = meta.get("candidates")
    table = build_table(configs, metric=p.metric, mode=p.mode, selection=selection, candidates=candidates,
                        frame_reference=frames)
    selection["frame_reference"] = meta.get("frame_reference")
    selection["seeds"] = meta.get("seeds")
    convergence = convergence_rows(trials, configs, p.metric, p.mode)
    title = f"{meta.get('backbone', '?')} on {meta.get('modality', '?')}"
    with atomic_path(out / "plots") as tmp:
        tmp.mkdir()
        plots = write_plots(configs, tmp, low=p.low, high=p.high, candidates=candidates, gates=p.gates)
        if convergence:
            plots.append(convergence_plot(convergence, tmp / "convergence.png", metric=p.metric, title=title))
    selection["plots"] = [str(out / "plots" / f.name) for f in plots]
    write_text(out / "table1.md", to_markdown(table, title=title))
    write_text(out / "table1.csv", to_csv(table))
    write_text(out / "convergence.csv", csv_text(convergence, CONVERGENCE_COLUMNS))
    write_text(out / "table1_cells.csv", to_cells_csv(table))  # the same cells in long form, a DVC plot
    write_json(out / "selection.json", selection)
    files = [out / "table1.md", out / "table1.csv", out / "selection.json", out / "convergence.csv", out / "plots"]
    return selection, files


def summary_line(selection: dict, p) -> str:
    """The select stage's one line: the decision counts and the selected configuration (or why none)."""
    sel = selection["selected"]
    return (f"select: {selection['counts']} (gates: {p.gates}); selected: "
            + (f"{sel['name']} (layers {sel['layers'] or 'none'}, {p.metric} {sel['score']:.3f})" if sel
               else f"none: {selection['no_selection']}"))


def selection_tags(selection: dict, metric: str) -> dict:
    """The MLflow tags of the search's parent run for the selection: the selected name and its score."""
    sel = selection["selected"]
    return {"prernn.selected": sel["name"] if sel else "none", **({f"selected_{metric}": sel["score"]} if sel else {})}
