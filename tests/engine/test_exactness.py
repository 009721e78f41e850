"""Exactness: every query's tokens equal transformers' generate on that query alone.

Queries join a live batch at random steps (new rows both shorter and longer than the batch),
rows leave mid-batch and padding columns get trimmed. A difference passes only if the
reference's top-2 logits at the first difference are within 1e-4 (a tie).
"""

from __future__ import annotations

import random

import pytest
import torch
from oracle import assert_exact, hf_model, make_queries

from baton.core.params import SamplingParams
from baton.core.policy import BatchState, Candidate, admit
from baton.core.request import Request
from decode_worker.batch import DecodeBatch
from prefill_worker.engine import PrefillEngine


class LogitsSpy:
    """A runtime wrapper that keeps the logits of the last decode forward, for inspection."""

    def __init__(self, runtime):
        self.runtime = runtime
        self.last = None

    def decode(self, step, cache):
        self.last = self.runtime.decode(step, cache)
        return self.last


def run_schedule(lm, reqs, seed: int, max_rows: int = 8):
    """Drive prefill + decode batch with random insertion points; returns outputs and event counts."""
    rng = random.Random(seed)
    pe = PrefillEngine(lm)
    batch = DecodeBatch(lm, max_rows, capacity=300)
    out: dict[str, list[int]] = {}
    ev = {"shorter": 0, "longer": 0, "left_mid_batch": 0, "trims": 0, "multi_prefill": 0}
    pending = list(reqs)
    while pending or batch.rows:
        if pending and batch.free_rows and (not batch.rows or rng.random() < 0.25):
            k = min(batch.free_rows, rng.randint(1, 3), len(pending))
            ev["multi_prefill"] += k > 1
            for h in pe.prefill(pending[:k]):
                if batch.rows:
                    ev["longer" if h.header.prompt_len > batch.cache.length else "shorter"] += 1
                fin = batch.insert(h)
                if fin:
                    out[fin.request_id] = fin.token_ids
            pending = pending[k:]
        if batch.rows:
            res = batch.step()
            ev["trims"] += res.trimmed > 0
            ev["left_mid_batch"] += sum(1 for _ in res.finished) if batch.rows else 0
            for f in res.finished:
                out[f.request_id] = f.token_ids
    return out, ev


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_baton_batch_matches_generate(tiny_lm, family):
    lm = tiny_lm(family)
    reqs = make_queries(lm, seed=11)
    out, ev = run_schedule(lm, reqs, seed=5)
    # The schedule must really exercise what it claims to.
    assert ev["shorter"] > 0 and ev["longer"] > 0, ev
    assert ev["left_mid_batch"] > 0 and ev["trims"] > 0 and ev["multi_prefill"] > 0, ev
    assert_exact(lm, reqs, out)
    # Outputs are not degenerate (many distinct tokens), so agreeing with generate means something.
    # (Not every tiny model emits EOS here: EOS stops are checked in test_policies.)
    assert len({t for toks in out.values() for t in toks}) > 50


def test_orca_batch_matches_generate_with_lone_padded_rows(tiny_lm):
    """orca: prompts ride in the padded forward; rows keep middle padding, even when left alone."""
    lm = tiny_lm("llama")
    # ignore_eos keeps rows alive past their neighbours, so lone rows with padding occur.
    reqs = [
        Request(
            r.request_id,
            r.prompt_token_ids,
            SamplingParams(max_tokens=r.params.max_tokens, ignore_eos=True),
            r.seed,
        )
        for r in make_queries(lm, seed=13, n=24)
    ]
    rng = random.Random(2)
    batch = DecodeBatch(lm, 6, capacity=900)
    batch.runtime = spy = LogitsSpy(batch.runtime)
    out: dict[str, list[int]] = {}
    pending = list(reqs)
    lone_padded = 0
    while pending or batch.rows:
        prompts = []
        if pending and batch.free_rows and (not batch.rows or rng.random() < 0.2):
            state = BatchState(
                len(batch.rows),
                batch.free_rows,
                batch.cache.length,
                899,
                max((r.params.max_tokens - len(r.tracker.token_ids) for r in batch.rows), default=0),
            )
            k = admit("orca", state, [Candidate(r.prompt_len, r.params.max_tokens) for r in pending])
            k = min(k, rng.randint(1, 2))
            prompts, pending = pending[:k], pending[k:]
        lone = len(batch.rows) == 1 and batch.cache.padding_columns() > 0 and not prompts
        res = batch.step(prompts)
        if lone and batch.rows:
            # The lone row's logits equal a forward over its real tokens alone.
            lone_padded += 1
            row = batch.rows[0]
            r = next(q for q in reqs if q.request_id == row.request_id)
            toks = list(r.prompt_token_ids) + row.tracker.token_ids[:-1]
            with torch.no_grad():
                ref = hf_model(lm)(torch.tensor([toks])).logits[0, -1]
            assert (ref - spy.last[0]).abs().max() < 2e-3
        for f in res.finished:
            out[f.request_id] = f.token_ids
    assert lone_padded > 0
    assert_exact(lm, reqs, out)  # ignore_eos comes from each request's params
