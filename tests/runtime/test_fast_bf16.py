"""bfloat16 on the fast runtime: batch invariance (a query's tokens in a busy batch equal the same
runtime running it alone, under every policy, eager and compiled), compiled steps equal eager ones
in float32, and the pieces that make invariance hold (the attention kernel reads only a row's real
columns in a fixed order; baton's bf16 GEMM sums each output in one order whatever the row count;
oneDNN GEMMs over packed weights run at least MIN_GEMM_ROWS rows)."""

from __future__ import annotations

import random

import pytest
import torch
from oracle import make_queries

from baton.core.config import EngineConfig
from baton.core.params import SamplingParams
from baton.core.request import Request
from baton.engine import LocalEngine
from baton.runtime import kernels
from baton.runtime.llama import MIN_GEMM_ROWS, attention, linear
from decode_worker.batch import DecodeBatch
from prefill_worker.engine import PrefillEngine

POLICIES = ["baton", "colocated", "orca", "static"]

# Batch invariance rests on baton's attention kernel (the torch-ops attention sums over the
# padded window, so a row's result depends on its padding).
needs_kernel = pytest.mark.skipif(
    not kernels.available(torch.device("cpu"), 16), reason="the CPU attention kernel did not build here"
)


def _greedy(reqs: list[Request]) -> list[Request]:
    return [
        Request(
            r.request_id,
            r.prompt_token_ids,
            SamplingParams(max_tokens=r.params.max_tokens, ignore_eos=True),
            r.seed,
        )
        for r in reqs
    ]


def _busy_vs_alone(lm, reqs: list[Request], policy: str) -> list[tuple[str, int]]:
    """(request id, first differing token) for every query whose tokens differ busy vs alone."""
    rng = random.Random(3)
    trace = [(r, 0.0 if i < 3 else rng.uniform(0, 0.4)) for i, r in enumerate(reqs)]
    cfg = EngineConfig(policy=policy, max_batch_size=8, max_seq_len=300)
    busy = {c.request_id: c.token_ids for c in LocalEngine(lm, cfg).run(trace)}
    diffs = []
    for r in reqs:
        alone = LocalEngine(lm, cfg).run([(r, 0.0)])[0].token_ids
        if alone != busy[r.request_id]:
            diffs.append(
                (
                    r.request_id,
                    next(
                        i for i, (a, b) in enumerate(zip(alone, busy[r.request_id], strict=False)) if a != b
                    ),
                )
            )
    return diffs


@needs_kernel
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_bf16_batch_invariant(fast_lm, family, policy):
    lm = fast_lm(family, "bfloat16")
    assert lm.dtype == torch.bfloat16 and lm.runtime.name == "fast"
    reqs = _greedy(make_queries(lm, seed=23, n=16))
    assert _busy_vs_alone(lm, reqs, policy) == []


@needs_kernel
def test_bf16_compiled_batch_invariant(fast_lm, capsys):
    eager, compiled = fast_lm("llama", "bfloat16"), fast_lm("llama", "bfloat16", "on")
    reqs = _greedy(make_queries(eager, seed=29, n=12))
    assert _busy_vs_alone(compiled, reqs, "baton") == []
    assert compiled.runtime.compiled is not None and compiled.runtime.compiled.calls > 0
    # Compiled and eager bf16 are different programs (inductor fuses the norms and keeps float32
    # between ops where eager rounds to bf16): measured, not asserted equal.
    cfg = EngineConfig(policy="baton", max_batch_size=8, max_seq_len=300)
    a = LocalEngine(eager, cfg).run([(r, 0.0) for r in reqs])
    b = LocalEngine(compiled, cfg).run([(r, 0.0) for r in reqs])
    same = sum(x.token_ids == y.token_ids for x, y in zip(a, b, strict=True))
    with capsys.disabled():
        print(f"\n[bf16] compiled vs eager: {same}/{len(reqs)} queries with equal tokens")


@pytest.mark.slow
@needs_kernel
@pytest.mark.parametrize(("compile", "policy"), [("off", "baton"), ("on", "baton"), ("off", "orca")])
def test_smollm2_bf16_batch_invariant(compile, policy):
    from baton.core.models import load_model

    lm = load_model("smollm2-135m", dtype="bfloat16", compile=compile)
    assert lm.runtime.name == "fast" and lm.runtime.model.packed
    reqs = [
        Request(
            r.request_id,
            r.prompt_token_ids[:100],
            SamplingParams(max_tokens=min(r.params.max_tokens, 24), ignore_eos=True),
            r.seed,
        )
        for r in make_queries(lm, seed=23, n=12)
    ]
    assert _busy_vs_alone(lm, reqs, policy) == []


# ---------------------------------------------------------------------------------------------- pieces
@pytest.mark.parametrize("kind", ["baton", "onednn"])
def test_packed_gemm_rows_do_not_depend_on_batch_size(kind):
    from torch import nn

    from baton.runtime.llama import _PACKED, _pack

    if kind == "baton" and not kernels.bf16_gemm_available(torch.device("cpu")):
        pytest.skip("baton's bf16 GEMM needs AVX-512")

    g = torch.Generator().manual_seed(0)
    for k, n in ((1536, 576), (576, 3072)):
        dense = torch.randn(n, k, generator=g).bfloat16()
        w = _pack(nn.Parameter(dense.clone(), requires_grad=False), kind)
        assert w.stride() == (0, 0)  # a placeholder: the weight is held once, packed
        assert _PACKED[w.data_ptr()][0] == kind
        x = torch.randn(100, k, generator=g).bfloat16()
        single = torch.cat([linear(x[i : i + 1], w) for i in range(100)])
        # every path of baton's AVX-512F GEMM: row tiles (< 16 rows), chunked tiles (16-95), a panel (96+)
        for m in (1, 2, MIN_GEMM_ROWS - 1, MIN_GEMM_ROWS, 15, 16, 23, 40, 95, 100):
            assert torch.equal(linear(x[:m], w), single[:m]), (k, n, m)
        ref = torch.nn.functional.linear(x.float(), dense.float())
        assert (single.float() - ref).abs().max() < 0.02 * ref.abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_kernel_matches_torch_and_ignores_padding(dtype):
    if not kernels.available(torch.device("cpu"), 64):
        pytest.skip("the CPU attention kernel did not build here")
    g = torch.Generator().manual_seed(0)
    n, kvh, groups, hd, cap = 5, 3, 3, 64, 300
    kb = torch.randn(n, kvh, cap, hd, generator=g).to(dtype)
    vb = torch.randn(n, kvh, cap, hd, generator=g).to(dtype)
    q = torch.randn(n, kvh, groups, hd, generator=g).to(dtype)
    mask = torch.rand(n, 120, generator=g) > 0.3
    mask[:, -1] = True
    k, v = kb[:, :, 50:170], vb[:, :, 50:170]
    got = kernels.decode_attention(q, k, v, mask, 0.125)
    bias = torch.zeros(n, 1, 1, 120).masked_fill_(~mask[:, None, None], float("-inf"))
    ref = attention(q.float(), k.float(), v.float(), bias, 0.125)
    assert (got.float() - ref).abs().max() < (1e-5 if dtype == torch.float32 else 2e-2)
    # Each row alone, its real columns packed elsewhere in a buffer: the same bits.
    for r in range(n):
        cols = mask[r].nonzero().flatten()
        k1 = torch.zeros(1, kvh, cap, hd, dtype=dtype)
        v1 = torch.zeros(1, kvh, cap, hd, dtype=dtype)
        k1[0, :, 7 : 7 + len(cols)], v1[0, :, 7 : 7 + len(cols)] = k[r][:, cols], v[r][:, cols]
        alone = kernels.decode_attention(
            q[r : r + 1], k1[:, :, 7 : 7 + len(cols)], v1[:, :, 7 : 7 + len(cols)], None, 0.125
        )
        assert torch.equal(alone[0], got[r])


class Spy:
    def __init__(self, runtime):
        self.runtime, self.logits = runtime, []

    def decode(self, step, cache):
        out = self.runtime.decode(step, cache)
        self.logits.append(out.float().clone())
        return out


def test_compiled_steps_equal_eager_and_do_not_recompile(fast_lm):
    """Compiled decode (float32 here: cheap): the logits of eager steps; no compile after warm-up."""
    import torch._dynamo.utils as dyn

    lm = fast_lm("qwen2", "float32", "on")
    rt = lm.runtime
    DecodeBatch(lm, 4, capacity=200)  # warm-up: buckets 1, 2, 4
    assert rt.compiled is not None and rt.compiled.buckets == (1, 2, 4) and rt.compile_s > 0
    assert lm.describe()["compiled"] is True
    graphs = dyn.counters["stats"]["unique_graphs"]
    reqs = [
        Request(f"r{i}", tuple(range(5 + i, 25 + 3 * i)), SamplingParams(max_tokens=30), i) for i in range(3)
    ]
    handoffs = PrefillEngine(lm).prefill(reqs)
    logits, compiled = {}, rt.compiled
    for use in (True, False):
        rt.compiled = compiled if use else None
        try:
            b = DecodeBatch(lm, 4, capacity=200)
            for h in handoffs:
                b.insert(h)
            b.runtime = spy = Spy(rt)
            calls = compiled.calls
            for _ in range(6):
                b.step()
            assert (compiled.calls > calls) == use
            logits[use] = spy.logits
        finally:
            rt.compiled = compiled
    assert dyn.counters["stats"]["unique_graphs"] == graphs  # no new graph after warm-up
    for a, b in zip(logits[True], logits[False], strict=True):
        assert (a - b).abs().max() < 1e-4 * max(1.0, float(b.abs().max()))
