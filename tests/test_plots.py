"""pipeline.report.plots: FIG. 2A-2C files are written, are PNGs and are not empty, and state the selection's verdict."""
import pytest
from PIL import Image

from pipeline.report.plots import reference_trial, write_plots
from pipeline.report.selection import select_configuration
from report_fixtures import layer, space, trial


def test_saturation_and_histogram_plots_written(tmp_path):
    files = write_plots(space(), tmp_path, candidates=["fc6", "fc7"])
    names = sorted(p.name for p in files)
    assert names == ["histogram_gru_fc6.png", "histogram_gru_fc7.png", "saturation_lstm_fc6.png", "saturation_lstm_fc7.png"]
    for p in files:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_reference_trial_prefers_the_single_layer_non_sih_trial():
    assert reference_trial(space(), "lstm", "fc7")["name"] == "prernn-lstm-fc7"


def test_no_gated_trials_no_plots(tmp_path):
    only_vrnn = [t for t in space() if t["cell"] == "vrnn"]
    assert write_plots(only_vrnn, tmp_path) == []


@pytest.mark.parametrize("gates", ["embodiment", "all"])
def test_each_figure_draws_the_deciding_gates_and_agrees_with_the_selection(tmp_path, gates):
    # fc7: the forget gate (and the GRU update gate) in the centre, the other gates saturated: the two rules disagree
    lstm7 = layer("lstm", 0, 0, per_gate={"input": (1, 9), "forget": (9, 1), "output": (1, 9)})
    lstm6 = layer("lstm", 0, 0, per_gate={"input": (9, 1), "forget": (1, 9), "output": (9, 1)})
    gru7 = layer("gru", 0, 0, per_gate={"reset": (0, 10), "update": (6, 4)})
    trials = [trial("prernn-lstm-fc6", layers=["fc6"], stats={"fc6": lstm6}),
              trial("prernn-lstm-fc7", layers=["fc7"], stats={"fc7": lstm7}),
              trial("prernn-gru-fc7", cell="gru", layers=["fc7"], stats={"fc7": gru7}),
              trial("traditional-lstm-1", kind="traditional", num_layers=1, stats={"rnn1": layer("lstm", 8, 2)})]
    sel = {r["name"]: r for r in select_configuration(trials, gates=gates, metric="val_acc")["trials"]}
    files = {p.name: Image.open(p).text for p in write_plots(trials, tmp_path, candidates=["fc6", "fc7"], gates=gates)}
    assert sorted(files) == ["histogram_gru_fc7.png", "saturation_lstm_fc6.png", "saturation_lstm_fc7.png"]
    for name, meta in files.items():
        cell, layer_name = name.removesuffix(".png").split("_")[1:]
        row = sel[meta["prernn.trial"]]
        sat = row["saturation"][layer_name]
        assert meta["prernn.verdict"] == ("saturated" if sat["saturated"] else "not saturated")
        assert meta["prernn.gates"] == "+".join(row["decided_by"][layer_name]) == meta["prernn.drawn"]
    assert files["saturation_lstm_fc7.png"]["prernn.drawn"] == ("forget" if gates == "embodiment" else "input+forget+output")
    assert files["saturation_lstm_fc7.png"]["prernn.verdict"] == ("not saturated" if gates == "embodiment" else "saturated")
    assert files["histogram_gru_fc7.png"]["prernn.verdict"] == ("not saturated" if gates == "embodiment" else "saturated")
