"""FIG. 2A-2C of the patent for this search: how saturated the converted layers' gates are.

In: the search's trial dicts (their `gate_stats`, from `prernn.gate_statistics`), the thresholds and the
selection's rule (`select.gates`), so that each figure draws the gates that decided and states the same verdict
as `selection.json` (`prernn.is_saturated` with that rule).
Out: PNG files (matplotlib, Agg, no display needed):
- `saturation_lstm_<layer>.png` (FIG. 2A, [0055]-[0057]): one point per gate unit, x = the fraction of time steps
  it is left saturated (< low), y = right saturated (> high), for the PreLSTM layer against every layer of the
  traditional LSTM; units on the line x + y = 1 are always saturated. One panel per deciding gate:
  `embodiment`, the forget gate (the patent's figure); `all`, the input, forget and output gates.
- `histogram_gru_<layer>.png` (FIG. 2B/2C, [0059]-[0062]): 10-bin histograms over [0, 1] of the GRU
  reset and update gate activations (the deciding gates of both rules), PreGRU layer against the traditional GRU
  layer at the same depth.

The PreRNN layer shown is taken from the non-SIH trial that converts that layer alone (else the one
with the fewest converted layers, else a SIH trial); the traditional layers from the deepest
successful traditional trial of the same cell. Each figure's title names the trials it shows; the PreRNN
layer's legend entry its verdict and the gates that decided it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from prernn import deciding_gates, is_saturated

PRE_COLOR, TRA_COLORS = "#d62728", ("#1f77b4", "#2ca02c", "#9467bd")


def reference_trial(trials: list[dict], cell: str, layer: str) -> dict | None:
    """The PreRNN trial whose statistics stand for `layer` of `cell` (see the module docstring)."""
    found = [t for t in trials if t.get("status") == "ok" and t["kind"] == "prernn" and t["cell"] == cell
             and layer in t["layers"] and layer in (t.get("gate_stats") or {})]
    found.sort(key=lambda t: (bool(t.get("sih")), len(t["layers"]), t["name"]))
    return found[0] if found else None


def traditional_trial(trials: list[dict], cell: str) -> dict | None:
    """The deepest successful traditional trial of `cell` that has gate statistics."""
    found = [t for t in trials if t.get("status") == "ok" and t["kind"] == "traditional" and t["cell"] == cell
             and t.get("gate_stats")]
    found.sort(key=lambda t: (-int(t.get("num_layers") or 1), t["name"]))
    return found[0] if found else None


def _layers(trials: list[dict], cell: str, candidates: list[str] | None) -> list[str]:
    """The converted layers of `cell`'s trials, in forward order (the backbone's candidates' order)."""
    out = []
    for t in trials:
        if t["kind"] == "prernn" and t["cell"] == cell:
            out += [x for x in t["layers"] if x not in out]
    order = list(candidates or [])
    return sorted(out, key=lambda x: (order.index(x) if x in order else len(order), out.index(x)))


def _fraction_inside(gate: dict) -> str:
    n = gate["inside"] + gate["outside"]
    return f"{gate['inside'] / n:.0%} inside" if n else "no activations"


def verdict(layer_stats: dict, low: float, high: float, gates: str) -> dict:
    """Claim 12 on the layer under the selection's rule (`select.gates`): {"verdict": "saturated" | "not saturated" |
    "no gates", "gates": the deciding gates joined by +} -- the same answer as `selection.json`'s
    `saturation[layer]` ("saturated", "decided_by"). Each figure states it in its legend and stores it in its PNG
    text chunks (`prernn.verdict`, `prernn.gates`, `prernn.trial`)."""
    sat = is_saturated(layer_stats, low=low, high=high, gates=gates)
    names = deciding_gates(layer_stats["cell"], gates) if layer_stats.get("cell") else ()
    return {"verdict": "no gates" if sat is None else "saturated" if sat else "not saturated",
            "gates": "+".join(names) if sat is not None else ""}


def _label(kind: str, layer: str, v: dict) -> str:
    return f"{kind} {layer}, layer {v['verdict']}" + (f" by {v['gates']}" if v["gates"] else "")


def saturation_plot(path: Path, pre: tuple[str, dict], tra: list[tuple[str, dict]], *, gates: tuple[str, ...],
                    title: str, low: float, high: float, metadata: dict | None = None) -> Path:
    """Scatter per unit (left fraction, right fraction), one panel per gate of `gates`: `pre` = (label, layer
    stats), `tra` = [(label, layer stats), ...]."""
    fig = Figure(figsize=(5.2 * len(gates), 5.0), dpi=110)
    axes = np.atleast_1d(fig.subplots(1, len(gates)))
    for ax, gate in zip(axes, gates):
        ax.plot([0, 1], [1, 0], color="0.4", lw=1, ls="--", label="x + y = 1 (always saturated)")
        series = [(pre, PRE_COLOR, "o")] + [(x, c, "^") for x, c in zip(tra, TRA_COLORS)]
        for (label, stats), color, marker in series:
            g = stats["gates"][gate]
            ax.scatter(g["left"], g["right"], s=14, alpha=0.6, color=color, marker=marker,
                       label=f"{label} ({_fraction_inside(g)})", edgecolors="none")
        ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), aspect="equal",
               xlabel=f"fraction left saturated (< {low})", ylabel=f"fraction right saturated (> {high})")
        ax.set_title(f"{gate} gate", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, metadata={"Title": title, **(metadata or {})})
    return path


def histogram_plot(path: Path, pre: tuple[str, dict], tra: tuple[str, dict] | None, *, gates: tuple[str, ...],
                   title: str, metadata: dict | None = None) -> Path:
    """Side-by-side 10-bin histograms (fraction of activations per bin) per gate; `pre`/`tra` = (label, layer stats)."""
    fig = Figure(figsize=(4.2 * len(gates), 3.8), dpi=110)
    axes = np.atleast_1d(fig.subplots(1, len(gates)))
    edges = np.linspace(0, 1, 11)
    centers, width = (edges[:-1] + edges[1:]) / 2, 0.04
    for ax, gate in zip(axes, gates):
        series = [(pre, PRE_COLOR, -width / 2)] + ([(tra, TRA_COLORS[0], width / 2)] if tra else [])
        for (label, stats), color, shift in series:
            hist = np.asarray(stats["gates"][gate]["hist"], dtype=float)
            ax.bar(centers + shift, hist / max(hist.sum(), 1.0), width=width, color=color, label=label)
        ax.axvspan(0, 0.1, color="0.9", zorder=0)
        ax.axvspan(0.9, 1, color="0.9", zorder=0)
        ax.set(xlim=(0, 1), xticks=edges, xlabel=f"{gate} gate activation", ylabel="fraction of activations")
        ax.tick_params(axis="x", labelsize=7)
        ax.set_title(f"{gate} gate", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, metadata={"Title": title, **(metadata or {})})
    return path


def _meta(v: dict, ref: dict, drawn: tuple[str, ...]) -> dict:
    """The PNG text chunks of a figure: its trial, verdict, deciding gates and the gates it draws."""
    return {"prernn.trial": ref["name"], "prernn.verdict": v["verdict"], "prernn.gates": v["gates"],
            "prernn.drawn": "+".join(drawn)}


def write_plots(trials: list[dict], out_dir: str | Path, *, low: float = 0.1, high: float = 0.9,
                candidates: list[str] | None = None, gates: str = "embodiment") -> list[Path]:
    """Write every FIG. 2A-2C plot the trials allow into `out_dir`; return the files written.

    `candidates`: the backbone's candidate layers in forward order (search.json), which sets the depth
    at which a PreGRU layer is compared with the traditional GRU (the first with rnn1, the second with rnn2).
    `gates`: the selection's rule (`select.gates`): which LSTM gates are drawn, and the verdict in the legends.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    lstm_gates = deciding_gates("lstm", gates)
    tra_lstm = traditional_trial(trials, "lstm")
    for layer in _layers(trials, "lstm", candidates):
        ref = reference_trial(trials, "lstm", layer)
        if ref is None or not all(g in ref["gate_stats"][layer]["gates"] for g in lstm_gates):
            continue
        tra = [] if tra_lstm is None else [
            (f"TraLSTM {name}", s) for name, s in tra_lstm["gate_stats"].items()
            if all(g in s.get("gates", {}) for g in lstm_gates)]
        what = "Forget gate" if lstm_gates == ("forget",) else "Gate"
        title = f"{what} saturation, {layer}: {ref['name']}" + (f" vs {tra_lstm['name']}" if tra_lstm else "")
        v = verdict(ref["gate_stats"][layer], low, high, gates)
        written.append(saturation_plot(out_dir / f"saturation_lstm_{layer}.png",
                                       (_label("PreLSTM", layer, v), ref["gate_stats"][layer]), tra,
                                       gates=lstm_gates, title=title, low=low, high=high,
                                       metadata=_meta(v, ref, lstm_gates)))
    tra_gru = traditional_trial(trials, "gru")
    gru_gates = deciding_gates("gru", gates)
    for depth, layer in enumerate(_layers(trials, "gru", candidates)):
        ref = reference_trial(trials, "gru", layer)
        if ref is None or not all(g in ref["gate_stats"][layer]["gates"] for g in gru_gates):
            continue
        tra = None
        if tra_gru is not None:
            names = list(tra_gru["gate_stats"])
            name = names[min(depth, len(names) - 1)]
            if all(g in tra_gru["gate_stats"][name].get("gates", {}) for g in gru_gates):
                tra = (f"TraGRU {name}", tra_gru["gate_stats"][name])
        title = f"GRU gate activations, {layer}: {ref['name']}" + (f" vs {tra_gru['name']}" if tra else "")
        v = verdict(ref["gate_stats"][layer], low, high, gates)
        written.append(histogram_plot(out_dir / f"histogram_gru_{layer}.png",
                                      (_label("PreGRU", layer, v), ref["gate_stats"][layer]), tra, gates=gru_gates,
                                      title=title, metadata=_meta(v, ref, gru_gates)))
    return written
