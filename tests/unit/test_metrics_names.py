"""The metrics a server exposes (without Ray): every documented name, vLLM-shaped, and the Grafana
dashboard queries only names that exist."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from baton.core.config import ClusterConfig
from cluster.metrics import RouterMetrics
from cluster.router import Router

REPO = Path(__file__).resolve().parents[2]
HISTOGRAMS = {
    "time_to_first_token_seconds",
    "inter_token_latency_seconds",
    "e2e_request_latency_seconds",
    "request_queue_time_seconds",
    "request_prefill_time_seconds",
    "kv_transfer_seconds",
    "kv_transfer_bytes",
}
GAUGES = {
    "num_requests_running",
    "num_requests_waiting",
    "decode_batch_rows",
    "decode_padding_ratio",
    "kv_cache_usage_perc",
}
COUNTERS = {"prompt_tokens", "generation_tokens", "request_success", "request_errors"}


def exposed() -> dict[str, str]:
    """name -> type of every family a fresh server's /metrics shows."""
    metrics = RouterMetrics(Router([], [], ClusterConfig(model="m")))
    text = metrics.exposition().decode()
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def test_every_metric_is_exposed_with_its_type():
    fams = exposed()
    for name in HISTOGRAMS:
        assert fams[f"baton:{name}"] == "histogram", name
    for name in GAUGES:
        assert fams[f"baton:{name}"] == "gauge", name
    for name in COUNTERS:
        assert fams[f"baton:{name}"] == "counter", name


def test_dashboard_and_docs_use_existing_names():
    fams = exposed()
    samples = set(fams)
    for name, kind in fams.items():
        if kind == "histogram":
            samples |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        if kind == "counter":
            samples.add(f"{name}_total")
    dash = json.loads((REPO / "k8s" / "grafana" / "baton-pd.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"baton:[a-z0-9_]+", e)}
    assert used and used <= samples, used - samples
    docs = (REPO / "docs" / "metrics.md").read_text()
    documented = set(re.findall(r"`(baton:[a-z0-9_]+)", docs))
    assert {f"baton:{n}" for n in HISTOGRAMS | GAUGES} <= documented
    assert {f"baton:{n}_total" for n in COUNTERS} <= documented
    assert documented <= samples, documented - samples
