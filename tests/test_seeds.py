"""The seed axis: seed values and trial names, t-intervals and paired bootstrap on known inputs, the aggregate of
a configuration's seeds (what selection and Table 1 read), the convergence rows and the evaluate comparison."""
import math

import numpy as np
import pytest
import torch

from pipeline.report.comparison import compare
from pipeline.report.convergence import convergence_plot, convergence_rows
from pipeline.report.seeds import aggregate, mean_interval, paired_bootstrap, seed_values, with_seeds
from pipeline.report.selection import select_configuration
from pipeline.report.table1 import build_table, to_csv, to_markdown


def test_seed_values_and_trial_names():
    assert seed_values({"seed": 7, "seeds": 3}) == [7, 8, 9]
    space = [{"name": "prernn-gru-fc6", "kind": "prernn"}]
    assert [a["name"] for a in with_seeds(space, [0, 1])] == ["prernn-gru-fc6-seed0", "prernn-gru-fc6-seed1"]
    one = with_seeds(space, [5])
    assert one == [{"name": "prernn-gru-fc6", "kind": "prernn", "configuration": "prernn-gru-fc6", "seed": 5}]


def test_t_interval_on_known_values():
    i = mean_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 * 1.0 / math.sqrt(3)  # t(0.975, df=2) * sd / sqrt(n)
    assert i.mean == pytest.approx(2.0) and i.n == 3
    assert (i.low, i.high) == (pytest.approx(2.0 - half), pytest.approx(2.0 + half))
    assert mean_interval([0.4]).low == mean_interval([0.4]).high == 0.4
    assert mean_interval([0.5, 0.5]).text() == "0.500 [0.500, 0.500]"
    with pytest.raises(ValueError):
        mean_interval([])
    from scipy import stats  # the same bounds as scipy.stats' t-interval, bit for bit (Table 1's CSV keeps its digits)

    for values in ([0.6, 0.8, 0.7], [0.9604166746139526, 0.93125, 0.9895833], [0.1, 0.2, 0.25, 0.4, 0.41]):
        x = np.asarray(values)
        sem = float(x.std(ddof=1) / math.sqrt(x.size))
        expected = stats.t.interval(0.95, df=x.size - 1, loc=float(x.mean()), scale=sem)
        got = mean_interval(values)
        assert (got.low, got.high) == tuple(float(v) for v in expected)


def test_paired_bootstrap_sees_a_constant_gap_and_no_gap():
    a = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    same = paired_bootstrap(len(a), lambda idx: float(a[idx].mean() - a[idx].mean()))
    assert (same.mean, same.low, same.high) == (0.0, 0.0, 0.0)
    better = paired_bootstrap(len(a), lambda idx: float((a[idx] + 0.25).mean() - a[idx].mean()))
    assert better.mean == pytest.approx(0.25) and better.low == pytest.approx(0.25) and better.high == pytest.approx(0.25)
    noisy = paired_bootstrap(len(a), lambda idx: float(a[idx].mean() - 0.5), resamples=500)
    assert noisy.low < noisy.mean < noisy.high  # resampling the items spreads a difference that depends on them


def _gates(inside, outside):
    return {"fc6": {"cell": "gru", "low": 0.1, "high": 0.9, "note": None,
                    "gates": {"reset": {"inside": inside, "outside": outside, "left": [0.2, 0.4], "right": [0.0, 0.2],
                                        "hist": [1] * 10}}}}


def _trial(config, seed, acc, *, kind="prernn", status="ok", gates=(1, 9), sih=False, history=None):
    return {"name": f"{config}-seed{seed}", "configuration": config, "seed": seed, "kind": kind, "cell": "gru",
            "sih": sih, "layers": ["fc6"] if kind == "prernn" else [], "num_layers": 1, "status": status,
            "error": None if status == "ok" else "boom", "val_acc": acc if status == "ok" else None, "val_loss": 1.0,
            "epochs_to_95": 2, "clips_per_sec": 10.0, "recurrent_params": 100, "gate_stats": _gates(*gates),
            "history": history or [{"epoch": 1, "val_acc": acc / 2}, {"epoch": 2, "val_acc": acc}],
            "config": {"seed": seed}}


def test_aggregate_means_seeds_pools_gates_and_fails_a_configuration_with_a_failed_seed():
    trials = [_trial("prernn-gru-fc6", 0, 0.6, gates=(1, 9)), _trial("prernn-gru-fc6", 1, 0.8, gates=(9, 1)),
              _trial("traditional-gru-1", 0, 0.7, kind="traditional"),
              _trial("traditional-gru-1", 1, 0.7, kind="traditional", status="failed")]
    pre, tra = aggregate(trials, "val_acc")
    assert pre["name"] == "prernn-gru-fc6" and pre["val_acc"] == pytest.approx(0.7)
    assert pre["per_seed"] == {"0": 0.6, "1": 0.8} and pre["val_acc_interval"]["n"] == 2
    reset = pre["gate_stats"]["fc6"]["gates"]["reset"]
    assert (reset["inside"], reset["outside"]) == (10, 10) and reset["left"] == [0.2, 0.4] and reset["hist"] == [2] * 10
    assert tra["status"] == "failed" and tra["val_acc"] is None and "boom" in tra["error"]
    selection = select_configuration([pre, tra], frame_reference=0.4, metric="val_acc")
    # pooled over seeds 10 inside vs 10 outside: a tie is not saturated, so the layer reverts (the CNN alone)
    assert selection["trials"][0]["decision"] == "reverted"
    assert selection["selected"]["seeds"] == [0, 1] and selection["selected"]["score"] == 0.4
    assert selection["selected"]["searched_score"] == pytest.approx(0.7)


def test_table1_shows_intervals_the_frame_reference_and_per_seed_values():
    trials = [_trial("prernn-gru-fc6", s, a) for s, a in ((0, 0.6), (1, 0.8), (2, 0.7))]
    trials += [_trial("traditional-gru-1", s, 0.5, kind="traditional") for s in (0, 1, 2)]
    configs = aggregate(trials, "val_acc")
    table = build_table(configs, selection=select_configuration(configs, metric="val_acc"), candidates=["fc6"],
                        frame_reference=0.45, metric="val_acc")
    md = to_markdown(table)
    expected = mean_interval([0.6, 0.8, 0.7]).text()
    assert expected in md and "CNN alone per frame" in md
    assert "0.450" in md and "mean over 3 seed(s)" in md
    rows = {tuple(r.split(",")[:2]): r.split(",") for r in to_csv(table).splitlines()[1:]}
    header = to_csv(table).splitlines()[0].split(",")
    col = header.index("PreRNN fc6")
    assert float(rows[("val_acc_seed1", "gru")][col]) == 0.8
    assert float(rows[("val_acc_ci_low", "gru")][col]) == pytest.approx(mean_interval([0.6, 0.8, 0.7]).low)
    assert float(rows[("val_acc", "lstm")][header.index("CNN alone per frame")]) == 0.45


def test_convergence_rows_follow_the_best_configuration_of_each_family(tmp_path):
    trials = [_trial("prernn-gru-fc6", s, a) for s, a in ((0, 0.6), (1, 0.8))]
    trials += [_trial("prernn-gru-sih-fc6", s, 0.9, sih=True) for s in (0, 1)]
    trials += [_trial("traditional-gru-1", s, 0.5, kind="traditional") for s in (0, 1)]
    rows = convergence_rows(trials, aggregate(trials, "val_acc"), "val_acc")
    by = {(r["family"], r["epoch"]): r for r in rows}
    assert by[("PreRNN", 2)]["mean"] == pytest.approx(0.7) and by[("PreRNN", 1)]["mean"] == pytest.approx(0.35)
    assert by[("PreRNN-SIH", 2)]["configuration"] == "prernn-gru-sih-fc6"
    assert by[("Traditional", 2)]["ci_low"] == by[("Traditional", 2)]["ci_high"] == 0.5
    path = convergence_plot(rows, tmp_path / "convergence.png", metric="val_acc")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_gives_seed_intervals_and_a_paired_difference():
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    right = torch.nn.functional.one_hot(labels, 2).float()  # always right
    wrong = 1 - right  # always wrong
    half = torch.cat([right[:4], wrong[4:]])
    result = {"targets": labels, "seeds": {
        "selected": [{"seed": s, "streams": {"rgb": right}, "fused": right} for s in (0, 1)],
        "baseline": [{"seed": 0, "streams": {"rgb": half}, "fused": half},
                     {"seed": 1, "streams": {"rgb": wrong}, "fused": wrong}]}}
    acc = lambda p, y: float((p.argmax(-1) == y).float().mean())  # noqa: E731
    out = compare(result, ["rgb"], {"test_acc": acc}, resamples=300)
    fused = out["fused"]["test_acc"]
    assert fused["selected"]["mean"] == 1.0 and fused["baseline"]["per_seed"] == [0.5, 0.0]
    assert fused["difference"]["mean"] == pytest.approx(0.75) and fused["excludes_zero"]
    assert 0.5 <= fused["difference"]["ci_low"] <= 0.75 <= fused["difference"]["ci_high"] <= 1.0
    assert out["rgb"]["test_acc"]["difference"]["mean"] == pytest.approx(0.75)
