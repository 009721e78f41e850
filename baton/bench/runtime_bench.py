"""Model-runtime benchmark: the decode step and the prefill of each runtime, against this machine's limit.

    python -m baton.bench.runtime_bench [--model smollm2-135m] [--rows 16] [--columns 256] [--threads 1,2]
                                        [--variants hf-fp32,fast-fp32,fast-bf16,fast-bf16-layers,fast-bf16-compiled] [--quick]

Decode: a ``DecodeBatch`` of ``--rows`` rows whose windows are ``--columns`` wide (random KV, no
padding), timed over ``--steps`` full steps (prepare, forward, sampling, stop rules), per variant:
transformers eager float32 (``hf-fp32``, today's path), the fast runtime in float32, in bfloat16
with its fused forward (one C++ call per forward, the default), in bfloat16 layer by layer (torch
ops around baton's kernels), and in bfloat16 with compiled decode steps (compile time reported).
Each is set against

* the bare forward of the same runtime at the same shape: for ``fast``, ``runtime.decode`` called
  directly on a plain contiguous cache (no ``DecodeBatch``, no window bookkeeping, no mask, no
  sampling); for ``hf``, the model on a transformers ``DynamicCache`` (``baton.bench.bare``);
* this machine's limit for that step: max(bytes read / measured read bandwidth, FLOPs / measured
  GEMM peak), bytes = the matmul weights + the window's KV, FLOPs = 2 x rows x matmul weights +
  attention. Bandwidth: a sum over 512 MB; GEMM peak: the better of a 512 x 2048 x 2048 and a
  2048^3 matmul in that dtype (bf16: the best of oneDNN with a prepacked weight, baton's GEMM and,
  on a CPU without bf16 instructions, float32); both at the thread count of the row.

Prefill: ``PrefillEngine`` over ``--prompts`` random prompts (16-200 tokens, seeded) at the default
budget of 256 tokens per forward: prompt tokens per second (real tokens; ``hf`` pads each forward
to rows x longest, the fast runtime packs without padding).

Outputs: the tables on stdout; ``NAME.png`` and the summary under ``NAME`` in ``results.json`` in
``--out-dir`` (default ``$BATON_BENCH_DIR``, else ``./bench-results``); the full JSON in ``raw/``.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch

from baton.bench.bare import PlainCache
from baton.bench.common import (
    Outputs,
    add_output_arguments,
    command_line,
    log,
    machine_info,
    md_table,
    pyplot,
    save_figure,
    setup_logging,
    write_json,
)

PROG = "python -m baton.bench.runtime_bench"


@dataclass(frozen=True)
class Variant:
    name: str
    runtime: str
    dtype: str
    compile: str
    fused: bool = True  # the fast runtime's fused bf16 forward where it runs (False: layer by layer)

    @property
    def label(self) -> str:
        return {
            "hf-fp32": "hf fp32 eager",
            "fast-fp32": "fast fp32",
            "fast-bf16": "fast bf16 (fused forward)",
            "fast-bf16-layers": "fast bf16 layer by layer",
            "fast-bf16-compiled": "fast bf16 compiled",
        }.get(self.name, self.name)


VARIANTS = {
    "hf-fp32": Variant("hf-fp32", "hf", "float32", "off"),
    "fast-fp32": Variant("fast-fp32", "fast", "float32", "off"),
    "fast-bf16": Variant("fast-bf16", "fast", "bfloat16", "off"),
    "fast-bf16-layers": Variant("fast-bf16-layers", "fast", "bfloat16", "off", fused=False),
    "fast-bf16-compiled": Variant("fast-bf16-compiled", "fast", "bfloat16", "on"),
}


def _ints(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return vals


def _variants(text: str) -> tuple[str, ...]:
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    bad = [n for n in names if n not in VARIANTS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown variant(s) {bad}; choose from {', '.join(VARIANTS)}")
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--columns", type=int, default=256, help="window width of every row (KV columns)")
    p.add_argument("--steps", type=int, default=16, help="timed decode steps per measurement")
    p.add_argument("--threads", type=_ints, default=(1, 2), help="torch thread counts")
    p.add_argument("--variants", type=_variants, default=tuple(VARIANTS))
    p.add_argument("--prompts", type=int, default=48, help="prefill: prompts per measurement")
    p.add_argument("--prefill-budget", type=int, default=256, help="prefill: tokens per forward")
    p.add_argument("--quick", action="store_true", help="fewer steps and prompts (a smoke run)")
    add_output_arguments(p, "runtime_bench")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.prompts = 4, 12
    return args


# ---------------------------------------------------------------------------------------------- limits
def read_bandwidth_gbs(threads: int, mib: int = 512) -> float:
    """Best of 5: bytes per second of a sum over a ``mib`` MiB float32 tensor (DRAM, not cache)."""
    torch.set_num_threads(threads)
    x = torch.ones(mib * 2**20 // 4)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t0)
    return x.numel() * 4 / best / 1e9


def _best_gflops(run, flops: float) -> float:
    with torch.inference_mode():
        run()
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - t0)
    return flops / best / 1e9


def gemm_peak_gflops(threads: int, dtype: torch.dtype, m: int = 512, k: int = 2048, n: int = 2048) -> float:
    """Best of 5: FLOP/s of an ``m x k x n`` matmul in ``dtype``; for bf16 the best of oneDNN over a
    prepacked weight, baton's bf16 GEMM and (a CPU without bf16 instructions computes bf16 in float32
    FMAs, so that is its peak too) the float32 matmul."""
    from baton.runtime import kernels

    torch.set_num_threads(threads)
    x, w = torch.randn(m, k).to(dtype), torch.randn(n, k).to(dtype)
    flops = 2 * m * k * n
    if dtype != torch.bfloat16:
        return _best_gflops(lambda: torch.nn.functional.linear(x, w), flops)
    runs = {}
    if torch.backends.mkldnn.is_available():
        packed = torch.ops.mkldnn._reorder_linear_weight(w, None)
        runs["onednn"] = lambda: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
    if kernels.bf16_gemm_available(torch.device("cpu")):
        bw = kernels.bf16_pack(w)
        runs["baton"] = lambda: kernels.bf16_linear(x, bw, n, None)
        if kernels.bf16_gemm_isa() == "avx512f":
            xf, wf = x.float(), w.float()
            runs["float32"] = lambda: torch.nn.functional.linear(xf, wf)
    return max(_best_gflops(run, flops) for run in runs.values())


def step_cost(lm: Any, rows: int, columns: int) -> dict[str, float]:
    """Bytes read and FLOPs of one decode step of ``rows`` rows over ``columns`` KV columns."""
    cfg = _config(lm)
    h, inter, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    heads, kvh = cfg.num_attention_heads, lm.layout.kv_heads
    hd = lm.layout.head_dim
    per_layer = h * (heads + 2 * kvh) * hd + heads * hd * h + 3 * h * inter
    matmul_params = layers * per_layer + cfg.vocab_size * h  # the LM head too
    itemsize = torch.empty(0, dtype=lm.dtype).element_size()
    kv_bytes = rows * columns * lm.layout.bytes_per_token(itemsize)
    return {
        "weight_bytes": matmul_params * itemsize,
        "kv_bytes": kv_bytes,
        "flops": 2 * rows * matmul_params + 4 * rows * columns * heads * hd * layers,
    }


def _config(lm: Any):
    from transformers import AutoConfig

    from baton.core.models import resolve_model

    return AutoConfig.from_pretrained(resolve_model(lm.name))


# ---------------------------------------------------------------------------------------------- decode
def _handoffs(lm: Any, rows: int, columns: int, max_tokens: int) -> list:
    from baton.core.handoff import HandoffHeader, KVHandoff, kv_to_numpy
    from baton.core.params import SamplingParams

    g = torch.Generator().manual_seed(0)
    lay, out = lm.layout, []
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True).to_dict()
    for i in range(rows):
        kv = (torch.randn(lay.num_layers, 2, lay.kv_heads, columns, lay.head_dim, generator=g) * 0.5).to(
            lm.dtype
        )
        prompt = torch.randint(3, lm.limits.vocab_size, (columns,), generator=g).tolist()
        header = HandoffHeader(
            f"r{i}", prompt, prompt[-1], params, i, lm.fingerprint, lm.dtype_name, tuple(kv.shape)
        )
        out.append(KVHandoff(header.to_bytes(), kv_to_numpy(kv)))
    return out


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def time_decode(lm: Any, rows: int, columns: int, steps: int) -> dict[str, Any]:
    """ms per full ``DecodeBatch.step`` and per bare forward of the same runtime at the same shape,
    timed alternately (one step, one bare forward, ...) so that machine noise hits both alike."""
    from baton.runtime.base import StepInput
    from decode_worker.batch import DecodeBatch

    warm = 2
    handoffs = _handoffs(lm, rows, columns, max_tokens=warm + steps + 4)
    t0 = time.perf_counter()
    batch = DecodeBatch(lm, rows, capacity=columns + warm + steps + 8)  # compiles here (fast, compile on)
    startup_s = time.perf_counter() - t0
    for h in handoffs:
        batch.insert(h)
    if lm.runtime.name == "hf":
        from baton.bench.bare import BareRunner
        from baton.core.handoff import kv_from_numpy

        kvs = [kv_from_numpy(h.kv, h.header.dtype) for h in handoffs]
        layer_kv = [
            (torch.stack([kv[i, 0] for kv in kvs]), torch.stack([kv[i, 1] for kv in kvs]))
            for i in range(lm.layout.num_layers)
        ]
        runner = BareRunner(lm, layer_kv, [h.header.first_token for h in handoffs], "fixed")

        def bare() -> float:
            with torch.inference_mode():
                return runner.run() / 1e3
    else:
        from baton.core.handoff import kv_from_numpy

        cache = PlainCache(
            [kv_from_numpy(h.kv, h.header.dtype) for h in handoffs], lm, extra=warm + steps + 2
        )
        ids = torch.tensor([[h.header.first_token] for h in handoffs])

        def bare() -> float:
            nonlocal ids
            step = StepInput(ids, torch.full((rows, 1), cache.length), None)
            t = time.perf_counter()
            logits = lm.runtime.decode(step, cache)
            spent = time.perf_counter() - t
            cache.length += 1
            ids = logits.float().argmax(-1, keepdim=True)
            return spent

    step_s, bare_s = [], []
    for i in range(warm + steps):
        t = time.perf_counter()
        batch.step()
        spent = time.perf_counter() - t
        b = bare()
        if i >= warm:
            step_s.append(spent)
            bare_s.append(b)
    return {
        "step_ms": _median_ms(step_s),
        "bare_ms": _median_ms(bare_s),
        "step_over_bare_paired": statistics.median(a / b for a, b in zip(step_s, bare_s, strict=True)),
        "startup_s": startup_s,
    }


# ---------------------------------------------------------------------------------------------- prefill
def time_prefill(lm: Any, prompts: int, budget: int, repeats: int = 2) -> dict[str, Any]:
    """Prompt tokens per second of ``PrefillEngine`` (best of ``repeats``), seeded prompt lengths."""
    from baton.core.params import SamplingParams
    from baton.core.request import Request
    from prefill_worker.engine import PrefillEngine

    rng = random.Random(1)
    reqs = [
        Request(
            f"p{i}",
            tuple(rng.randrange(3, lm.limits.vocab_size) for _ in range(rng.randint(16, 200))),
            SamplingParams(max_tokens=1),
            i,
        )
        for i in range(prompts)
    ]
    engine = PrefillEngine(lm, budget)
    plan = engine.plan_batches(reqs)
    computed = sum(
        len(b) * max(r.prompt_len for r in b) if engine.padded else sum(r.prompt_len for r in b) for b in plan
    )
    real = sum(r.prompt_len for r in reqs)
    engine.prefill(reqs[:2])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        engine.prefill(reqs)
        best = min(best, time.perf_counter() - t0)
    return {
        "tokens_per_s": real / best,
        "forwards": len(plan),
        "real_tokens": real,
        "computed_tokens": computed,
        "padded_share": 1 - real / computed,
    }


# ---------------------------------------------------------------------------------------------- main
def run_variant(v: Variant, args: argparse.Namespace, limits: dict) -> list[dict]:
    from baton.core.models import load_model

    t0 = time.perf_counter()
    lm = load_model(args.model, dtype=v.dtype, runtime=v.runtime, compile=v.compile)
    load_s = time.perf_counter() - t0
    if not v.fused and hasattr(lm.runtime, "fused"):
        lm.runtime.fused = False
    cost = step_cost(lm, args.rows, args.columns)
    out = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        log.info("%s: decode %d x %d at %d thread(s)", v.label, args.rows, args.columns, threads)
        dec = time_decode(lm, args.rows, args.columns, args.steps)
        log.info("%s: prefill %d prompts at %d thread(s)", v.label, args.prompts, threads)
        pre = time_prefill(lm, args.prompts, args.prefill_budget) if v.name != "fast-bf16-compiled" else None
        lim = limits[(threads, v.dtype)]
        mem_ms = (cost["weight_bytes"] + cost["kv_bytes"]) / (lim["bandwidth_gbs"] * 1e9) * 1e3
        flop_ms = cost["flops"] / (lim["gemm_gflops"] * 1e9) * 1e3
        limit_ms = max(mem_ms, flop_ms)
        out.append(
            {
                "variant": v.name,
                "label": v.label,
                "threads": threads,
                "runtime": lm.runtime.name,
                "dtype": lm.dtype_name,
                "load_s": load_s,
                "compile_s": getattr(lm.runtime, "compile_s", 0.0),
                **dec,
                "step_over_bare": dec["step_over_bare_paired"],
                "limit_ms": limit_ms,
                "limit_memory_ms": mem_ms,
                "limit_flops_ms": flop_ms,
                "step_over_limit": dec["step_ms"] / limit_ms,
                "prefill": pre,
                "describe": lm.describe(),
            }
        )
    del lm
    gc.collect()
    return out


def tables(results: list[dict]) -> tuple[list[dict], list[dict]]:
    base = {r["threads"]: r for r in results if r["variant"] == "hf-fp32"}
    dec, pre = [], []
    for r in results:
        b = base.get(r["threads"])
        dec.append(
            {
                "variant": r["label"],
                "threads": r["threads"],
                "ms/step": f"{r['step_ms']:.1f}",
                "x hf fp32": f"{r['step_ms'] / b['step_ms']:.2f}" if b else "-",
                "bare ms": f"{r['bare_ms']:.1f}",
                "step/bare": f"{r['step_over_bare']:.2f}",
                "limit ms": f"{r['limit_ms']:.1f}",
                "x limit": f"{r['step_over_limit']:.2f}",
                "compile s": f"{r['compile_s']:.1f}",
            }
        )
        if r["prefill"]:
            p, bp = r["prefill"], (b or {}).get("prefill")
            pre.append(
                {
                    "variant": r["label"],
                    "threads": r["threads"],
                    "prompt tok/s": f"{p['tokens_per_s']:.0f}",
                    "x hf fp32": f"{p['tokens_per_s'] / bp['tokens_per_s']:.2f}" if bp else "-",
                    "forwards": p["forwards"],
                    "padded share": f"{p['padded_share']:.0%}",
                }
            )
    return dec, pre


def plot(results: list[dict], path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    threads = sorted({r["threads"] for r in results})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(1, len(threads))
    labels = list(dict.fromkeys(r["label"] for r in results))
    for j, t in enumerate(threads):
        rows = {r["label"]: r for r in results if r["threads"] == t}
        xs = [i + j * width for i in range(len(labels))]
        axes[0].bar(xs, [rows[lb]["step_ms"] for lb in labels], width, label=f"{t} thread(s): step")
        axes[0].scatter(xs, [rows[lb]["limit_ms"] for lb in labels], marker="_", s=400, color="k", zorder=3)
        pre = [rows[lb]["prefill"]["tokens_per_s"] if rows[lb]["prefill"] else 0 for lb in labels]
        axes[1].bar(xs, pre, width, label=f"{t} thread(s)")
    for ax, title in zip(
        axes, ("decode step, ms (black: machine limit)", "prefill, prompt tokens/s"), strict=True
    ):
        ax.set_xticks([i + width * (len(threads) - 1) / 2 for i in range(len(labels))], labels, rotation=15)
        ax.set_title(title)
        ax.legend()
    save_figure(fig, path)
    return True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    machine = machine_info(max(args.threads))
    prev = torch.get_num_threads()
    limits = {}
    try:
        for t in args.threads:
            bw = read_bandwidth_gbs(t)
            for name in {VARIANTS[v].dtype for v in args.variants}:
                dt = getattr(torch, name)
                peak = max(gemm_peak_gflops(t, dt), gemm_peak_gflops(t, dt, 2048, 2048, 2048))
                limits[(t, name)] = {"bandwidth_gbs": bw, "gemm_gflops": peak}
                log.info(
                    "limit at %d thread(s), %s: %.1f GB/s, %.0f GFLOP/s",
                    t,
                    name,
                    bw,
                    limits[(t, name)]["gemm_gflops"],
                )
        results = [r for v in args.variants for r in run_variant(VARIANTS[v], args, limits)]
    finally:
        torch.set_num_threads(prev)
    dec, pre = tables(results)
    print(f"\nDecode step, {args.rows} rows x {args.columns} columns, {args.model}")
    print("\n".join(md_table(dec, left=("variant",))))
    print(f"\nPrefill, {args.prompts} prompts of 16-200 tokens, {args.prefill_budget} tokens per forward")
    print("\n".join(md_table(pre, left=("variant",))), flush=True)
    out = Outputs.of(args.out_dir, args.name or "runtime_bench")
    full = {
        "command": command_line(PROG, argv),
        "machine": machine,
        "args": vars(args),
        "limits": [{"threads": t, "dtype": d, **v} for (t, d), v in limits.items()],
        "results": results,
    }
    write_json(out.raw(".json"), full)
    plotted = plot(results, out.plot())
    summary = {
        "decode": [
            {k: r[k] for k in ("variant", "threads", "step_ms", "bare_ms", "limit_ms", "compile_s")}
            for r in results
        ],
        "prefill": [
            {"variant": r["variant"], "threads": r["threads"], "tokens_per_s": r["prefill"]["tokens_per_s"]}
            for r in results
            if r["prefill"]
        ],
    }
    path = out.publish(summary)
    log.info("wrote %s%s and %s", out.raw(".json"), f", {out.plot()}" if plotted else "", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
