"""The engine on real Ray actors (local cluster on 127.0.0.1): exact, KV only by reference, never lost."""

from __future__ import annotations

import os

import pytest
from oracle import compare
from queries import make_queries
from ray_procs import wait_gone

from baton.core.params import SamplingParams
from baton.core.request import Request
from cluster.ray_cluster import Cluster, ClusterConfig

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(
        num_cpus=4,
        object_store_memory=300 * 1024**2,
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        log_to_driver=False,
    )
    session = ray._private.worker._global_node.get_session_dir_path()
    yield
    ray.shutdown()
    left = wait_gone(session)
    assert not left, f"Ray processes left behind: {left}"


def _cfg(folder, p, d, **kw) -> ClusterConfig:
    return ClusterConfig(
        model=str(folder),
        prefill_workers=p,
        decode_workers=d,
        max_seq_len=300,
        prefill_num_cpus=0.5,
        decode_num_cpus=0.5,
        **{"max_batch_size": 6, **kw},
    )


def _check_exact(lm, reqs, results):
    verdicts = [
        compare(lm, list(r.prompt_token_ids), c.token_ids, r.params.max_tokens)
        for r, c in zip(reqs, results, strict=True)
    ]
    bad = [v for v in verdicts if v not in ("equal", "tie")]
    assert not bad, bad
    assert sum(v == "tie" for v in verdicts) <= 2


@pytest.mark.parametrize(("family", "p", "d"), [("llama", 1, 1), ("qwen2", 1, 2), ("gpt2", 2, 1)])
def test_exact_through_ray_actors(local_ray, model_dir, tiny_lm, family, p, d):
    lm = tiny_lm(family)
    reqs = make_queries(lm, seed=31, n=30)
    with Cluster(_cfg(model_dir(family), p, d)).start(log=lambda m: None) as cluster:
        cluster.router.track_refs = True
        results = cluster.run_trace([(r, 0.015 * i) for i, r in enumerate(reqs)])
        stats = cluster.decode_stats()
    assert all(c.error is None for c in results), [c.error for c in results if c.error]
    _check_exact(lm, reqs, results)
    # Rows joined live batches, both kinds of workers were used, timings are complete.
    assert sum(s["stats"]["inserted"] for s in stats) >= 25
    assert {c.timings["decode_worker"] for c in results if c.timings["decode_worker"]} == {
        f"decode-{i}" for i in range(d)
    }
    assert {c.timings["prefill_worker"] for c in results} == {f"prefill-{i}" for i in range(p)}
    for c in results:
        t = c.timings
        assert t["ttft"] <= t["total"] and t["queue"] >= 0
        if len(c.token_ids) > 1:
            assert t["kv_bytes"] > 0 and t["kv_transfer"] >= 0 and t["decode"] > 0
    # The decode loop never waited on anything but its own work for more than a few ms.
    assert max(s["stats"]["max_blocked_ms"] for s in stats) < 50


def test_router_only_holds_references(local_ray, model_dir, tiny_lm):
    lm = tiny_lm("llama")
    reqs = make_queries(lm, seed=2, n=8)
    with Cluster(_cfg(model_dir("llama"), 1, 1)).start(log=lambda m: None) as cluster:
        router = cluster.router
        router.track_refs = True
        results = cluster.run_trace([(r, 0.0) for r in reqs])
        seen = list(router.refs_seen)
        # Everything the router was handed for a KV is an ObjectRef, never the array itself.
        assert seen and all(isinstance(x, ray.ObjectRef) for x in seen)
        # One ref per request that went on to decode (a request done at its first token ships no KV).
        assert len(seen) == sum(1 for c in results if len(c.token_ids) > 1)
        assert sum(c.timings["kv_bytes"] for c in results) > 0
    _check_exact(lm, reqs, results)


def test_full_decode_worker_delays_never_loses(local_ray, model_dir, tiny_lm):
    lm = tiny_lm("llama")
    reqs = make_queries(lm, seed=9, n=12)
    with Cluster(_cfg(model_dir("llama"), 1, 1, max_batch_size=2, prefill_ahead=6)).start(
        log=lambda m: None
    ) as cluster:
        results = cluster.run_trace([(r, 0.0) for r in reqs])
        assert cluster.router.max_pending > 0  # handoffs did wait for a row
        info = cluster.server_info()
    assert all(c.error is None for c in results)
    _check_exact(lm, reqs, results)
    assert info["pending_decode"] == 0 and info["queue_depth"] == 0


def test_streaming_and_abort_frees_the_row(local_ray, model_dir, tiny_lm):
    import time

    lm = tiny_lm("llama")
    with Cluster(_cfg(model_dir("llama"), 1, 1, max_batch_size=2)).start(log=lambda m: None) as cluster:
        long = Request("long", tuple(range(5, 25)), SamplingParams(max_tokens=250, ignore_eos=True), seed=1)
        stream = cluster.submit(long)
        it = iter(stream)
        first = next(it)
        assert len(first.token_ids) == 1  # the first token comes straight from the prefill
        next(it)
        assert cluster.call(cluster.router.abort("long")) is True
        c = stream.result()
        assert c.finish_reason == "abort" and len(c.token_ids) < 250
        time.sleep(0.3)
        load = cluster.decode_stats()[0]
        assert load["rows"] == 0
        # The freed row serves the next request, exactly.
        r = make_queries(lm, seed=4, n=1)[0]
        out = cluster.submit(r).result()
    _check_exact(lm, [r], [out])


def test_lost_decode_worker_fails_its_requests_and_refuses_new_work(local_ray, model_dir):
    from cluster.router import NoWorkers

    with Cluster(_cfg(model_dir("llama"), 1, 1)).start(log=lambda m: None) as cluster:
        long = Request("long", tuple(range(5, 25)), SamplingParams(max_tokens=250, ignore_eos=True), seed=1)
        stream = cluster.submit(long)
        it = iter(stream)
        next(it)
        next(it)  # decoding now
        ray.kill(cluster.decode_actors[0])
        c = stream.result()
        assert c.error is not None and "decode worker" in c.error
        assert not cluster.router.healthy
        with pytest.raises(NoWorkers):
            cluster.submit(Request("late", (5, 6, 7), SamplingParams(max_tokens=3), seed=2))
