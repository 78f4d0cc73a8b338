"""The seed axis of the search: every configuration trains once per seed; results are read as mean and a 95%
interval over seeds.

In: the `search` params (`seed`, `seeds`), the search's trial dicts (trials.json rows, each with its
`configuration` name and `seed`). Out: the seed values, the trial names of the space, `Interval`s, and
`aggregate(trials, metric)`: one dict per configuration in the trial-dict layout (what selection and Table 1
read), whose metric is the mean over its seeds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import special  # stdtrit: Student's t quantiles (scipy.stats' own, without its import cost)

from pipeline.search.trial_config import seed_values, with_seeds  # noqa: F401 - the seed axis of the space

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """mean and a two-sided `CONFIDENCE` interval (Student's t over n values; n = 1: the value itself)."""

    mean: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict:
        return {"mean": self.mean, "ci_low": self.low, "ci_high": self.high, "n": self.n}

    def text(self, digits: int = 3) -> str:
        """`0.850 [0.820, 0.880]` (the value alone for n = 1)."""
        if self.n < 2:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """The mean of `values` and its t-interval (the spread over seeds, not over clips)."""
    x = np.asarray([float(v) for v in values], dtype=float)
    if x.size == 0:
        raise ValueError("mean_interval: no values")
    mean = float(x.mean())
    if x.size < 2:
        return Interval(mean, mean, mean, 1)
    sem = float(x.std(ddof=1) / math.sqrt(x.size))
    if sem == 0.0:
        return Interval(mean, mean, mean, int(x.size))
    alpha = (1.0 - confidence) / 2  # = scipy.stats.t.interval(confidence, df, loc=mean, scale=sem), bit for bit
    low, high = (mean + sem * special.stdtrit(x.size - 1, q) for q in (alpha, 1.0 - alpha))
    return Interval(mean, float(low), float(high), int(x.size))


def paired_bootstrap(n: int, difference, *, resamples: int = 2000, seed: int = 0,
                     confidence: float = CONFIDENCE) -> Interval:
    """A difference between two models measured on the same n test items and its percentile bootstrap interval.

    `difference(idx)` -> float: the difference on the items `idx` (an int array, with repeats); both models are
    measured on the same resampled items (paired). The point estimate is `difference(all items)`."""
    if n < 1:
        raise ValueError("paired_bootstrap: no test items")
    rng = np.random.default_rng(seed)
    diffs = np.array([difference(rng.integers(0, n, n)) for _ in range(resamples)])
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(diffs, [alpha, 1 - alpha])
    return Interval(float(difference(np.arange(n))), float(low), float(high), n)


def _pool_gate_stats(per_seed: list[dict | None]) -> dict | None:
    """Gate statistics of one configuration's seeds pooled: counts summed, per-unit fractions averaged."""
    per_seed = [s for s in per_seed if s]
    if not per_seed:
        return None
    out = {}
    for layer in per_seed[0]:
        entries = [s[layer] for s in per_seed if layer in s]
        first = entries[0]
        gates = {}
        for gate in first.get("gates") or {}:
            gs = [e["gates"][gate] for e in entries if gate in (e.get("gates") or {})]
            gates[gate] = {"inside": sum(int(g["inside"]) for g in gs), "outside": sum(int(g["outside"]) for g in gs),
                           "left": np.mean([g["left"] for g in gs], axis=0).tolist(),
                           "right": np.mean([g["right"] for g in gs], axis=0).tolist(),
                           "hist": np.sum([g["hist"] for g in gs], axis=0).astype(int).tolist()}
        out[layer] = {**{k: v for k, v in first.items() if k != "gates"}, "gates": gates}
    return out


SEED_MEAN_KEYS = ("val_loss", "epochs_to_95", "clips_per_sec")


def aggregate(trials: list[dict], metric: str) -> list[dict]:
    """One dict per configuration (first-seen order): the first seed's trial keys, `name` = the configuration,
    `metric` and SEED_MEAN_KEYS = means over the seeds that finished ok, `<metric>_interval` (Interval.as_dict),
    `per_seed` = {seed: metric value | None}, `seeds`, `trials` (the trial names), `gate_stats` pooled, and
    status "ok" when every seed finished ok (else "failed", with the first error)."""
    groups: dict[str, list[dict]] = {}
    for t in trials:
        groups.setdefault(t.get("configuration") or t["name"], []).append(t)
    out = []
    for name, group in groups.items():
        ok = [t for t in group if t.get("status") == "ok" and t.get(metric) is not None]
        row = {**group[0], "name": name, "configuration": name, "trials": [t["name"] for t in group],
               "seeds": [t.get("seed") for t in group],
               "per_seed": {str(t.get("seed")): (t.get(metric) if t.get("status") == "ok" else None) for t in group},
               "gate_stats": _pool_gate_stats([t.get("gate_stats") for t in ok])}
        if len(ok) == len(group) and ok:
            interval = mean_interval([t[metric] for t in ok])
            row.update({"status": "ok", "error": None, metric: interval.mean, f"{metric}_interval": interval.as_dict()})
            for key in SEED_MEAN_KEYS:
                values = [t[key] for t in ok if t.get(key) is not None]
                row[key] = float(np.mean(values)) if values else None
        else:
            bad = next(t for t in group if t not in ok)
            row.update({"status": "failed", metric: None, f"{metric}_interval": None,
                        "error": bad.get("error") or f"seed {bad.get('seed')}: no {metric}"})
        out.append(row)
    return out
