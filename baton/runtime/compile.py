"""Compiled decode steps of the fast runtime (``load_model(..., compile="on")``; auto: CUDA only).

Attention is an opaque custom op (``baton::decode_attention``): it writes the new K/V column
through ``BatonKVCache.write_layer`` and attends over the live window with the step's mask,
eagerly. So the window's width, which grows every step, never appears in a compiled graph: only
the row count does, rounded up to a bucket (8, 16, 32, ... up to the batch's ``max_rows`` with
oneDNN-packed bf16 weights, whose GEMMs run at least 8 rows anyway; 1, 2, 4, ... otherwise), and each
bucket is compiled once, at start-up (``warmup``, from ``DecodeBatch.__init__``).

CPU: one decoder layer is compiled (inductor fuses the norms, rotary embedding, residuals and
SiLU around the GEMMs) and the same compiled code runs every layer, whose weights are graph
inputs; the GEMMs are a second opaque op over the weights packed at load (baton's bf16 kernel, or
oneDNN's layout: what inductor's freezing + ``cpp.weight_prepack`` would do per layer). Measured on SmolLM2 (2-core
Zen 4, 1 thread): within ~5% of the eager step at 1-32 rows, for 13-19 s of cold start-up
(~3-6 s with inductor's cache warm), hence off by default on the CPU. Compiling the whole 30-layer
step as one frozen graph instead took ~23 s per bucket.

CUDA: the whole step is one graph with ``mode="reduce-overhead"`` (CUDA graphs); the attention op
is tagged ``cudagraph_unsafe`` so inductor's graph partition keeps it outside the captured parts.
The CUDA path is written but has not run on a GPU here (this machine has none).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from baton.runtime.llama import MIN_GEMM_ROWS, DecodeState, attend_decode, linear

if TYPE_CHECKING:
    from baton.runtime.llama import FastRuntime

log = logging.getLogger("baton.runtime")

_STATE = threading.local()  # the DecodeState of the compiled forward running on this thread


@torch.library.custom_op("baton::decode_attention", mutates_args=(), tags=(torch.Tag.cudagraph_unsafe,))
def decode_attention(index: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """One layer's attention of a compiled decode step (the step's state comes from this thread)."""
    return attend_decode(_STATE.current, int(index), q, k, v)


@decode_attention.register_fake
def _(index: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:  # noqa: ARG001
    return q.new_empty((q.shape[0], q.shape[1] * q.shape[2]))


@torch.library.custom_op("baton::packed_linear", mutates_args=())
def packed_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``linear`` over a prepacked weight (``w`` is its shape-only placeholder)."""
    return linear(x, w, b)


@packed_linear.register_fake
def _(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:  # noqa: ARG001
    return x.new_empty((x.shape[0], w.shape[0]))


def _attend(index: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.ops.baton.decode_attention(index, q, k, v)


def _packed_gemm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.baton.packed_linear(x, w, b)


def _layer_packed(layer, x, cos, sin):
    return layer(x, cos, sin, _attend, _packed_gemm)


def _layer_plain(layer, x, cos, sin):
    return layer(x, cos, sin, _attend, F.linear)


def _whole_step(model, ids, pos):
    return model(ids, pos, None, _attend, lambda layer, x, cos, sin: layer(x, cos, sin, _attend, F.linear))


class _Scratch:
    """The cache of a warm-up forward: its window is just the new column."""

    def write_layer(self, index: int, k: torch.Tensor, v: torch.Tensor):  # noqa: ARG002
        return k, v


def row_buckets(max_rows: int, smallest: int = 1) -> tuple[int, ...]:
    """``smallest``, twice that, ... below ``max_rows``, and ``max_rows`` itself."""
    out, b = [], smallest
    while b < max_rows:
        out.append(b)
        b *= 2
    return (*out, max_rows)


def _allow_entries(n: int) -> None:
    """Let dynamo keep ``n`` compiled entries per code object. Its cache is per code object, so
    process-wide: every bucket of every runtime in the process (models, thread counts) holds one,
    and past the default limit (8) a later step would be a hard failure under ``fullgraph``."""
    import torch._dynamo.config as dynamo_config

    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, n)
    dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit, 16 * n)


class CompiledDecode:
    """The decode step compiled per row bucket. ``warmup`` compiles; a call runs a covered shape."""

    def __init__(self, runtime: FastRuntime):
        self.rt = runtime
        self.whole = runtime.device.type == "cuda"
        if self.whole:
            self.fn = torch.compile(_whole_step, dynamic=False, fullgraph=True, mode="reduce-overhead")
        else:
            body = _layer_packed if runtime.model.packed else _layer_plain
            self.fn = torch.compile(body, dynamic=False, fullgraph=True)
        self.buckets: tuple[int, ...] = ()
        self.seconds: dict[int, float] = {}

        self.calls = 0  # compiled steps run (tests check the compiled path really ran)

    def bucket(self, rows: int) -> int | None:
        return next((b for b in self.buckets if b >= rows), None)

    def covers(self, rows: int) -> bool:
        return self.bucket(rows) is not None

    @torch.inference_mode()
    def warmup(self, max_rows: int) -> None:
        """Compile every bucket up to ``max_rows`` (each by forwards on a scratch cache)."""
        # oneDNN GEMMs run at least MIN_GEMM_ROWS rows anyway: no smaller bucket.
        smallest = MIN_GEMM_ROWS if self.rt.model.gemm == "onednn" else 1
        new = [b for b in row_buckets(max_rows, smallest) if b not in self.buckets]
        _allow_entries(64 + 2 * (len(self.buckets) + len(new)))
        for b in new:
            t0 = time.perf_counter()
            k = self.rt.attention_kernel
            st = DecodeState(_Scratch(), b, 1, None, self.rt.scale, self.rt.spec.groups, None, k)
            for _ in range(3 if self.whole else 1):  # CUDA graphs are recorded on a later call
                self._run(st, torch.zeros(b, dtype=torch.long), torch.zeros(b, dtype=torch.long))
            self.seconds[b] = time.perf_counter() - t0
            self.buckets = tuple(sorted({*self.buckets, b}))
            log.info("fast runtime: decode step compiled for %d rows in %.1f s", b, self.seconds[b])

    def _run(self, st: DecodeState, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        dev = self.rt.device
        ids, pos = ids.to(dev), pos.to(dev)
        _STATE.current = st
        try:
            if self.whole:
                return self.fn(self.rt.model, ids, pos)
            return self.rt.model(ids, pos, None, None, self.fn)
        finally:
            _STATE.current = None

    @torch.inference_mode()
    def __call__(self, st: DecodeState, ids: torch.Tensor, pos: torch.Tensor) -> Any:
        """Logits ``[rows, vocab]`` of a decode step whose row count a bucket covers. The inputs are
        copied into fresh bucket-sized tensors made here, as at warm-up (dynamo guards on them)."""
        rows = ids.shape[0]
        b = self.bucket(rows)
        self.calls += 1
        ids_b = torch.zeros(b, dtype=torch.long)
        pos_b = torch.zeros(b, dtype=torch.long)
        ids_b[:rows] = ids
        pos_b[:rows] = pos
        out = self._run(st, ids_b, pos_b)
        return out[:rows].clone() if self.whole else out[:rows]
