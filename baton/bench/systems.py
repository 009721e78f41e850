"""The serving systems the suite compares, each replaying the same trace with the same CPU threads.

Every system: ``setup(warmup_trace)`` (start, load, run an untimed warm-up trace), ``run(trace)`` ->
``RunResult`` (per-request ``Record``s, decode-side counters), ``close()``. Request timings are taken
from each request's arrival: the trace offset on the system's own clock.

``NOTES`` says what each runs. ``hf-static``, ``hf-cb`` and ``vllm`` live in ``baton.bench.external``;
the bare forward ("the limit") in ``baton.bench.bare``.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

from baton.bench.metrics import DecodeStats, Record, diff_counters
from baton.core.request import Completion, Request

Trace = list[tuple[Request, float]]

ALL_SYSTEMS = ("baton", "baton-local", "colocated", "orca", "static", "hf-static", "hf-cb", "vllm")

NOTES = {
    "baton": "Ray cluster: 1 prefill + 1 decode actor, 1 CPU each; KV via the Ray object store",
    "baton-local": "one process: prefill thread (1 torch thread) + decode loop (1 torch thread)",
    "colocated": "BATON insertion, prefill on the decode thread (live rows stall); 2 threads",
    "orca": "prompts ride in the batch's forward, running rows padded to the prompt; 2 threads",
    "static": "run to completion (batch takes queries only when empty; finished rows leave); 2 threads",
    "hf-static": "transformers generate on static batches of arrived requests, left-padded, run to the "
    "batch's longest output; times from a streamer (each request done at its own last token)",
    "hf-cb": "transformers continuous batching manager (paged KV), requests added at their arrival; "
    "TTFT from its token timestamps",
    "vllm": "vLLM CPU (AsyncLLM, float32, eager), requests submitted at their arrival, streamed",
}


@dataclass(frozen=True)
class BenchConfig:
    model: str
    max_batch_size: int = 16
    max_seq_len: int = 512
    threads: int = 2  # total CPU threads every system gets
    vllm_python: str | None = None
    vllm_dtype: str = "float32"
    log_path: str | None = None  # the vLLM subprocess's log
    prefill_cpus: float = 1.0  # baton on Ray: CPUs (torch threads) of the prefill and decode worker
    decode_cpus: float = 1.0
    prefill_workers: int = 1  # baton on Ray: prefill workers of prefill_cpus each
    spill_prefill_tokens: int = 1024  # baton on Ray: with prefill_workers beyond the cores (spill workers)
    spill_nice: int = 4  # baton on Ray: nice levels below the others of spill prefill workers
    share_cores: bool = True  # baton on Ray: the two workers lend each other idle cores
    max_prefill_tokens: int = 0  # baton on Ray: prompt tokens per prefill call (0: the default)
    runtime: str = "auto"  # baton's runtime and dtype on Ray
    dtype: str = "auto"
    queue_order: str = "fcfs"  # baton (all systems of it) and vLLM: fcfs, or lof (longest output first)
    ngram: int = 0  # > 0: prompt-lookup speculative decoding with this many draft tokens per step


@dataclass
class RunResult:
    records: list[Record]
    decode: DecodeStats | None = None
    decode_threads: int | None = None
    wall_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def records_from_completions(trace: Trace, completions: list[Completion]) -> list[Record]:
    """Normalise Completions (baton's engines) into Records; a wrong token count marks it failed."""
    by_id = {c.request_id: c for c in completions}
    out = []
    for req, off in trace:
        c = by_id.get(req.request_id)
        if c is None or c.error is not None:
            out.append(Record(req.request_id, off, math.nan, math.nan, 0, ok=False))
            continue
        t = c.timings
        kvb = t.get("kv_bytes") or None
        out.append(
            Record(
                req.request_id,
                off,
                float(t["ttft"]),
                float(t["total"]),
                len(c.token_ids),
                kv_transfer_ms=float(t["kv_transfer"]) if kvb and "kv_transfer" in t else None,
                kv_bytes=kvb,
                ok=len(c.token_ids) == req.params.max_tokens,
            )
        )
    return out


class System:
    name = "?"
    decode_threads: int | None = None

    def __init__(self, cfg: BenchConfig, lm: Any):
        self.cfg = cfg
        self.lm = lm  # the driver's LoadedModel (shared by the in-process systems)

    def setup(self, warmup: Trace) -> None:
        if warmup:
            self.run(warmup)

    def run(self, trace: Trace) -> RunResult:
        raise NotImplementedError

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------ baton on Ray
class BatonRay(System):
    name = "baton"
    decode_threads = 1

    def setup(self, warmup: Trace) -> None:
        os.environ["RAY_AUTH_MODE"] = "disabled"
        os.environ.setdefault("RAY_ENABLE_ZERO_COPY_TORCH_TENSORS", "1")
        import ray

        from baton.core.config import ClusterConfig
        from cluster.ray_cluster import Cluster

        cfg = self.cfg
        self.decode_threads = int(cfg.decode_cpus)
        self._ray_owned = False
        if not ray.is_initialized():
            # Started here (not by Cluster) only to keep the workers' logs out of the progress bar.
            ray.init(
                address="local",
                # Logical CPUs for several clusters at once (a benchmark may keep more than one
                # system up and run them in turns); the workers' threads follow their own num_cpus.
                num_cpus=max(
                    16 * (os.cpu_count() or 1),
                    math.ceil(cfg.prefill_workers * cfg.prefill_cpus + cfg.decode_cpus),
                ),
                object_store_memory=1 << 30,
                _node_ip_address="127.0.0.1",
                include_dashboard=False,
                log_to_driver=False,
            )
            self._ray_owned = True
        self.cluster = Cluster(
            ClusterConfig(
                model=cfg.model,
                prefill_workers=cfg.prefill_workers,
                spill_prefill_tokens=cfg.spill_prefill_tokens,
                spill_nice=cfg.spill_nice,
                decode_workers=1,
                prefill_num_cpus=cfg.prefill_cpus,
                decode_num_cpus=cfg.decode_cpus,
                share_cores=cfg.share_cores,
                max_prefill_tokens=cfg.max_prefill_tokens,
                runtime=cfg.runtime,
                dtype=cfg.dtype,
                queue_order=cfg.queue_order,
                max_batch_size=cfg.max_batch_size,
                max_seq_len=cfg.max_seq_len,
                object_store_bytes=1 << 30,
            )
        )
        try:
            self.cluster.start(log=lambda _msg: None)
            super().setup(warmup)
        except BaseException:
            self.close()
            raise

    def run(self, trace: Trace) -> RunResult:
        c = self.cluster
        before = c.decode_stats()[0]["stats"]
        t0 = time.time()
        completions = c.run_trace(trace)
        wall = time.time() - t0
        after = c.decode_stats()[0]["stats"]
        d = diff_counters(after, before)
        dec = DecodeStats(
            steps=d["steps"],
            row_steps=d["row_steps"],
            token_row_steps=d["row_steps"],
            pad_row_steps=0,
            forward_ms=d["forward_ms"],
            step_ms=d["step_ms"],
            stall_ms=d["blocked_ms"],
            padding_cells=d["padding_cells"],
            attended_cells=d["attended_cells"],
            extra={
                "insert_ms": d["insert_ms"],
                "inserted": d["inserted"],
                "kv_bytes_in": d["kv_bytes_in"],
                "max_blocked_ms_so_far": after["max_blocked_ms"],
            },
        )
        return RunResult(records_from_completions(trace, completions), dec, self.decode_threads, wall)

    def close(self) -> None:
        import ray

        cluster = getattr(self, "cluster", None)
        if cluster is not None:
            cluster.shutdown()
            self.cluster = None
        if getattr(self, "_ray_owned", False) and ray.is_initialized():
            ray.shutdown()
            self._ray_owned = False


# ------------------------------------------------------------------------------ baton's local engine
class LocalPolicy(System):
    def __init__(self, cfg: BenchConfig, lm: Any, policy: str):
        super().__init__(cfg, lm)
        self.policy = policy
        self.name = "baton-local" if policy == "baton" else policy
        self.decode_threads = cfg.threads - cfg.threads // 2 if policy == "baton" else cfg.threads

    def run(self, trace: Trace) -> RunResult:
        from baton.core.config import EngineConfig
        from baton.engine import LocalEngine

        cfg = self.cfg
        eng = LocalEngine(
            self.lm,
            EngineConfig(
                model=cfg.model,
                policy=self.policy,
                max_batch_size=cfg.max_batch_size,
                max_seq_len=cfg.max_seq_len,
                threads=cfg.threads,
                queue_order=cfg.queue_order,
            ),
        )
        t0 = time.time()
        completions = eng.run(trace)
        wall = time.time() - t0
        st = eng.stats
        dec = DecodeStats(
            steps=st.steps,
            row_steps=st.row_steps,
            token_row_steps=sum(r for r, _, _, _ in st.step_log),
            pad_row_steps=st.pad_row_steps,
            forward_ms=st.forward_ms,
            step_ms=None,
            stall_ms=st.stall_ms,
            padding_cells=st.padding_cells,
            attended_cells=st.attended_cells,
            extra={
                "prefill_ms": st.prefill_ms,
                "prefills": st.prefills,
                "joins_live": st.joins_live,
                "kv_bytes": st.kv_bytes,
            },
        )
        return RunResult(records_from_completions(trace, completions), dec, self.decode_threads, wall)


def make_system(name: str, cfg: BenchConfig, lm: Any) -> System:
    from baton.bench import external

    local = {"baton-local": "baton", "colocated": "colocated", "orca": "orca", "static": "static"}
    if name == "baton":
        return BatonRay(cfg, lm)
    if name in local:
        return LocalPolicy(cfg, lm, local[name])
    others = {"hf-static": external.HFStatic, "hf-cb": external.HFContinuous, "vllm": external.VLLM}
    if name in others:
        return others[name](cfg, lm)
    raise ValueError(f"systems: unknown system {name!r}; choose from {', '.join(ALL_SYSTEMS)}")
