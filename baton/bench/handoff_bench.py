"""KV handoff benchmark: latency and bytes from prefill to a live decode row, per prompt length.

    python -m baton.bench.handoff_bench [--model smollm2-135m] [--lengths 32,128,512] [--n 20] [--out-dir DIR]

Runs the real Ray cluster (1 prefill + 1 decode worker, local Ray on 127.0.0.1). Each request is
sent alone (max_tokens=2, spaced out) so the figure is the handoff itself: prefill done ->
ObjectRef back to the router -> decode worker fetches the KV -> row live in the batch. A second
table times the object store alone for the same KV array as a numpy view vs a pickled torch
tensor. Outputs: the tables on stdout, the figures under ``"handoff_bench"`` (``--name``) in
``OUT_DIR/results.json`` (``--out-dir``, default ``$BATON_BENCH_DIR``, else ``./bench-results``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

import numpy as np

from baton.bench.common import (
    Outputs,
    add_output_arguments,
    comma_list,
    command_line,
    log,
    machine_info,
    md_table,
    setup_logging,
)
from baton.bench.metrics import percentile

PROG = "python -m baton.bench.handoff_bench"


def object_store_table(kv_bytes_per_token: int, lengths: list[int], repeats: int) -> list[dict]:
    """Median ms to ``ray.put`` a KV-sized array and receive it in another process: numpy vs torch."""
    import ray
    import torch

    @ray.remote(num_cpus=0)
    def touch(x: Any) -> int:  # receives the object in another process
        return int(x.shape[-1] if hasattr(x, "shape") else 0)

    rows = []
    for p in lengths:
        arr = np.random.default_rng(0).standard_normal(kv_bytes_per_token * p // 4, dtype=np.float32)
        ms = {}
        for kind, obj in (("numpy", arr), ("torch_pickled", torch.from_numpy(arr.copy()))):
            ray.get(touch.remote(ray.put(obj)))  # warm up
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                ray.get(touch.remote(ray.put(obj)))
                ts.append((time.perf_counter() - t0) * 1e3)
            ms[kind] = statistics.median(ts)
        rows.append({"prompt_len": p, "bytes": arr.nbytes, **{f"{k}_ms": v for k, v in ms.items()}})
    return rows


def handoff_table(cluster: Any, lengths: list[int], n: int) -> list[dict]:
    """Per prompt length, ``n`` requests one at a time (after two warm-ups): kv_transfer, prefill, TTFT."""
    from baton.core.params import SamplingParams
    from baton.core.request import Request

    vocab = cluster.limits.vocab_size
    rng = np.random.default_rng(1)
    table = []
    for p in lengths:
        done = []
        for i in range(n + 2):
            ids = tuple(int(t) for t in rng.integers(100, vocab - 1, size=p))
            req = Request(f"h{p}-{i}", ids, SamplingParams(max_tokens=2, ignore_eos=True), seed=i)
            c = cluster.run_trace([(req, 0.0)])[0]  # alone: nothing else competes with the handoff
            done += [c] if i >= 2 else []
        log.info(f"prompt {p}: {n + 2} requests done")
        xfer = [c.timings["kv_transfer"] for c in done]
        table.append(
            {
                "prompt_len": p,
                "kv_bytes": done[0].timings["kv_bytes"],
                "kv_transfer_ms_p50": statistics.median(xfer),
                "kv_transfer_ms_p99": percentile(xfer, 99),
                "prefill_ms_p50": statistics.median(c.timings["prefill"] for c in done),
                "ttft_ms_p50": statistics.median(c.timings["ttft"] for c in done),
            }
        )
    return table


def print_tables(handoff: list[dict], store: list[dict]) -> None:
    """The two tables as BENCHMARKS.md shows them (the command's output)."""
    rows = [
        {
            "prompt tokens": r["prompt_len"],
            "KV bytes": f"{r['kv_bytes']:,}",
            "kv_transfer p50 ms": f"{r['kv_transfer_ms_p50']:.1f}",
            "p99 ms": f"{r['kv_transfer_ms_p99']:.1f}",
            "prefill p50 ms": f"{r['prefill_ms_p50']:.1f}",
            "TTFT p50 ms": f"{r['ttft_ms_p50']:.1f}",
        }
        for r in handoff
    ]
    print("\n".join(["", *md_table(rows)]))
    rows = [
        {
            "prompt tokens": r["prompt_len"],
            "bytes": f"{r['bytes']:,}",
            "numpy view ms": f"{r['numpy_ms']:.2f}",
            "pickled torch tensor ms": f"{r['torch_pickled_ms']:.2f}",
        }
        for r in store
    ]
    print("\n".join(["", *md_table(rows)]), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    lengths = comma_list(int, lambda v: v >= 1, "integers >= 1")
    ap.add_argument(
        "--lengths", type=lengths, default=(32, 128, 512), help="prompt lengths (default 32,128,512)"
    )
    ap.add_argument("--n", type=int, default=20, help="requests per prompt length (default 20)")
    add_output_arguments(ap, "handoff_bench")
    args = ap.parse_args(argv)
    setup_logging()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    from baton.core.config import ClusterConfig
    from cluster.ray_cluster import Cluster

    cfg = ClusterConfig(
        model=args.model, max_batch_size=8, max_seq_len=max(args.lengths) + 8, object_store_bytes=1 << 30
    )
    machine = machine_info()
    with Cluster(cfg).start(log=log.info) as cluster:
        handoff = handoff_table(cluster, list(args.lengths), args.n)
        bytes_per_token = handoff[0]["kv_bytes"] // args.lengths[0]
        store = object_store_table(bytes_per_token, list(args.lengths), repeats=10)
    print_tables(handoff, store)
    out = Outputs.of(args.out_dir, args.name or "handoff_bench")
    result = {"command": command_line(PROG, argv), "model": args.model, "machine": machine}
    path = out.publish(result | {"handoff": handoff, "object_store": store})
    log.info(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
