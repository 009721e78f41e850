"""Benchmark metrics on hand-made traces with known answers."""

from __future__ import annotations

import math

import pytest

from baton.bench.metrics import (
    DecodeStats,
    Record,
    decode_figures,
    diff_counters,
    goodput_knee,
    makespan_s,
    percentile,
    summarize,
    tpot,
)
from baton.bench.systems import records_from_completions
from baton.core.params import SamplingParams
from baton.core.request import Completion, Request


def test_percentile_linear_interpolation():
    xs = [10, 20, 30, 40, 50]
    assert percentile(xs, 0) == 10
    assert percentile(xs, 50) == 30
    assert percentile(xs, 100) == 50
    assert percentile(xs, 25) == 20
    assert percentile(xs, 90) == pytest.approx(46.0)  # pos 3.6: 40 + 0.6 * 10
    assert percentile([1, 2], 99) == pytest.approx(1.99)
    assert percentile(reversed(xs), 50) == 30  # order does not matter
    assert percentile([7], 99) == 7
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile(xs, 101)


def test_tpot():
    assert tpot(100, 1000, 10) == pytest.approx(100.0)  # 900 ms over 9 tokens after the first
    assert tpot(100, 100, 1) is None
    assert Record("a", 0, 50, 250, 5).tpot_ms == pytest.approx(50.0)


# Four requests: arrivals at 0, 1, 2, 3 s.
RECS = [
    Record("a", 0.0, ttft_ms=100, total_ms=1100, n_out=11),  # tpot 100, done 1.1 s
    Record("b", 1.0, ttft_ms=300, total_ms=2300, n_out=5),  # tpot 500, done 3.3 s
    Record("c", 2.0, ttft_ms=2500, total_ms=3500, n_out=11),  # tpot 100, ttft misses 2000, done 5.5 s
    Record("d", 3.0, ttft_ms=200, total_ms=200, n_out=1),  # no tpot, done 3.2 s
]


def test_summarize_known_answers():
    s = summarize(RECS, slo_ttft_ms=2000, slo_tpot_ms=300)
    assert makespan_s(RECS) == pytest.approx(5.5)
    assert s["makespan_s"] == pytest.approx(5.5)
    assert s["completed"] == 4 and s["failed"] == 0
    assert s["output_tokens"] == 28
    assert s["req_s"] == pytest.approx(4 / 5.5)
    assert s["tok_s"] == pytest.approx(28 / 5.5)
    assert s["latency_mean_ms"] == pytest.approx((1100 + 2300 + 3500 + 200) / 4)
    assert s["latency_p50_ms"] == pytest.approx((1100 + 2300) / 2)
    assert s["latency_p99_ms"] == pytest.approx(2300 + 0.97 * 1200)  # pos 2.97 of [200,1100,2300,3500]
    assert s["ttft_p50_ms"] == pytest.approx(250)
    assert s["tpot_p50_ms"] == pytest.approx(100)  # [100, 100, 500]
    assert s["tpot_p99_ms"] == pytest.approx(100 + 0.98 * 400)
    # a meets both; b misses TPOT; c misses TTFT; d has no TPOT and meets TTFT.
    assert s["slo_met"] == 2
    assert s["slo_attainment"] == pytest.approx(0.5)
    assert s["goodput_req_s"] == pytest.approx(2 / 5.5)


def test_goodput_without_slos_is_throughput_and_failures_count_against():
    s = summarize(RECS)
    assert s["goodput_req_s"] == pytest.approx(s["req_s"])
    bad = [*RECS[:3], Record("d", 3.0, math.nan, math.nan, 0, ok=False)]
    s = summarize(bad, 2000, 300)
    assert s["completed"] == 3 and s["failed"] == 1 and s["slo_met"] == 1
    assert s["output_tokens"] == 27


def test_kv_handoff_figures():
    recs = [Record("a", 0, 1, 2, 2, kv_transfer_ms=t, kv_bytes=b) for t, b in ((1.0, 100), (3.0, 300))]
    recs.append(Record("b", 0, 1, 2, 1))  # finished at its first token: no handoff
    s = summarize(recs)
    assert s["kv_transfer_p50_ms"] == pytest.approx(2.0)
    assert s["kv_transfer_p99_ms"] == pytest.approx(2.98)
    assert s["kv_bytes_mean"] == pytest.approx(200)


def test_idle_share_orca_padding():
    # 10 steps of 4 rows; 2 of them carried an 8-token prompt (query_len 8): 4*8 computed, 4 useful.
    s = DecodeStats(
        steps=10,
        row_steps=8 * 4 + 8 * 4 + 8 * 4,
        token_row_steps=40,
        pad_row_steps=2 * 4 * 7,
        forward_ms=1000,
        padding_cells=30,
        attended_cells=400,
    )
    f = decode_figures(s)
    assert f["mean_rows"] == 4
    assert f["pad_share"] == pytest.approx(56 / 96)
    assert f["idle_share"] == pytest.approx(56 / 96)  # no stall
    assert f["kv_padding_share"] == pytest.approx(30 / 400)
    assert f["mean_width"] == pytest.approx(10)
    assert f["mean_step_ms"] == pytest.approx(100)


def test_idle_share_colocated_stall():
    # 20 steps of 5 rows at 50 ms; 500 ms of stall = 10 step-times of 5 rows = 50 row-steps lost.
    s = DecodeStats(steps=20, row_steps=100, token_row_steps=100, forward_ms=1000, stall_ms=500)
    f = decode_figures(s)
    assert f["stalled_row_steps"] == pytest.approx(50)
    assert f["idle_share"] == pytest.approx(50 / 150)
    assert f["stall_ms"] == 500
    # A measured whole-step time takes precedence over forward time.
    s.step_ms = 2000.0  # 100 ms steps: 500 ms = 5 steps x 5 rows
    assert decode_figures(s)["stalled_row_steps"] == pytest.approx(25)


def test_decode_figures_without_steps():
    assert math.isnan(decode_figures(None)["idle_share"])
    assert math.isnan(decode_figures(DecodeStats())["mean_rows"])


def test_diff_counters():
    before = {"steps": 10, "forward_ms": 5.0, "name": "x"}
    after = {"steps": 25, "forward_ms": 7.5, "name": "x", "new": 3}
    assert diff_counters(after, before) == {"steps": 15, "forward_ms": 2.5, "name": "x", "new": 3}


def test_goodput_knee():
    assert goodput_knee([4, 1, 2], [False, True, True]) == 4
    assert goodput_knee([1, 2, 4], [True, False, False]) == 2
    assert goodput_knee([1, 2], [True, True]) is None


def test_records_from_completions():
    p = SamplingParams(max_tokens=3, ignore_eos=True)
    trace = [
        (Request("a", (5, 6), p, 0), 0.0),
        (Request("b", (5,), p, 1), 0.5),
        (Request("c", (5,), p, 2), 1.0),
    ]
    comps = [
        Completion("b", [1, 2], timings={"ttft": 10, "total": 30}),  # short: a failure
        Completion("a", [1, 2, 3], timings={"ttft": 5, "total": 25, "kv_transfer": 2.5, "kv_bytes": 64}),
        Completion("c", error="boom"),
    ]
    recs = records_from_completions(trace, comps)
    assert [r.request_id for r in recs] == ["a", "b", "c"]
    a, b, c = recs
    assert a.ok and a.n_out == 3 and a.kv_transfer_ms == 2.5 and a.kv_bytes == 64 and a.done_s == 0.025
    assert not b.ok and b.arrival_s == 0.5 and b.kv_transfer_ms is None
    assert not c.ok
