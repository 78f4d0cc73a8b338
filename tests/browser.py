"""Debian's chromium, headless, for the tests that look at pages as a person would (tests/test_pipeline_e2e.py).

`page(url, screenshot=None)` returns the DOM after the page's scripts ran (`--dump-dom`, virtual time so that
nothing waits on the wall clock) and optionally writes a PNG. Every host but 127.0.0.1 resolves to nothing, so a
page that needs the internet shows it. `make test` installs chromium when it is missing (Makefile `browser`).
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make browser)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
         "--disable-background-networking", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
         ]


def page(url: str, *, budget_ms: int = 15000, screenshot: str | None = None, timeout: int = 90,
         size: str = "1400,1000") -> str:
    """The DOM of `url` once its scripts settled (at most `budget_ms` of virtual time)."""
    with tempfile.TemporaryDirectory() as profile:
        args = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
                f"--window-size={size}"]
        if screenshot:
            subprocess.run(args + [f"--screenshot={screenshot}", url], capture_output=True, timeout=timeout)
        out = subprocess.run(args + ["--dump-dom", url], capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"chromium failed on {url}: {out.stderr[-2000:]}"
    return out.stdout


def page_with(url: str, marker: str, *, tries: int = 3, **kw) -> str:
    """`page(url)` again (up to `tries` visits) until its DOM holds `marker`: MLflow's UI loads its views lazily,
    and the first visit to a cold server may end before they arrive."""
    for _ in range(tries):
        dom = page(url, **kw)
        if marker in dom:
            break
    return dom
