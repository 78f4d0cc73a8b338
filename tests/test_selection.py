"""pipeline.report.selection: claim 12 on crafted gate statistics."""
import pytest

from pipeline.report.selection import SelectionError, select_configuration
from report_fixtures import layer, space, trial

SAT, UNSAT, TIE = (2, 8), (8, 2), (5, 5)


def _rows(sel):
    return {r["name"]: r for r in sel["trials"]}


def test_saturated_kept_unsaturated_reverted():
    trials = [
        trial("a", layers=["fc6"], val_acc=0.70, stats={"fc6": layer("lstm", *SAT)}),
        trial("b", layers=["fc6", "fc7"], val_acc=0.90, stats={"fc6": layer("lstm", *SAT), "fc7": layer("lstm", *UNSAT)}),
    ]
    sel = select_configuration(trials)
    rows = _rows(sel)
    assert rows["a"]["decision"] == "kept" and rows["a"]["saturation"]["fc6"]["saturated"] is True
    assert rows["b"]["decision"] == "reverted"
    assert rows["b"]["reverted_layers"] == ["fc7"] and rows["b"]["effective_layers"] == ["fc6"]
    assert "fc7" in rows["b"]["reason"] and "80.0%" in rows["b"]["reason"]
    # the higher score of b does not win: it is not kept
    assert sel["selected"]["name"] == "a" and sel["selected"]["layers"] == ["fc6"] and not sel["selected"]["fallback"]
    sat = rows["b"]["saturation"]["fc7"]
    assert sat["inside"] == 24 and sat["outside"] == 6 and sat["inside_fraction"] == pytest.approx(0.8)
    assert set(sat["gates"]) == {"input", "forget", "output"}


def test_tie_is_not_saturated():
    sel = select_configuration([trial("t", cell="gru", layers=["fc6"], stats={"fc6": layer("gru", *TIE)})])
    row = _rows(sel)["t"]
    assert row["saturation"]["fc6"]["saturated"] is False and row["decision"] == "reverted"


def test_saturation_is_pooled_over_gates():
    # the forget gate alone is unsaturated, but pooled over the three gates fewer are inside
    stats = {"fc6": layer("lstm", 0, 10, per_gate={"forget": (9, 1)})}
    sel = select_configuration([trial("p", layers=["fc6"], stats=stats)])
    assert _rows(sel)["p"]["decision"] == "kept"


def test_failed_trials_are_failed_never_scored():
    trials = [trial("ok", layers=["fc6"], val_acc=0.3, stats={"fc6": layer("lstm", *SAT)}),
              trial("bad", layers=["fc7"], status="failed", error="CUDA out of memory")]
    trials[1]["val_acc"] = 0.99  # a stale score must not count
    sel = select_configuration(trials)
    bad = _rows(sel)["bad"]
    assert bad["decision"] == "failed" and bad["score"] is None and "out of memory" in bad["reason"]
    assert sel["selected"]["name"] == "ok" and sel["counts"]["failed"] == 1


def test_vrnn_has_no_gates_and_is_kept_by_score():
    trials = [trial("v", cell="vrnn", layers=["fc6", "fc7"], val_acc=0.8,
                    stats={"fc6": layer("vrnn", 0, 0), "fc7": layer("vrnn", 0, 0)}),
              trial("l", layers=["fc6"], val_acc=0.7, stats={"fc6": layer("lstm", *SAT)})]
    sel = select_configuration(trials)
    v = _rows(sel)["v"]
    assert v["decision"] == "kept" and "no gates" in v["reason"]
    assert v["saturation"]["fc6"]["saturated"] is None
    assert sel["selected"]["name"] == "v"


def test_fallback_to_best_reverted_when_nothing_kept():
    trials = [trial("x", layers=["fc6"], val_acc=0.6, stats={"fc6": layer("lstm", *UNSAT)}),
              trial("y", layers=["fc6", "fc7"], val_acc=0.7, stats={"fc6": layer("lstm", *UNSAT), "fc7": layer("lstm", *SAT)}),
              trial("base", kind="traditional", num_layers=1, val_acc=0.9, stats={"rnn1": layer("lstm", *SAT)})]
    sel = select_configuration(trials)
    assert sel["selected"]["fallback"] is True and sel["selected"]["name"] == "y"
    assert sel["selected"]["layers"] == ["fc7"] and sel["selected"]["reverted_layers"] == ["fc6"]
    assert "no configuration" in sel["selected"]["reason"]
    # the baseline is reported, never selected
    assert sel["baseline"]["name"] == "base" and _rows(sel)["base"]["decision"] == "baseline"


def test_missing_gate_statistics_revert_the_layer():
    sel = select_configuration([trial("m", layers=["fc6"], stats={})])
    assert _rows(sel)["m"]["decision"] == "reverted"


def test_min_mode_and_unknown_metric():
    trials = [trial("a", layers=["fc6"], stats={"fc6": layer("lstm", *SAT)}),
              trial("b", layers=["fc7"], stats={"fc7": layer("lstm", *SAT)})]
    trials[0]["val_loss"], trials[1]["val_loss"] = 0.9, 0.2
    assert select_configuration(trials, metric="val_loss", mode="min")["selected"]["name"] == "b"
    with pytest.raises(SelectionError, match="val_auc"):
        select_configuration(trials, metric="val_auc")


def test_full_space_counts():
    sel = select_configuration(space())
    # fc6 saturated, fc7 not: per gated cell and SIH, fc6 kept, fc7 and fc6+fc7 reverted; VRNN 3 kept
    assert sel["counts"] == {"kept": 3 + 2 * 2, "reverted": 2 * 2 * 2, "baseline": 6, "failed": 0}
    assert sel["selected"]["kind"] == "prernn" and sel["selected"]["score"] == max(
        r["score"] for r in sel["trials"] if r["decision"] == "kept")


def test_select_stage_writes_every_output(tmp_path):
    import json

    from stages import select

    search = tmp_path / "search"
    search.mkdir()
    (search / "trials.json").write_text(json.dumps(space()))
    (search / "search.json").write_text(json.dumps({"backbone": "vgg_mini", "modality": "rgb", "candidates": ["fc6", "fc7"]}))
    (tmp_path / "params.yaml").write_text("select:\n  low: 0.1\n  high: 0.9\n")
    select.main(["--params", str(tmp_path / "params.yaml"), "--search", str(search), "--out", str(tmp_path / "reports")])
    out = tmp_path / "reports"
    sel = json.loads((out / "selection.json").read_text())
    assert len(sel["trials"]) == len(space()) and sel["selected"]["name"] == "prernn-vrnn-fc6+fc7"
    assert sel["search"]["candidates"] == ["fc6", "fc7"]
    assert (out / "table1.md").read_text().startswith("# Table 1: vgg_mini on rgb")
    assert (out / "table1.csv").read_text().splitlines()[0].startswith("quantity,cell,Traditional 1 layer")
    assert len(list((out / "plots").glob("*.png"))) == 4


def test_select_stage_names_a_missing_search(tmp_path):
    from stages import select

    (tmp_path / "params.yaml").write_text("{}\n")
    with pytest.raises(SystemExit, match="trials.json is missing"):
        select.main(["--params", str(tmp_path / "params.yaml"), "--search", str(tmp_path / "nope"),
                     "--out", str(tmp_path / "reports")])


def test_ties_go_to_fewer_recurrent_parameters_then_the_name_and_say_so():
    from pipeline.report.selection import TIE_BREAK

    trials = [trial("b-small", layers=["fc6"], val_acc=0.6, params=500, stats={"fc6": layer("lstm", *SAT)}),
              trial("a-small", layers=["fc6"], val_acc=0.6, params=500, stats={"fc6": layer("lstm", *SAT)}),
              trial("0-large", layers=["fc6"], val_acc=0.6, params=9000, stats={"fc6": layer("lstm", *SAT)}),
              trial("worse", layers=["fc6"], val_acc=0.5, params=10, stats={"fc6": layer("lstm", *SAT)})]
    sel = select_configuration(trials)
    assert sel["selected"]["name"] == "a-small" and sel["tie_break"] == TIE_BREAK
    assert "3 tied at 0.600 (0-large, a-small, b-small)" in sel["selected"]["reason"]
    assert TIE_BREAK in sel["selected"]["reason"]
    alone = select_configuration(trials[-1:])
    assert "tied" not in alone["selected"]["reason"]
