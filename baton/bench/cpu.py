"""How busy the machine was during a run, and how much of that was somebody else (Linux /proc).

A benchmark on a shared machine is only as good as its quiet: ``CpuWindow`` measures, over a run,
the machine's busy CPU time (``/proc/stat``) and this process tree's CPU time (this process, its
live descendants such as Ray's raylet and actors, and the children they reaped), and reports the
rest as *background* cores: the average number of cores other processes took from the run.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _machine_busy_s() -> float | None:
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    vals = [int(x) for x in fields]
    # user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is inside user.
    busy = vals[0] + vals[1] + vals[2] + vals[5] + vals[6] + (vals[7] if len(vals) > 7 else 0)
    return busy / _TICK


def _procs(reaped: bool = True) -> dict[int, tuple[int, float]]:
    """pid -> (ppid, CPU s of the process, and of the children it reaped when ``reaped``)."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        rest = stat[stat.rfind(")") + 2 :].split()  # fields after "(comm)", from field 3 (state)
        try:
            ppid = int(rest[1])
            cpu = sum(int(x) for x in rest[11 : 15 if reaped else 13]) / _TICK  # utime stime [cutime cstime]
        except (IndexError, ValueError):
            continue
        out[int(d.name)] = (ppid, cpu)
    return out


def _tree(root: int, procs: dict[int, tuple[int, float]]) -> list[int]:
    """``root`` and its live descendants among ``procs``."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        if pid in procs:
            out.append(pid)
        stack += children.get(pid, [])
    return out


def tree_cpu_s(root: int | None = None) -> float | None:
    """CPU seconds of ``root`` (default: this process) and all its live descendants."""
    if not Path("/proc/stat").exists():
        return None
    procs = _procs()
    return sum(procs[pid][1] for pid in _tree(os.getpid() if root is None else root, procs))


def tree_processes(root: int | None = None) -> dict[int, tuple[str, float]]:
    """pid -> (command line, its own CPU seconds) of ``root`` (default: this process) and its live
    descendants; differences between two calls are each process's work in between."""
    procs = _procs(reaped=False)
    out = {}
    for pid in _tree(os.getpid() if root is None else root, procs):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            cmd = ""
        out[pid] = (cmd.strip(), procs[pid][1])
    return out


def machine_busy_s() -> float | None:
    """CPU seconds the whole machine has been busy (all cores, since boot)."""
    return _machine_busy_s()


class CpuWindow:
    """``start()`` ... ``stop()`` -> {"busy_cores", "own_cores", "background_cores", "wall_s"}."""

    def start(self) -> CpuWindow:
        self.t0 = time.perf_counter()
        self.busy0 = _machine_busy_s()
        self.own0 = tree_cpu_s()
        return self

    def stop(self) -> dict[str, float | None]:
        wall = time.perf_counter() - self.t0
        busy1, own1 = _machine_busy_s(), tree_cpu_s()
        if None in (self.busy0, busy1, self.own0, own1) or wall <= 0:
            return {"wall_s": wall, "busy_cores": None, "own_cores": None, "background_cores": None}
        busy = (busy1 - self.busy0) / wall
        own = (own1 - self.own0) / wall
        return {
            "wall_s": wall,
            "busy_cores": busy,
            "own_cores": own,
            "background_cores": max(0.0, busy - own),
        }
