"""baton's row argmax (greedy tokens of the fast runtime) is ``torch.argmax``: first maximum, NaN first."""

from __future__ import annotations

import pytest
import torch

from baton.runtime import kernels

pytestmark = pytest.mark.skipif(
    not kernels.available(torch.device("cpu"), 64), reason="baton's CPU kernels did not build"
)


def test_argmax_rows_equals_torch_on_ties_nan_tails_and_signed_zeros():
    g = torch.Generator().manual_seed(0)
    for n in (1, 5, 15, 16, 17, 31, 33, 100, 49152):
        x = torch.randn(12, n, generator=g).bfloat16().float()  # bf16 values: many exact ties
        if n > 3:
            x[1, n // 2] = x[1, -1] = x[1].max() + 1  # two equal maxima: the first wins
            x[2, n - 1] = float("nan")  # a NaN counts as the maximum
            x[3, 2] = float("nan")
            x[3, 0] = float("nan")
            x[4] = 0.0
            x[4, n // 3] = -0.0
            x[5] = float("-inf")
            x[6, 1:] = float("inf")
        x[7] = x[7, 0]  # a constant row: index 0
        got = kernels.argmax_rows(x)
        assert torch.equal(got, torch.argmax(x, dim=-1)), n


def test_fast_runtime_argmax_is_torch_argmax(fast_lm):
    rt = fast_lm("llama").runtime
    x = torch.randn(4, 300)
    assert torch.equal(rt.argmax(x), torch.argmax(x, dim=-1))
