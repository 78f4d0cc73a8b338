"""Benchmark of the recurrent layers' fast path: `python -m bench.layers [--repeat 7] [--threads 1] [--device cpu|cuda]`.

Forward + backward (loss = sum of outputs, gradients w.r.t. every parameter) of one layer over a clip batch
x (B, T, D), side by side in one run, interleaved repeats, medians:
  lstm:  gate-dependent PreLSTM (``FCRecurrent.from_linear(.., "lstm")``, Eqs. 7/8; nn.LSTM with W_ih folded in)
         vs ``nn.LSTM(D, H)``;
  vrnn:  PreVRNN (Eq. 5, ReLU as in VGG's fc layers; nn.RNN) vs ``nn.RNN(D, H, nonlinearity="relu")``;
  gru:   the Eq. (3) PreGRU (reset applied before W_hh; the loop with a hand-written backward) vs ``nn.GRU(D, H)``;
         the reset-after form (nn.GRU, z rows negated) is printed too;
  sih:   SIH LSTM / SIH GRU (Eqs. 10-12; the loop) vs the gate-dependent layer of the same cell at D = ``--sih-in``.
Ends with one line per target: `target NAME: X (goal Y) ok|miss`
(lstm_vs_nn <= 1.1, vrnn_vs_nn <= 1.1, gru_eq3_vs_nn <= 1.5, sih_lstm_vs_gd <= 0.5, sih_gru_vs_gd <= 0.5).
With CUDA (``--device cuda``, the default when available) the same table is computed on the GPU and a second
table for a 224x224 VGG16's fc6 (D=25088, H=4096) / fc7 (D=4096, H=4096) conversions (``--no-vgg`` skips it).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch import nn

from prernn.layers import FCRecurrent


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def fwd_bwd(module: nn.Module, x: torch.Tensor, device: str, autocast: bool = False) -> float:
    """Seconds of one forward + backward (sum of outputs) with the gradients zeroed first."""
    module.zero_grad(set_to_none=True)
    _sync(device)
    t0 = time.perf_counter()
    with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
        out = module(x)
    out = out[0] if isinstance(out, tuple) else out
    out.float().sum().backward()
    _sync(device)
    return time.perf_counter() - t0


def _pre(cell: str, D: int, H: int, **kw) -> nn.Module:
    act = "relu" if cell == "vrnn" else "tanh"
    return FCRecurrent.from_linear(nn.Linear(D, H), cell, activation=act, **kw)


def make_cases(D: int, H: int, sih_in: int) -> dict[str, nn.Module]:
    """Name -> module mapping (B, T, D) -> (B, T, H) [torch modules with batch_first]."""
    torch.manual_seed(0)
    return {
        "nn.LSTM": nn.LSTM(D, H, batch_first=True),
        "PreLSTM": _pre("lstm", D, H),
        "nn.RNN": nn.RNN(D, H, nonlinearity="relu", batch_first=True),
        "PreVRNN": _pre("vrnn", D, H),
        "nn.GRU": nn.GRU(D, H, batch_first=True),
        "PreGRU eq3": _pre("gru", D, H, gru_reset="before"),
        "PreGRU after": _pre("gru", D, H, gru_reset="after"),
        f"PreLSTM D={sih_in}": _pre("lstm", sih_in, H),
        f"SIH LSTM D={sih_in}": _pre("lstm", sih_in, H, sih=True),
        f"PreGRU D={sih_in}": _pre("gru", sih_in, H),
        f"SIH GRU D={sih_in}": _pre("gru", sih_in, H, sih=True),
    }


def measure(cases: dict[str, nn.Module], inputs: dict[int, torch.Tensor], repeat: int, device: str,
            autocast: bool = False) -> dict[str, float]:
    """Median seconds per case; the repeats of all cases are interleaved (one warm-up round first)."""
    times: dict[str, list[float]] = {k: [] for k in cases}
    for r in range(repeat + 1):
        for name, mod in cases.items():
            x = inputs[_in_features(mod)]
            t = fwd_bwd(mod, x, device, autocast)
            if r:  # round 0 is the warm-up (allocations, kernel selection)
                times[name].append(t)
    return {k: statistics.median(v) for k, v in times.items()}


def _in_features(mod: nn.Module) -> int:
    return mod.input_size if isinstance(mod, nn.RNNBase) else mod.in_features


def print_table(title: str, med: dict[str, float]) -> None:
    print(f"\n{title}")
    print(f"{'layer':<24}{'ms fwd+bwd':>12}")
    for k, v in med.items():
        print(f"{k:<24}{v * 1e3:>12.2f}")


def targets(med: dict[str, float], sih_in: int) -> list[tuple[str, float, float]]:
    """(name, ratio, goal); a target is met when ratio <= goal."""
    return [
        ("lstm_vs_nn", med["PreLSTM"] / med["nn.LSTM"], 1.1),
        ("vrnn_vs_nn", med["PreVRNN"] / med["nn.RNN"], 1.1),
        ("gru_eq3_vs_nn", med["PreGRU eq3"] / med["nn.GRU"], 1.5),
        ("sih_lstm_vs_gd", med[f"SIH LSTM D={sih_in}"] / med[f"PreLSTM D={sih_in}"], 0.5),
        ("sih_gru_vs_gd", med[f"SIH GRU D={sih_in}"] / med[f"PreGRU D={sih_in}"], 0.5),
    ]


def vgg_table(device: str, repeat: int, B: int, T: int, autocast: bool) -> dict[str, float]:
    """fc6 (25088 -> 4096) and fc7 (4096 -> 4096) of a 224x224 VGG16, every conversion vs torch's layers."""
    out = {}
    for name, D in (("fc6", 25088), ("fc7", 4096)):
        H = 4096
        cases = {f"{name} nn.LSTM": nn.LSTM(D, H, batch_first=True), f"{name} PreLSTM": _pre("lstm", D, H),
                 f"{name} SIH LSTM": _pre("lstm", D, H, sih=True), f"{name} nn.GRU": nn.GRU(D, H, batch_first=True),
                 f"{name} PreGRU eq3": _pre("gru", D, H), f"{name} SIH GRU": _pre("gru", D, H, sih=True),
                 f"{name} nn.RNN": nn.RNN(D, H, nonlinearity="relu", batch_first=True),
                 f"{name} PreVRNN": _pre("vrnn", D, H)}
        cases = {k: m.to(device) for k, m in cases.items()}
        x = {D: torch.randn(B, T, D, device=device)}
        out.update(measure(cases, x, repeat, device, autocast))
        del cases
        if device == "cuda":
            torch.cuda.empty_cache()
    return out


def main(argv=None) -> list[tuple[str, float, float]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--in-features", type=int, default=1024)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--sih-in", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "1")),
                    help="torch intra-op threads on CPU (1: least sensitive to a shared machine)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    ap.add_argument("--no-vgg", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    print(f"device {a.device}, threads {torch.get_num_threads()}, B={a.batch} T={a.steps} D={a.in_features} "
          f"H={a.hidden} (SIH at D={a.sih_in}), median of {a.repeat}, load average {os.getloadavg()[0]:.2f}")
    cases = {k: m.to(a.device) for k, m in make_cases(a.in_features, a.hidden, a.sih_in).items()}
    inputs = {D: torch.randn(a.batch, a.steps, D, device=a.device) for D in {a.in_features, a.sih_in}}
    med = measure(cases, inputs, a.repeat, a.device, a.bf16)
    print_table("forward+backward per layer", med)
    print(f"(PreGRU reset-after / nn.GRU: {med['PreGRU after'] / med['nn.GRU']:.2f})")
    if a.device == "cuda" and not a.no_vgg:
        del cases
        torch.cuda.empty_cache()
        print_table("VGG16 224x224 fc6/fc7 conversions, B=8 T=16",
                    vgg_table(a.device, max(3, a.repeat // 2), 8, a.steps, a.bf16))
    res = targets(med, a.sih_in)
    print(f"\nload average {os.getloadavg()[0]:.2f}")
    for name, x, goal in res:
        print(f"target {name}: {x:.2f} (goal {goal}) {'ok' if x <= goal else 'miss'}")
    return res


if __name__ == "__main__":
    main()
