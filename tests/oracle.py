"""The correctness oracle: transformers' own ``generate`` on each query alone, the tie rule, and the
random query sets the exactness tests (engine, Ray, gRPC) run through it.

The oracle always runs transformers, whatever runtime served the model: a model loaded with baton's
own (fast) runtime has no transformers model, so one is loaded beside it from the same weights.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import torch

from baton.core.params import SamplingParams
from baton.core.request import Request

TIE = 1e-4  # a first difference passes only where the reference's top-2 logits are this close
MAX_TIES = 2  # ties must stay rare, or a check would prove nothing
N_QUERIES = 36


_hf_models: dict[tuple[str, str, str], object] = {}


def hf_model(lm):
    """The transformers model for ``lm``'s weights, dtype and device (its own when it has one)."""
    if lm.model is not None:
        return lm.model
    key = (lm.name, lm.dtype_name, str(lm.device))
    if key not in _hf_models:
        from baton.core.models import load_model

        _hf_models[key] = load_model(lm.name, str(lm.device), lm.dtype_name, runtime="hf").model
    return _hf_models[key]


@torch.inference_mode()
def reference(lm, prompt: list[int], max_tokens: int, ignore_eos: bool = False):
    """Greedy tokens of ``generate`` on this query alone, and its raw logits per step."""
    eos = None if ignore_eos else list(lm.limits.eos_token_ids)
    out = hf_model(lm).generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones((1, len(prompt)), dtype=torch.long),
        max_new_tokens=max_tokens,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=0,
        output_logits=True,
        return_dict_in_generate=True,
    )
    return out.sequences[0, len(prompt) :].tolist(), [lg[0] for lg in out.logits]


def compare(lm, prompt: list[int], got: list[int], max_tokens: int, ignore_eos: bool = False) -> str:
    """'equal', 'tie' (first difference is a near-tie in the reference) or a failure message."""
    ref, logits = reference(lm, prompt, max_tokens, ignore_eos)
    if got == ref:
        return "equal"
    k = next((i for i, (a, b) in enumerate(zip(ref, got, strict=False)) if a != b), min(len(ref), len(got)))
    if k < len(ref) and k < len(got):
        top = torch.topk(logits[k].float(), 2).values
        gap = float(top[0] - top[1])
        if gap <= TIE:
            return "tie"
        return f"differs at token {k}: got {got[k]}, generate {ref[k]} (top-2 gap {gap:.3g})\n got {got}\n ref {ref}"
    return f"length differs: got {len(got)} tokens, generate {len(ref)}\n got {got}\n ref {ref}"


def assert_exact(lm, reqs: Sequence[Request], outputs, max_ties: int = MAX_TIES) -> dict[str, str]:
    """Every request's greedy output equals ``generate`` on that request alone, or first differs at a
    near-tie; at most ``max_ties`` ties in all. Returns the verdict per request id.

    ``outputs``: completions (or token lists) in the order of ``reqs``, or a mapping request id -> those.
    A request's ``max_tokens`` and ``ignore_eos`` are taken from its params.
    """
    if isinstance(outputs, Mapping):
        outputs = [outputs[r.request_id] for r in reqs]
    assert len(outputs) == len(reqs), (len(outputs), len(reqs))
    verdicts = {}
    for r, out in zip(reqs, outputs, strict=True):
        tokens = list(getattr(out, "token_ids", out))
        p = r.params
        verdicts[r.request_id] = compare(lm, list(r.prompt_token_ids), tokens, p.max_tokens, p.ignore_eos)
    failures = {k: v for k, v in verdicts.items() if v not in ("equal", "tie")}
    assert not failures, "\n".join(f"{k}: {v}" for k, v in failures.items())
    ties = sorted(k for k, v in verdicts.items() if v == "tie")
    assert len(ties) <= max_ties, f"{len(ties)} near-ties (at most {max_ties} allowed): {ties}"
    return verdicts


def greedy_request(request_id: str, prompt, max_tokens: int, ignore_eos: bool = False) -> Request:
    """A greedy request, e.g. to check a completion that did not start from a Request."""
    return Request(request_id, tuple(prompt), SamplingParams(max_tokens=max_tokens, ignore_eos=ignore_eos), 0)


def make_queries(lm, seed: int, n: int = N_QUERIES) -> list[Request]:
    """``n`` greedy queries with random prompts (1-200 tokens, no EOS) and max_tokens (1-64).

    The first (up to) four are fixed extremes: shortest and longest prompts, one-token and 64-token outputs.
    """
    rng = random.Random(seed)
    vocab = lm.limits.vocab_size
    eos = set(lm.limits.eos_token_ids)
    lengths = ([1, 200, 2, 150] + [rng.randint(1, 200) for _ in range(n - 4)])[:n]
    maxes = ([64, 1, 37, 64] + [rng.randint(1, 64) for _ in range(n - 4)])[:n]
    reqs = []
    for i, (p, m) in enumerate(zip(lengths, maxes, strict=True)):
        prompt = tuple(t for t in (rng.randrange(2, vocab) for _ in range(p * 2)) if t not in eos)[:p]
        reqs.append(Request(f"q{i}", prompt, SamplingParams(max_tokens=m), seed=i))
    return reqs
