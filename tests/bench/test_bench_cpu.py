"""The background-CPU monitor counts this process's own work as its own."""

from __future__ import annotations

import sys
import time

import pytest

from baton.bench.cpu import CpuWindow, tree_cpu_s

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def test_own_work_is_counted_as_own():
    win = CpuWindow().start()
    t = time.perf_counter()
    x = 0
    while time.perf_counter() - t < 0.5:
        x += 1
    w = win.stop()
    assert w["wall_s"] >= 0.5
    assert w["own_cores"] > 0.6  # a busy loop on one core
    assert w["busy_cores"] >= w["own_cores"] - 0.1
    assert w["background_cores"] >= 0


def test_tree_includes_children():
    import subprocess

    before = tree_cpu_s()
    subprocess.run(
        [sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<0.4: pass"], check=True
    )
    assert tree_cpu_s() - before > 0.3  # the reaped child's CPU is in this process's cutime
