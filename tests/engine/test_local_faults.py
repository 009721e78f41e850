"""In-process faults: a dead prefill thread ends the run (no hang) with every result accounted for."""

from __future__ import annotations

from baton.core.config import EngineConfig
from baton.core.params import SamplingParams
from baton.core.request import Request
from baton.core.requests_io import Batch, parse_spec
from baton.engine import LocalEngine


def test_dead_prefill_thread_fails_the_rest_and_live_rows_finish(tiny_lm):
    lm = tiny_lm("llama")
    cfg = EngineConfig(policy="baton", max_batch_size=2, prefill_ahead=0, threads=2)
    engine = LocalEngine(lm, cfg)
    real = engine.prefill_engine.prefill
    calls = []

    def prefill_then_die(reqs):
        calls.append([r.request_id for r in reqs])
        if len(calls) > 1:
            raise RuntimeError("injected: the prefill side died")
        return real(reqs)

    engine.prefill_engine.prefill = prefill_then_die
    reqs = [
        Request(f"r{i}", tuple(range(5, 15)), SamplingParams(max_tokens=30, ignore_eos=True), seed=i)
        for i in range(6)
    ]
    results = engine.run([(r, 0.0) for r in reqs])  # returns: before the fix this hung forever
    assert [c.request_id for c in results] == [r.request_id for r in reqs]
    first = set(calls[0])
    for c in results:
        if c.request_id in first:  # prefilled before the failure: decoded to the end
            assert c.error is None and len(c.token_ids) == 30, c
        else:
            assert c.error is not None and "prefill failed" in c.error, c
    assert engine.stats.failure and "injected" in engine.stats.failure
    assert first and len(first) < len(reqs)


def test_failing_decode_step_fails_the_rest_and_keeps_completed_results(tiny_lm):
    lm = tiny_lm("llama")
    engine = LocalEngine(lm, EngineConfig(policy="baton", max_batch_size=4, threads=2))
    real = engine.batch.step
    steps = []

    def step_then_die(*args, **kw):
        steps.append(1)
        if len(steps) > 20:
            raise RuntimeError("injected: the decode step failed")
        return real(*args, **kw)

    engine.batch.step = step_then_die
    short = [
        Request(f"s{i}", (5, 6, 7 + i), SamplingParams(max_tokens=3, ignore_eos=True), seed=i)
        for i in range(2)
    ]
    long = [
        Request(f"l{i}", (9, 8, 7 + i), SamplingParams(max_tokens=200, ignore_eos=True), seed=i)
        for i in range(3)
    ]
    results = engine.run([(r, 0.0) for r in short] + [(r, 0.05) for r in long])  # returns, never hangs
    assert [c.request_id for c in results] == [r.request_id for r in short + long]
    assert all(c.error is None and len(c.token_ids) == 3 for c in results[:2])
    assert all(c.error is not None and "decode failed" in c.error for c in results[2:])
    assert engine.stats.failure and "injected" in engine.stats.failure


def test_empty_messages_is_a_per_line_error(tiny_lm):
    lm = tiny_lm("llama")
    specs = []
    for i, obj in enumerate([{"messages": []}, {"prompt_token_ids": [5, 6, 7], "max_tokens": 3}]):
        try:
            specs.append(parse_spec(obj, f"line-{i}"))
        except Exception as e:  # parse errors become per-line results in the CLI
            specs.append(e)
    assert getattr(specs[0], "field", None) == "messages"
    batch = Batch(specs[1:], lm.tokenizer, lm.limits)
    assert len(batch.trace) == 1
