"""Random query sets shared by the exactness tests (engine, Ray, gRPC)."""

from __future__ import annotations

import random

from baton.core.params import SamplingParams
from baton.core.request import Request

N_QUERIES = 36


def make_queries(lm, seed: int, n: int = N_QUERIES) -> list[Request]:
    rng = random.Random(seed)
    vocab = lm.limits.vocab_size
    eos = set(lm.limits.eos_token_ids)
    lengths = [1, 200, 2, 150] + [rng.randint(1, 200) for _ in range(n - 4)]
    maxes = [64, 1, 37, 64] + [rng.randint(1, 64) for _ in range(n - 4)]
    reqs = []
    for i, (p, m) in enumerate(zip(lengths, maxes, strict=True)):
        prompt = tuple(t for t in (rng.randrange(2, vocab) for _ in range(p * 2)) if t not in eos)[:p]
        reqs.append(Request(f"q{i}", prompt, SamplingParams(max_tokens=m), seed=i))
    return reqs
