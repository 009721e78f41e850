"""Ray actor shell over the decode loop. It fetches each handoff's KV (zero-copy on one node)."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import ray
import torch

from baton.core.config import ServingConfig
from baton.core.handoff import KVHandoff
from baton.core.messages import EventBatch, WorkerLoad
from baton.core.threads import configure_threads


class DecodeWorker:
    """Wrapped with ``ray.remote(max_concurrency=...)`` by the launcher: methods run in threads
    beside the step loop, so fetching a handoff never stalls a decode step."""

    def __init__(self, worker_id: str, cfg: ServingConfig, threads: int):
        from baton.core.models import load_serving_model
        from decode_worker.batch import DecodeBatch
        from decode_worker.loop import DecodeLoop

        t0 = time.time()
        configure_threads(threads)
        self.worker_id = worker_id
        self.lm = load_serving_model(cfg)
        # One extra column: a row holds prompt + max_tokens - 1 tokens and the step writes one more.
        capacity = min(cfg.max_seq_len, self.lm.limits.context_length) + 1
        self.loop = DecodeLoop(DecodeBatch(self.lm, cfg.max_batch_size, capacity), worker_id)
        self.startup_s = time.time() - t0

    def pid(self) -> int:
        """This worker's process id (the router pings idle workers with it; tests kill it)."""
        return os.getpid()

    def info(self) -> dict[str, Any]:
        return {
            "worker_id": self.worker_id,
            "role": "decode",
            "startup_s": round(self.startup_s, 3),
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "max_rows": self.loop.batch.max_rows,
            "threads": torch.get_num_threads(),
            "node_cpus": len(os.sched_getaffinity(0)),
            **self.lm.describe(),
        }

    def submit(self, header_bytes: bytes, kv_refs: list) -> None:
        """Take a handoff: fetch its KV from the object store (in this method's thread), queue it."""
        kv = ray.get(kv_refs[0])  # a read-only numpy view of the object store on the same node
        self.loop.submit(KVHandoff(header_bytes, kv))

    def abort(self, request_id: str) -> None:
        self.loop.abort(request_id)

    def set_threads(self, threads: int) -> None:
        """Torch threads of the step loop from its next step on (the router lends it idle cores)."""
        self.loop.set_threads(threads)

    def events(self, timeout: float = 0.5) -> EventBatch:
        """Long poll: every step's tokens for all rows since the last call."""
        return self.loop.drain(timeout)

    def load(self) -> WorkerLoad:
        return self.loop.load()

    def stop(self) -> None:
        self.loop.stop()
