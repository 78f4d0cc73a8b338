"""One SIMD level on every x86-64 machine with AVX2, so that a fresh clone extracts and trains the same bytes.

OpenCV, PyTorch's ATen kernels, oneDNN and MKL each pick their code by the CPU they run on, and the picks give
other floats: DIS optical flow through OpenCV's AVX2 kernels differs from its SSE path, and a few steps of Adam
on a small conv net differ between ATen's AVX2 and default kernels (tests/test_cpu_isa.py shows both). A machine
with AVX-512 therefore wrote other flow and trained other numbers than one with AVX2 alone: the same commit's
`data/clips` hash and metrics.json moved from one machine of the project's kind to another.

`pin_isa()` caps every library at AVX2 where the CPU has AVX2 and FMA, through the environment variables they
read when their first kernel runs (OpenCV's at import): `ATEN_CPU_CAPABILITY=avx2`, `ONEDNN_MAX_CPU_ISA=AVX2`,
`MKL_ENABLE_INSTRUCTIONS=AVX2`, and on a CPU with AVX-512 `OPENCV_CPU_DISABLE` naming its AVX-512 levels. On a
machine whose best level is AVX2 this changes nothing; one with AVX-512 gives the AVX2 machine's results at some
cost in speed. A value the user set is kept, and `PRERNN_NATIVE_ISA=1` turns the cap off (fastest code, results
tied to the CPU). CPUs without AVX2 and GPUs (cuDNN picks its algorithms by the device) give other numbers.
`pipeline/__init__.py` calls it, so every stage, bench and Ray worker that imports `pipeline` is pinned before
torch or OpenCV compute anything.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import MutableMapping, Optional

OPT_OUT = "PRERNN_NATIVE_ISA"
# OpenCV's names of the AVX-512 levels it may dispatch to, each with the CPU flags (/proc/cpuinfo) it needs
OPENCV_AVX512 = {
    "AVX512F": {"avx512f"},
    "AVX512-COMMON": {"avx512f", "avx512cd"},
    "AVX512-SKX": {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"},
    "AVX512-CLX": {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni"},
    "AVX512-CNL": {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl", "avx512ifma", "avx512vbmi"},
    "AVX512-ICL": {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl", "avx512ifma", "avx512vbmi",
                   "avx512_vbmi2", "avx512_bitalg", "avx512_vpopcntdq", "avx512_vnni"},
}


def cpu_flags(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (the first `flags` line of /proc/cpuinfo); empty where there is none (not Linux x86)."""
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            if line.startswith("flags"):
                return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def isa_environment(flags: set[str]) -> dict[str, str]:
    """CPU flags -> the environment that caps OpenCV, ATen, oneDNN and MKL at AVX2; {} without AVX2 + FMA."""
    if not {"avx2", "fma"} <= flags:
        return {}
    env = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
    levels = [name for name, needs in OPENCV_AVX512.items() if needs <= flags]  # only those it has: no warning
    if levels:
        env["OPENCV_CPU_DISABLE"] = ",".join(levels)
    return env


def pin_isa(environ: Optional[MutableMapping[str, str]] = None, flags: Optional[set[str]] = None) -> dict[str, str]:
    """Set `isa_environment` in `environ` (default os.environ) where the user has not; returns what it set.
    Nothing when `PRERNN_NATIVE_ISA=1`."""
    environ = os.environ if environ is None else environ
    if environ.get(OPT_OUT, "") not in ("", "0"):
        return {}
    wanted = isa_environment(cpu_flags() if flags is None else flags)
    added = {k: v for k, v in wanted.items() if k not in environ}
    environ.update(added)
    return added
