"""KV handoff benchmark: latency and bytes from prefill to a live decode row, per prompt length.

    python -m baton.bench.handoff_bench [--model smollm2-135m] [--lengths 32,128,512] [--n 20]

Runs the real Ray cluster (1 prefill + 1 decode worker, local Ray on 127.0.0.1). Each request is
sent alone (max_tokens=2, spaced out) so the figure is the handoff itself: prefill done ->
ObjectRef back to the router -> decode worker fetches the KV -> row live in the batch. A second
table times the object store alone for the same KV array as a numpy view vs a pickled torch
tensor.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def object_store_table(kv_bytes_per_token: int, lengths: list[int], repeats: int) -> list[dict]:
    import ray
    import torch

    @ray.remote(num_cpus=0)
    def touch(x) -> int:  # receives the object in another process
        return int(x.shape[-1] if hasattr(x, "shape") else 0)

    rows = []
    for p in lengths:
        elems = kv_bytes_per_token * p // 4
        arr = np.random.default_rng(0).standard_normal(elems, dtype=np.float32)
        out = {}
        for kind, obj in (("numpy", arr), ("torch-pickled", torch.from_numpy(arr.copy()))):
            ray.get(touch.remote(ray.put(obj)))  # warm up
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                ref = ray.put(obj)
                ray.get(touch.remote(ref))
                ts.append((time.perf_counter() - t0) * 1e3)
            out[kind] = statistics.median(ts)
        rows.append(
            {
                "prompt_len": p,
                "bytes": arr.nbytes,
                "numpy_ms": out["numpy"],
                "torch_pickled_ms": out["torch-pickled"],
                "numpy_GBps": arr.nbytes / out["numpy"] / 1e6,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--lengths", default="32,128,512")
    ap.add_argument("--n", type=int, default=20, help="requests per prompt length")
    ap.add_argument("--out", default=str(RESULTS / "handoff_bench.json"))
    args = ap.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    lengths = [int(x) for x in args.lengths.split(",")]

    from baton.core.params import SamplingParams
    from baton.core.request import Request
    from cluster.ray_cluster import Cluster, ClusterConfig

    cfg = ClusterConfig(
        model=args.model, max_batch_size=8, max_seq_len=max(lengths) + 8, object_store_bytes=1 << 30
    )
    table = []
    with Cluster(cfg).start(log=lambda m: print(m, file=sys.stderr)) as cluster:
        vocab = cluster.limits.vocab_size
        rng = np.random.default_rng(1)
        for p in lengths:
            trace = []
            for i in range(args.n + 2):
                ids = tuple(int(t) for t in rng.integers(100, vocab - 1, size=p))
                trace.append(
                    (Request(f"h{p}-{i}", ids, SamplingParams(max_tokens=2, ignore_eos=True), seed=i), 0.0)
                )
            done = []
            for i, item in enumerate(trace):  # one at a time: nothing else competes with the handoff
                c = cluster.run_trace([item])[0]
                if i >= 2:  # the first two warm up
                    done.append(c)
                print(f"\r  prompt {p}: {i + 1}/{len(trace)}", end="", file=sys.stderr)
            print(file=sys.stderr)
            xfer = [c.timings["kv_transfer"] for c in done]
            table.append(
                {
                    "prompt_len": p,
                    "kv_bytes": done[0].timings["kv_bytes"],
                    "kv_transfer_ms_p50": statistics.median(xfer),
                    "kv_transfer_ms_p99": pct(xfer, 0.99),
                    "prefill_ms_p50": statistics.median(c.timings["prefill"] for c in done),
                    "ttft_ms_p50": statistics.median(c.timings["ttft"] for c in done),
                }
            )
        bpt = table[0]["kv_bytes"] // lengths[0]
        store = object_store_table(bpt, lengths, repeats=10)
    result = {
        "command": " ".join(["python -m baton.bench.handoff_bench", *(argv or sys.argv[1:])]),
        "model": args.model,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "handoff": table,
        "object_store": store,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print("\n| prompt tokens | KV bytes | kv_transfer p50 ms | p99 ms | prefill p50 ms | TTFT p50 ms |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in table:
        print(
            f"| {r['prompt_len']} | {r['kv_bytes']:,} | {r['kv_transfer_ms_p50']:.1f} | "
            f"{r['kv_transfer_ms_p99']:.1f} | {r['prefill_ms_p50']:.1f} | {r['ttft_ms_p50']:.1f} |"
        )
    print("\n| prompt tokens | bytes | object store, numpy view ms | pickled torch tensor ms | numpy GB/s |")
    print("|---:|---:|---:|---:|---:|")
    for r in store:
        print(
            f"| {r['prompt_len']} | {r['bytes']:,} | {r['numpy_ms']:.2f} | {r['torch_pickled_ms']:.2f} | "
            f"{r['numpy_GBps']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
