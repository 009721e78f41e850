"""Every figure the benchmarks draw: the suite's sweeps, the decode step against the bare forward, the soak."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from baton.bench.analysis import Entry
from baton.bench.common import Outputs, is_nan, pyplot, save_figure

STYLE = {
    "baton": ("#d62728", "o"),
    "baton-local": ("#ff9896", "o"),
    "colocated": ("#1f77b4", "s"),
    "orca": ("#2ca02c", "^"),
    "static": ("#9467bd", "v"),
    "hf-static": ("#8c564b", "D"),
    "hf-cb": ("#e377c2", "P"),
    "vllm": ("#17becf", "X"),
}


# (file kind, metric, y label, title, scale, sweep)
FIGURES = (
    ("throughput", "tok_s", "output tokens/s", "Throughput vs arrival rate", 1.0, "rate"),
    ("p99", "latency_p99_ms", "p99 completion time (s)", "p99 completion time vs arrival rate", 1e-3, "rate"),
    ("goodput", "goodput_req_s", "goodput (req/s meeting both SLOs)", "Goodput vs arrival rate", 1.0, "rate"),
    ("spread", "tok_s", "output tokens/s", "Throughput vs output-length spread", 1.0, "spread"),
)


def _reference_lines(ax: Any, kind: str, rows: list[Entry]) -> None:
    rates = sorted({e["rate"] for e in rows})
    if kind == "throughput":
        limited = [e for e in rows if e.get("limit")]
        pts = sorted({(e["rate"], e["limit"]["tok_s"]) for e in limited})
        if pts:
            label = f"bare forward at {limited[0]['limit']['system']}'s decode shape"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "k--", lw=1, label=label)
    elif kind == "goodput":
        ax.plot(rates, rates, ":", color="grey", lw=1, label="offered load")


def suite_plots(entries: list[Entry], meta: dict[str, Any], out: Outputs) -> list[Path]:
    plt = pyplot()
    if plt is None:
        return []
    ok = [e for e in entries if not e.get("error")]
    a = meta["args"]
    model = Path(a["model"]).name if os.sep in str(a["model"]) else a["model"]
    sub = (
        f"{model}, {a['requests']} req/run, prompts {a['prompt_len']}, outputs {a['output_len']},\n"
        f"max batch {a['max_batch_size']}, {a['threads']} CPU threads per system"
    )
    written = []
    for kind, key, ylabel, title, scale, sweep in FIGURES:
        rows = [e for e in ok if sweep in e["sweeps"]]
        if not rows:
            continue
        xkey = "rate" if sweep == "rate" else "cv"
        fig, ax = plt.subplots(figsize=(8.5, 5.6))
        for s in meta["systems"]:
            pts = sorted((e[xkey], e["metrics"][key] * scale) for e in rows if e["system"] == s)
            pts = [p for p in pts if not is_nan(p[1])]
            if pts:
                color, marker = STYLE.get(s, ("#333333", "o"))
                wide = s == "baton"
                xs, ys = zip(*pts, strict=True)
                ax.plot(
                    xs, ys, marker=marker, color=color, label=s, lw=2.4 if wide else 1.5, ms=7 if wide else 5
                )
        _reference_lines(ax, kind, rows)
        if sweep == "rate":
            ax.set_xscale("log", base=2)
            xs = sorted({e["rate"] for e in rows})
            ax.set_xticks(xs, [f"{x:g}" for x in xs])
            ax.set_xlabel("arrival rate (req/s)")
        else:
            title += f" (rate {rows[0]['rate']:g} req/s, same mean)"
            ax.set_xlabel("output length coefficient of variation (std / mean)")
        if kind == "goodput":
            title += f" (TTFT <= {a['slo_ttft_ms']:g} ms, TPOT <= {a['slo_tpot_ms']:g} ms)"
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}\n{sub}", fontsize=9.5)
        ax.grid(alpha=0.3, which="both")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8, ncol=2)
        written.append(save_figure(fig, out.plot(kind)))
    return written


def step_plot(results: list[dict], meta: dict, path: Path) -> Path | None:
    """Per shape: ms of every variant (log scale) over the paired ratios against the goal."""
    plt = pyplot()
    if plt is None:
        return None
    goal = meta["goal"]
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
        color=["#dd8452" if v >= goal else "#c44e52" for v in ratios],
    )
    ax2.bar(
        x + 0.2,
        [r["ratio_grow"] for r in results],
        0.4,
        label="bare growing / BATON step (paired)",
        color="#8fa9d6",
    )
    ax2.axhline(goal, color="k", ls="--", lw=1, label=f"goal {goal}")
    ax2.axhline(1.0, color="grey", ls=":", lw=1)
    ax2.set_ylabel("ratio")
    ax2.legend(fontsize=8, loc="upper left")
    ax2.set_xticks(x, labels)
    ax2.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def soak_plot(samples: list[dict], summary: dict, meta: dict, path: Path) -> Path | None:
    """The soak over time: the decode worker's RSS (warm-up marked) over live rows and queues."""
    plt = pyplot()
    if plt is None:
        return None
    t = [s["t_s"] for s in samples]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    ax.plot(t, [s["rss_mb"] for s in samples], color="#d62728", lw=1.6, label="decode worker RSS")
    ax.axvline(summary["warmup_t_s"], color="grey", ls="--", lw=1, label="end of warm-up")
    ax.set_ylabel("RSS (MiB)")
    o = summary["outcomes"]
    model = Path(meta["model"]).name
    ax.set_title(
        f"Soak: {summary['requests']} requests on {model} ({o['completed']} completed, {o['cancelled']} "
        f"cancelled, {o['deadline']} deadline, {o['aborted']} aborted)\nRSS after warm-up "
        f"{summary['rss_after_warmup_mb']:.1f} -> end {summary['rss_end_mb']:.1f} MiB, slope "
        f"{summary['rss_slope_mb_per_min']:+.2f} MiB/min",
        fontsize=9.5,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax2.plot(t, [s["live_rows"] for s in samples], color="#1f77b4", lw=1.4, label="live decode rows")
    waiting = [s["waiting"] + s["queue"] + s["in_prefill"] + s["pending"] for s in samples]
    ax2.plot(t, waiting, color="#2ca02c", lw=1.0, label="queued, in prefill, pending, waiting")
    ax2.set_xlabel("time (s)")
    ax2.set_ylabel("requests")
    ax2.set_ylim(bottom=0)
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    return save_figure(fig, path)
