"""The background-CPU monitor: this process's own work counts as its own, the rest as background."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from baton.bench import cpu
from baton.bench.cpu import CpuWindow, tree_cpu_s

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

# Burns 0.5 s of its own CPU (however busy the machine is) inside a CpuWindow; a fresh process has no
# descendants, so its tree is itself and its own CPU time is known exactly (time.process_time).
BUSY_LOOP = """
import json, time
from baton.bench.cpu import CpuWindow
win = CpuWindow().start()
c0 = time.process_time()
while time.process_time() - c0 < 0.5:
    pass
cpu = time.process_time() - c0
print(json.dumps({"cpu_s": cpu, **win.stop()}))
"""


def test_own_work_is_counted_as_own():
    out = subprocess.run([sys.executable, "-c", BUSY_LOOP], check=True, capture_output=True, text=True)
    w = json.loads(out.stdout)
    own_s, busy_s = w["own_cores"] * w["wall_s"], w["busy_cores"] * w["wall_s"]
    assert own_s == pytest.approx(w["cpu_s"], abs=0.05)  # /proc ticks are 10 ms
    assert busy_s >= own_s - 0.05  # the machine's busy time includes this process's
    assert w["background_cores"] == pytest.approx(max(0.0, w["busy_cores"] - w["own_cores"]))


def test_background_is_busy_minus_own(monkeypatch):
    """Fake counters: 3 busy CPU-seconds on the machine, 1 of them this tree's, over a 2 s window."""
    clock = iter([0.0, 2.0])
    busy, own = iter([10.0, 13.0]), iter([5.0, 6.0])
    monkeypatch.setattr(cpu, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    monkeypatch.setattr(cpu, "_machine_busy_s", lambda: next(busy))
    monkeypatch.setattr(cpu, "tree_cpu_s", lambda: next(own))
    w = CpuWindow().start().stop()
    assert (w["wall_s"], w["busy_cores"], w["own_cores"], w["background_cores"]) == (2.0, 1.5, 0.5, 1.0)


def test_tree_includes_children():
    before = tree_cpu_s()
    burn = "import time\nwhile time.process_time() < 0.4: pass"  # 0.4 s of CPU, not of wall time
    subprocess.run([sys.executable, "-c", burn], check=True)
    time.sleep(0.05)
    assert tree_cpu_s() - before > 0.35  # the reaped child's CPU is in this process's cutime
