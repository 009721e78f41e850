"""Whole BATON runs on the fast runtime in float32 equal transformers' generate on each query alone
(the oracle's tie rule), under every policy, in process and through the Ray cluster, and the fast
runtime is what really ran (no silent fallback to transformers)."""

from __future__ import annotations

import random

import pytest
from oracle import assert_exact, make_queries

from baton.core.config import EngineConfig
from baton.core.models import load_model
from baton.core.params import SamplingParams
from baton.core.request import Request
from baton.engine import LocalEngine
from baton.runtime.llama import FastRuntime

POLICIES = ["baton", "colocated", "orca", "static"]


def trace_of(reqs, seed=3, span=0.6):
    rng = random.Random(seed)
    return [(r, 0.0 if i < 3 else rng.uniform(0, span)) for i, r in enumerate(reqs)]


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_policy_exact_on_fast_runtime(fast_lm, count_calls, family, policy):
    lm = fast_lm(family)
    calls = count_calls(lm.runtime)
    reqs = make_queries(lm, seed=23, n=24)
    engine = LocalEngine(lm, EngineConfig(policy=policy, max_batch_size=8, max_seq_len=300))
    results = engine.run(trace_of(reqs))
    assert [c.request_id for c in results] == [r.request_id for r in reqs]
    assert_exact(lm, reqs, results)
    assert calls.decode > 0 and (calls.prefill > 0 or policy == "orca")
    if policy == "orca":
        assert engine.stats.pad_row_steps > 0  # prompts rode inside decode forwards of width > 1


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_auto_runs_llama_family_on_the_fast_runtime(model_dir, family):
    """No silent fallback: ``auto`` picks the fast runtime for every Llama-family model."""
    lm = load_model(str(model_dir(family)), dtype="float32")
    assert isinstance(lm.runtime, FastRuntime) and lm.runtime.name == "fast"
    assert lm.model is None  # no transformers model was loaded beside it
    d = lm.describe()
    assert d["runtime"] == "fast" and d["runtime_family"] == family and d["dtype"] == "float32"


def test_auto_keeps_transformers_for_other_families(model_dir):
    lm = load_model(str(model_dir("gpt2")), dtype="float32")
    assert lm.runtime.name == "hf" and lm.model is not None


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["baton", "orca"])
def test_smollm2_fast_float32_exact(count_calls, policy):
    lm = load_model("smollm2-135m", dtype="float32")  # auto: the fast runtime
    assert lm.runtime.name == "fast" and lm.model is None
    calls = count_calls(lm.runtime)
    reqs = [
        Request(
            r.request_id,
            r.prompt_token_ids[:80],
            SamplingParams(max_tokens=min(r.params.max_tokens, 20)),
            r.seed,
        )
        for r in make_queries(lm, seed=5, n=8)
    ]
    engine = LocalEngine(lm, EngineConfig(policy=policy, max_batch_size=4, max_seq_len=256))
    results = engine.run(trace_of(reqs, span=0.3))
    assert_exact(lm, reqs, results)
    assert calls.decode > 0


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_exact_through_ray_on_fast_runtime(model_dir, fast_lm):
    from cluster.ray_cluster import Cluster, ClusterConfig

    lm = fast_lm("llama")
    reqs = make_queries(lm, seed=31, n=24)
    cfg = ClusterConfig(
        model=str(model_dir("llama")),
        dtype="float32",
        runtime="fast",
        prefill_workers=1,
        decode_workers=1,
        max_seq_len=300,
        max_batch_size=6,
        prefill_num_cpus=0.5,
        decode_num_cpus=0.5,
    )
    with Cluster(cfg).start(log=lambda _m: None) as cluster:
        infos = list(cluster.infos)
        results = cluster.run_trace([(r, 0.015 * i) for i, r in enumerate(reqs)])
    assert {i["runtime"] for i in infos} == {"fast"}
    assert all(i["role"] == "decode" or i["padded_prefill"] is False for i in infos)
    assert all(c.error is None for c in results), [c.error for c in results if c.error]
    assert_exact(lm, reqs, results)
