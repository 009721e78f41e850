"""``baton bench``: CLI wiring, the Markdown section update, and a ``--quick`` run end to end."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

import baton
from baton import cli
from baton.bench import analysis, report, suite
from baton.bench.common import Outputs


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
    cfg = suite.resolve_args(args)
    assert cfg.slo_ttft_ms == 1500 and cfg.slo_tpot_ms == 300 and cfg.requests == 6
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


def test_outputs_default_to_the_working_directory(tmp_path, monkeypatch):
    p = argparse.ArgumentParser()
    suite.add_arguments(p)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BATON_BENCH_DIR", raising=False)
    assert Path(suite.resolve_args(p.parse_args([])).out_dir) == tmp_path / "bench-results"
    monkeypatch.setenv("BATON_BENCH_DIR", str(tmp_path / "env"))
    assert Path(suite.resolve_args(p.parse_args([])).out_dir) == tmp_path / "env"
    cfg = suite.resolve_args(
        p.parse_args(["--out-dir", "docs/benchmarks", "--benchmarks-md", "BENCHMARKS.md"])
    )
    assert cfg.outputs.plot("p99") == Path("docs/benchmarks/suite_p99.png")
    assert cfg.outputs.raw(".json") == Path("docs/benchmarks/raw/suite.json")
    assert suite.rerun_command(cfg) == (
        ".venv/bin/python -m baton.bench.suite --benchmarks-md BENCHMARKS.md --out-dir docs/benchmarks"
    )


def test_markdown_section_links_relative_to_the_markdown_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = Outputs(Path("docs/benchmarks"), "suite")
    meta = {"seconds": 60, "rerun": "x", "machine": {"date": "today"}}
    text = report.markdown_section("TABLES", meta, [out.plot("p99")], out, Path("BENCHMARKS.md"))
    assert "![suite_p99](docs/benchmarks/suite_p99.png)" in text
    assert "`docs/benchmarks/results.json`" in text


def test_plan_points_shares_the_common_point():
    pts = analysis.plan_points((1.0, 2.0, 4.0), 0.5, (0.0, 0.5, 1.0), 4.0)
    assert [(p.rate, p.cv) for p in pts] == [(1, 0.5), (2, 0.5), (4, 0.5), (4, 0.0), (4, 1.0)]
    assert pts[2].sweeps == ("rate", "spread")


def test_update_markdown_keeps_other_sections(tmp_path):
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n## Decode step vs bare forward\n\nkeep me\n")
    report.update_markdown(md, "## Serving systems\n\nv1\n")
    report.update_markdown(md, "## Serving systems\n\nv2\n")
    text = md.read_text()
    assert "keep me" in text and "v2" in text and "v1" not in text
    assert text.count(report.BEGIN) == 1 and text.index("keep me") < text.index(report.BEGIN)
    with open(md, "a") as f:
        f.write("\n## KV handoff\n\nalso kept\n")
    report.update_markdown(md, "## Serving systems\n\nv3\n")
    text = md.read_text()
    assert "also kept" in text and "v3" in text and "v2" not in text


def _package_files() -> dict[str, float]:
    root = Path(baton.__file__).parent
    return {
        str(p): p.stat().st_mtime for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    }


@pytest.mark.slow
def test_quick_run_end_to_end(tmp_path, monkeypatch):
    """``baton bench --quick`` from another working directory: every system, figure and file, in
    ./bench-results there, and nothing written into the package."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BATON_BENCH_DIR", raising=False)
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n## KV handoff\n\nother engineer's section\n")
    package_before = _package_files()
    assert cli.main(["bench", "--quick", "--benchmarks-md", str(md)]) == 0
    assert _package_files() == package_before
    out = tmp_path / "bench-results"
    data = json.loads((out / "raw" / "suite_quick.json").read_text())
    meta, runs = data["meta"], data["runs"]
    assert meta["machine"]["cpu_count"] and meta["machine"]["torch"] and meta["machine"]["ray"]
    assert meta["command"] and meta[
        "rerun"
    ] == ".venv/bin/python -m baton.bench.suite --quick --benchmarks-md " + str(md)
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
    baton_runs = [r for r in runs if r["system"] == "baton"]
    assert all(r["decode"]["steps"] > 0 and r["metrics"]["kv_bytes_mean"] > 0 for r in baton_runs)
    assert all(r["limit"]["tok_s"] > 0 and r["decode"]["bare_ms"] > 0 for r in baton_runs)
    table = (out / "raw" / "suite_quick.md").read_text()
    for name in systems:
        assert f"| {name} |" in table or f"| {name} \\* |" in table  # \* marks a run on a busy machine
    for kind in ("throughput", "p99", "goodput", "spread"):
        png = out / f"suite_quick_{kind}.png"
        assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
        assert f"](../suite_quick_{kind}.png)" in table
    summary = json.loads((out / "results.json").read_text())["suite_quick"]
    assert len(summary["runs"]) == len(runs) and "records" not in summary["runs"][0]
    assert summary["runs"][0]["tok_s"] == pytest.approx(runs[0]["metrics"]["tok_s"], rel=1e-3)
    text = md.read_text()
    assert "other engineer's section" in text and "| baton " in text
    assert "](bench-results/suite_quick_goodput.png)" in text
    # The tables and plots can be rebuilt from the raw JSON alone.
    again = tmp_path / "again"
    assert suite.main(["--replot", str(out / "raw" / "suite_quick.json"), "--out-dir", str(again)]) == 0
    assert (again / "raw" / "suite_quick.md").read_text().split("Rerun:")[0] == table.split("Rerun:")[0]
    assert (again / "suite_quick_spread.png").exists()
