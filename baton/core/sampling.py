"""Token sampling, one request at a time within a batch.

Greedy rows take the argmax. Sampled rows draw from their own filtered distribution with a
uniform number that depends only on (request seed, token index): a request's tokens do not depend
on which other queries share the batch, or on whether its first token came from a prefill worker.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch

from baton.core.params import SamplingParams

_MASK64 = (1 << 64) - 1


def new_seed() -> int:
    return random.SystemRandom().randrange(0, 2**63)


def _uniform(seed: int, index: int) -> float:
    # splitmix64 of (seed, index): cheap, stateless, well mixed.
    z = (seed + (index + 1) * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    z ^= z >> 31
    return (z >> 11) / float(1 << 53)


def sample_one(logits: torch.Tensor, params: SamplingParams, seed: int, index: int) -> int:
    """Sample the ``index``-th output token of a request from its 1-D logits."""
    if params.greedy:
        return int(torch.argmax(logits))
    x = logits.float()
    # Subtract the max first: a tiny temperature then gives -inf, never inf - inf = NaN.
    scores = (x - x.max()) / params.temperature
    probs, order = torch.sort(torch.softmax(scores, dim=-1), descending=True)
    if params.top_k > 0:
        probs = probs[: params.top_k]
        order = order[: params.top_k]
        probs = probs / probs.sum()  # top-p applies to the renormalised top-k distribution
    if params.top_p < 1.0:
        cum = torch.cumsum(probs, dim=-1)
        # Keep the smallest prefix whose mass reaches top_p (always at least one token).
        keep = (
            int(torch.searchsorted(cum, torch.tensor(params.top_p, dtype=cum.dtype, device=cum.device))) + 1
        )
        probs, order = probs[:keep], order[:keep]
    cdf = torch.cumsum(probs, dim=-1)
    u = _uniform(seed, index) * float(cdf[-1])
    pick = min(
        int(torch.searchsorted(cdf, torch.tensor(u, dtype=cdf.dtype, device=cdf.device), right=True)),
        len(order) - 1,
    )
    return int(order[pick])


def _argmax_rows(logits: torch.Tensor) -> torch.Tensor:
    return torch.argmax(logits, dim=-1)


def runtime_argmax(runtime: object) -> Callable[[torch.Tensor], torch.Tensor]:
    """The runtime's row argmax if it has one (optional in ``ModelRuntime``), else torch's."""
    return getattr(runtime, "argmax", None) or _argmax_rows


def sample_rows(
    logits: torch.Tensor,
    params: list[SamplingParams],
    seeds: list[int],
    indices: list[int],
    argmax: Callable[[torch.Tensor], torch.Tensor] = _argmax_rows,
) -> list[int]:
    """Sample one token per row of ``logits [rows, vocab]``: greedy rows in one ``argmax`` (the
    first maximum of each row, as ``torch.argmax``; a runtime may pass a faster one)."""
    greedy = argmax(logits).tolist()
    out = []
    for r, p in enumerate(params):
        out.append(greedy[r] if p.greedy else sample_one(logits[r], p, seeds[r], indices[r]))
    return out
