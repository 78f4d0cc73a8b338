"""pipeline.report.selection: claim 12 on crafted gate statistics."""
import pytest

from pipeline.report.selection import SelectionError, select_configuration
from report_fixtures import layer, space, trial

SAT, UNSAT, TIE = (2, 8), (8, 2), (5, 5)


def _rows(sel):
    return {r["name"]: r for r in sel["trials"]}


def test_saturated_kept_unsaturated_reverted_and_ranked_as_reverted():
    trials = [
        trial("a", layers=["fc6"], val_acc=0.70, stats={"fc6": layer("lstm", *SAT)}),
        trial("b", layers=["fc6", "fc7"], val_acc=0.90, stats={"fc6": layer("lstm", *SAT), "fc7": layer("lstm", *UNSAT)}),
    ]
    sel = select_configuration(trials, metric="val_acc")
    rows = _rows(sel)
    assert rows["a"]["decision"] == "kept" and rows["a"]["saturation"]["fc6"]["saturated"] is True
    assert rows["b"]["decision"] == "reverted"
    assert rows["b"]["reverted_layers"] == ["fc7"] and rows["b"]["effective_layers"] == ["fc6"]
    assert "fc7: 80.0% of forget gate activations inside (0.1, 0.9)" in rows["b"]["reason"]
    # b's model with fc7 in feedforward form is a's configuration: b is ranked by a's score, not its own
    assert rows["b"]["score"] == 0.70 and rows["b"]["searched_score"] == 0.90
    assert rows["b"]["scored_as"]["configuration"] == "a" and rows["b"]["scored_as"]["layers"] == ["fc6"]
    assert "ranked as a" in rows["b"]["reason"]
    assert sel["selected"]["name"] == "a" and sel["selected"]["layers"] == ["fc6"] and not sel["selected"]["fallback"]
    sat = rows["b"]["saturation"]["fc7"]  # the default rule: the forget gate decides ([0055]-[0058])
    assert sat["decided_by"] == ["forget"] and rows["b"]["decided_by"] == {"fc6": ["forget"], "fc7": ["forget"]}
    assert sat["inside"] == 8 and sat["outside"] == 2 and sat["inside_fraction"] == pytest.approx(0.8)
    assert set(sat["gates"]) == {"input", "forget", "output"} and sat["gates"]["input"]["saturated"] is False
    pooled = _rows(select_configuration(trials, gates="all", metric="val_acc"))["b"]["saturation"]["fc7"]
    assert pooled["decided_by"] == ["input", "forget", "output"] and (pooled["inside"], pooled["outside"]) == (24, 6)


def test_tie_is_not_saturated():
    sel = select_configuration([trial("t", cell="gru", layers=["fc6"], stats={"fc6": layer("gru", *TIE)})],
                               metric="val_acc")
    row = _rows(sel)["t"]
    assert row["saturation"]["fc6"]["saturated"] is False and row["decision"] == "reverted"


# (cell, per-gate (inside, outside), {select.gates: (decision, decided_by)}): known gate statistics in, decision
# and the gates that decided out, for both rules and every cell
RULE_CASES = [
    # the forget gate alone is unsaturated, pooled over the three gates fewer are inside (9 vs 21)
    ("lstm", {"input": (0, 10), "forget": (9, 1), "output": (0, 10)},
     {"embodiment": ("reverted", ["forget"]), "all": ("kept", ["input", "forget", "output"])}),
    # FIG. 2A's right-saturated forget gate with input and output in the centre (19 vs 11 pooled)
    ("lstm", {"input": (9, 1), "forget": (1, 9), "output": (9, 1)},
     {"embodiment": ("kept", ["forget"]), "all": ("reverted", ["input", "forget", "output"])}),
    ("lstm", {"input": (1, 9), "forget": (2, 8), "output": (1, 9)},
     {"embodiment": ("kept", ["forget"]), "all": ("kept", ["input", "forget", "output"])}),
    # GRU: the update gate unsaturated; pooled 6 vs 14 is saturated, but [0060] wants both gates saturated
    ("gru", {"reset": (0, 10), "update": (6, 4)},
     {"embodiment": ("reverted", ["reset", "update"]), "all": ("kept", ["reset", "update"])}),
    ("gru", {"reset": (2, 8), "update": (3, 7)},
     {"embodiment": ("kept", ["reset", "update"]), "all": ("kept", ["reset", "update"])}),
    ("gru", {"reset": (7, 3), "update": (8, 2)},
     {"embodiment": ("reverted", ["reset", "update"]), "all": ("reverted", ["reset", "update"])}),
    ("gru", {"reset": (5, 5), "update": (0, 10)},  # a tie in one gate is not saturated
     {"embodiment": ("reverted", ["reset", "update"]), "all": ("kept", ["reset", "update"])}),
    ("vrnn", {}, {"embodiment": ("kept", []), "all": ("kept", [])}),  # no gates: judged by neither rule
]


@pytest.mark.parametrize("gates", ["embodiment", "all"])
@pytest.mark.parametrize("cell,per_gate,expected", RULE_CASES)
def test_decision_and_deciding_gates_per_rule_and_cell(cell, per_gate, expected, gates):
    stats = {"fc6": layer(cell, 0, 0, per_gate=per_gate)}
    sel = select_configuration([trial("p", cell=cell, layers=["fc6"], stats=stats)], gates=gates, metric="val_acc")
    row = _rows(sel)["p"]
    decision, decided_by = expected[gates]
    assert sel["gates"] == gates and row["decision"] == decision
    assert row["decided_by"] == {"fc6": decided_by} and row["saturation"]["fc6"]["decided_by"] == decided_by
    assert row["saturation"]["fc6"]["saturated"] is ({"kept": True, "reverted": False}[decision] if per_gate else None)
    if decision == "reverted":
        assert all(g in row["reason"] for g in decided_by)
    other = "all" if gates == "embodiment" else "embodiment"
    assert sel["rule"] != select_configuration([trial("p", cell=cell, layers=["fc6"], stats=stats)], gates=other,
                                               metric="val_acc")["rule"]


def test_traditional_layers_show_the_deciding_gates_too():
    base = trial("t", kind="traditional", num_layers=2, stats={"rnn1": layer("lstm", *SAT), "rnn2": layer("lstm", *UNSAT)})
    row = _rows(select_configuration([base, trial("p", layers=["fc6"], stats={"fc6": layer("lstm", *SAT)})],
                                     metric="val_acc"))["t"]
    assert row["decision"] == "baseline" and row["decided_by"] == {"rnn1": ["forget"], "rnn2": ["forget"]}
    assert row["saturation"]["rnn2"]["saturated"] is False


def test_an_unknown_rule_names_select_gates():
    with pytest.raises(SelectionError, match="select.gates: 'forget'"):
        select_configuration([trial("p", layers=["fc6"], stats={"fc6": layer("lstm", *SAT)})], gates="forget",
                             metric="val_acc")


def test_failed_trials_are_failed_never_scored():
    trials = [trial("ok", layers=["fc6"], val_acc=0.3, stats={"fc6": layer("lstm", *SAT)}),
              trial("bad", layers=["fc7"], status="failed", error="CUDA out of memory")]
    trials[1]["val_acc"] = 0.99  # a stale score must not count
    sel = select_configuration(trials, metric="val_acc")
    bad = _rows(sel)["bad"]
    assert bad["decision"] == "failed" and bad["score"] is None and "out of memory" in bad["reason"]
    assert sel["selected"]["name"] == "ok" and sel["counts"]["failed"] == 1


def test_vrnn_has_no_gates_and_is_kept_by_score():
    trials = [trial("v", cell="vrnn", layers=["fc6", "fc7"], val_acc=0.8,
                    stats={"fc6": layer("vrnn", 0, 0), "fc7": layer("vrnn", 0, 0)}),
              trial("l", layers=["fc6"], val_acc=0.7, stats={"fc6": layer("lstm", *SAT)})]
    sel = select_configuration(trials, metric="val_acc")
    v = _rows(sel)["v"]
    assert v["decision"] == "kept" and "no gates" in v["reason"]
    assert v["saturation"]["fc6"]["saturated"] is None
    assert sel["selected"]["name"] == "v"


def test_fallback_ranks_reverted_configurations_by_their_reverted_score():
    # nothing is kept. p67's own model scores best (0.95), but what evaluate would train for it is p6's model
    # (fc6 recurrent, fc7 feedforward), which scored 0.50; p6 and p7 revert every layer: the CNN alone, 0.55
    trials = [trial("p6", layers=["fc6"], val_acc=0.50, params=800, stats={"fc6": layer("lstm", *UNSAT)}),
              trial("p7", layers=["fc7"], val_acc=0.65, params=800, stats={"fc7": layer("lstm", *UNSAT)}),
              trial("p67", layers=["fc6", "fc7"], val_acc=0.95, params=1600,
                    stats={"fc6": layer("lstm", *SAT), "fc7": layer("lstm", *UNSAT)}),
              trial("base", kind="traditional", num_layers=1, val_acc=0.9, stats={"rnn1": layer("lstm", *SAT)})]
    sel = select_configuration(trials, frame_reference=0.55, metric="val_acc")
    rows = _rows(sel)
    assert rows["p67"]["score"] == 0.50 and rows["p67"]["searched_score"] == 0.95
    assert rows["p67"]["scored_as"]["configuration"] == "p6" and rows["p67"]["recurrent_params"] == 800
    for name in ("p6", "p7"):
        assert rows[name]["score"] == 0.55 and rows[name]["scored_as"]["configuration"] == "frames"
        assert rows[name]["recurrent_params"] == 0
    # p6 and p7 tie at 0.55 with no recurrent parameters: the name decides
    chosen = sel["selected"]
    assert chosen["fallback"] is True and chosen["name"] == "p6" and chosen["layers"] == []
    assert chosen["reverted_layers"] == ["fc6"] and chosen["score"] == 0.55 and chosen["searched_score"] == 0.50
    assert chosen["scored_as"]["configuration"] == "frames" and "no configuration" in chosen["reason"]
    # the baseline is reported, never selected
    assert sel["baseline"]["name"] == "base" and rows["base"]["decision"] == "baseline"
    # without the CNN-alone score only p67 can be scored as reverted
    sel = select_configuration(trials, metric="val_acc")
    assert _rows(sel)["p6"]["score"] is None and "frame_reference" in _rows(sel)["p6"]["reason"]
    assert sel["selected"]["name"] == "p67" and sel["selected"]["layers"] == ["fc6"] and sel["selected"]["score"] == 0.50


def test_a_reverted_form_outside_the_search_is_not_ranked_and_says_which_layers_would_score_it():
    trials = [trial("y", layers=["fc6", "fc7"], val_acc=0.7, stats={"fc6": layer("lstm", *UNSAT), "fc7": layer("lstm", *SAT)}),
              # fc7 alone, but trained with another hh_init: not the model evaluate would train for y
              trial("z", layers=["fc7"], val_acc=0.9, stats={"fc7": layer("lstm", *UNSAT)})]
    trials[1]["config"]["hh_init"] = "xavier"
    sel = select_configuration(trials, metric="val_acc")
    y = _rows(sel)["y"]
    assert y["decision"] == "reverted" and y["effective_layers"] == ["fc7"]
    assert y["score"] is None and y["scored_as"] is None and y["searched_score"] == 0.7
    assert "add [fc7] to search.layers" in y["reason"]
    assert sel["selected"] is None and "scored as reverted" in sel["no_selection"]


def test_a_reverted_form_is_scored_by_its_mean_over_seeds():
    from pipeline.report.seeds import aggregate

    def seeded(config, seed, acc, layers, stats):
        t = trial(f"{config}-seed{seed}", layers=layers, val_acc=acc, stats=stats)
        t.update(configuration=config, seed=seed)
        t["config"]["seed"] = seed
        return t

    both = {"fc6": layer("lstm", *SAT), "fc7": layer("lstm", *UNSAT)}
    trials = [seeded("c6", s, a, ["fc6"], {"fc6": layer("lstm", *SAT)}) for s, a in ((0, 0.6), (1, 0.8))]
    trials += [seeded("c67", s, 0.95, ["fc6", "fc7"], both) for s in (0, 1)]
    configs = aggregate(trials, "val_acc")
    c67 = _rows(select_configuration(configs, metric="val_acc"))["c67"]
    assert c67["scored_as"]["configuration"] == "c6" and c67["score"] == pytest.approx(0.7)
    assert c67["per_seed"] == {"0": 0.6, "1": 0.8} and c67["interval"]["n"] == 2


def test_missing_gate_statistics_revert_the_layer():
    sel = select_configuration([trial("m", layers=["fc6"], stats={})], metric="val_acc")
    assert _rows(sel)["m"]["decision"] == "reverted"


def test_min_mode_and_unknown_metric():
    trials = [trial("a", layers=["fc6"], stats={"fc6": layer("lstm", *SAT)}),
              trial("b", layers=["fc7"], stats={"fc7": layer("lstm", *SAT)})]
    trials[0]["val_loss"], trials[1]["val_loss"] = 0.9, 0.2
    assert select_configuration(trials, metric="val_loss", mode="min")["selected"]["name"] == "b"
    with pytest.raises(SelectionError, match="val_auc"):
        select_configuration(trials, metric="val_auc")


def test_full_space_counts():
    sel = select_configuration(space(), metric="val_acc")
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
    (search / "search.json").write_text(json.dumps({"backbone": "vgg_mini", "modality": "rgb", "candidates": ["fc6", "fc7"],
                                                     "frame_reference": {"val_acc": 0.3}}))
    (tmp_path / "params.yaml").write_text("select:\n  low: 0.1\n  high: 0.9\n")
    select.main(["--params", str(tmp_path / "params.yaml"), "--search", str(search), "--out", str(tmp_path / "reports")])
    out = tmp_path / "reports"
    sel = json.loads((out / "selection.json").read_text())
    assert len(sel["trials"]) == len(space()) and sel["selected"]["name"] == "prernn-vrnn-fc6+fc7"
    assert sel["search"]["candidates"] == ["fc6", "fc7"] and sel["gates"] == "embodiment"
    rows = _rows(sel)
    assert rows["prernn-gru-fc6+fc7"]["decided_by"] == {"fc6": ["reset", "update"], "fc7": ["reset", "update"]}
    assert rows["prernn-lstm-fc7"]["scored_as"]["configuration"] == "frames" and rows["prernn-lstm-fc7"]["score"] == 0.3
    assert rows["prernn-lstm-sih-fc6+fc7"]["scored_as"]["configuration"] == "prernn-lstm-sih-fc6"
    assert "| prernn-lstm-sih-fc6+fc7 | fc7 | fc6 | prernn-lstm-sih-fc6 |" in (out / "table1.md").read_text()
    assert (out / "table1.md").read_text().startswith("# Table 1: vgg_mini on rgb")
    assert (out / "table1.csv").read_text().splitlines()[0].startswith("quantity,cell,CNN alone per frame,Traditional 1")
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
    sel = select_configuration(trials, metric="val_acc")
    assert sel["selected"]["name"] == "a-small" and sel["tie_break"] == TIE_BREAK
    assert "3 tied at 0.600 (0-large, a-small, b-small)" in sel["selected"]["reason"]
    assert TIE_BREAK in sel["selected"]["reason"]
    alone = select_configuration(trials[-1:], metric="val_acc")
    assert "tied" not in alone["selected"]["reason"]


def test_select_stage_passes_select_gates(tmp_path):
    import json

    from stages import select

    search = tmp_path / "search"
    search.mkdir()
    stats = {"fc6": layer("lstm", 0, 0, per_gate={"input": (0, 10), "forget": (9, 1), "output": (0, 10)})}
    (search / "trials.json").write_text(json.dumps([trial("prernn-lstm-fc6", layers=["fc6"], stats=stats)]))
    (search / "search.json").write_text(json.dumps({"backbone": "vgg_mini", "modality": "rgb", "candidates": ["fc6", "fc7"],
                                                     "frame_reference": {"val_acc": 0.3}}))
    decisions = {}
    for gates in ("embodiment", "all"):
        (tmp_path / "params.yaml").write_text(f"select:\n  gates: {gates}\n")
        select.main(["--params", str(tmp_path / "params.yaml"), "--search", str(search), "--out", str(tmp_path / gates)])
        sel = json.loads((tmp_path / gates / "selection.json").read_text())
        decisions[gates] = (sel["gates"], sel["trials"][0]["decision"], sel["trials"][0]["decided_by"]["fc6"])
    assert decisions == {"embodiment": ("embodiment", "reverted", ["forget"]),
                         "all": ("all", "kept", ["input", "forget", "output"])}
