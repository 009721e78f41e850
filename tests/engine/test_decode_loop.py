"""The decode worker's step loop without Ray: inbox, early aborts, one event batch per step."""

from __future__ import annotations

import time

from oracle import compare

from baton.core.messages import StepEvents
from baton.core.params import SamplingParams
from baton.core.request import Request
from decode_worker.batch import DecodeBatch
from decode_worker.loop import DecodeLoop
from prefill_worker.engine import PrefillEngine


def _collect(loop: DecodeLoop, want: set[str], timeout: float = 30.0) -> tuple[dict, list[StepEvents]]:
    finished, events = {}, []
    deadline = time.time() + timeout
    while not want <= set(finished) and time.time() < deadline:
        batch = loop.drain(0.2)
        assert batch.fatal is None, batch.fatal
        for ev in batch.events:
            events.append(ev)
            for f in ev.finished:
                finished[f.request_id] = (f.reason, f.num_tokens)
    return finished, events


def test_abort_before_handoff_arrives_is_not_lost(tiny_lm):
    lm = tiny_lm("llama")
    pe = PrefillEngine(lm)
    loop = DecodeLoop(DecodeBatch(lm, 4, 300), "d0")
    try:
        long = Request("x", tuple(range(5, 20)), SamplingParams(max_tokens=200, ignore_eos=True), seed=0)
        loop.abort("x")  # the handoff is still "in transfer"
        time.sleep(0.2)
        loop.submit(pe.prefill([long])[0])
        finished, _ = _collect(loop, {"x"})
        assert finished["x"] == ("abort", 0)
        assert loop.load().rows == 0
    finally:
        loop.stop()


def test_full_batch_keeps_handoffs_waiting_and_steps_batch_all_rows(tiny_lm):
    lm = tiny_lm("llama")
    pe = PrefillEngine(lm)
    loop = DecodeLoop(DecodeBatch(lm, 2, 300), "d0")
    reqs = [
        Request(f"r{i}", tuple(range(5 + i, 30 + i)), SamplingParams(max_tokens=20 + 5 * i), seed=i)
        for i in range(5)
    ]
    try:
        for h in pe.prefill(reqs):
            loop.submit(h)
        assert loop.load().waiting >= 1  # more handoffs than rows: they wait, none dropped
        finished, events = _collect(loop, {r.request_id for r in reqs})
        assert {reason for reason, _n in finished.values()} <= {"length", "eos"}
        tokens: dict[str, list[int]] = {}
        for ev in events:
            rids = [t.request_id for t in ev.tokens]
            assert len(rids) == len(set(rids)) <= 2  # one event per step carries every live row's token
            for t in ev.tokens:
                tokens.setdefault(t.request_id, []).append(t.token)
        for r in reqs:
            first = pe.prefill([r])[0].header.first_token
            assert compare(
                lm, list(r.prompt_token_ids), [first, *tokens.get(r.request_id, [])], r.params.max_tokens
            ) in ("equal", "tie")
        s = loop.load().stats
        assert s["inserted"] == 5
        # The loop spent its time stepping, not waiting on its inbox: compared with the same run's
        # own step time, so a busy machine slows both sides alike.
        assert s["blocked_ms"] < 0.1 * s["step_ms"], s
    finally:
        loop.stop()


def test_set_threads_applies_in_the_loop_thread_from_the_next_step(tiny_lm):
    import torch

    lm = tiny_lm("llama")
    pe = PrefillEngine(lm)
    batch = DecodeBatch(lm, 2, 300)
    seen: list[int] = []
    step = batch.step

    def spy(*a, **kw):
        seen.append(torch.get_num_threads())  # in the loop thread: the count its kernels use
        if len(seen) == 3:
            loop.set_threads(2)
        if len(seen) == 8:
            loop.set_threads(1)
        return step(*a, **kw)

    batch.step = spy
    loop = DecodeLoop(batch, "d0")
    req = Request("r", tuple(range(5, 30)), SamplingParams(max_tokens=14, ignore_eos=True), seed=0)
    try:
        loop.set_threads(1)
        loop.submit(pe.prefill([req])[0])
        finished, events = _collect(loop, {"r"})
        assert finished["r"] == ("length", 14)
        assert seen[:3] == [1, 1, 1] and seen[3:8] == [2] * 5 and set(seen[8:]) == {1}
        tokens = [t.token for ev in events for t in ev.tokens]
        first = pe.prefill([req])[0].header.first_token
        assert compare(lm, list(req.prompt_token_ids), [first, *tokens], 14) in ("equal", "tie")
    finally:
        loop.stop()
