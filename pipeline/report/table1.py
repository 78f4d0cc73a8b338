"""The patent's Table 1 ([0067]) for this data: traditional RNNs against PreRNN and PreRNN-SIH.

In: one dict per configuration (`pipeline.report.seeds.aggregate` of the search's trials: the metric is the mean over
seeds, `<metric>_interval` its 95% interval, `per_seed` the values), optionally `selection.json`'s content (to
mark the selected and the reverted configurations), the backbone's candidate layers (column order) and the
frame reference (the trained CNN alone, per frame, outputs averaged over the clip).
Out: `build_table(...) -> Table` and its renderings `to_markdown(table)`, `to_csv(table)`.

Rows: VRNN, LSTM, GRU. Columns: CNN alone (the same value in every row: no recurrent cell), Traditional 1
layer, 2 layers, then PreRNN <layer combination>
and PreRNN-SIH <layer combination> for every combination in the search space (fc6, fc7, fc6/fc7).
A cell holds the trial's value, `-` where the cell does not apply (SIH has no meaning for a VRNN:
it has a single input-to-hidden state already) or was not in the space, and `failed` for a
failed trial; a metric cell reads `mean [95% interval]` over seeds. Three quantities share that layout: the validation metric (Table 1 itself), the
recurrent parameter count (where SIH's saving shows) and the epochs to reach 95% of the best score.
A cell holds what the searched configuration scored; a reverted one (†) is ranked by the score of its reverted
form instead (pipeline.report.selection), which the markdown lists under "Reverted configurations" (`table.reverted`).
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

from prernn import CELLS, sih_applies
from pipeline.report.selection import TIE_BREAK
from pipeline.report.seeds import Interval
NA, FAILED = "-", "failed"
QUANTITIES = ("metric", "recurrent_params", "epochs_to_95")


@dataclass(frozen=True)
class Column:
    group: str                 # "Traditional" | "PreRNN" | "PreRNN-SIH"
    label: str                 # "1 layer", "fc6", "fc6/fc7"
    key: tuple                 # ("traditional", n) | ("prernn", sih, (layers...))

    @property
    def title(self) -> str:
        return f"{self.group} {self.label}"


@dataclass
class Table:
    metric: str
    columns: list[Column]
    rows: list[str] = field(default_factory=lambda: list(CELLS))
    cells: dict = field(default_factory=dict)   # (quantity, cell, column.key) -> value | "-" | "failed"
    marks: dict = field(default_factory=dict)   # (cell, column.key) -> "selected" | "reverted"
    intervals: dict = field(default_factory=dict)  # (cell, column.key) -> pipeline.report.seeds.Interval of the metric
    per_seed: dict = field(default_factory=dict)   # (cell, column.key) -> {seed: value | None}
    seeds: list = field(default_factory=list)      # every seed of the search, in order
    reverted: list = field(default_factory=list)   # selection rows of the reverted configurations, in trial order
    gates: str | None = None                       # the selection's select.gates


def trial_key(trial: dict) -> tuple:
    """The Table 1 column a trial belongs to."""
    if trial["kind"] == "traditional":
        return ("traditional", int(trial["num_layers"]))
    return ("prernn", bool(trial.get("sih")), tuple(trial["layers"]))


def _combos(trials: list[dict], candidates: list[str] | None) -> list[tuple]:
    seen = []
    for t in trials:
        if t["kind"] == "prernn" and tuple(t["layers"]) not in seen:
            seen.append(tuple(t["layers"]))
    order = list(candidates or []) + [x for t in seen for x in t if x not in (candidates or [])]
    return sorted(seen, key=lambda c: (len(c), [order.index(x) for x in c]))


FRAMES = ("frames",)


def _columns(trials: list[dict], candidates: list[str] | None, frames: bool) -> list[Column]:
    cols = [Column("CNN alone", "per frame", FRAMES)] if frames else []
    cols += [Column("Traditional", "1 layer", ("traditional", 1)), Column("Traditional", "2 layers", ("traditional", 2))]
    combos = _combos(trials, candidates)
    for sih, group in ((False, "PreRNN"), (True, "PreRNN-SIH")):
        cols += [Column(group, "/".join(c), ("prernn", sih, c)) for c in combos]
    return cols


def _value(trial: dict, quantity: str, metric: str):
    if trial.get("status") != "ok":
        return FAILED
    value = trial.get(metric if quantity == "metric" else quantity)
    return "n/a" if value is None else value


def build_table(trials: list[dict], *, metric: str, mode: str = "max",
                selection: dict | None = None, candidates: list[str] | None = None,
                frame_reference: float | None = None) -> Table:
    """Lay the configurations out as Table 1 (see the module docstring). Several in one cell: the best ok one."""
    table = Table(metric=metric, columns=_columns(trials, candidates, frame_reference is not None))
    table.seeds = sorted({str(s) for t in trials for s in (t.get("per_seed") or {})}, key=lambda x: (len(x), x))
    sign = 1.0 if mode == "max" else -1.0
    best: dict[tuple, dict] = {}
    for t in trials:
        pos = (t["cell"], trial_key(t))
        old = best.get(pos)
        rank = lambda x: (x.get("status") == "ok", sign * float(x.get(metric) or 0.0))  # noqa: E731
        if old is None or rank(t) > rank(old):
            best[pos] = t
    for cell in table.rows:
        for col in table.columns:
            if col.key == FRAMES:
                table.cells.update({("metric", cell, FRAMES): float(frame_reference),
                                    ("recurrent_params", cell, FRAMES): 0, ("epochs_to_95", cell, FRAMES): NA})
                continue
            t = best.get((cell, col.key))
            if not sih_applies(cell) and col.group == "PreRNN-SIH":
                t = None  # does not apply: a VRNN has one input-to-hidden state already (prernn.check_sih)
            for q in QUANTITIES:
                table.cells[(q, cell, col.key)] = NA if t is None else _value(t, q, metric)
            if t is not None and t.get(f"{metric}_interval"):
                i = t[f"{metric}_interval"]
                table.intervals[(cell, col.key)] = Interval(i["mean"], i["ci_low"], i["ci_high"], i["n"])
            if t is not None and t.get("per_seed"):
                table.per_seed[(cell, col.key)] = dict(t["per_seed"])
    table.gates = (selection or {}).get("gates")
    table.reverted = [r for r in (selection or {}).get("trials", []) if r.get("decision") == "reverted"]
    for row in (selection or {}).get("trials", []):
        t = next((x for x in trials if x["name"] == row["name"]), None)
        if t is not None and best.get((t["cell"], trial_key(t))) is t:
            if row.get("selected"):
                table.marks[(t["cell"], trial_key(t))] = "selected"
            elif row.get("decision") == "reverted":
                table.marks[(t["cell"], trial_key(t))] = "reverted"
    return table


def _fmt(value, quantity: str, interval=None) -> str:
    if isinstance(value, str):
        return value
    if quantity == "metric":
        return interval.text() if interval is not None else f"{float(value):.3f}"
    return f"{int(round(float(value))):,}" if quantity == "recurrent_params" else str(int(value))


def _saving(table: Table, cell: str, col: Column) -> str:
    if col.group != "PreRNN-SIH":
        return ""
    sih = table.cells[("recurrent_params", cell, col.key)]
    full = table.cells.get(("recurrent_params", cell, ("prernn", False, col.key[2])))
    if isinstance(sih, str) or isinstance(full, str) or full is None or not full:
        return ""
    return f" ({100.0 * (sih - full) / full:+.0f}%)"


def _md_table(table: Table, quantity: str, marks: bool) -> list[str]:
    head = "| cell | " + " | ".join(c.title for c in table.columns) + " |"
    lines = [head, "|" + "---|" * (len(table.columns) + 1)]
    for cell in table.rows:
        out = []
        for col in table.columns:
            interval = table.intervals.get((cell, col.key)) if quantity == "metric" else None
            text = _fmt(table.cells[(quantity, cell, col.key)], quantity, interval)
            if quantity == "recurrent_params":
                text += _saving(table, cell, col)
            mark = table.marks.get((cell, col.key)) if marks else None
            text = f"**{text}**" if mark == "selected" else f"{text} †" if mark == "reverted" else text
            out.append(text)
        lines.append(f"| {cell.upper()} | " + " | ".join(out) + " |")
    return lines


GATES_TEXT = {"embodiment": "judged by the LSTM forget gate, the GRU reset and update gates",
              "all": "pooled over all the layer's gates"}


def _reverted_lines(table: Table) -> list[str]:
    """The reverted configurations (†) with what the selection ranks them by: their reverted form's score."""
    if not table.reverted:
        return []
    m = table.metric
    lines = ["", "### Reverted configurations", "",
             "What `evaluate` trains for a † configuration is its reverted form, so the selection ranks it by that "
             "form's score: the same search's configuration with only the saturated layers converted, or, with none "
             "left, the trained CNN alone per frame (`frames`); `not scored` where the search has no such "
             "configuration (selection.json: `scored_as`, `searched_score`).", "",
             f"| configuration | reverted to feedforward | still recurrent | ranked as | {m} ranked | {m} searched |",
             "|---|---|---|---|---|---|"]
    for r in table.reverted:
        ranked = (r.get("scored_as") or {}).get("configuration") or "not scored"
        score = "-" if r.get("score") is None else f"{float(r['score']):.3f}"
        searched = "-" if r.get("searched_score") is None else f"{float(r['searched_score']):.3f}"
        lines.append(f"| {r['name']} | {'/'.join(r['reverted_layers'])} | {'/'.join(r['effective_layers']) or 'none'} "
                     f"| {ranked} | {score} | {searched} |")
    return lines


def to_markdown(table: Table, *, title: str = "") -> str:
    """Three markdown tables (metric, recurrent parameters, epochs to 95%) with a legend."""
    lines = [f"# Table 1{': ' + title if title else ''}", "",
             f"Validation {table.metric} of the traditional RNNs and of PreRNN / PreRNN-SIH per converted layer "
             "combination (patent Table 1). `-`: not applicable (SIH x VRNN) or not in the search space; "
             "`failed`: the trial failed. **bold**: the selected configuration; †: a converted layer was not "
             f"saturated (claim 12{', ' + GATES_TEXT[table.gates] if table.gates in GATES_TEXT else ''}), so the "
             "configuration is evaluated with that layer in feedforward form and ranked by the score of that form"
             + (' ("Reverted configurations" below)' if table.reverted else "")
             + "; its cell is what the searched configuration scored. "
             f"A cell is the mean over {len(table.seeds)} seed(s)"
             + (" and its 95% interval (Student's t over seeds); the per-seed values are in table1.csv. "
                if len(table.seeds) > 1 else ". ")
             + ("CNN alone: the trained CNN per frame, its outputs averaged over the clip (the same model in "
                "every row), what the recurrent layers add to." if any(c.key == FRAMES for c in table.columns)
                else "")
             + f" The selection's tie-break ({TIE_BREAK}) decides between kept configurations with the same score.",
             ""]
    lines += _md_table(table, "metric", marks=True)
    lines += _reverted_lines(table)
    lines += ["", "## Recurrent parameters", "",
              "Parameters of the recurrent layers; for PreRNN-SIH the change against PreRNN with the same layers.", ""]
    lines += _md_table(table, "recurrent_params", marks=False)
    lines += ["", "## Epochs to 95%", "", "Training epochs until the validation score first reached 95% of its best.", ""]
    lines += _md_table(table, "epochs_to_95", marks=False)
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    """One CSV: columns quantity, cell, then one per Table 1 column; raw values, `-`, `failed`. The metric's
    rows: `<metric>` (mean over seeds), `<metric>_ci_low`, `<metric>_ci_high`, then `<metric>_seed<k>` per seed."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["quantity", "cell"] + [c.title for c in table.columns])

    def metric_rows(suffix, get):
        for cell in table.rows:
            w.writerow([f"{table.metric}{suffix}", cell] + [get(cell, c) for c in table.columns])

    def interval_part(part):
        def get(cell, col):
            value = table.cells[("metric", cell, col.key)]
            interval = table.intervals.get((cell, col.key))
            return getattr(interval, part) if interval is not None else value
        return get

    for q in QUANTITIES:
        if q != "metric":
            for cell in table.rows:
                w.writerow([q, cell] + [table.cells[(q, cell, c.key)] for c in table.columns])
            continue
        metric_rows("", lambda cell, col: table.cells[("metric", cell, col.key)])
        metric_rows("_ci_low", interval_part("low"))
        metric_rows("_ci_high", interval_part("high"))
        for seed in table.seeds:
            metric_rows(f"_seed{seed}", lambda cell, col, seed=seed: (
                table.per_seed.get((cell, col.key), {}).get(seed, table.cells[("metric", cell, col.key)])
                if col.key != FRAMES else table.cells[("metric", cell, col.key)]))
    return buf.getvalue()


def to_cells_csv(table: Table) -> str:
    """Table 1's metric cells in long form for `dvc plots` (the `table1` template in .dvc/plots/): one line per
    (cell, column): order, cell, column, metric, its score (empty where `-` / `failed`) and the text shown
    (3 decimals, `*` selected, `†` reverted)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["order", "cell", "column", "metric", "score", "text"])
    for cell in table.rows:
        for i, col in enumerate(table.columns):
            value = table.cells[("metric", cell, col.key)]
            mark = {"selected": " *", "reverted": " †"}.get(table.marks.get((cell, col.key)), "")
            w.writerow([i, cell.upper(), col.title, table.metric, "" if isinstance(value, str) else value,
                        _fmt(value, "metric") + mark])
    return buf.getvalue()
