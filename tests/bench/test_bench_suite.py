"""``baton bench``: CLI wiring, the Markdown section update, and a ``--quick`` run end to end."""

from __future__ import annotations

import argparse
import json

import pytest

from baton.bench import suite


def test_add_parser_registers_bench():
    parser = argparse.ArgumentParser(prog="baton")
    sub = parser.add_subparsers(dest="command", required=True)
    suite.add_parser(sub)
    args = parser.parse_args(
        [
            "bench",
            "--quick",
            "--rates",
            "1,2",
            "--spreads",
            "",
            "--systems",
            "baton,orca",
            "--slo-ttft-ms",
            "1500",
        ]
    )
    assert args.func is suite.run
    assert (
        args.quick and args.rates == (1.0, 2.0) and args.spreads == () and args.systems == ("baton", "orca")
    )
    assert args.slo_ttft_ms == 1500 and args.slo_tpot_ms == 300
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--systems", "nope"])


def test_resolve_args_defaults():
    p = argparse.ArgumentParser()
    suite.add_arguments(p)
    a = suite.resolve_args(p.parse_args([]))
    assert a.model == "smollm2-135m" and a.requests == 24 and a.max_batch_size == 16
    assert a.systems == suite.DEFAULT_SYSTEMS and a.spread_rate == max(a.rates)
    a = suite.resolve_args(p.parse_args(["--vllm-python", "/x/python"]))
    assert a.systems[-1] == "vllm"
    with pytest.raises(ValueError, match="vllm"):
        suite.resolve_args(p.parse_args(["--systems", "vllm"]))


def test_plan_points_shares_the_common_point():
    pts = suite.plan_points((1.0, 2.0, 4.0), 0.5, (0.0, 0.5, 1.0), 4.0)
    assert [(p.rate, p.cv) for p in pts] == [(1, 0.5), (2, 0.5), (4, 0.5), (4, 0.0), (4, 1.0)]
    assert pts[2].sweeps == ("rate", "spread")


def test_update_markdown_keeps_other_sections(tmp_path):
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n## Decode step vs bare forward\n\nkeep me\n")
    suite.update_markdown(md, "## Serving systems\n\nv1\n")
    suite.update_markdown(md, "## Serving systems\n\nv2\n")
    text = md.read_text()
    assert "keep me" in text and "v2" in text and "v1" not in text
    assert text.count(suite.BEGIN) == 1 and text.index("keep me") < text.index(suite.BEGIN)
    with open(md, "a") as f:
        f.write("\n## KV handoff\n\nalso kept\n")
    suite.update_markdown(md, "## Serving systems\n\nv3\n")
    text = md.read_text()
    assert "also kept" in text and "v3" in text and "v2" not in text


@pytest.mark.slow
def test_quick_run_end_to_end(tmp_path):
    out = tmp_path / "out"
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n## KV handoff\n\nother engineer's section\n")
    rc = suite.main(["--quick", "--out-dir", str(out), "--benchmarks-md", str(md)])
    assert rc == 0
    data = json.loads((out / "suite_quick.json").read_text())
    meta, runs = data["meta"], data["runs"]
    assert meta["machine"]["cpu_count"] and meta["machine"]["torch"] and meta["machine"]["ray"]
    assert meta["command"] and meta["rerun"].startswith(".venv/bin/python -m baton.bench.suite --quick")
    systems = set(suite.DEFAULT_SYSTEMS)
    assert {r["system"] for r in runs} == systems
    points = {(p["rate"], p["cv"]) for p in meta["points"]}
    assert len(runs) == len(systems) * len(points)
    for r in runs:
        assert "error" not in r, r
        m = r["metrics"]
        assert m["completed"] == m["requests"] == 6 and m["failed"] == 0, r["system"]
        assert m["tok_s"] > 0 and m["latency_p99_ms"] >= m["latency_p50_ms"] > 0
        assert m["output_tokens"] == r["workload"]["output_tokens"]  # every system wrote every token
    baton = [r for r in runs if r["system"] == "baton"]
    assert all(r["decode"]["steps"] > 0 and r["metrics"]["kv_bytes_mean"] > 0 for r in baton)
    assert all(r["limit"]["tok_s"] > 0 and r["decode"]["bare_ms"] > 0 for r in baton)
    table = (out / "suite_quick.md").read_text()
    for name in systems:
        assert f"| {name} |" in table or f"| {name} \\* |" in table  # \* marks a run on a busy machine
    for kind in ("throughput", "p99", "goodput", "spread"):
        png = out / f"suite_quick_{kind}.png"
        assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    text = md.read_text()
    assert "other engineer's section" in text and "| baton " in text and "suite_quick_goodput.png" in text
    # The tables and plots can be rebuilt from the JSON alone.
    again = tmp_path / "again"
    assert suite.main(["--replot", str(out / "suite_quick.json"), "--out-dir", str(again)]) == 0
    assert (again / "suite_quick.md").read_text().split("Rerun:")[0] == table.split("Rerun:")[0]
    assert (again / "suite_quick_spread.png").exists()
