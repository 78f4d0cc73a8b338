"""Run a module as `python -m` would and write its peak resident memory (VmHWM, kB) to a file:
`python -m bench.hwm OUT_FILE MODULE [ARGS...]`.

VmHWM (/proc/self/status) is the high-water mark of this process's own address space. It is read here, inside
the measured process, because the rusage a parent gets from wait4 (and RUSAGE_SELF) starts from the RSS of the
process that forked it: Linux keeps the pre-exec peak across execve, so a child of a parent holding torch
(~300 MB) reported at least that, whatever it did (bench.memory measured the floor before this).
"""
from __future__ import annotations

import runpy
import sys
from pathlib import Path


def vm_hwm_kb() -> int:
    """This process's peak resident set size in kB (Linux /proc/self/status VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("/proc/self/status has no VmHWM line (not Linux?)")


def main() -> None:
    out, module, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        Path(out).write_text(str(vm_hwm_kb()))


if __name__ == "__main__":
    main()
