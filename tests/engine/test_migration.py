"""Migration without Ray: a request re-prefilled from prompt + the tokens it already streamed goes on
exactly as if nothing had happened (same tokens, same text deltas, no gap, no duplicate)."""

from __future__ import annotations

import pytest

from baton.core.params import SamplingParams
from baton.core.request import Request
from decode_worker.batch import DecodeBatch
from prefill_worker.engine import PrefillEngine

PARAMS = {
    "greedy": SamplingParams(max_tokens=24, ignore_eos=True),
    "seeded": SamplingParams(max_tokens=24, temperature=0.9, top_p=0.95, ignore_eos=True),
    "stop": SamplingParams(max_tokens=24, temperature=1.2, stop=("e", "a"), ignore_eos=True),
}


def _run(lm, req: Request, stop_after: int | None = None) -> tuple[list[int], list[str], str | None]:
    """Prefill ``req`` then decode it alone; (tokens, text deltas, finish reason), cut after
    ``stop_after`` output tokens of this run when given (the worker "dies" there)."""
    h = PrefillEngine(lm).prefill([req])[0]
    tokens, texts = [h.header.first_token], [h.header.first_text]
    if h.header.finish_reason:
        return tokens, texts, h.header.finish_reason
    batch = DecodeBatch(lm, 2, 200)
    assert batch.insert(h) is None
    while stop_after is None or len(tokens) < stop_after:
        res = batch.step()
        tokens += [t.token for t in res.emitted]
        texts += [t.text for t in res.emitted]
        if res.finished:
            return tokens, texts, res.finished[0].finish_reason
    return tokens, texts, None


@pytest.mark.parametrize("kind", sorted(PARAMS))
def test_resumed_request_continues_exactly(tiny_lm, kind):
    lm = tiny_lm("llama")
    req = Request("m", tuple(range(5, 30)), PARAMS[kind], seed=1234)
    want_tokens, want_texts, want_reason = _run(lm, req)
    assert len(want_tokens) >= 2
    for k in sorted({1, 2, len(want_tokens) // 2, len(want_tokens) - 1} & set(range(1, len(want_tokens)))):
        got_tokens, got_texts, reason = _run(lm, req, stop_after=k)
        assert reason is None and got_tokens == want_tokens[:k]
        # The new prefill's first token is output index k; then the new decode row goes on.
        more_tokens, more_texts, reason = _run(
            lm, Request("m", req.prompt_token_ids, req.params, 1234, resume=tuple(got_tokens))
        )
        assert got_tokens + more_tokens == want_tokens, k
        assert "".join(got_texts + more_texts) == "".join(want_texts), k
        assert reason == want_reason
