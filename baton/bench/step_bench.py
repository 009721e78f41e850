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

Results: bench/results/step_bench.json and .png (``--quick``: step_bench_quick.*; ``--threads N``
other than 1: step_bench_threadsN.*). Needs matplotlib for the plot (the JSON is written without it).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import gc
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from baton.core.handoff import KVHandoff, kv_from_numpy
from baton.core.models import DEFAULT_MODEL, LoadedModel, load_model
from baton.core.params import SamplingParams
from baton.core.request import Request
from decode_worker.batch import DecodeBatch
from prefill_worker.engine import PrefillEngine

RESULTS_DIR = Path(__file__).resolve().parent / "results"
GOAL = 0.9
PROFILE_STEPS = 5
MEMORY_LIMIT_BYTES = 16 * 2**30  # refuse shapes whose buffers alone would come near the 20 GB budget

FULL = {"batches": (1, 8, 32), "lengths": (128, 512), "repeats": 20, "warmup": 3, "distinct": 4}
QUICK = {"batches": (1, 4), "lengths": (16, 64), "repeats": 5, "warmup": 2, "distinct": 2}


def _log(msg: str) -> None:
    print(f"[step_bench] {msg}", file=sys.stderr, flush=True)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m baton.bench.step_bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help="model spec for load_model (default %(default)s)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads while timing (default 1: one decode worker of a 2-core machine)",
    )
    p.add_argument(
        "--prefill-threads",
        type=int,
        default=None,
        help="torch threads for the untimed prefill that builds the KV (default: --threads; more threads "
        "than idle cores stall it badly)",
    )
    p.add_argument(
        "--repeats", type=int, default=None, help="timed iterations per shape (default 20; quick 5)"
    )
    p.add_argument("--warmup", type=int, default=None, help="untimed iterations per shape first (default 3)")
    p.add_argument("--batches", type=_int_list, default=None, help="batch sizes, e.g. 1,8,32")
    p.add_argument(
        "--lengths", type=_int_list, default=None, help="cache lengths (prompt tokens), e.g. 128,512"
    )
    p.add_argument(
        "--distinct",
        type=int,
        default=None,
        help="distinct prompts prefilled per length; rows beyond that reuse their KV (default 4)",
    )
    p.add_argument("--no-static", action="store_true", help="skip the StaticCache reference variant")
    p.add_argument(
        "--profile",
        action="store_true",
        help="after timing, profile baton steps and bare forwards at the largest shape "
        "(torch.profiler) and print the top ops",
    )
    p.add_argument("--quick", action="store_true", help="tiny shapes, few repeats (< 30 s)")
    p.add_argument(
        "--out",
        default=None,
        help="output path without suffix (default bench/results/step_bench[_quick][_threadsN])",
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    preset = QUICK if args.quick else FULL
    for key in ("batches", "lengths", "repeats", "warmup", "distinct"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    if args.repeats < 1 or args.warmup < 0 or args.distinct < 1 or args.threads < 1:
        p.error("--repeats, --distinct and --threads must be >= 1, --warmup >= 0")
    if args.prefill_threads is None:
        args.prefill_threads = args.threads
    if args.out is None:
        stem = "step_bench_quick" if args.quick else "step_bench"
        args.out = str(RESULTS_DIR / (stem if args.threads == 1 else f"{stem}_threads{args.threads}"))
    return args


# ---------------------------------------------------------------------------- inputs
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
        _log(f"prefilled {count} x {length} tokens in {time.perf_counter() - t0:.1f} s")
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


# ---------------------------------------------------------------------------- the timed variants
class BatonRunner:
    name = "baton"

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
        self.tokens.append([tok for _, tok, _ in res.emitted])
        return wall, res.forward_ms


class BareRunner:
    """The model called directly with a transformers cache holding the same KV."""

    def __init__(
        self,
        lm: LoadedModel,
        kv: list[tuple[torch.Tensor, torch.Tensor]],
        first: list[int],
        mode: str,
        max_cache_len: int = 0,
    ):
        from transformers import DynamicCache, StaticCache

        self.model = lm.model
        self.mode = mode  # "fixed" | "grow" | "static"
        self.rows, self.length = kv[0][0].shape[0], kv[0][0].shape[2]
        if mode == "static":
            self.cache = StaticCache(config=lm.model.config, max_cache_len=max_cache_len)
        else:
            self.cache = DynamicCache(config=lm.model.config)
        for i, (k, v) in enumerate(kv):
            self.cache.update(k, v, i)  # copies (DynamicLayer cats onto an empty tensor)
        if self.cache.get_seq_length() != self.length:
            raise RuntimeError(
                f"{mode} cache holds {self.cache.get_seq_length()} columns, want {self.length}"
            )
        self.ids = torch.tensor(first, dtype=torch.long, device=lm.device).view(-1, 1)
        self.device = lm.device
        self.fed = 0
        self.tokens: list[list[int]] = []

    def run(self) -> float:
        n = self.length + self.fed  # columns cached before this forward
        mask = torch.ones((self.rows, n + 1), dtype=torch.long, device=self.device)
        pos = torch.full((self.rows, 1), n, dtype=torch.long, device=self.device)
        t0 = time.perf_counter()
        out = self.model(
            input_ids=self.ids,
            attention_mask=mask,
            position_ids=pos,
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        ms = (time.perf_counter() - t0) * 1e3
        self.ids = out.logits[:, -1, :].argmax(dim=-1, keepdim=True)
        self.tokens.append(self.ids.view(-1).tolist())
        if self.mode == "fixed":
            self.cache.crop(-1)  # transformers 5: a negative count of columns to drop
        else:
            self.fed += 1
        return ms


# ---------------------------------------------------------------------------- stats
def summary(samples: list[float]) -> dict:
    s = sorted(samples)
    return {
        "median": statistics.median(s),
        "mean": statistics.fmean(s),
        "min": s[0],
        "p90": s[min(len(s) - 1, round(0.9 * (len(s) - 1)))],
        "stdev": statistics.stdev(s) if len(s) > 1 else 0.0,
        "samples": [round(x, 4) for x in samples],
    }


def busy_cores(seconds: float = 1.0) -> float | None:
    """Cores kept busy by everything on the machine over ``seconds`` (from /proc/stat), or None."""

    def sample() -> tuple[int, int]:
        vals = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(vals), vals[3] + (vals[4] if len(vals) > 4 else 0)  # total, idle + iowait

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 == total0:
        return None
    return round((1 - (idle1 - idle0) / (total1 - total0)) * (os.cpu_count() or 1), 2)


def machine_info(threads: int) -> dict:
    model_name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model_name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import transformers

    info = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": model_name,
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": threads,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "loadavg_start": os.getloadavg(),
    }
    with contextlib.suppress(ValueError, OSError):
        info["mem_total_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return info


def paired_ratio(num: list[float], den: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(num, den, strict=True))


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


# ---------------------------------------------------------------------------- one shape
def bench_shape(lm: LoadedModel, base: list[KVHandoff], rows: int, length: int, args) -> dict:
    steps = args.warmup + args.repeats
    # The first insert relocates the window with 3/4 of the spare room on its right: leave room for
    # every step there, so no relocation lands in the timed loop.
    capacity = length + 2 * decode_steps(args) + 8
    per_token = lm.layout.bytes_per_token(torch.finfo(lm.dtype).bits // 8)
    need = rows * per_token * (capacity + 3 * (length + steps + 1))
    if need > MEMORY_LIMIT_BYTES:
        raise SystemExit(
            f"B={rows} L={length}: ~{need / 2**30:.1f} GiB of KV buffers; over the "
            f"{MEMORY_LIMIT_BYTES / 2**30:.0f} GiB limit of this benchmark"
        )
    handoffs = [with_id(base[j % len(base)], f"B{rows}-L{length}-r{j}") for j in range(rows)]
    first = [base[j % len(base)].header.first_token for j in range(rows)]
    baton = BatonRunner(lm, handoffs, capacity)
    kv = layer_kv(lm, [base[j % len(base)] for j in range(rows)])
    runners = {"bare": BareRunner(lm, kv, first, "fixed"), "bare_grow": BareRunner(lm, kv, first, "grow")}
    if not args.no_static:
        runners["static"] = BareRunner(lm, kv, first, "static", max_cache_len=length + steps + 1)
    del kv
    names = ["baton", *runners]
    refs = [n for n in runners if n != "bare"]
    times: dict[str, list[float]] = {n: [] for n in [*names, "baton_fwd"]}
    faults: dict[str, list[int]] = {n: [] for n in names}  # minor page faults per call
    relocations = baton.batch.cache.relocations
    gc.collect()
    for it in range(steps):
        pair = ["baton", "bare"] if it % 2 == 0 else ["bare", "baton"]  # adjacent, each first half the time
        k = (it // 2) % max(1, len(refs))
        rest = refs[k:] + refs[:k]
        for name in (pair + rest) if (it // 2) % 2 == 0 else (rest + pair):
            flt = minor_faults()
            if name == "baton":
                wall, fwd = baton.run()
            else:
                wall, fwd = runners[name].run(), None
            flt = minor_faults() - flt
            if it >= args.warmup:
                times[name].append(wall)
                faults[name].append(flt)
                if fwd is not None:
                    times["baton_fwd"].append(fwd)
    if baton.batch.cache.relocations != relocations:
        _log(f"warning: B={rows} L={length}: the BATON window relocated during the run")
    # Sanity: the bare path really computes the same tokens as the BATON step (greedy, same KV).
    pairs = [
        (a, b)
        for sa, sb in zip(baton.tokens, runners["bare_grow"].tokens, strict=True)
        for a, b in zip(sa, sb, strict=True)
    ]
    agreement = sum(a == b for a, b in pairs) / len(pairs)
    stats = {name: summary(v) for name, v in times.items()}
    step, fwd = stats["baton"]["median"], stats["baton_fwd"]["median"]
    res = {
        "batch": rows,
        "cache_len": length,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "capacity": capacity,
        "attended_columns": [length + args.warmup + 1, length + steps],  # bare/baton, first/last timed
        "bare_ms": stats["bare"]["median"],
        "bare_grow_ms": stats["bare_grow"]["median"],
        "static_ms": stats["static"]["median"] if "static" in stats else None,
        "baton_step_ms": step,
        "baton_forward_ms": fwd,
        "baton_overhead_ms": step - fwd,
        # Per-iteration pairs (bare and the step ran back to back): robust to a shared machine's slow phases.
        "ratio": paired_ratio(times["bare"], times["baton"]),
        "ratio_medians": stats["bare"]["median"] / step,
        "ratio_min": stats["bare"]["min"] / stats["baton"]["min"],
        "ratio_grow": paired_ratio(times["bare_grow"], times["baton"]),
        "ratio_forward": stats["bare"]["median"] / fwd,
        "bare_tok_s": rows / stats["bare"]["median"] * 1e3,
        "baton_tok_s": rows / step * 1e3,
        "token_agreement": agreement,  # BATON step vs bare_grow (same positions), greedy
        "minor_faults_per_call": {n: statistics.median(v) for n, v in faults.items()},
        "relocations_while_timing": baton.batch.cache.relocations - relocations,
        "stats": stats,
    }
    if args.profile and rows == max(args.batches) and length == max(args.lengths):
        res["profile"] = profile_shape(baton, runners)
    return res


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


# ---------------------------------------------------------------------------- output
COLUMNS = (
    ("B", "{batch:>3d}"),
    ("L", "{cache_len:>4d}"),
    ("bare ms", "{bare_ms:>8.2f}"),
    ("grow ms", "{bare_grow_ms:>8.2f}"),
    ("static ms", "{static:>9s}"),
    ("step ms", "{baton_step_ms:>8.2f}"),
    ("fwd ms", "{baton_forward_ms:>8.2f}"),
    ("ovh ms", "{baton_overhead_ms:>6.2f}"),
    ("bare/step", "{ratio:>9.3f}"),
    ("med/med", "{ratio_medians:>7.3f}"),
    ("grow/step", "{ratio_grow:>9.3f}"),
    ("bare tok/s", "{bare_tok_s:>10.1f}"),
    ("baton tok/s", "{baton_tok_s:>11.1f}"),
    ("goal", "{goal:>4s}"),
)


def table_header() -> str:
    widths = [len(fmt.format(**_DUMMY)) for _, fmt in COLUMNS]
    return " ".join(h.rjust(w) for (h, _), w in zip(COLUMNS, widths, strict=True))


_DUMMY = {
    "batch": 0,
    "cache_len": 0,
    "bare_ms": 0.0,
    "bare_grow_ms": 0.0,
    "static": "",
    "baton_step_ms": 0.0,
    "baton_forward_ms": 0.0,
    "baton_overhead_ms": 0.0,
    "ratio": 0.0,
    "ratio_grow": 0.0,
    "ratio_medians": 0.0,
    "bare_tok_s": 0.0,
    "baton_tok_s": 0.0,
    "goal": "",
}


def table_row(r: dict) -> str:
    static = "-" if r["static_ms"] is None else f"{r['static_ms']:.2f}"
    vals = {**r, "static": static, "goal": "ok" if r["ratio"] >= GOAL else "LOW"}
    return " ".join(fmt.format(**vals) for _, fmt in COLUMNS)


def plot(results: list[dict], meta: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _log("matplotlib is not installed: no plot (pip install matplotlib)")
        return False
    labels = [f"B={r['batch']}\nL={r['cache_len']}" for r in results]
    series = [
        ("bare (DynamicCache, cropped to L)", "bare_ms", "#4c72b0"),
        ("bare, DynamicCache growing", "bare_grow_ms", "#8fa9d6"),
        ("BATON step", "baton_step_ms", "#dd8452"),
        ("BATON forward_ms", "baton_forward_ms", "#f2b98b"),
    ]
    if any(r["static_ms"] is not None for r in results):
        series.append(("StaticCache", "static_ms", "#55a868"))
    x = np.arange(len(results))
    w = 0.8 / len(series)
    fig, (ax, ax2) = plt.subplots(
        2, 1, figsize=(max(8, 1.6 * len(results)), 8.5), gridspec_kw={"height_ratios": [3, 1.4]}, sharex=True
    )
    for i, (name, key, color) in enumerate(series):
        vals = [r[key] if r[key] is not None else np.nan for r in results]
        ax.bar(x + (i - (len(series) - 1) / 2) * w, vals, w, label=name, color=color)
    ax.set_yscale("log")
    ax.set_ylabel("ms per decode token (median, log scale)")
    ax.set_title(
        f"BATON decode step vs bare forward - {meta['model']}, {meta['machine']['torch_threads']} "
        f"thread(s), {meta['machine']['cpu_model'] or 'CPU'}",
        fontsize=10,
    )
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3, which="both")
    ratios = [r["ratio"] for r in results]
    ax2.bar(
        x - 0.2,
        ratios,
        0.4,
        label="bare / BATON step (median of paired ratios)",
        color=["#dd8452" if v >= GOAL else "#c44e52" for v in ratios],
    )
    ax2.bar(
        x + 0.2,
        [r["ratio_grow"] for r in results],
        0.4,
        label="bare growing / BATON step (paired)",
        color="#8fa9d6",
    )
    ax2.axhline(GOAL, color="k", ls="--", lw=1, label=f"goal {GOAL}")
    ax2.axhline(1.0, color="grey", ls=":", lw=1)
    ax2.set_ylabel("ratio")
    ax2.legend(fontsize=8, loc="upper left")
    ax2.set_xticks(x, labels)
    ax2.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    busy = busy_cores()
    if busy is not None and busy > 0.5:
        _log(
            f"warning: other processes keep ~{busy:.1f} of {os.cpu_count()} cores busy: timings will be "
            "noisy (the interleaved, paired ratio is the most robust number then)"
        )
    _log(f"loading {args.model}")
    lm = load_model(args.model)
    meta = {
        "model": args.model,
        "dtype": lm.dtype_name,
        "layout": dataclasses.asdict(lm.layout),
        "machine": machine_info(args.threads),
        "args": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()},
        "goal": GOAL,
        "method": "per iteration: baton_step and bare back to back (alternating first), then the "
        "references in rotating order; ms = medians of one call's wall clock; ratio = median over "
        "iterations of bare_i / baton_step_i (ratio_medians = median/median, ratio_min = min/min); "
        "bare's DynamicCache is cropped back to L columns after each forward (attends L+1); "
        "bare_grow's grows one column per forward like the BATON window (same attended columns "
        "every iteration); ms are wall clock of one call",
    }
    _log(
        f"shapes B={list(args.batches)} x L={list(args.lengths)}, {args.warmup} warm-up + {args.repeats} "
        f"timed iterations each, {args.threads} thread(s)"
    )
    results: list[dict] = []
    header_printed = False
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
                if not header_printed:
                    print(table_header(), flush=True)
                    header_printed = True
                print(table_row(r), flush=True)
                if r["token_agreement"] < 0.99:
                    _log(
                        f"note: B={rows} L={length}: BATON and bare tokens agree on only "
                        f"{r['token_agreement']:.1%} (numerical ties?)"
                    )
                gc.collect()
            del base
            gc.collect()
    meta["machine"]["busy_cores_before"] = busy
    meta["machine"]["loadavg_end"] = os.getloadavg()
    meta["machine"]["busy_cores_after"] = busy_cores()
    meta["machine"]["peak_rss_gib"] = round(peak_rss_gib(), 2)
    meta["seconds"] = round(time.perf_counter() - t_start, 1)
    low = [f"B={r['batch']} L={r['cache_len']} ({r['ratio']:.2f})" for r in results if r["ratio"] < GOAL]
    print(
        f"\ngoal bare/step >= {GOAL}: " + ("met at every shape" if not low else "missed at " + ", ".join(low))
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path = out.with_suffix(".json")
    json_path.write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    png_path = out.with_suffix(".png")
    wrote_png = plot(results, meta, png_path)
    print(
        f"wrote {json_path}"
        + (f" and {png_path}" if wrote_png else "")
        + f" ({meta['seconds']} s, peak RSS {meta['machine']['peak_rss_gib']} GiB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
