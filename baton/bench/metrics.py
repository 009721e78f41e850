"""Benchmark metrics: pure functions over per-request records and engine statistics (no torch, no Ray).

Definitions (every time in ms unless the name says s):

- A request's *completion time* (latency) is ``total``: arrival to last token. Its *TTFT* is arrival
  to first token. Its *TPOT* (time per output token) is ``(total - ttft) / (n_out - 1)``; a request
  with one output token has no TPOT (it counts as meeting any TPOT SLO).
- The *makespan* runs from the first arrival to the last completion. Throughput is completed
  requests / makespan (req/s) and output tokens / makespan (tok/s).
- *Goodput* is the number of requests meeting both SLOs (TTFT <= slo_ttft_ms and TPOT <= slo_tpot_ms)
  divided by the makespan (req/s); *SLO attainment* is the same count over all requests.
- Percentiles interpolate linearly between order statistics (numpy's default "linear" method).
- *Idle computation share* (decode side): the share of decode row-steps that advanced no row.
  Two kinds: *padding row-steps* (orca: a running row recomputes ``query_len - 1`` padding columns
  while a prompt rides in its forward; ``pad_row_steps`` of ``row_steps = sum rows * query_len``),
  and *stalled row-steps* (colocated: live rows wait while the decode worker runs a prefill;
  baton: the decode loop waits on anything but its own work). A stall of ``stall_ms`` is converted
  to row-step equivalents as ``stall_ms / mean_step_ms * mean_rows`` (the steps those rows could have
  run). Then ``idle_share = (pad + stalled) / (row_steps + stalled)``. ``stall_ms`` is also reported
  on its own. Empty rows (a run-to-completion batch draining) are *not* idle computation; they show
  as a low ``mean_rows`` (batch occupancy).
- *KV padding share*: masked cells / attended cells of the decode forwards (``padding_cells /
  attended_cells``, cells = rows x KV columns).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Record:
    """One completed request, normalised across systems."""

    request_id: str
    arrival_s: float  # offset of its arrival in the trace
    ttft_ms: float
    total_ms: float
    n_out: int
    kv_transfer_ms: float | None = None
    kv_bytes: int | None = None
    ok: bool = True  # False: the system failed this request (error, wrong token count)

    @property
    def done_s(self) -> float:
        return self.arrival_s + self.total_ms / 1e3

    @property
    def tpot_ms(self) -> float | None:
        return tpot(self.ttft_ms, self.total_ms, self.n_out)


def tpot(ttft_ms: float, total_ms: float, n_out: int) -> float | None:
    """Time per output token after the first; None for a single-token output."""
    if n_out <= 1:
        return None
    return (total_ms - ttft_ms) / (n_out - 1)


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear interpolation; nan for no values."""
    xs = sorted(values)
    if not xs:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def mean(values: Iterable[float]) -> float:
    xs = list(values)
    return sum(xs) / len(xs) if xs else math.nan


def makespan_s(records: Sequence[Record]) -> float:
    """First arrival to last completion (s)."""
    if not records:
        return 0.0
    return max(r.done_s for r in records) - min(r.arrival_s for r in records)


def meets_slo(r: Record, slo_ttft_ms: float | None, slo_tpot_ms: float | None) -> bool:
    if not r.ok:
        return False
    if slo_ttft_ms is not None and r.ttft_ms > slo_ttft_ms:
        return False
    t = r.tpot_ms
    return not (slo_tpot_ms is not None and t is not None and t > slo_tpot_ms)


def summarize(
    records: Sequence[Record], slo_ttft_ms: float | None = None, slo_tpot_ms: float | None = None
) -> dict[str, Any]:
    """Throughput, latency, TTFT, TPOT, goodput and KV handoff figures of one run."""
    ok = [r for r in records if r.ok]
    span = makespan_s(records)
    tokens = sum(r.n_out for r in ok)
    lat = [r.total_ms for r in ok]
    ttft = [r.ttft_ms for r in ok]
    tp = [t for r in ok if (t := r.tpot_ms) is not None]
    good = sum(meets_slo(r, slo_ttft_ms, slo_tpot_ms) for r in records)
    kvt = [r.kv_transfer_ms for r in ok if r.kv_transfer_ms is not None]
    kvb = [r.kv_bytes for r in ok if r.kv_bytes]

    def per(n: float) -> float:
        return n / span if span > 0 else math.nan

    return {
        "requests": len(records),
        "completed": len(ok),
        "failed": len(records) - len(ok),
        "output_tokens": tokens,
        "makespan_s": span,
        "req_s": per(len(ok)),
        "tok_s": per(tokens),
        "latency_mean_ms": mean(lat),
        "latency_p50_ms": percentile(lat, 50),
        "latency_p99_ms": percentile(lat, 99),
        "ttft_p50_ms": percentile(ttft, 50),
        "ttft_p99_ms": percentile(ttft, 99),
        "tpot_p50_ms": percentile(tp, 50),
        "tpot_p99_ms": percentile(tp, 99),
        "slo_ttft_ms": slo_ttft_ms,
        "slo_tpot_ms": slo_tpot_ms,
        "slo_met": good,
        "slo_attainment": good / len(records) if records else math.nan,
        "goodput_req_s": per(good),
        "kv_transfer_p50_ms": percentile(kvt, 50),
        "kv_transfer_p99_ms": percentile(kvt, 99),
        "kv_bytes_mean": mean(kvb),
    }


@dataclass
class DecodeStats:
    """Decode-side counters, normalised across systems (None: the system does not measure it)."""

    steps: int = 0
    row_steps: int = 0  # sum over steps of rows * query_len (columns computed)
    token_row_steps: int = 0  # sum over steps of rows (one token per live row)
    pad_row_steps: int = 0
    forward_ms: float = 0.0
    step_ms: float | None = None  # whole step wall time when measured (else forward_ms stands in)
    stall_ms: float = 0.0
    padding_cells: int = 0
    attended_cells: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decode_figures(s: DecodeStats | None) -> dict[str, Any]:
    """Occupancy, mean step shape, idle computation share and KV padding share (see module doc)."""
    nan = math.nan
    if s is None or s.steps == 0:
        return {
            "steps": s.steps if s else None,
            "mean_rows": nan,
            "mean_width": nan,
            "mean_step_ms": nan,
            "mean_forward_ms": nan,
            "stall_ms": s.stall_ms if s else nan,
            "stalled_row_steps": nan,
            "idle_share": nan,
            "pad_share": nan,
            "kv_padding_share": nan,
        }
    rows = s.token_row_steps / s.steps
    step_ms = (s.step_ms if s.step_ms is not None else s.forward_ms) / s.steps
    stalled = s.stall_ms / step_ms * rows if step_ms > 0 else 0.0
    denom = s.row_steps + stalled
    return {
        "steps": s.steps,
        "mean_rows": rows,
        "mean_width": s.attended_cells / s.token_row_steps if s.token_row_steps else nan,
        "mean_step_ms": step_ms,
        "mean_forward_ms": s.forward_ms / s.steps,
        "stall_ms": s.stall_ms,
        "stalled_row_steps": stalled,
        "idle_share": (s.pad_row_steps + stalled) / denom if denom else nan,
        "pad_share": s.pad_row_steps / s.row_steps if s.row_steps else nan,
        "kv_padding_share": s.padding_cells / s.attended_cells if s.attended_cells else nan,
    }


def diff_counters(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    """``after - before`` for numeric counters (cumulative stats of a long-lived worker)."""
    out = {}
    for k, v in after.items():
        b = before.get(k, 0)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and isinstance(b, (int, float)):
            out[k] = v - b
        else:
            out[k] = v
    return out


def goodput_knee(rates: Sequence[float], passed: Sequence[bool]) -> float | None:
    """The lowest rate at which a system stops meeting its SLO (None if it always meets it)."""
    for r, p in sorted(zip(rates, passed, strict=True)):
        if not p:
            return r
    return None
