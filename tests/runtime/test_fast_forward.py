"""The fast runtime's forward against the transformers runtime, logits and KV, in float32.

Prefill packs several prompts into one unpadded forward; decode steps run through a real
``DecodeBatch`` (padded windows, inserted rows shorter and longer than the window, rows leaving,
``orca`` steps of width > 1), with baton's CPU attention kernel and with the torch-ops attention.
"""

from __future__ import annotations

import random

import pytest
import torch

from baton.core.params import SamplingParams
from baton.core.request import Request
from baton.runtime.llama import FastRuntime
from decode_worker.batch import DecodeBatch
from prefill_worker.engine import PrefillEngine

FAMILIES = ["llama", "qwen2", "qwen3"]


def _prompts(vocab: int, lens: list[int], seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lens]


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 2e-5) -> None:
    scale = float(b.abs().max())
    err = float((a.float() - b.float()).abs().max())
    assert err <= rel * max(scale, 1.0), f"max |diff| {err:.3g} vs scale {scale:.3g}"


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_prefill_matches_hf(fast_lm, hf_lm, family):
    fast, hf = fast_lm(family), hf_lm(family)
    assert isinstance(fast.runtime, FastRuntime) and fast.runtime.padded_prefill is False
    prompts = _prompts(hf.limits.vocab_size, [5, 17, 1, 33, 64])
    kv_f, lg_f = fast.runtime.prefill(prompts)
    kv_h, lg_h = hf.runtime.prefill(prompts)
    _close(lg_f, lg_h)
    for p, a, b in zip(prompts, kv_f, kv_h, strict=True):
        assert (
            a.shape
            == b.shape
            == (fast.layout.num_layers, 2, fast.layout.kv_heads, len(p), fast.layout.head_dim)
        )
        assert a.is_contiguous() and a.dtype == torch.float32
        _close(a, b)
    # Packing changes nothing: each prompt alone gives the same logits.
    for i, p in enumerate(prompts):
        _close(fast.runtime.prefill([p])[1][0], lg_f[i], rel=1e-5)


@pytest.mark.parametrize("name", ["llama_tied_bias_llama3", "llama_linear_rope"])
def test_llama_config_variants_match_hf(variant_dir, name):
    from baton.core.models import load_model

    folder = str(variant_dir(name))
    fast = load_model(folder, dtype="float32", runtime="fast")
    hf = load_model(folder, dtype="float32", runtime="hf")
    assert fast.runtime.name == "fast" and fast.layout == hf.layout and fast.fingerprint == hf.fingerprint
    prompts = _prompts(hf.limits.vocab_size, [3, 40, 200])  # past llama3's original 64 positions
    kv_f, lg_f = fast.runtime.prefill(prompts)
    kv_h, lg_h = hf.runtime.prefill(prompts)
    _close(lg_f, lg_h)
    for a, b in zip(kv_f, kv_h, strict=True):
        _close(a, b)


class Spy:
    """Keeps the logits of every decode forward of a runtime."""

    def __init__(self, runtime):
        self.runtime = runtime
        self.logits: list[torch.Tensor] = []

    def decode(self, step, cache):
        out = self.runtime.decode(step, cache)
        self.logits.append(out.float().clone())
        return out


def _script(lm, reqs: list[Request], seed: int):
    """Drive a DecodeBatch through a fixed random schedule of inserts, steps and orca steps."""
    rng = random.Random(seed)
    pe = PrefillEngine(lm, 10_000)
    batch = DecodeBatch(lm, 6, capacity=400)
    batch.runtime = spy = Spy(batch.runtime)
    out: dict[str, list[int]] = {}
    pending = list(reqs)
    widths = []
    while pending or batch.rows:
        r = rng.random()
        if pending and batch.free_rows and (not batch.rows or r < 0.25):
            for h in pe.prefill(pending[:1]):
                fin = batch.insert(h)
                if fin:
                    out[fin.request_id] = fin.token_ids
            pending = pending[1:]
            continue
        prompts = []
        if pending and batch.free_rows and r < 0.4:
            prompts, pending = pending[:1], pending[1:]  # orca: the prompt rides in this forward
        res = batch.step(prompts)
        widths.append(res.query_len)
        for f in res.finished:
            out[f.request_id] = f.token_ids
    return out, spy.logits, widths


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "torch-attention"])
@pytest.mark.parametrize("family", FAMILIES)
def test_decode_steps_match_hf(fast_lm, hf_lm, family, kernel):
    fast, hf = fast_lm(family), hf_lm(family)
    rt = fast.runtime
    if kernel and not rt.attention_kernel:
        pytest.skip("the CPU attention kernel did not build here")
    saved, rt.attention_kernel = rt.attention_kernel, kernel
    try:
        g = random.Random(7)
        vocab = hf.limits.vocab_size
        reqs = [
            Request(
                f"q{i}",
                tuple(g.randrange(3, vocab) for _ in range(g.randint(1, 60))),
                SamplingParams(max_tokens=g.randint(2, 20), ignore_eos=True),
                seed=i,
            )
            for i in range(10)
        ]
        out_f, lg_f, widths = _script(fast, reqs, seed=3)
        out_h, lg_h, _ = _script(hf, reqs, seed=3)
    finally:
        rt.attention_kernel = saved
    assert max(widths) > 1 and 1 in widths  # orca steps and plain decode steps both ran
    assert out_f == out_h
    assert len(lg_f) == len(lg_h)
    for a, b in zip(lg_f, lg_h, strict=True):
        _close(a, b)


def test_decode_kernel_and_torch_attention_agree(fast_lm):
    """The CPU kernel and the torch-ops attention give the same steps (float32, padded windows)."""
    lm = fast_lm("llama")
    rt = lm.runtime
    if not rt.attention_kernel:
        pytest.skip("the CPU attention kernel did not build here")
    pe = PrefillEngine(lm)
    reqs = [Request(f"r{n}", tuple(range(5, 5 + n)), SamplingParams(max_tokens=9), 0) for n in (30, 4, 50)]
    handoffs = pe.prefill(reqs)  # a longer row pads the others on the left
    batches = [DecodeBatch(lm, 4, capacity=200) for _ in range(2)]
    spies = []
    for b in batches:
        for h in handoffs:
            b.insert(h)
        b.runtime = Spy(rt)
        spies.append(b.runtime)
    try:
        for _ in range(8):
            for b, kernel in zip(batches, (True, False), strict=True):
                rt.attention_kernel = kernel
                b.step()
    finally:
        rt.attention_kernel = True
    assert len(spies[0].logits) == 8
    for a, b in zip(spies[0].logits, spies[1].logits, strict=True):
        _close(a, b, rel=1e-5)
