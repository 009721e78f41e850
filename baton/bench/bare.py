"""The bare model forward: the reference every decode step is measured against.

``BareRunner`` calls the model directly with a transformers cache holding given KV (a mask of ones,
position ids, no sampling). ``bare_decode_ms`` times it on random KV at one shape; ``BareGrid`` prices
any mean decode shape by interpolating between measured shapes (the suite's "limit").
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import torch

from baton.bench.common import log


class BareRunner:
    """The model called directly with a transformers cache holding the same KV.

    ``mode``: ``fixed`` (``DynamicCache`` cropped back after each forward: every call attends L+1
    columns), ``grow`` (one column more per call, as the BATON window grows) or ``static``
    (``StaticCache`` of ``max_cache_len`` columns).
    """

    def __init__(
        self,
        lm: Any,
        kv: list[tuple[torch.Tensor, torch.Tensor]],
        first: list[int],
        mode: str,
        max_cache_len: int = 0,
    ):
        from transformers import DynamicCache, StaticCache

        self.model = lm.model
        self.mode = mode
        self.rows, self.length = kv[0][0].shape[0], kv[0][0].shape[2]
        if mode == "static":
            self.cache = StaticCache(config=lm.model.config, max_cache_len=max_cache_len)
        else:
            self.cache = DynamicCache(config=lm.model.config)
        for i, (k, v) in enumerate(kv):
            self.cache.update(k, v, i)  # copies (DynamicLayer cats onto an empty tensor)
        if self.cache.get_seq_length() != self.length:
            raise RuntimeError(
                f"{mode} cache holds {self.cache.get_seq_length()} columns, want {self.length}"
            )
        self.ids = torch.tensor(first, dtype=torch.long, device=lm.device).view(-1, 1)
        self.device = lm.device
        self.fed = 0
        self.tokens: list[list[int]] = []

    def run(self) -> float:
        """One timed forward (ms); its greedy tokens feed the next."""
        n = self.length + self.fed  # columns cached before this forward
        mask = torch.ones((self.rows, n + 1), dtype=torch.long, device=self.device)
        pos = torch.full((self.rows, 1), n, dtype=torch.long, device=self.device)
        t0 = time.perf_counter()
        out = self.model(
            input_ids=self.ids,
            attention_mask=mask,
            position_ids=pos,
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        ms = (time.perf_counter() - t0) * 1e3
        self.ids = out.logits[:, -1, :].argmax(dim=-1, keepdim=True)
        self.tokens.append(self.ids.view(-1).tolist())
        if self.mode == "fixed":
            self.cache.crop(-1)  # transformers 5: a negative count of columns to drop
        else:
            self.fed += 1
        return ms


class PlainCache:
    """The bare forward's cache: contiguous ``[rows, kv_heads, capacity, head_dim]`` per layer, the
    new column written at ``length``; no window, no mask, no row bookkeeping."""

    def __init__(self, kvs: list[torch.Tensor], lm: Any, extra: int):
        """``kvs``: each row's KV ``[layers, 2, kv_heads, length, head_dim]`` (all one length)."""
        self.length = kvs[0].shape[3]
        cap = self.length + extra
        lay = lm.layout
        shape = (len(kvs), lay.kv_heads, cap, lay.head_dim)
        self.keys = [torch.zeros(shape, dtype=lm.dtype) for _ in range(lay.num_layers)]
        self.values = [torch.zeros(shape, dtype=lm.dtype) for _ in range(lay.num_layers)]
        for r, kv in enumerate(kvs):
            for i in range(lay.num_layers):
                self.keys[i][r, :, : self.length] = kv[i, 0]
                self.values[i][r, :, : self.length] = kv[i, 1]
        self.mask = torch.ones(1, dtype=torch.bool)  # only its device is read

    def fused_window(self, rows: int, width: int):  # noqa: ARG002  (the cache protocol's signature)
        return self.keys, self.values, 0, self.length

    def write_layer(self, index: int, k: torch.Tensor, v: torch.Tensor):
        end = self.length + k.shape[2]
        self.keys[index][:, :, self.length : end] = k
        self.values[index][:, :, self.length : end] = v
        return self.keys[index][:, :, :end], self.values[index][:, :, :end]


def _runtime_bare_ms(lm: Any, rows: int, width: int, repeats: int, warmup: int) -> list[float]:
    """baton's own runtime called directly on a PlainCache of random KV (no DecodeBatch, no mask)."""
    from baton.runtime.base import StepInput

    g = torch.Generator().manual_seed(rows * 100003 + width)
    lay = lm.layout
    kvs = [
        torch.randn(lay.num_layers, 2, lay.kv_heads, width - 1, lay.head_dim, generator=g).to(lm.dtype)
        for _ in range(rows)
    ]
    cache = PlainCache(kvs, lm, extra=warmup + repeats + 1)
    ids = torch.randint(2, lm.limits.vocab_size, (rows, 1), generator=g)
    times = []
    for _ in range(warmup + repeats):
        step = StepInput(ids, torch.full((rows, 1), cache.length), None)
        t = time.perf_counter()
        logits = lm.runtime.decode(step, cache)
        times.append((time.perf_counter() - t) * 1e3)
        cache.length += 1
        ids = logits.float().argmax(-1, keepdim=True)
    return times[warmup:]


def bare_decode_ms(lm: Any, rows: int, width: int, threads: int, repeats: int = 8, warmup: int = 2) -> float:
    """Median ms of one bare decode forward of ``rows`` rows attending ``width`` KV columns (random KV)."""
    rows, width = max(1, int(rows)), max(2, int(width))
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            g = torch.Generator().manual_seed(rows * 100003 + width)
            lay = lm.layout
            shape = (rows, lay.kv_heads, width - 1, lay.head_dim)
            kv = [
                (torch.randn(shape, generator=g).to(lm.dtype), torch.randn(shape, generator=g).to(lm.dtype))
                for _ in range(lay.num_layers)
            ]
            if lm.model is None:  # the fast runtime: its own bare forward
                times = _runtime_bare_ms(lm, rows, width, repeats, warmup)
            else:
                first = torch.randint(2, lm.limits.vocab_size, (rows,), generator=g).tolist()
                runner = BareRunner(lm, kv, first, "fixed")
                times = [runner.run() for _ in range(warmup + repeats)][warmup:]
    finally:
        torch.set_num_threads(prev)
    return statistics.median(times)


def interp(xs: list[float], ys: list[float], x: float) -> float:
    """Piecewise-linear interpolation through sorted ``xs``; linear extrapolation past the ends."""
    if len(xs) == 1:
        return ys[0]
    i = 1
    while i < len(xs) - 1 and x > xs[i]:
        i += 1
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


class BareGrid:
    """The bare forward on a grid of shapes, interpolated in between.

    Decode cost is not linear in rows (one row takes a matrix-vector fast path that two rows do not),
    so a run's mean shape is priced by piecewise-linear interpolation between measured rows
    (1, 2, 4, ... up to ``max_rows``) and linear interpolation between two KV widths. A run mixing
    1-row and 2-row steps then gets the average of their bare costs, as it should.
    """

    def __init__(self, lm: Any, max_rows: int, widths: tuple[int, int], repeats: int = 10):
        self.lm = lm
        rows = [1]
        while rows[-1] * 2 < max_rows:
            rows.append(rows[-1] * 2)
        self.rows = sorted({*rows, max_rows})
        self.widths = sorted({max(2, int(w)) for w in widths})
        self.repeats = repeats
        self.cache: dict[tuple[int, int, int], float] = {}

    @staticmethod
    def widths_for(widths: list[float], step: int = 64) -> tuple[int, int]:
        lo = max(step, int(min(widths) // step) * step)
        hi = max(lo + step, math.ceil(max(widths) / step) * step)
        return lo, hi

    def point(self, rows: int, width: int, threads: int) -> float:
        k = (rows, width, threads)
        if k not in self.cache:
            self.cache[k] = bare_decode_ms(self.lm, rows, width, threads, repeats=self.repeats, warmup=3)
            log.info(f"bare forward rows={rows} width={width} threads={threads}: {self.cache[k]:.1f} ms")
        return self.cache[k]

    def ms(self, rows: float, width: float, threads: int) -> float:
        per_width = [
            interp(self.rows, [self.point(r, w, threads) for r in self.rows], rows) for w in self.widths
        ]
        return interp(self.widths, per_width, width)

    def table(self) -> list[dict[str, Any]]:
        return [{"rows": r, "width": w, "threads": t, "ms": v} for (r, w, t), v in sorted(self.cache.items())]
