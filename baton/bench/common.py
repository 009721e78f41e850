"""What every benchmark shares: logging and progress, list arguments, where outputs go, machine info,
sample statistics, JSON and plot writing.

Outputs: ``--out-dir`` (else ``$BATON_BENCH_DIR``, else ``./bench-results``) holds the plots and
``results.json`` (each benchmark's summary figures, under its run name); bulk (full JSON with
per-request records, tables, logs) goes to its ``raw/`` subfolder.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import logging
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from baton.bench.cpu import CpuWindow

OUT_DIR_ENV = "BATON_BENCH_DIR"
SUMMARY_FILE = "results.json"
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")

log = logging.getLogger("baton.bench")


# ---------------------------------------------------------------------------------------------- logging
def setup_logging() -> None:
    """``[bench] message`` lines on stderr, once per process."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[bench] %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def quiet_transformers() -> None:
    """No per-call generate() warnings nor weight-loading bars between the benchmark's own lines."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


class Progress:
    """``[done/total, elapsed, ~left]``: the prefix of a long run's progress lines."""

    def __init__(self, total: int):
        self.total, self.done, self.t0 = total, 0, time.time()

    def advance(self, n: int = 1) -> str:
        self.done += n
        spent = time.time() - self.t0
        left = spent / self.done * (self.total - self.done) if self.done else math.nan
        return f"[{self.done}/{self.total}, {spent / 60:.1f} min, ~{left / 60:.1f} min left]"


# ---------------------------------------------------------------------------------------------- arguments
def comma_list(
    cast: Callable[[str], Any], valid: Callable[[Any], bool], what: str, allow_empty: bool = False
) -> Callable[[str], tuple]:
    """An argparse type: comma-separated values, each ``valid`` after ``cast`` (``''``: ``()`` if allowed)."""

    def parse(text: str) -> tuple:
        try:
            vals = tuple(cast(x.strip()) for x in text.split(",") if x.strip())
        except ValueError:
            vals = None
        if vals is None or (not vals and not allow_empty) or not all(map(valid, vals)):
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}")
        return vals

    return parse


def add_output_arguments(p: argparse.ArgumentParser, name_default: str) -> None:
    p.add_argument(
        "--out-dir",
        default=None,
        help=f"output folder (default ${OUT_DIR_ENV}, else ./bench-results): plots and {SUMMARY_FILE} "
        "there, full JSON and logs in its raw/ subfolder",
    )
    p.add_argument("--name", default=None, help=f"output file stem (default {name_default})")


def default_out_dir() -> Path:
    return Path(os.environ.get(OUT_DIR_ENV) or Path.cwd() / "bench-results")


@dataclass(frozen=True)
class Outputs:
    """Where one benchmark run's files go."""

    out_dir: Path
    name: str

    @classmethod
    def of(cls, out_dir: str | Path | None, name: str) -> Outputs:
        return cls(Path(out_dir) if out_dir else default_out_dir(), name)

    def plot(self, kind: str = "") -> Path:
        return self.out_dir / f"{self.name}{'_' + kind if kind else ''}.png"

    def raw(self, suffix: str) -> Path:
        return self.out_dir / "raw" / f"{self.name}{suffix}"

    @property
    def summary(self) -> Path:
        return self.out_dir / SUMMARY_FILE

    def publish(self, summary: dict[str, Any]) -> Path:
        """This run's summary into ``results.json`` under its name (other runs' entries stay), floats to 4
        significant digits."""
        data = json.loads(self.summary.read_text()) if self.summary.exists() else {}
        data[self.name] = summary
        return write_json(self.summary, dict(sorted(data.items())), digits=4)


def command_line(prog: str, argv: Sequence[str] | None) -> str:
    """The command as typed (``sys.argv``), or ``prog`` and ``argv`` when called from Python."""
    return shlex.join(sys.argv if argv is None else [*prog.split(), *argv])


# ---------------------------------------------------------------------------------------------- machine
def machine_info(threads: int | None = None, probe_s: float = 0.5) -> dict[str, Any]:
    """CPU, flags, library versions, torch threads, memory, and the load others put on the machine now."""
    import torch

    cpuinfo: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            cpuinfo.setdefault(key.strip(), value.strip())
    flags = set(cpuinfo.get("flags", "").split())
    win = CpuWindow().start()
    time.sleep(probe_s)
    info: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpuinfo.get("model name", ""),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_flags": [f for f in CPU_FLAGS if f in flags],
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": threads or torch.get_num_threads(),
        "loadavg_start": os.getloadavg(),
        "background_cores_start": win.stop()["background_cores"],
    }
    for lib in ("torch", "transformers", "numpy", "ray"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            info[lib] = importlib.metadata.version(lib)
    with contextlib.suppress(ValueError, OSError):
        info["mem_total_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return info


# ---------------------------------------------------------------------------------------------- statistics
def is_nan(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def sample_stats(samples: list[float]) -> dict[str, Any]:
    from baton.bench.metrics import percentile

    return {
        "median": statistics.median(samples),
        "mean": statistics.fmean(samples),
        "min": min(samples),
        "p90": percentile(samples, 90),
        "stdev": statistics.stdev(samples) if len(samples) > 1 else 0.0,
        "samples": [round(x, 4) for x in samples],
    }


def md_table(rows: Sequence[dict[str, Any]], left: Sequence[str] = ()) -> list[str]:
    """Markdown table lines, one row per dict (its keys: the header); right-aligned but for ``left``."""

    def line(cells: Iterable[Any]) -> str:
        return f"| {' | '.join(map(str, cells))} |"

    columns = list(rows[0]) if rows else []
    align = "|" + "|".join("---" if c in left else "---:" for c in columns) + "|"
    return [line(columns), align, *(line(r.values()) for r in rows)]


# ---------------------------------------------------------------------------------------------- files
def jsonable(x: Any, digits: int | None = None) -> Any:
    """NaN and infinities -> null, tuples -> lists, paths and keys -> strings; floats to ``digits``
    significant digits when given."""
    if isinstance(x, float):
        return None if not math.isfinite(x) else float(f"{x:.{digits}g}") if digits else x
    if isinstance(x, dict):
        return {str(k): jsonable(v, digits) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v, digits) for v in x]
    return str(x) if isinstance(x, Path) else x


def _dumps(x: Any, indent: int, width: int = 110) -> str:
    """JSON, one level of indent per nesting; what fits ``width``, or holds only scalars, stays on one line."""
    flat = json.dumps(x)
    if not isinstance(x, (dict, list)) or indent + len(flat) <= width:
        return flat
    values = x.values() if isinstance(x, dict) else x
    if not any(isinstance(v, (dict, list)) for v in values):
        return flat
    pad = " " * (indent + 1)
    if isinstance(x, list):
        items = [pad + _dumps(v, indent + 1, width) for v in x]
        return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"
    items = [f"{pad}{json.dumps(k)}: {_dumps(v, indent + 1, width)}" for k, v in x.items()]
    return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"


def write_json(path: Path, data: Any, digits: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_dumps(jsonable(data, digits), 0) + "\n")
    return path


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend, or None (logged) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plots (pip install matplotlib)")
        return None
    return plt


def save_figure(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
