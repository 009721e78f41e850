"""The benchmark workload generator: seeded, Poisson arrivals, length distributions, exact prompt lengths."""

from __future__ import annotations

import math

import numpy as np
import pytest

from baton.bench.workload import (
    LengthDist,
    PromptMaker,
    WorkloadSpec,
    generate,
    poisson_offsets,
    trace_summary,
)

VOCAB = 1000


def _spec(**kw) -> WorkloadSpec:
    base = dict(
        requests=40,
        rate=2.0,
        prompt=LengthDist("uniform", 40, 0.3, 8, 80),
        output=LengthDist("lognormal", 20, 0.8, 2, 64),
        seed=7,
        source="random",
    )
    return WorkloadSpec(**{**base, **kw})


def test_same_seed_same_trace_other_seed_differs():
    a = generate(_spec(), None, VOCAB)
    b = generate(_spec(), None, VOCAB)
    c = generate(_spec(seed=8), None, VOCAB)
    key = lambda t: [(r.request_id, r.prompt_token_ids, r.params, r.seed, off) for r, off in t]  # noqa: E731
    assert key(a) == key(b)
    assert key(a) != key(c)


def test_other_rate_same_requests_scaled_arrivals():
    a = generate(_spec(rate=1.0), None, VOCAB)
    b = generate(_spec(rate=4.0), None, VOCAB)
    key = lambda t: [(r.request_id, r.prompt_token_ids, r.params, r.seed) for r, _ in t]  # noqa: E731
    assert key(a) == key(b)
    for (_, oa), (_, ob) in zip(a, b, strict=True):
        assert ob == pytest.approx(oa / 4.0)


def test_requests_are_greedy_ignore_eos_with_sampled_lengths():
    trace = generate(_spec(), None, VOCAB)
    assert len(trace) == 40
    assert trace[0][1] == 0.0
    offs = [off for _, off in trace]
    assert offs == sorted(offs)
    for req, _ in trace:
        p = req.params
        assert p.greedy and p.ignore_eos and p.top_k == 0 and p.top_p == 1.0
        assert 2 <= p.max_tokens <= 64
        assert 8 <= req.prompt_len <= 80
        assert all(2 <= t < VOCAB for t in req.prompt_token_ids)
    s = trace_summary(trace)
    assert s["requests"] == 40 and s["output_tokens"] == sum(r.params.max_tokens for r, _ in trace)


def test_poisson_interarrival_mean_and_cv():
    rng = np.random.default_rng(3)
    rate = 5.0
    off = poisson_offsets(rng.standard_exponential(20000), rate)
    gaps = np.diff(off)
    assert off[0] == 0.0
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)  # exponential: CV 1


def test_burst_rate_means_all_at_zero():
    assert list(poisson_offsets(np.ones(3), math.inf)) == [0, 0, 0]
    assert list(poisson_offsets(np.ones(3), 0)) == [0, 0, 0]


def test_fixed_lengths():
    x = LengthDist("fixed", 32).sample(np.random.default_rng(0), 100)
    assert (x == 32).all()
    # cv 0 of any kind is fixed
    assert (LengthDist("lognormal", 17, 0.0).sample(np.random.default_rng(0), 10) == 17).all()


@pytest.mark.parametrize(("kind", "cv"), [("uniform", 0.3), ("lognormal", 0.5), ("lognormal", 1.0)])
def test_unclipped_mean_and_cv(kind, cv):
    x = LengthDist(kind, 200, cv).sample(np.random.default_rng(1), 40000)
    assert x.mean() == pytest.approx(200, rel=0.03)
    assert x.std() / x.mean() == pytest.approx(cv, rel=0.08)


def test_uniform_range():
    d = LengthDist("uniform", 100, 0.5)
    x = d.sample(np.random.default_rng(2), 5000)
    half = math.sqrt(3) * 0.5 * 100
    assert x.min() >= math.floor(100 - half) and x.max() <= math.ceil(100 + half)
    assert x.min() < 100 - 0.9 * half and x.max() > 100 + 0.9 * half  # fills the range


def test_clipping_bounds_hold():
    d = LengthDist("lognormal", 40, 1.5, 10, 60)
    x = d.sample(np.random.default_rng(4), 5000)
    assert x.min() == 10 and x.max() == 60  # heavy tails hit both bounds
    assert x.dtype.kind == "i"


def test_parse_and_str_round_trip():
    d = LengthDist.parse("lognormal:128:0.5:32:256")
    assert d == LengthDist("lognormal", 128, 0.5, 32, 256)
    assert LengthDist.parse(str(d)) == d
    assert LengthDist.parse("fixed:32") == LengthDist("fixed", 32)
    assert LengthDist.parse("uniform:48:0.3").cv == 0.3
    assert d.with_cv(0).kind == "fixed" and d.with_cv(1.0).cv == 1.0


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "normal:3",
        "fixed",
        "fixed:0",
        "lognormal:10:-1",
        "uniform:10:0.9",
        "fixed:10:0:5",
        "fixed:10:0:5:2",
        "fixed:x",
    ],
)
def test_parse_rejects(bad):
    with pytest.raises(ValueError):
        LengthDist.parse(bad)


def test_text_prompts_have_exact_token_length_and_read_as_text(tiny_lm):
    lm = tiny_lm("llama")
    trace = generate(
        _spec(source="text", prompt=LengthDist("lognormal", 60, 0.5, 5, 200)),
        lm.tokenizer,
        lm.limits.vocab_size,
    )
    s = generate(
        _spec(source="text", prompt=LengthDist("lognormal", 60, 0.5, 5, 200)),
        lm.tokenizer,
        lm.limits.vocab_size,
    )
    assert [r.prompt_token_ids for r, _ in trace] == [r.prompt_token_ids for r, _ in s]
    rng = np.random.default_rng(0)
    maker = PromptMaker(lm.tokenizer, lm.limits.vocab_size, "text")
    for n in (1, 7, 64, 300):
        ids = maker.make(n, rng)
        assert len(ids) == n
    text = lm.tokenizer.decode(list(maker.make(80, rng)))
    assert sum(c.isalpha() for c in text) > 0.6 * len(text.replace(" ", ""))  # English words, not noise
    assert len({r.prompt_token_ids[:10] for r, _ in trace}) > 20  # different starting points


def test_random_prompts_avoid_given_ids():
    maker = PromptMaker(None, 10, "random", avoid=(3, 4))
    ids = maker.make(500, np.random.default_rng(0))
    assert len(ids) == 500 and not {3, 4} & set(ids) and set(ids) <= set(range(2, 10))


def test_text_source_needs_a_tokenizer():
    with pytest.raises(ValueError, match="tokenizer"):
        PromptMaker(None, 100, "text")
