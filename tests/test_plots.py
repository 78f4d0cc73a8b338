"""pipeline.report.plots: FIG. 2A-2C files are written, are PNGs and are not empty."""
from pipeline.report.plots import reference_trial, write_plots
from report_fixtures import space


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
