"""Where a burst's time goes: each process's CPU and the decode batch over time, for baton on Ray.

For each system (names as ``baton.bench.saturate``'s: ``baton:1+1``, ``baton:1+1/lof``, ...) this
starts it, runs an untimed warm-up burst, then one timed burst while a sampler reads, every
``--interval`` seconds, the CPU time of every process of this one's tree (``/proc``: the decode and
prefill actors by their Ray process titles, this driver, Ray's own daemons) and of the machine, and
the decode workers' counters (rows, steps, row-steps, step time).

    python -m baton.bench.timeline --systems baton:1+1,baton:1+1/lof [--requests 64]

Reported per system: output tokens/s, wall time, and each role's CPU-seconds (decode, prefill,
driver, ray, background: other processes on the machine); the plot shows, per system, the cores
each role used over time and the decode batch's rows and milliseconds per row-step.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import threading
import time
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
from baton.bench.cpu import machine_busy_s, tree_processes
from baton.bench.metrics import summarize
from baton.bench.systems import BenchConfig, make_system
from baton.bench.workload import add_burst_arguments, burst_spec, generate

log = logging.getLogger("baton.bench")
NAME = "timeline"
ROLES = ("decode", "prefill", "driver", "ray", "background")


def role_of(title: str, pid: int, root: int) -> str:
    """The role of a process of the tree rooted at ``root`` by its command line (Ray sets an actor's
    process title to ``ray::ClassName...``)."""
    if pid == root:
        return "driver"
    if "DecodeWorker" in title:
        return "decode"
    if "PrefillWorker" in title:
        return "prefill"
    return "ray"


class Sampler:
    """Samples the roles' CPU, the machine's busy time and ``probe()`` (the decode counters) every
    ``interval`` s on a thread, from ``start()`` to ``stop()``."""

    def __init__(self, interval: float, probe: Any = None, root: int | None = None):
        self.interval, self.probe, self.root = interval, probe, root or os.getpid()
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="timeline-sampler", daemon=True)

    def start(self) -> Sampler:
        self.t0 = time.perf_counter()
        self._thread.start()
        return self

    def stop(self) -> list[dict[str, Any]]:
        self._stop.set()
        self._thread.join()
        return self.samples

    def _run(self) -> None:
        prev, busy0, t_prev = tree_processes(self.root), machine_busy_s(), time.perf_counter()
        while not self._stop.wait(self.interval):
            now, cur, busy = time.perf_counter(), tree_processes(self.root), machine_busy_s()
            dt = now - t_prev
            cores = dict.fromkeys(ROLES, 0.0)
            for pid, (cmd, cpu) in cur.items():
                if pid in prev:
                    cores[role_of(cmd, pid, self.root)] += max(0.0, cpu - prev[pid][1]) / dt
            own = sum(cores.values())
            if busy is not None and busy0 is not None:
                cores["background"] = max(0.0, (busy - busy0) / dt - own)
            sample = {"t": now - self.t0, "dt": dt, "cores": cores}
            if self.probe is not None:
                try:
                    sample["decode"] = self.probe()
                except Exception as e:  # a sample without counters, not a failed run
                    log.debug("timeline: decode counters unavailable: %s", e)
            self.samples.append(sample)
            prev, busy0, t_prev = cur, busy, now


def decode_probe(cluster: Any) -> Any:
    """The decode workers' counters, summed: rows, steps, row_steps, step_ms."""

    def probe() -> dict[str, float]:
        out = {"rows": 0.0, "steps": 0.0, "row_steps": 0.0, "step_ms": 0.0}
        for ld in cluster.decode_stats():
            out["rows"] += ld["rows"]
            for k in ("steps", "row_steps", "step_ms"):
                out[k] += ld["stats"][k]
        return out

    return probe


def series(samples: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Per-interval series: time, each role's cores, decode rows, steps/s and ms per row-step."""
    out: dict[str, list[float]] = {"t": [], "rows": [], "steps_per_s": [], "ms_per_row_step": []}
    out |= {role: [] for role in ROLES}
    prev = None
    for s in samples:
        out["t"].append(s["t"])
        for role in ROLES:
            out[role].append(s["cores"][role])
        d = s.get("decode")
        if d is not None and prev is not None:
            steps, rs = d["steps"] - prev["steps"], d["row_steps"] - prev["row_steps"]
            out["rows"].append(d["rows"])
            out["steps_per_s"].append(steps / s["dt"])
            out["ms_per_row_step"].append((d["step_ms"] - prev["step_ms"]) / rs if rs else math.nan)
        else:
            out["rows"].append(math.nan if d is None else d["rows"])
            out["steps_per_s"].append(math.nan)
            out["ms_per_row_step"].append(math.nan)
        prev = d if d is not None else prev
    return out


def run_one(name: str, base: BenchConfig, lm: Any, trace: list, interval: float) -> dict[str, Any]:
    from baton.bench.saturate import system_config

    kind, cfg = system_config(name, base)
    if kind != "baton":
        raise ValueError(f"systems: {name!r}: the timeline follows baton's Ray workers (baton:P+D...)")
    system = make_system(kind, cfg, lm)
    try:
        log.info(f"{name}: starting, warm-up run of {len(trace)} requests")
        system.setup(trace)
        sampler = Sampler(interval, decode_probe(system.cluster)).start()
        t0 = time.perf_counter()
        res = system.run(trace)
        wall = time.perf_counter() - t0
        samples = sampler.stop()
    finally:
        system.close()
    s = summarize(res.records)
    cpu_s = {role: sum(x["cores"][role] * x["dt"] for x in samples) for role in ROLES}
    log.info(f"{name}: {s['tok_s']:.1f} tok/s in {wall:.1f} s")
    return {
        "system": name,
        "tok_s": s["tok_s"],
        "wall_s": wall,
        "ttft_p50_s": s["ttft_p50_ms"] / 1e3,
        "tpot_p50_ms": s["tpot_p50_ms"],
        "failed": s["failed"],
        "cpu_s": cpu_s,
        "series": series(samples),
    }


def table(rows: list[dict[str, Any]]) -> list[str]:
    shown = []
    for r in rows:
        shown.append(
            {
                "system": r["system"],
                "tok/s": f"{r['tok_s']:.1f}",
                "wall s": f"{r['wall_s']:.1f}",
                **{f"{role} core-s": f"{r['cpu_s'][role]:.1f}" for role in ROLES},
                "TTFT p50 s": f"{r['ttft_p50_s']:.1f}",
                "TPOT p50 ms": f"{r['tpot_p50_ms']:.0f}",
            }
        )
    return md_table(shown, left=("system",))


def plot(rows: list[dict[str, Any]], out: Outputs) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(2, len(rows), figsize=(5.5 * len(rows), 6), sharex="col", squeeze=False)
    colors = {"decode": "tab:blue", "prefill": "tab:orange", "driver": "tab:green", "ray": "tab:olive"}
    colors["background"] = "tab:gray"
    for i, r in enumerate(rows):
        s = r["series"]
        top, bottom = axes[0][i], axes[1][i]
        top.stackplot(s["t"], *[s[role] for role in ROLES], labels=ROLES, colors=[colors[x] for x in ROLES])
        top.set_ylabel("cores")
        top.set_title(f"{r['system']}: {r['tok_s']:.0f} tok/s in {r['wall_s']:.1f} s")
        top.legend(loc="lower left", fontsize=7)
        bottom.plot(s["t"], s["rows"], color="tab:blue", label="decode rows")
        bottom.set_ylabel("decode rows")
        bottom.set_xlabel("s since the burst")
        twin = bottom.twinx()
        twin.plot(s["t"], s["ms_per_row_step"], color="tab:red", label="ms per row-step")
        twin.set_ylabel("ms per row-step (step wall time / rows)", color="tab:red")
    save_figure(fig, out.plot())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m baton.bench.timeline", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument(
        "--systems",
        type=comma_list(str, lambda s: s.startswith("baton:"), "system names (baton:P+D[/MODE...])"),
        default=("baton:1+1", "baton:1+1/lof"),
    )
    add_burst_arguments(p)
    p.add_argument("--interval", type=float, default=0.5, help="seconds between samples")
    add_output_arguments(p, NAME)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    quiet_transformers()
    args = parse_args(argv)
    if not args.interval > 0:
        raise SystemExit("interval: must be > 0")
    from baton.core.models import load_model

    out = Outputs.of(args.out_dir, args.name or NAME)
    lm = load_model(args.model)
    spec = burst_spec(args)
    trace = generate(spec, lm.tokenizer, lm.limits.vocab_size, lm.limits.eos_token_ids)
    base = BenchConfig(model=args.model, max_batch_size=args.max_batch_size, max_seq_len=args.max_seq_len)
    rows = [run_one(name, base, lm, trace, args.interval) for name in args.systems]
    meta = {
        "command": command_line("python -m baton.bench.timeline", argv),
        "workload": spec.to_dict(),
        "machine": machine_info(base.threads),
    }
    write_json(out.raw(".json"), {"meta": meta, "rows": rows})
    out.publish({"meta": meta, "rows": [{k: v for k, v in r.items() if k != "series"} for r in rows]})
    plot(rows, out)
    print("\n".join(table(rows)))
    print(f"\n{meta['command']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
