"""Benchmark (not a test): the BATON decode step against the bare model forward at the same shapes.

For every (batch B, cache length L) the script builds a DecodeBatch holding B prefilled queries
whose prompts are L tokens long, and transformers caches holding the same KV, then times one
decode token for all B rows, the variants interleaved (one of each per iteration, in rotating
order, so machine noise hits them alike):

  baton_step  ``DecodeBatch.step()`` wall clock: forward + sampling + bookkeeping (what a user pays)
  baton_fwd   ``StepResult.forward_ms``: the model forward inside that step
  bare        the model called directly (input_ids [B,1], a mask of ones [B, L+1], position ids)
              with a transformers ``DynamicCache`` of L columns, cropped back to L after every
              forward (``crop(-1)``; transformers 5 takes a negative count): every timed forward
              attends exactly L+1 columns. The standard path: its per-step ``torch.cat`` of the
              whole cache is part of what it costs.
  bare_grow   the same, but the DynamicCache keeps growing one column per forward, exactly as the
              BATON window does (iteration i attends the same columns in both). Its ``torch.cat``
              then allocates a larger tensor every step, which on CPU means fresh pages (page
              faults) at large shapes: it is the slowest bare variant there.
  static      (reference) the model with a transformers ``StaticCache``: preallocated, attends its
              whole ``max_cache_len`` through a mask

Every iteration runs baton_step and bare back to back (alternating which goes first), then the
references in rotating order. The headline ``ratio`` is the median over iterations of
bare_i / baton_step_i: robust to the slow phases of a shared machine, which hit both members of a
pair alike. ``ratio_medians`` (median / median) and ``ratio_min`` (min / min) are in the JSON too.
The goal is ratio >= 0.9. The comparison is conservative for BATON: bare attends L+1 columns
while the BATON window grows during the run (L+warmup+1 .. L+warmup+repeats), and bare's argmax
is outside its timer while the step's sampling is inside.

    .venv/bin/python -m baton.bench.step_bench [--model smollm2-135m] [--threads 1] [--repeats N] [--quick]

Outputs in ``--out-dir`` (default ``$BATON_BENCH_DIR``, else ``./bench-results``): ``NAME.png``, the
summary under ``"NAME"`` in ``results.json`` and every sample in ``raw/NAME.json`` (NAME: ``step_bench``,
``step_bench_quick`` with ``--quick``, ``_threadsN`` appended for ``--threads N`` other than 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from baton.bench.bare import BareRunner
from baton.bench.common import (
    Outputs,
    add_output_arguments,
    comma_list,
    command_line,
    log,
    machine_info,
    md_table,
    quiet_transformers,
    sample_stats,
    setup_logging,
    write_json,
)
from baton.bench.cpu import CpuWindow
from baton.bench.plots import step_plot
from baton.core.handoff import KVHandoff, kv_from_numpy
from baton.core.models import DEFAULT_MODEL, LoadedModel, load_model
from baton.core.params import SamplingParams
from baton.core.request import Request
from decode_worker.batch import DecodeBatch
from prefill_worker.engine import PrefillEngine

PROG = "python -m baton.bench.step_bench"
GOAL = 0.9
PROFILE_STEPS = 5
MEMORY_LIMIT_BYTES = 16 * 2**30  # refuse shapes whose buffers alone would come near the 20 GB budget


@dataclass(frozen=True)
class Shapes:
    batches: tuple[int, ...]
    lengths: tuple[int, ...]
    repeats: int
    warmup: int
    distinct: int


FULL = Shapes(batches=(1, 8, 32), lengths=(128, 512), repeats=20, warmup=3, distinct=4)
QUICK = Shapes(batches=(1, 4), lengths=(16, 64), repeats=5, warmup=2, distinct=2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=PROG, description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    a = p.add_argument
    a("--model", default=DEFAULT_MODEL, help="model spec for load_model (default %(default)s)")
    a("--threads", type=int, default=1, help="torch threads while timing (default 1: one decode worker)")
    a(
        "--prefill-threads",
        type=int,
        default=None,
        help="torch threads for the untimed prefill that builds the KV (default: --threads; more threads "
        "than idle cores stall it badly)",
    )
    a("--repeats", type=int, default=None, help="timed iterations per shape (default 20; quick 5)")
    a("--warmup", type=int, default=None, help="untimed iterations per shape first (default 3)")
    sizes = comma_list(int, lambda v: v >= 1, "integers >= 1")
    a("--batches", type=sizes, default=None, help="batch sizes, e.g. 1,8,32")
    a("--lengths", type=sizes, default=None, help="cache lengths (prompt tokens), e.g. 128,512")
    a("--distinct", type=int, default=None, help="distinct prompts prefilled per length (default 4)")
    a("--no-static", action="store_true", help="skip the StaticCache reference variant")
    a("--profile", action="store_true", help="then profile the largest shape (torch.profiler), print top ops")
    a("--quick", action="store_true", help="tiny shapes, few repeats (< 30 s)")
    add_output_arguments(p, "step_bench[_quick][_threadsN]")
    a("--seed", type=int, default=0)
    args = p.parse_args(argv)
    preset = QUICK if args.quick else FULL
    for key, value in dataclasses.asdict(preset).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.repeats < 1 or args.warmup < 0 or args.distinct < 1 or args.threads < 1:
        p.error("--repeats, --distinct and --threads must be >= 1, --warmup >= 0")
    if args.prefill_threads is None:
        args.prefill_threads = args.threads
    if args.name is None:
        args.name = ("step_bench_quick" if args.quick else "step_bench") + (
            "" if args.threads == 1 else f"_threads{args.threads}"
        )
    return args


# ---------------------------------------------------------------------------------------------- inputs
def decode_steps(args) -> int:
    """Decode steps a BATON row takes in one shape: warm-up + timed (+ profiled)."""
    return args.warmup + args.repeats + (PROFILE_STEPS if args.profile else 0)


def make_handoffs(lm: LoadedModel, length: int, count: int, max_tokens: int, args) -> list[KVHandoff]:
    """Prefill ``count`` random prompts of ``length`` tokens (untimed; a few per forward)."""
    rng = np.random.default_rng(args.seed + length)
    vocab = lm.limits.vocab_size
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)  # greedy
    reqs = [
        Request(
            f"L{length}-p{i}",
            tuple(int(t) for t in rng.integers(100, vocab - 1, size=length)),
            params,
            seed=i,
        )
        for i in range(count)
    ]
    # PrefillEngine splits into forwards of <= max_batch_tokens: bounds the activation memory.
    engine = PrefillEngine(lm, max_batch_tokens=max(length, 2048))
    torch.set_num_threads(args.prefill_threads)
    try:
        t0 = time.perf_counter()
        handoffs = engine.prefill(reqs)
        log.info(f"prefilled {count} x {length} tokens in {time.perf_counter() - t0:.1f} s")
    finally:
        torch.set_num_threads(args.threads)
    for h in handoffs:
        if h.kv is None:
            raise RuntimeError(f"request {h.header.request_id} finished at its first token")
    return handoffs


def with_id(h: KVHandoff, request_id: str) -> KVHandoff:
    """The same prefilled query under another id (rows share prompts; the KV array is shared, insert copies)."""
    header = dataclasses.replace(h.header, request_id=request_id)
    return KVHandoff(header.to_bytes(), h.kv)


def layer_kv(lm: LoadedModel, handoffs: list[KVHandoff]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer (keys, values), each ``[B, kv_heads, L, head_dim]`` contiguous, from the rows' handoffs."""
    kvs = [kv_from_numpy(h.kv, lm.dtype_name, lm.device) for h in handoffs]
    return [
        (torch.stack([kv[i, 0] for kv in kvs]), torch.stack([kv[i, 1] for kv in kvs]))
        for i in range(lm.layout.num_layers)
    ]


class BatonRunner:
    """``DecodeBatch.step()`` on a batch holding the rows' prefilled KV."""

    def __init__(self, lm: LoadedModel, handoffs: list[KVHandoff], capacity: int):
        self.batch = DecodeBatch(lm, max_rows=len(handoffs), capacity=capacity)
        for h in handoffs:
            if self.batch.insert(h) is not None:
                raise RuntimeError("a row finished at insert")
        self.tokens: list[list[int]] = []

    def run(self) -> tuple[float, float]:
        t0 = time.perf_counter()
        res = self.batch.step()
        wall = (time.perf_counter() - t0) * 1e3
        if res.finished:
            raise RuntimeError("a row finished while timing (max_tokens too small)")
        self.tokens.append([t.token for t in res.emitted])
        return wall, res.forward_ms


# ---------------------------------------------------------------------------------------------- one shape
def paired_ratio(num: list[float], den: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(num, den, strict=True))


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def bench_shape(lm: LoadedModel, base: list[KVHandoff], rows: int, length: int, args: Any) -> dict:
    """Build the BATON batch and the bare caches for one shape, time them interleaved, sum it up."""
    steps = args.warmup + args.repeats
    # The first insert relocates the window with 3/4 of the spare room on its right: leave room for
    # every step there, so no relocation lands in the timed loop.
    capacity = length + 2 * decode_steps(args) + 8
    per_token = lm.layout.bytes_per_token(torch.finfo(lm.dtype).bits // 8)
    need = rows * per_token * (capacity + 3 * (length + steps + 1))
    if need > MEMORY_LIMIT_BYTES:
        raise ValueError(
            f"B={rows} L={length}: ~{need / 2**30:.1f} GiB of KV buffers; over the "
            f"{MEMORY_LIMIT_BYTES / 2**30:.0f} GiB limit of this benchmark"
        )
    picked = [base[j % len(base)] for j in range(rows)]
    baton = BatonRunner(lm, [with_id(h, f"B{rows}-L{length}-r{j}") for j, h in enumerate(picked)], capacity)
    kv = layer_kv(lm, picked)
    first = [h.header.first_token for h in picked]
    runners = {"bare": BareRunner(lm, kv, first, "fixed"), "bare_grow": BareRunner(lm, kv, first, "grow")}
    if not args.no_static:
        runners["static"] = BareRunner(lm, kv, first, "static", max_cache_len=length + steps + 1)
    del kv
    relocations = baton.batch.cache.relocations
    times, faults = time_interleaved(baton, runners, steps, args.warmup)
    if baton.batch.cache.relocations != relocations:
        log.warning(f"B={rows} L={length}: the BATON window relocated during the run")
    res = shape_result(times, faults, rows, length, capacity, args)
    # Sanity: the bare path really computes the same tokens as the BATON step (greedy, same KV).
    pairs = [
        (a, b)
        for sa, sb in zip(baton.tokens, runners["bare_grow"].tokens, strict=True)
        for a, b in zip(sa, sb, strict=True)
    ]
    res["token_agreement"] = sum(a == b for a, b in pairs) / len(pairs)  # vs bare_grow (same positions)
    res["relocations_while_timing"] = baton.batch.cache.relocations - relocations
    if args.profile and rows == max(args.batches) and length == max(args.lengths):
        res["profile"] = profile_shape(baton, runners)
    return res


def time_interleaved(
    baton: BatonRunner, runners: dict[str, BareRunner], steps: int, warmup: int
) -> tuple[dict[str, list[float]], dict[str, list[int]]]:
    """ms per call and minor page faults per call of every variant, after ``warmup`` untimed iterations."""
    names = ["baton", *runners]
    refs = [n for n in runners if n != "bare"]
    times: dict[str, list[float]] = {n: [] for n in [*names, "baton_fwd"]}
    faults: dict[str, list[int]] = {n: [] for n in names}
    gc.collect()
    for it in range(steps):
        pair = ["baton", "bare"] if it % 2 == 0 else ["bare", "baton"]  # adjacent, each first half the time
        k = (it // 2) % max(1, len(refs))
        rest = refs[k:] + refs[:k]
        for name in (pair + rest) if (it // 2) % 2 == 0 else (rest + pair):
            flt = minor_faults()
            wall, fwd = baton.run() if name == "baton" else (runners[name].run(), None)
            flt = minor_faults() - flt
            if it >= warmup:
                times[name].append(wall)
                faults[name].append(flt)
                if fwd is not None:
                    times["baton_fwd"].append(fwd)
    return times, faults


def shape_result(
    times: dict[str, list[float]],
    faults: dict[str, list[int]],
    rows: int,
    length: int,
    capacity: int,
    args: Any,
) -> dict[str, Any]:
    stats = {name: sample_stats(v) for name, v in times.items()}
    step, fwd, bare = stats["baton"]["median"], stats["baton_fwd"]["median"], stats["bare"]["median"]
    return {
        "batch": rows,
        "cache_len": length,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "capacity": capacity,
        "attended_columns": [
            length + args.warmup + 1,
            length + args.warmup + args.repeats,
        ],  # first/last timed
        "bare_ms": bare,
        "bare_grow_ms": stats["bare_grow"]["median"],
        "static_ms": stats["static"]["median"] if "static" in stats else None,
        "baton_step_ms": step,
        "baton_forward_ms": fwd,
        "baton_overhead_ms": step - fwd,
        # Per-iteration pairs (bare and the step ran back to back): robust to a shared machine's slow phases.
        "ratio": paired_ratio(times["bare"], times["baton"]),
        "ratio_medians": bare / step,
        "ratio_min": stats["bare"]["min"] / stats["baton"]["min"],
        "ratio_grow": paired_ratio(times["bare_grow"], times["baton"]),
        "ratio_forward": bare / fwd,
        "bare_tok_s": rows / bare * 1e3,
        "baton_tok_s": rows / step * 1e3,
        "minor_faults_per_call": {n: statistics.median(v) for n, v in faults.items()},
        "stats": stats,
    }


def profile_shape(baton: BatonRunner, runners: dict[str, BareRunner], n: int = PROFILE_STEPS) -> dict:
    from torch.profiler import ProfilerActivity, profile

    out = {}
    fns = [("baton_step", baton.run)] + [(f"{k}_forward", r.run) for k, r in runners.items() if k != "static"]
    for name, fn in fns:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(n):
                fn()
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18)
        print(f"\n--- torch.profiler: {n} x {name} (B={baton.batch.max_rows}), top ops by self CPU time ---")
        print(table, flush=True)
        out[name] = table
    return out


# ---------------------------------------------------------------------------------------------- output
def table_row(r: dict) -> dict[str, str]:
    """One shape as BENCHMARKS.md shows it."""
    return {
        "batch": str(r["batch"]),
        "cache len": str(r["cache_len"]),
        "bare forward ms": f"{r['bare_ms']:.1f}",
        "BATON step ms": f"{r['baton_step_ms']:.1f}",
        "BATON forward ms": f"{r['baton_forward_ms']:.1f}",
        "bare / step": f"**{r['ratio']:.3f}**" if r["ratio"] >= GOAL else f"{r['ratio']:.3f} (LOW)",
        "bare (growing DynamicCache) / step": f"{r['ratio_grow']:.3f}",
        "StaticCache ms": "-" if r["static_ms"] is None else f"{r['static_ms']:.1f}",
    }


def summary(results: list[dict], meta: dict) -> dict[str, Any]:
    """Every figure per shape, without the samples and profiles."""
    return {
        "meta": meta,
        "shapes": [{k: v for k, v in r.items() if k not in ("stats", "profile")} for r in results],
    }


# ---------------------------------------------------------------------------------------------- main
def run_shapes(lm: LoadedModel, args: Any) -> list[dict]:
    """Every (length, batch) shape; its table row printed as it ends."""
    results: list[dict] = []
    with torch.inference_mode():
        for length in args.lengths:
            base = make_handoffs(
                lm, length, min(args.distinct, max(args.batches)), decode_steps(args) + 2, args
            )
            for rows in args.batches:
                t0 = time.perf_counter()
                r = bench_shape(lm, base, rows, length, args)
                r["seconds"] = round(time.perf_counter() - t0, 2)
                results.append(r)
                lines = md_table([table_row(r)])
                print("\n".join(lines if len(results) == 1 else lines[2:]), flush=True)
                if r["token_agreement"] < 0.99:
                    agree = f"{r['token_agreement']:.1%}"
                    log.info(
                        f"note: B={rows} L={length}: BATON and bare tokens agree on only {agree} (ties?)"
                    )
                gc.collect()
            del base
            gc.collect()
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    machine = machine_info(args.threads)
    if (machine["background_cores_start"] or 0) > 0.5:
        log.warning(
            f"other processes keep ~{machine['background_cores_start']:.1f} cores busy: timings will be noisy "
            "(the interleaved, paired ratio is the most robust number then)"
        )
    window = CpuWindow().start()
    log.info(f"loading {args.model}")
    quiet_transformers()
    lm = load_model(
        args.model, runtime="hf"
    )  # this bench measures the transformers path; fast: runtime_bench
    log.info(
        f"shapes B={list(args.batches)} x L={list(args.lengths)}, {args.warmup} warm-up + {args.repeats} "
        f"timed iterations each, {args.threads} thread(s)"
    )
    try:
        results = run_shapes(lm, args)
    except ValueError as e:
        print(f"step_bench: error: {e}", file=sys.stderr)
        return 2
    machine |= {"loadavg_end": os.getloadavg(), "cpu_during_run": window.stop()}
    machine["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)  # KiB
    meta = {
        "command": command_line(PROG, argv),
        "model": args.model,
        "dtype": lm.dtype_name,
        "layout": dataclasses.asdict(lm.layout),
        "machine": machine,
        "args": vars(args),
        "goal": GOAL,
        "method": "see baton/bench/step_bench.py",
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    low = [f"B={r['batch']} L={r['cache_len']} ({r['ratio']:.2f})" for r in results if r["ratio"] < GOAL]
    print(
        f"\ngoal bare/step >= {GOAL}: " + ("met at every shape" if not low else "missed at " + ", ".join(low))
    )
    out = Outputs.of(args.out_dir, args.name)
    written = [write_json(out.raw(".json"), {"meta": meta, "results": results})]
    written += [p for p in [step_plot(results, meta, out.plot())] if p]
    written.append(out.publish(summary(results, meta)))
    log.info(
        f"wrote {', '.join(map(str, written))} ({meta['seconds']} s, peak RSS {machine['peak_rss_gib']} GiB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
