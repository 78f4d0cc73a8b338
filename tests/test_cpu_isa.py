"""One SIMD level on every AVX2 machine (pipeline.core.cpu_isa): the environment it sets, that the libraries obey
it, and why it is needed (their results depend on the level they pick)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core.cpu_isa import OPT_OUT, cpu_flags, isa_environment, pin_isa

ROOT = Path(__file__).resolve().parents[1]
AVX2 = {"sse4_2", "avx", "avx2", "fma"}
SKX = AVX2 | {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}
HAS_AVX2 = {"avx2", "fma"} <= cpu_flags()
needs_avx2 = pytest.mark.skipif(not HAS_AVX2, reason="this CPU has no AVX2 + FMA: there is no higher level to cap")


def test_avx2_machine_caps_torch_onednn_mkl_and_leaves_opencv_alone():
    env = isa_environment(AVX2)
    assert env == {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def test_avx512_machine_also_turns_off_the_opencv_levels_it_has():
    env = isa_environment(SKX)
    assert env["ATEN_CPU_CAPABILITY"] == "avx2"
    assert env["OPENCV_CPU_DISABLE"].split(",") == ["AVX512F", "AVX512-COMMON", "AVX512-SKX"]  # not CLX/ICL: absent


def test_no_avx2_sets_nothing():
    assert isa_environment({"sse2", "sse4_2", "avx"}) == {}


def test_user_values_and_the_opt_out_are_kept():
    environ = {"ATEN_CPU_CAPABILITY": "default"}
    added = pin_isa(environ, flags=SKX)
    assert environ["ATEN_CPU_CAPABILITY"] == "default" and "ATEN_CPU_CAPABILITY" not in added
    assert environ["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    native = {OPT_OUT: "1"}
    assert pin_isa(native, flags=SKX) == {} and native == {OPT_OUT: "1"}


def test_cpuinfo_flags_are_read(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\nbugs\t: x\n")
    assert cpu_flags(info) == {"fpu", "sse2", "avx2", "fma"}
    assert cpu_flags(tmp_path / "missing") == set()


def _python(code: str, **env) -> str:
    full = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA",
                                                             "MKL_ENABLE_INSTRUCTIONS", "OPENCV_CPU_DISABLE", OPT_OUT)}
    full.update(env, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", code], env=full, cwd=ROOT, capture_output=True, text=True,
                          check=True, timeout=120).stdout.strip()


@needs_avx2
def test_a_stage_process_runs_torch_at_the_pinned_level():
    out = json.loads(_python("import stages, os, torch, json; print(json.dumps([torch.backends.cpu."
                             "get_cpu_capability(), os.environ['ONEDNN_MAX_CPU_ISA']]))"))
    assert out == ["AVX2", "AVX2"]
    # the user's own choice wins
    assert _python("import pipeline, torch; print(torch.backends.cpu.get_cpu_capability())",
                   ATEN_CPU_CAPABILITY="default") == "DEFAULT"


FLOW = """
import hashlib, numpy as np, cv2
cv2.setNumThreads(1)
rng = np.random.default_rng(0)
a = cv2.GaussianBlur(rng.integers(0, 255, (64, 64), dtype=np.uint8), (5, 5), 2)
b = np.roll(a, (2, 3), axis=(0, 1))
flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST).calc(a, b, None)
print(hashlib.sha256(flow.tobytes()).hexdigest())
"""

TRAIN = """
import hashlib, torch
torch.manual_seed(0)
m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 14 * 14, 8))
opt = torch.optim.Adam(m.parameters(), 1e-3)
x = torch.randn(4, 3, 16, 16)
for _ in range(3):
    opt.zero_grad(); m(x).pow(2).sum().backward(); opt.step()
print(hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in m.parameters())).hexdigest())
"""


@needs_avx2
def test_optical_flow_depends_on_the_level_opencv_picks():
    """Why the cap exists: DIS flow through OpenCV's AVX2 kernels is not the flow of its baseline path."""
    assert _python(FLOW, PRERNN_NATIVE_ISA="1") != _python(FLOW, PRERNN_NATIVE_ISA="1", OPENCV_CPU_DISABLE="AVX2")


@needs_avx2
def test_training_depends_on_the_level_torch_picks_and_the_cap_is_the_native_avx2_result():
    """Adam steps of a conv net at ATen/oneDNN's default level differ from AVX2; pinned equals native AVX2 here."""
    native = _python(TRAIN, PRERNN_NATIVE_ISA="1")
    baseline = _python(TRAIN, ATEN_CPU_CAPABILITY="default", ONEDNN_MAX_CPU_ISA="SSE41",
                       MKL_ENABLE_INSTRUCTIONS="SSE4_2")
    pinned = _python("import pipeline\n" + TRAIN)
    assert native != baseline
    if "avx512f" not in cpu_flags():  # an AVX2 machine: the cap is its native result
        assert pinned == native
