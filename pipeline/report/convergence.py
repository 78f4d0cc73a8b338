"""Convergence ([0066]): the validation metric per epoch of the best PreRNN, the best PreRNN-SIH and the best
traditional RNN, mean and 95% band over seeds.

In: the search's trial dicts (one per configuration and seed, each with its `history`), the configurations'
aggregate (`pipeline.report.seeds.aggregate`: which one is best in each family), the metric and mode.
Out: `convergence_rows(...)` -> rows {"epoch", "family", "configuration", "mean", "ci_low", "ci_high", "n"}
(reports/convergence.csv, a DVC plot) and `convergence_plot(rows, path)` -> a PNG (reports/plots/convergence.png).
"""
from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from pipeline.report.seeds import mean_interval

FAMILIES = (("PreRNN", "prernn", False), ("PreRNN-SIH", "prernn", True), ("Traditional", "traditional", False))
COLORS = {"PreRNN": "#d62728", "PreRNN-SIH": "#ff7f0e", "Traditional": "#1f77b4"}


def best_per_family(configs: list[dict], metric: str, mode: str = "max") -> dict[str, dict]:
    """{family: the ok configuration with the best mean metric} (ties: fewer recurrent parameters, then name)."""
    sign = -1.0 if mode == "max" else 1.0
    out = {}
    for family, kind, sih in FAMILIES:
        found = [c for c in configs if c.get("status") == "ok" and c["kind"] == kind and bool(c.get("sih")) == sih
                 and c.get(metric) is not None]
        if found:
            out[family] = min(found, key=lambda c: (sign * c[metric], c.get("recurrent_params") or 0, c["name"]))
    return out


def convergence_rows(trials: list[dict], configs: list[dict], metric: str, mode: str = "max") -> list[dict]:
    """Per family and epoch: the mean and 95% interval over seeds of `metric` in the best configuration's
    trial histories."""
    rows = []
    for family, config in best_per_family(configs, metric, mode).items():
        histories = [t["history"] for t in trials if (t.get("configuration") or t["name"]) == config["name"]
                     and t.get("status") == "ok" and t.get("history")]
        if not histories:  # a trials file without histories (hand-made): nothing to draw for this family
            continue
        for epoch in range(1, min(len(h) for h in histories) + 1):
            interval = mean_interval([h[epoch - 1][metric] for h in histories])
            rows.append({"epoch": epoch, "family": family, "configuration": config["name"], "mean": interval.mean,
                         "ci_low": interval.low, "ci_high": interval.high, "n": interval.n})
    return rows


def convergence_plot(rows: list[dict], path: str | Path, *, metric: str, title: str = "") -> Path:
    """One line per family (mean over seeds) with its 95% band; x = epoch, y = `metric`."""
    fig = Figure(figsize=(6, 4), dpi=110)
    ax = fig.add_subplot()
    for family in dict.fromkeys(r["family"] for r in rows):
        part = [r for r in rows if r["family"] == family]
        epochs = [r["epoch"] for r in part]
        color = COLORS.get(family)
        ax.plot(epochs, [r["mean"] for r in part], color=color, marker="o", ms=3,
                label=f"{family}: {part[0]['configuration']} (n={part[0]['n']})")
        ax.fill_between(epochs, [r["ci_low"] for r in part], [r["ci_high"] for r in part], color=color, alpha=0.2)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{metric} (mean, 95% band over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"Convergence ([0066]): {metric} per epoch" + (f", {title}" if title else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)
