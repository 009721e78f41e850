"""The suite's figures per run, the bare-forward limit per point, and the goals judged on them.

An *entry* is one run as the JSON keeps it: ``system``, ``rate``, ``cv``, ``sweeps``, ``metrics``
(``baton.bench.metrics.summarize``), ``decode`` (``decode_figures``), ``records``, ``cpu`` ... or
``error`` when the system failed there.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from baton.bench.common import is_nan
from baton.bench.metrics import Record, decode_figures, goodput_knee, summarize
from baton.bench.systems import RunResult, Trace
from baton.bench.workload import LengthDist, trace_summary

Entry = dict[str, Any]
LIMIT_REFS = ("baton", "baton-local", "colocated", "static", "orca", "hf-static")  # whose shape is the limit


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


def evaluate(system: str, point: Point, trace: Trace, res: RunResult, cfg: Any) -> Entry:
    return {
        "system": system,
        "rate": point.rate,
        "cv": point.cv,
        "sweeps": list(point.sweeps),
        "workload": trace_summary(trace),
        "metrics": summarize(res.records, cfg.slo_ttft_ms, cfg.slo_tpot_ms),
        "decode": decode_figures(res.decode),
        "decode_raw": res.decode.to_dict() if res.decode else None,
        "decode_threads": res.decode_threads,
        "wall_s": res.wall_s,
        "extra": res.extra,
        "records": [dataclasses.asdict(r) for r in res.records],
    }


def failed(system: str, point: Point, error: str) -> Entry:
    return {
        "system": system,
        "rate": point.rate,
        "cv": point.cv,
        "sweeps": list(point.sweeps),
        "error": error,
    }


def background(e: Entry) -> float | None:
    """Cores other processes took during the run (None: not measured)."""
    return (e.get("cpu") or {}).get("background_cores")


def progress_line(e: Entry) -> str:
    m, d = e["metrics"], e["decode"]
    idle = "" if is_nan(d.get("idle_share")) else f" idle {d['idle_share']:.0%}"
    bad = f" FAILED {m['failed']}" if m["failed"] else ""
    bg = background(e)
    bad += "" if bg is None else f" bg {bg:.2f} cores"
    return (
        f"{e['system']:<11} rate {e['rate']:<4g} cv {e['cv']:<4g} {m['req_s']:5.2f} req/s {m['tok_s']:6.1f} tok/s "
        f"p99 {m['latency_p99_ms'] / 1e3:6.2f} s ttft p99 {m['ttft_p99_ms'] / 1e3:5.2f} s "
        f"tpot p99 {m['tpot_p99_ms']:6.1f} ms goodput {m['goodput_req_s']:5.2f}{idle}{bad} "
        f"({e['wall_s']:.0f} s)"
    )


# ---------------------------------------------------------------------------------------------- limits
def add_limits(entries: list[Entry], grid: Any, max_rows: int) -> None:
    """Bare-forward figures: each system at its own mean decode shape, and the reference limit per point
    (``grid``: a ``baton.bench.bare.BareGrid``)."""
    for e in entries:
        if e.get("error") or is_nan(e["decode"].get("mean_rows")) or not e["decode_threads"]:
            continue
        d = e["decode"]
        d["bare_ms"] = bare = grid.ms(d["mean_rows"], d["mean_width"], e["decode_threads"])
        d["step_vs_bare"] = bare / d["mean_step_ms"] if d["mean_step_ms"] else math.nan
        d["tpot_p99_vs_bare"] = e["metrics"]["tpot_p99_ms"] / bare
    by_point: dict[tuple[float, float], list[Entry]] = {}
    for e in entries:
        by_point.setdefault((e["rate"], e["cv"]), []).append(e)
    for group in by_point.values():
        priced = {e["system"]: e for e in group if not e.get("error") and "bare_ms" in e["decode"]}
        ref = next((priced[name] for name in LIMIT_REFS if name in priced), None)
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


def goal_slo(entries: list[Entry], grid: Any, cfg: Any) -> dict[str, Any] | None:
    """The TPOT SLO of the colocated goal: 1.1 x the bare decode step of a full batch (``max_batch_size``
    rows) at the baton decode worker's mean KV width over the rate sweep, with its threads."""
    ref = [
        e
        for e in entries
        if e["system"] in ("baton", "baton-local")
        and not e.get("error")
        and "rate" in e["sweeps"]
        and not is_nan(e["decode"].get("mean_width"))
    ]
    if not ref:
        return None
    width = sum(e["decode"]["mean_width"] for e in ref) / len(ref)
    threads = ref[0]["decode_threads"] or 1
    bare = grid.ms(cfg.max_batch_size, width, threads)
    return {
        "tpot_ms": 1.1 * bare,
        "bare_ms": bare,
        "rows": cfg.max_batch_size,
        "width": round(width),
        "threads": threads,
        "ttft_ms": cfg.slo_ttft_ms,
    }


# ---------------------------------------------------------------------------------------------- goals
def _at(entries: list[Entry], system: str, rate: float, cv: float) -> Entry | None:
    match = (e for e in entries if (e["system"], e["rate"], e["cv"]) == (system, rate, cv))
    return next((e for e in match if not e.get("error")), None)


def _records(e: Entry) -> list[Record]:
    nan_if_none = ("ttft_ms", "total_ms")
    return [
        Record(**{k: (math.nan if v is None and k in nan_if_none else v) for k, v in r.items()})
        for r in e.get("records", [])
    ]


def _goal(goal: str, met: bool | None, detail: str, **extra: Any) -> dict[str, Any]:
    return {"goal": goal, "met": met, "detail": detail, **extra}


def goals(entries: list[Entry], cfg: Any, slo: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The issue's goals, judged on these figures (benchmark figures, not assertions)."""
    cv0, top = LengthDist.parse(cfg.output_len).cv, max(cfg.rates)
    return [
        *_goal_orca(entries, top, cv0),
        *_goal_colocated(entries, cv0, slo),
        *_goal_rivals(entries, top, cv0),
        *_goal_step(entries),
    ]


def _goal_orca(entries: list[Entry], top: float, cv0: float) -> list[dict[str, Any]]:
    b, o = _at(entries, "baton", top, cv0), _at(entries, "orca", top, cv0)
    if not (b and o):
        return []
    bm, om = b["metrics"], o["metrics"]
    ratio = bm["tok_s"] / om["tok_s"]
    lower = bm["latency_p99_ms"] < om["latency_p99_ms"]
    return [
        _goal(
            "baton >= 1.75x orca throughput at saturation, lower p99 completion time",
            ratio >= 1.75 and lower,
            f"rate {top:g}: {ratio:.2f}x tok/s; p99 {bm['latency_p99_ms'] / 1e3:.1f} s "
            f"vs {om['latency_p99_ms'] / 1e3:.1f} s",
        )
    ]


def _goal_colocated(entries: list[Entry], cv0: float, slo: dict[str, Any] | None) -> list[dict[str, Any]]:
    """At the lowest rate where colocated misses the SLO (its p99), baton's goodput against colocated's."""
    name = "baton >= 1.5x colocated goodput at the rate where colocated starts missing its SLO"
    col = sorted(
        (e for e in entries if e["system"] == "colocated" and e["cv"] == cv0 and "rate" in e["sweeps"]),
        key=lambda e: e["rate"],
    )
    col = [e for e in col if not e.get("error")]
    if not (col and slo and any(_at(entries, "baton", e["rate"], cv0) for e in col)):
        return []
    ttft, tpot = slo["ttft_ms"], slo["tpot_ms"]
    slo_txt = (
        f"SLO: TTFT <= {ttft:g} ms, TPOT <= {tpot:.0f} ms = 1.1 x the bare decode step of "
        f"{slo['rows']} rows x {slo['width']} columns on {slo['threads']} thread(s) ({slo['bare_ms']:.0f} ms)"
    )
    passed = [summarize(_records(e), ttft, tpot)["slo_attainment"] >= 0.99 for e in col]
    knee = goodput_knee([e["rate"] for e in col], passed)
    if knee is None:
        return [_goal(name, None, f"colocated met its SLO at every rate ({slo_txt})")]
    c, b = _at(entries, "colocated", knee, cv0), _at(entries, "baton", knee, cv0)
    if not b:
        return []
    gc = summarize(_records(c), ttft, tpot)["goodput_req_s"]
    gb = summarize(_records(b), ttft, tpot)["goodput_req_s"]
    ratio = gb / gc if gc else (math.inf if gb > 0 else math.nan)
    detail = (
        f"colocated first misses at rate {knee:g} req/s; goodput there: baton {gb:.2f} vs colocated "
        f"{gc:.2f} req/s ({ratio:.2f}x). {slo_txt}"
    )
    return [_goal(name, bool(ratio >= 1.5), detail, knee_rate=knee, slo=slo)]


def _goal_rivals(entries: list[Entry], top: float, cv0: float) -> list[dict[str, Any]]:
    b = _at(entries, "baton", top, cv0)
    out = []
    for rival in ("vllm", "hf-cb"):
        r = _at(entries, rival, top, cv0)
        if b and r:
            bt, rt = b["metrics"]["tok_s"], r["metrics"]["tok_s"]
            detail = f"rate {top:g}: baton {bt:.1f} vs {rival} {rt:.1f} tok/s ({bt / rt:.2f}x)"
            out.append(_goal(f"baton ahead of {rival} in output tok/s", bt / rt > 1.0, detail))
    return out


def _goal_step(entries: list[Entry]) -> list[dict[str, Any]]:
    steps = [
        e for e in entries if e["system"] == "baton" and not e.get("error") and "step_vs_bare" in e["decode"]
    ]
    if not steps:
        return []
    worst = min(e["decode"]["step_vs_bare"] for e in steps)
    per_run = ", ".join(
        f"rate {e['rate']:g} cv {e['cv']:g}: {e['decode']['step_vs_bare']:.2f}" for e in steps
    )
    return [
        _goal(
            "baton decode step within 10% of the bare forward (bare/step >= 0.9)",
            worst >= 0.9,
            f"bare/step per run: {per_run}",
        )
    ]
