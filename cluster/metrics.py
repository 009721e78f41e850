"""Prometheus metrics of a baton server (``prometheus_client``), named like vLLM's with a ``baton:`` prefix.

``RouterMetrics`` is the router's observer: the router calls ``tokens`` when it delivers tokens to a
stream and ``finished`` when a request ends; the front ends call ``rejected`` for a request they
refused before it reached the router. Histograms and counters are updated there. Gauges
(running/waiting requests, each decode worker's rows, padding and KV use) are read from the router's
state when Prometheus scrapes, by a custom collector: nothing to keep in step, nothing stale.

Each ``RouterMetrics`` has its own registry, so several routers in one process (tests) never clash.
All calls happen on the router's event loop (scrapes too: /metrics is served on that loop).
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

PREFIX = "baton:"
CONTENT_TYPE = CONTENT_TYPE_LATEST
# Buckets as vLLM's (seconds), so dashboards built for it read ours the same way.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
TTFT_BUCKETS += (20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
ITL_BUCKETS += (20.0, 40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0)
E2E_BUCKETS += (240.0, 480.0, 960.0, 1920.0, 7680.0)
BYTES_BUCKETS = tuple(float(4**k) for k in range(5, 18))  # 1 KiB .. 16 GiB
# request_errors_total{code}: why a request failed.
ERROR_CODES = ("invalid_argument", "unauthenticated", "queue_full", "unavailable", "worker_failed")


class NullObserver:
    """What the router calls when nobody measures it."""

    def tokens(self, st: Any, n: int) -> None:
        pass

    def finished(self, st: Any, completion: Any, timings: Any) -> None:
        pass

    def rejected(self, code: str) -> None:
        pass


class _Gauges:
    """Reads the router's state at scrape time."""

    def __init__(self, router: Any):
        self.router = router
        self._cells: dict[str, tuple[int, int]] = {}  # worker -> (padding, attended) at the last scrape

    def describe(self):
        return []  # no fixed description: collect() is called at scrape time only

    def collect(self):
        r = self.router
        waiting = len(r.waiting)
        running = GaugeMetricFamily(
            PREFIX + "num_requests_running", "Requests admitted and not finished (prefill, handoff, decode)."
        )
        running.add_metric([], max(0, len(r.states) - waiting))
        yield running
        w = GaugeMetricFamily(PREFIX + "num_requests_waiting", "Requests in the admission queue.")
        w.add_metric([], waiting)
        yield w
        rows = GaugeMetricFamily(
            PREFIX + "decode_batch_rows", "Rows in each decode worker's running batch.", labels=["worker"]
        )
        pad = GaugeMetricFamily(
            PREFIX + "decode_padding_ratio",
            "Share of attended KV cells that were padding, over the decode steps since the last scrape.",
            labels=["worker"],
        )
        kv = GaugeMetricFamily(
            PREFIX + "kv_cache_usage_perc",
            "Share of each decode worker's KV buffer (rows x columns) in the live window (0-1).",
            labels=["worker"],
        )
        for d in r.decode:
            load = d.load
            rows.add_metric([d.worker_id], load.rows if load else 0)
            kv.add_metric([d.worker_id], self._kv_use(load))
            pad.add_metric([d.worker_id], self._padding(d.worker_id, load))
        yield rows
        yield pad
        yield kv

    @staticmethod
    def _kv_use(load) -> float:
        if not load or not load.max_rows or not load.capacity:
            return 0.0
        return load.rows * load.window / (load.max_rows * load.capacity)

    def _padding(self, worker: str, load) -> float:
        stats = load.stats if load else {}
        now = (int(stats.get("padding_cells", 0)), int(stats.get("attended_cells", 0)))
        before = self._cells.get(worker, (0, 0))
        self._cells[worker] = now
        attended = now[1] - before[1]
        return (now[0] - before[0]) / attended if attended > 0 and load.rows else 0.0


class RouterMetrics(NullObserver):
    """The router's Prometheus metrics (see the module docstring)."""

    def __init__(self, router: Any = None):
        self.registry = CollectorRegistry(auto_describe=False)
        reg = self.registry

        def hist(name: str, doc: str, buckets) -> Histogram:
            return Histogram(PREFIX + name, doc, buckets=buckets, registry=reg)

        self.ttft = hist("time_to_first_token_seconds", "Arrival to first token delivered.", TTFT_BUCKETS)
        self.itl = hist("inter_token_latency_seconds", "Time between two tokens of a request.", ITL_BUCKETS)
        self.e2e = hist("e2e_request_latency_seconds", "Arrival to finished.", E2E_BUCKETS)
        self.queue = hist("request_queue_time_seconds", "Arrival to prefill started.", TTFT_BUCKETS)
        self.prefill = hist("request_prefill_time_seconds", "The prefill forward pass.", TTFT_BUCKETS)
        self.kv_transfer = hist(
            "kv_transfer_seconds", "Prefill done to row live in a decode batch (KV handoff).", TTFT_BUCKETS
        )
        self.kv_bytes = hist("kv_transfer_bytes", "KV bytes handed from prefill to decode.", BYTES_BUCKETS)
        self.prompt_tokens = Counter(
            PREFIX + "prompt_tokens", "Prompt tokens of finished requests.", registry=reg
        )
        self.generation_tokens = Counter(PREFIX + "generation_tokens", "Tokens generated.", registry=reg)
        self.success = Counter(
            PREFIX + "request_success",
            "Requests finished, by reason (eos, stop, length, abort).",
            ["finished_reason"],
            registry=reg,
        )
        self.errors = Counter(
            PREFIX + "request_errors", "Requests that failed, by code.", ["code"], registry=reg
        )
        for code in ERROR_CODES:
            self.errors.labels(code)
        self._last_token: dict[str, float] = {}  # request id -> when its last token was delivered
        if router is not None:
            self.bind(router)

    def bind(self, router: Any) -> None:
        """Read the gauges from ``router`` (it calls this object as its observer)."""
        self.registry.register(_Gauges(router))

    # ------------------------------------------------------------------ observer
    def tokens(self, st: Any, n: int) -> None:
        now = time.time()
        rid = st.req.request_id
        last = self._last_token.get(rid)
        if last is not None:
            gap = (now - last) / n
            for _ in range(n):
                self.itl.observe(gap)
        self._last_token[rid] = now

    def finished(self, st: Any, completion: Any, timings: Any) -> None:
        self._last_token.pop(st.req.request_id, None)
        self.prompt_tokens.inc(completion.prompt_tokens)
        self.generation_tokens.inc(len(completion.token_ids))
        if completion.error is not None:
            self.errors.labels("worker_failed").inc()
            return
        self.success.labels(completion.finish_reason).inc()
        s = st.stamps
        self.e2e.observe(timings.total / 1e3)
        if s.first_token is not None:
            self.ttft.observe(timings.ttft / 1e3)
        if s.prefill_start is not None:
            self.queue.observe(timings.queue / 1e3)
            self.prefill.observe(timings.prefill / 1e3)
        if s.inserted is not None:
            self.kv_transfer.observe(timings.kv_transfer / 1e3)
            self.kv_bytes.observe(s.kv_bytes)

    def rejected(self, code: str) -> None:
        self.errors.labels(code).inc()

    # ------------------------------------------------------------------ exposition
    def exposition(self) -> bytes:
        return generate_latest(self.registry)
