"""Sampling: greedy argmax, (seed, index)-determinism independent of batch-mates, correct distribution."""

from __future__ import annotations

import math

import pytest
import torch

from baton.core.params import SamplingParams
from baton.core.sampling import _uniform, new_seed, sample_one, sample_rows

PROBS = [0.1, 0.5, 0.15, 0.25]  # sorted by probability: 1, 3, 2, 0
LOGITS = torch.log(torch.tensor(PROBS))


def _draws(logits, params, n, index=0, seed0=1000):
    return [sample_one(logits, params, seed0 + s, index) for s in range(n)]


def _chi2(counts: list[int], probs: list[float]) -> float:
    n = sum(counts)
    return sum((c - n * p) ** 2 / (n * p) for c, p in zip(counts, probs, strict=True) if p > 0)


# --------------------------------------------------------------------------- greedy
def test_greedy_is_argmax():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        logits = torch.randn(37, generator=g) * 3
        want = int(torch.argmax(logits))
        assert sample_one(logits, SamplingParams(), seed=123, index=4) == want
        # The seed and index are irrelevant to greedy rows.
        assert sample_one(logits, SamplingParams(seed=5), seed=999, index=0) == want


def test_greedy_rows_in_batch():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 50, generator=g)
    got = sample_rows(logits, [SamplingParams()] * 6, list(range(6)), [0] * 6)
    assert got == torch.argmax(logits, dim=-1).tolist()


def test_greedy_bfloat16_logits():
    logits = torch.tensor([0.5, 2.0, -1.0, 1.5], dtype=torch.bfloat16)
    assert sample_one(logits, SamplingParams(), 0, 0) == 1
    assert sample_one(logits, SamplingParams(temperature=1.0, top_k=1), 0, 0) == 1


# --------------------------------------------------------------------------- determinism
def test_uniform_in_unit_interval_and_varies():
    us = [_uniform(s, i) for s in (0, 1, 2**63 - 1) for i in range(200)]
    assert all(0.0 <= u < 1.0 for u in us)
    assert len(set(us)) == len(us)
    assert abs(sum(us) / len(us) - 0.5) < 0.05


def test_new_seed_in_range():
    seeds = {new_seed() for _ in range(20)}
    assert all(0 <= s < 2**63 for s in seeds)
    assert len(seeds) > 1
    SamplingParams(seed=max(seeds))  # always a valid seed


def test_seeded_sampling_deterministic_per_seed_and_index():
    p = SamplingParams(temperature=1.0)
    logits = torch.zeros(64)  # uniform: every token is equally likely, so draws vary a lot
    a = [sample_one(logits, p, seed=42, index=i) for i in range(30)]
    b = [sample_one(logits, p, seed=42, index=i) for i in range(30)]
    assert a == b
    assert len(set(a)) > 10  # the index matters
    c = [sample_one(logits, p, seed=43, index=i) for i in range(30)]
    assert a != c  # the seed matters
    # The same (seed, index) asked out of order gives the same token.
    assert [sample_one(logits, p, seed=42, index=i) for i in reversed(range(30))] == a[::-1]


def test_row_independent_of_batch_mates():
    g = torch.Generator().manual_seed(7)
    vocab = 40
    target = torch.randn(vocab, generator=g)
    p = SamplingParams(temperature=0.9, top_p=0.95, top_k=20)
    for index in range(15):
        alone = sample_rows(target[None], [p], [2024], [index])[0]
        for trial in range(4):
            rows = 1 + trial
            others = torch.randn(rows, vocab, generator=g) * 4
            batch = torch.cat([others[: trial % rows], target[None], others[trial % rows :]])
            pos = trial % rows
            params = [SamplingParams(temperature=1.3, seed=trial)] * batch.shape[0]
            params[pos] = p
            seeds = [trial * 17 + r for r in range(batch.shape[0])]
            seeds[pos] = 2024
            indices = [index + 3 + r for r in range(batch.shape[0])]
            indices[pos] = index
            assert sample_rows(batch, params, seeds, indices)[pos] == alone
        assert sample_one(target, p, 2024, index) == alone


def test_mixed_greedy_and_sampled_rows():
    logits = torch.stack([LOGITS, LOGITS, torch.tensor([3.0, 0.0, 0.0, 0.0])])
    params = [SamplingParams(), SamplingParams(temperature=1.0), SamplingParams()]
    for seed in range(20):
        got = sample_rows(logits, params, [seed] * 3, [seed] * 3)
        assert got[0] == 1 and got[2] == 0
        assert got[1] == sample_one(LOGITS, params[1], seed, seed)


# --------------------------------------------------------------------------- filters
def test_top_k_one_is_greedy():
    g = torch.Generator().manual_seed(3)
    for s in range(30):
        logits = torch.randn(25, generator=g)
        p = SamplingParams(temperature=1.7, top_k=1)
        assert sample_one(logits, p, seed=s, index=s) == int(torch.argmax(logits))


def test_tiny_top_p_is_greedy():
    g = torch.Generator().manual_seed(4)
    for s in range(30):
        logits = torch.randn(25, generator=g)
        p = SamplingParams(temperature=1.0, top_p=1e-6)
        assert sample_one(logits, p, seed=s, index=s) == int(torch.argmax(logits))


def test_small_temperature_is_greedy():
    g = torch.Generator().manual_seed(5)
    for s in range(30):
        logits = torch.randn(25, generator=g)
        assert sample_one(logits, SamplingParams(temperature=1e-4), s, s) == int(torch.argmax(logits))


def test_extremely_small_temperature_is_greedy():
    logits = torch.tensor([1.0, 3.0, 2.0, 0.5])
    p = SamplingParams(temperature=1e-40)  # finite and > 0: accepted by validation
    assert [sample_one(logits, p, s, 0) for s in range(10)] == [1] * 10


def test_top_k_restricts_support():
    draws = _draws(LOGITS, SamplingParams(temperature=1.0, top_k=2), 2000)
    assert set(draws) == {1, 3}
    # Within the support the renormalised proportions hold: 0.5 : 0.25.
    frac = draws.count(1) / len(draws)
    assert abs(frac - 2 / 3) < 0.04


def test_top_p_restricts_support_to_nucleus():
    # Sorted mass: 0.5 (tok 1), 0.75 (+tok 3), 0.9 (+tok 2), 1.0 (+tok 0).
    assert set(_draws(LOGITS, SamplingParams(temperature=1.0, top_p=0.4), 500)) == {1}
    assert set(_draws(LOGITS, SamplingParams(temperature=1.0, top_p=0.6), 2000)) == {1, 3}
    assert set(_draws(LOGITS, SamplingParams(temperature=1.0, top_p=0.8), 2000)) == {1, 3, 2}
    assert set(_draws(LOGITS, SamplingParams(temperature=1.0, top_p=0.95), 3000)) == {0, 1, 2, 3}


def test_top_p_nucleus_proportions():
    draws = _draws(LOGITS, SamplingParams(temperature=1.0, top_p=0.8), 4000)
    counts = [draws.count(t) for t in range(4)]
    nucleus = [0.0, 0.5 / 0.9, 0.15 / 0.9, 0.25 / 0.9]
    assert counts[0] == 0
    assert _chi2(counts, nucleus) < 13.8  # chi-square, 2 dof, p = 0.001


def test_masked_tokens_never_sampled():
    logits = torch.tensor([0.0, float("-inf"), 1.0, float("-inf")])
    assert set(_draws(logits, SamplingParams(temperature=1.0), 1000)) == {0, 2}


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
def test_empirical_frequencies_match_softmax(temperature):
    n = 6000
    draws = _draws(LOGITS, SamplingParams(temperature=temperature), n, index=3, seed0=77)
    counts = [draws.count(t) for t in range(4)]
    probs = torch.softmax(LOGITS / temperature, dim=-1).tolist()
    # Chi-square with 3 degrees of freedom: 16.27 is the p = 0.001 quantile. Fixed seeds: deterministic.
    assert _chi2(counts, probs) < 16.27, (counts, probs)
    for c, p in zip(counts, probs, strict=True):
        assert abs(c / n - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-3


def test_frequencies_over_indices_of_one_seed():
    # One request's successive tokens (fixed seed, growing index) also follow the distribution.
    n = 5000
    draws = [sample_one(LOGITS, SamplingParams(temperature=1.0), 31337, i) for i in range(n)]
    counts = [draws.count(t) for t in range(4)]
    assert _chi2(counts, PROBS) < 16.27, counts


def test_top_p_applies_to_renormalised_top_k():
    # probs [0.4, 0.3, 0.3]; top_k=2 renormalises to [4/7, 3/7]: top_p=0.5 keeps only the first.
    logits = torch.tensor([math.log(0.4), math.log(0.3), math.log(0.3)])
    p = SamplingParams(temperature=1.0, top_k=2, top_p=0.5)
    assert {sample_one(logits, p, seed=s, index=0) for s in range(200)} == {0}
