"""The fused bf16 forward (one C++ call per forward) against the layer-by-layer forward it replaces.

Both run the same GEMM and attention kernels and round to bfloat16 at the same places, so decode
steps (padded windows, inserted and leaving rows, ``orca`` steps of width > 1) agree to the bit but
for RMSNorm's summation order; prefill differs more (its attention is baton's kernel, not
``scaled_dot_product_attention``), within bf16 rounding. And the fused path really runs where it
should: for bf16 Llama-family models on a CPU with AVX-512.
"""

from __future__ import annotations

import random

import pytest
import torch
from test_fast_forward import _prompts, _script

from baton.core.params import SamplingParams
from baton.core.request import Request
from baton.runtime import kernels

pytestmark = pytest.mark.skipif(
    not kernels.bf16_gemm_available(torch.device("cpu")), reason="baton's bf16 kernels need AVX-512"
)
FAMILIES = ["llama", "qwen2", "qwen3"]  # qwen2: q/k/v biases; qwen3: q/k norms, head_dim 32


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max()) / max(float(b.float().abs().max()), 1e-6)


def _both(rt, run):
    """``run()`` with the fused forward, then with the layer-by-layer one."""
    saved = rt.fused
    try:
        rt.fused = True
        calls = rt.fused_calls
        fused = run()
        assert rt.fused_calls > calls  # the fused path ran
        rt.fused = False
        layers = run()
    finally:
        rt.fused = saved
    return fused, layers


def _reqs(vocab: int, n: int = 10, seed: int = 7) -> list[Request]:
    g = random.Random(seed)
    return [
        Request(
            f"q{i}",
            tuple(g.randrange(3, vocab) for _ in range(g.randint(1, 60))),
            SamplingParams(max_tokens=g.randint(2, 20), ignore_eos=True),
            seed=i,
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("family", FAMILIES)
def test_fused_is_the_bf16_default(fast_lm, family):
    rt = fast_lm(family, "bfloat16").runtime
    assert rt.fused and rt.describe()["forward"] == "fused"
    assert rt.describe()["gemm_isa"] in ("native", "avx512f")
    assert not fast_lm(family).runtime.fused  # float32 keeps the layer-by-layer forward


@pytest.mark.parametrize("family", FAMILIES)
def test_fused_decode_steps_equal_layer_by_layer(fast_lm, family):
    lm = fast_lm(family, "bfloat16")
    rt = lm.runtime
    reqs = _reqs(lm.limits.vocab_size)
    prefill = rt.prefill

    def layered_prefill(prompts):  # the same handoffs for both runs: only the decode path differs
        saved, rt.fused = rt.fused, False
        try:
            return prefill(prompts)
        finally:
            rt.fused = saved

    rt.prefill = layered_prefill
    try:
        (out_f, lg_f, widths), (out_l, lg_l, _) = _both(rt, lambda: _script(lm, reqs, seed=3))
    finally:
        del rt.prefill
    assert max(widths) > 1 and 1 in widths  # orca steps and plain decode steps both ran
    assert out_f == out_l
    assert len(lg_f) == len(lg_l)
    for a, b in zip(lg_f, lg_l, strict=True):
        assert _rel(a, b) < 0.05


@pytest.mark.parametrize("family", FAMILIES)
def test_fused_decode_on_the_same_cache_is_the_same_step(fast_lm, family):
    """Same handoffs into two batches, one step each: fused and layer-by-layer logits agree."""
    from decode_worker.batch import DecodeBatch
    from prefill_worker.engine import PrefillEngine

    lm = fast_lm(family, "bfloat16")
    rt = lm.runtime
    handoffs = PrefillEngine(lm).prefill(_reqs(lm.limits.vocab_size, n=4, seed=11))

    def one_step():
        batch = DecodeBatch(lm, 4, capacity=200)
        for h in handoffs:
            batch.insert(h)  # rows of different lengths: a padded window
        logits = []
        orig = rt.decode
        try:
            rt.decode = lambda step, cache: logits.append(orig(step, cache)) or logits[-1]
            batch.step()
        finally:
            del rt.decode
        return logits[0].float()

    fused, layers = _both(rt, one_step)
    assert fused.shape == layers.shape
    assert _rel(fused, layers) < 0.02
    assert (fused == layers).float().mean() > 0.9  # all but RMSNorm's summation order is the same


@pytest.mark.parametrize("family", [*FAMILIES, "variant"])
def test_fused_prefill_matches_layer_by_layer(fast_lm, variant_dir, family):
    from baton.core.models import load_model

    if family == "variant":  # tied embeddings, biases everywhere, llama3 rope
        lm = load_model(str(variant_dir("llama_tied_bias_llama3")), dtype="bfloat16", runtime="fast")
    else:
        lm = fast_lm(family, "bfloat16")
    prompts = _prompts(lm.limits.vocab_size, [5, 17, 1, 33, 64, 200])
    (kv_f, lg_f), (kv_l, lg_l) = _both(lm.runtime, lambda: lm.runtime.prefill(prompts))
    assert lg_f.shape == lg_l.shape == (len(prompts), lm.limits.vocab_size)
    assert _rel(lg_f, lg_l) < 0.05
    for p, a, b in zip(prompts, kv_f, kv_l, strict=True):
        assert a.shape == b.shape and a.is_contiguous() and a.dtype == torch.bfloat16
        assert _rel(a[0], b[0]) < 0.02  # layer 0's K/V come before any attention
        assert _rel(a, b) < 0.1, len(p)
    # Packing changes nothing in the fused prefill: each prompt alone gives the same bits.
    for i, p in enumerate(prompts):
        kv1, lg1 = lm.runtime.prefill([p])
        assert torch.equal(lg1[0], lg_f[i]) and torch.equal(kv1[0], kv_f[i])
