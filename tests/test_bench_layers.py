"""The fast paths of the FC layers (torch's modules with W_ih folded in, the loop with a hand-written backward)
against autograd over the step-by-step reference, and smoke runs of the benchmarks (tiny shapes; no timing
assertions). Per-path gradchecks over every form: test_prernn_cells.py."""
import pytest
import torch

from prernn.layers import FCRecurrent


def _randomize(module, scale=0.4):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * scale)


@pytest.mark.parametrize("cell,sih,reset", [("gru", False, "before"), ("gru", True, "before"),
                                            ("gru", False, "after"), ("gru", True, "after"),
                                            ("lstm", False, "before"), ("lstm", True, "before"),
                                            ("vrnn", False, "before")])
def test_fc_fast_path_grads_match_reference(cell, sih, reset):
    torch.manual_seed(1)
    layer = FCRecurrent.from_linear(torch.nn.Linear(7, 5), cell, sih=sih, gru_reset=reset,
                                    activation="relu").double()
    _randomize(layer)
    x = torch.randn(3, 4, 7, dtype=torch.float64)
    g = torch.randn(3, 4, 5, dtype=torch.float64)
    grads = []
    for fn in (layer.forward, lambda x: layer.forward_reference(x)[0]):
        layer.zero_grad()
        out = fn(x)
        (out * g).sum().backward()
        grads.append((out.detach(), [p.grad.clone() for p in layer.parameters()]))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-10)
    for a, b in zip(grads[0][1], grads[1][1]):
        assert torch.allclose(a, b, atol=1e-9)


def test_bench_layers_smoke(capsys):
    from bench import layers
    res = layers.main(["--batch", "2", "--steps", "3", "--in-features", "8", "--hidden", "4", "--sih-in", "16",
                       "--repeat", "1", "--device", "cpu"])
    out = capsys.readouterr().out
    assert [r[0] for r in res] == ["lstm_vs_nn", "vrnn_vs_nn", "gru_eq3_vs_nn", "sih_lstm_vs_gd", "sih_gru_vs_gd"]
    assert all(r[1] > 0 for r in res)
    assert out.count("target ") == 5 and "(goal 1.1)" in out


@pytest.mark.slow  # bench/gpu.sh
def test_gpu_sh_cpu_smoke(tmp_path):
    """bench/gpu.sh's prepared device check, in its tiny CPU mode: it runs and writes its tables to $OUT."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    r = subprocess.run(["bash", str(repo / "bench" / "gpu.sh"), "--cpu-smoke"], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "layers.txt").exists() and (tmp_path / "search.txt").exists()
    targets = (tmp_path / "targets.txt").read_text().splitlines()
    assert len(targets) == 6 and all(t.startswith("target ") for t in targets), targets


def test_bench_data_smoke(capsys):
    from bench import data
    res = data.main(["--clips", "4", "--frames", "2", "--size", "16", "--batch", "2", "--repeat", "1",
                     "--train-clips", "8", "--train-epochs", "1"])
    assert [r[0] for r in res] == ["arrow_vs_jpeg", "data_wait_fraction"]
    assert res[0][1] > 0 and 0 <= res[1][1] <= 1
    assert capsys.readouterr().out.count("target ") == 2
