"""pipeline.report.table1: the patent's Table 1 laid out from a crafted trials list."""
import csv
import io

from pipeline.report.selection import select_configuration
from pipeline.report.table1 import build_table, to_csv, to_markdown
from report_fixtures import layer, space, trial

TITLES = ["Traditional 1 layer", "Traditional 2 layers", "PreRNN fc6", "PreRNN fc7", "PreRNN fc6/fc7",
          "PreRNN-SIH fc6", "PreRNN-SIH fc7", "PreRNN-SIH fc6/fc7"]


def _csv(trials, **kw):
    table = build_table(trials, candidates=["fc6", "fc7"], **{"metric": "val_acc", **kw})
    return list(csv.DictReader(io.StringIO(to_csv(table)))), table


def test_every_cell_of_the_space_and_dashes_elsewhere():
    trials = space()
    rows, table = _csv(trials)
    assert [c.title for c in table.columns] == TITLES
    acc = {r["cell"]: r for r in rows if r["quantity"] == "val_acc"}
    assert list(acc) == ["vrnn", "lstm", "gru"]
    by = {t["name"]: t for t in trials}
    assert float(acc["lstm"]["PreRNN fc6/fc7"]) == by["prernn-lstm-fc6+fc7"]["val_acc"]
    assert float(acc["gru"]["PreRNN-SIH fc7"]) == by["prernn-gru-sih-fc7"]["val_acc"]
    assert float(acc["vrnn"]["Traditional 2 layers"]) == by["traditional-vrnn-2"]["val_acc"]
    for title in TITLES[5:]:
        assert acc["vrnn"][title] == "-"                      # SIH x VRNN does not apply
    assert all(v != "-" for r in ("lstm", "gru") for k, v in acc[r].items() if k not in ("quantity", "cell"))
    params = {r["cell"]: r for r in rows if r["quantity"] == "recurrent_params"}
    assert int(params["lstm"]["PreRNN-SIH fc6"]) < int(params["lstm"]["PreRNN fc6"])


def test_failed_and_missing_cells():
    trials = [trial("prernn-lstm-fc6", layers=["fc6"], stats={"fc6": layer("lstm", 2, 8)}),
              trial("prernn-lstm-fc7", layers=["fc7"], status="failed", error="boom"),
              trial("traditional-gru-1", kind="traditional", cell="gru", num_layers=1)]
    rows, table = _csv(trials)
    acc = {r["cell"]: r for r in rows if r["quantity"] == "val_acc"}
    assert acc["lstm"]["PreRNN fc7"] == "failed"
    assert acc["lstm"]["Traditional 1 layer"] == "-"          # not in the space
    assert acc["gru"]["Traditional 1 layer"] == "0.5"
    assert "PreRNN fc6/fc7" not in acc["lstm"]                # a combination the space lacks has no column
    assert acc["vrnn"]["PreRNN fc6"] == "-"


def test_markdown_marks_selected_and_reverted_and_shows_sih_saving():
    trials = space()
    sel = select_configuration(trials, metric="val_acc")
    md = to_markdown(build_table(trials, selection=sel, candidates=["fc6", "fc7"], metric="val_acc"), title="rgb")
    assert md.count("**") == 2 + 2 * 1                         # the legend's **bold** and one selected cell
    assert "†" in md.split("## Recurrent")[0].split("| cell")[1]
    assert "(-75%)" in md                                      # SIH 2000 vs 8000 recurrent parameters
    lstm_line = next(l for l in md.splitlines() if l.startswith("| LSTM"))
    assert lstm_line.count("|") == len(TITLES) + 2


def test_cells_in_long_form_for_dvc_plots_and_the_tie_break_in_the_caption():
    from pipeline.report.selection import TIE_BREAK
    from pipeline.report.table1 import to_cells_csv

    trials = space()
    sel = select_configuration(trials, metric="val_acc")
    table = build_table(trials, selection=sel, candidates=["fc6", "fc7"], metric="val_acc")
    rows = list(csv.DictReader(io.StringIO(to_cells_csv(table))))
    assert len(rows) == 3 * len(table.columns) and {r["metric"] for r in rows} == {"val_acc"}
    by = {(r["cell"], r["column"]): r for r in rows}
    assert by[("VRNN", "PreRNN-SIH fc6")]["score"] == "" and by[("VRNN", "PreRNN-SIH fc6")]["text"] == "-"
    chosen = [r for r in rows if r["text"].endswith(" *")]
    assert len(chosen) == 1 and float(chosen[0]["score"]) == sel["selected"]["score"]
    assert [int(r["order"]) for r in rows[:len(table.columns)]] == list(range(len(table.columns)))
    assert TIE_BREAK in to_markdown(table)


def test_conv_and_mixed_combinations_get_columns_in_forward_order():
    """Conv candidates searched with fc ones: a column per combination, singles first, in the backbone's order
    (search.json's candidates), and the selection reverts an unsaturated conv layer like an fc one."""
    sat, unsat = (2, 8), (8, 2)
    trials = [trial("prernn-gru-conv3+fc6", cell="gru", layers=["conv3", "fc6"], val_acc=0.8,
                    stats={"conv3": layer("gru", *unsat), "fc6": layer("gru", *sat)}),
              trial("prernn-gru-fc7", cell="gru", layers=["fc7"], stats={"fc7": layer("gru", *sat)}),
              trial("prernn-gru-conv2", cell="gru", layers=["conv2"], stats={"conv2": layer("gru", *sat)}),
              trial("traditional-gru-1", kind="traditional", cell="gru", stats={"rnn1": layer("gru", *unsat)})]
    sel = select_configuration(trials, metric="val_acc")
    table = build_table(trials, selection=sel, candidates=["conv1", "conv2", "conv3", "fc6", "fc7"], metric="val_acc")
    titles = [c.title for c in table.columns]
    assert titles[2:5] == ["PreRNN conv2", "PreRNN fc7", "PreRNN conv3/fc6"]
    by = {r["name"]: r for r in sel["trials"]}
    assert by["prernn-gru-conv3+fc6"]["decision"] == "reverted"
    assert by["prernn-gru-conv3+fc6"]["reverted_layers"] == ["conv3"]
    assert by["prernn-gru-conv3+fc6"]["effective_layers"] == ["fc6"]
    assert "conv3/fc6" in to_markdown(table, title="rgb")


def test_reverted_configurations_are_listed_with_the_score_they_are_ranked_by():
    trials = space()
    sel = select_configuration(trials, frame_reference=0.33, metric="val_acc")
    md = to_markdown(build_table(trials, selection=sel, candidates=["fc6", "fc7"], metric="val_acc"))
    metric_part = md.split("## Recurrent")[0]
    section = metric_part.split("### Reverted configurations")[1]
    by = {t["name"]: t for t in trials}
    lines = {ln.split(" | ")[0].lstrip("| "): ln for ln in section.splitlines() if ln.startswith("| prernn-")}
    assert len(lines) == sel["counts"]["reverted"] == 8
    # fc6+fc7 with fc7 reverted is ranked as fc6 alone; fc7 alone reverted is ranked as the CNN alone
    assert lines["prernn-gru-fc6+fc7"] == (f"| prernn-gru-fc6+fc7 | fc7 | fc6 | prernn-gru-fc6 | "
                                            f"{by['prernn-gru-fc6']['val_acc']:.3f} | {by['prernn-gru-fc6+fc7']['val_acc']:.3f} |")
    assert lines["prernn-lstm-sih-fc7"] == (f"| prernn-lstm-sih-fc7 | fc7 | none | frames | 0.330 | "
                                             f"{by['prernn-lstm-sih-fc7']['val_acc']:.3f} |")
    assert "forget gate" in metric_part.split("| cell")[0]                # the legend names the deciding gates
    no_sel = to_markdown(build_table(trials, candidates=["fc6", "fc7"], metric="val_acc"))
    assert "### Reverted configurations" not in no_sel and "below" not in no_sel
