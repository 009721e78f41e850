"""Ray actor shell over the prefill engine. The KV of each query goes to the object store here."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from typing import Any

import ray
import torch

from baton.core.config import ServingConfig
from baton.core.messages import PrefillResult
from baton.core.request import Request
from baton.core.threads import configure_threads, set_thread_count


class PrefillWorker:
    """Wrapped with ``ray.remote`` by the launcher (resources are chosen there)."""

    def __init__(self, worker_id: str, cfg: ServingConfig, threads: int):
        from baton.core.models import load_serving_model
        from prefill_worker.engine import PrefillEngine

        t0 = time.time()
        configure_threads(threads)
        self.worker_id = worker_id
        self.lm = load_serving_model(cfg)
        self.engine = PrefillEngine(self.lm, cfg.max_prefill_tokens)
        self.startup_s = time.time() - t0
        self._nice_base: int | None = None  # set_nice: this process's nice value before it

    def pid(self) -> int:
        """This worker's process id (the router pings idle workers with it; tests kill it)."""
        return os.getpid()

    def info(self) -> dict[str, Any]:
        return {
            "worker_id": self.worker_id,
            "role": "prefill",
            "startup_s": round(self.startup_s, 3),
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "threads": torch.get_num_threads(),
            "node_cpus": len(os.sched_getaffinity(0)),
            "padded_prefill": self.engine.padded,
            **self.lm.describe(),
        }

    def set_nice(self, lower: int) -> int:
        """Lower this process's CPU priority by ``lower`` nice levels (capped at 19; every thread,
        and threads started later inherit it) for a spill worker sharing a decode worker's cores;
        returns the nice value now. (Ray starts its workers at nice 15 already.) Idempotent: levels
        count from the nice value this worker had at its first call."""
        if self._nice_base is None:
            self._nice_base = os.getpriority(os.PRIO_PROCESS, os.getpid())
        want = min(19, self._nice_base + max(0, lower))
        for tid in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError):  # a thread that just ended
                os.setpriority(
                    os.PRIO_PROCESS, int(tid), max(want, os.getpriority(os.PRIO_PROCESS, int(tid)))
                )
        return os.getpriority(os.PRIO_PROCESS, os.getpid())

    def prefill(self, requests: list[Request], threads: int = 0) -> list[PrefillResult]:
        """Prefill a batch; each query's KV array is put in the object store by this worker.

        The caller (the router) gets references only, never the KV bytes. ``threads`` > 0: run this
        call on that many threads (the router lends it an idle decode worker's cores), then go back.
        """
        old = set_thread_count(threads) if threads > 0 else None
        try:
            handoffs = self.engine.prefill(requests)
        finally:
            if old is not None:
                set_thread_count(old)
        return [
            PrefillResult(h.header_bytes, [ray.put(h.kv)] if h.kv is not None else None, h.nbytes)
            for h in handoffs
        ]
