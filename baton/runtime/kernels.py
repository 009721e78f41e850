"""baton's CPU kernels, built on first use: decode attention over the BATON window, and a bf16 GEMM.

Attention. The window is a strided view of the cache buffers (``[rows, kv_heads, start:end, hd]``)
and torch's bf16 batched GEMMs copy such a view to a contiguous tensor first, so on the CPU
attention cost ~3x the bytes it reads. The kernel reads each row's keys and values in place, once,
skips the row's padding columns, and computes in float32 with a fixed order over the row's real
columns: a row's result does not depend on its padding, its batch-mates or where its window sits
in the buffer (batch invariance), for float32 and bfloat16 alike. It covers decode steps of one new
column per row and ``orca`` steps of several (causal among the new columns), for head sizes that
are a multiple of 16. A decode step reads every window once, from memory (47 MB for SmolLM2 at 16 x
256): each (row, head) fetches the next one's K and V into L2 while it computes (attention of a
step 24% faster on the EPYC).

``argmax_rows``: the greedy token of each row, the same index as ``torch.argmax`` (whose CPU kernel
over a 49152-word vocabulary took ~0.9 ms of a 16-row step).

GEMM (CPUs with AVX-512). ``bf16_linear`` multiplies bf16 activations by weights packed once at
load in the layout ``VDPBF16PS`` reads; each output is one accumulator lane summing ``K`` in order,
so a row's result does not depend on how many rows share the call (oneDNN's does below 7 rows).
With AVX512-BF16 the pairs go through ``VDPBF16PS`` in 8-row x 3-block tiles, each tile fetching a
share of the next column group's weights into L2 while it computes (so the weight stream from memory
overlaps the whole group's compute, not just its first tile: at 16 rows ~190 GFLOP/s on one core of
an AMD EPYC, ~86% of its bf16 peak, and at 1-8 rows near its memory bandwidth); with AVX-512 Foundation only (``bf16_gemm_isa() == "avx512f"``: e.g. a Xeon
whose hypervisor hides AVX512-BF16 and AMX) each pair is widened to float32 in registers and summed
by FMAs, which still reads half the bytes of a float32 GEMM: ~2x MKL's float32 GEMM at decode
shapes there, where oneDNN's emulated bf16 runs ~5x slower than float32. Numbers: BENCHMARKS.md,
"Fast model runtime".

Both are compiled into one library with ``torch.utils.cpp_extension`` the first time a machine
needs it (~40-60 s on 2 cores, then cached in ``$TORCH_EXTENSIONS_DIR``, by default
``~/.cache/torch_extensions``); where that fails (no C++ compiler), ``available()`` is False and
the runtime uses torch ops (and oneDNN's prepacked GEMM).
"""

from __future__ import annotations

import logging
import threading
import time

import torch

from baton.runtime import _attention_src, _forward_src, _gemm_src

log = logging.getLogger("baton.runtime")

_GLUE = r"""
TORCH_LIBRARY(baton_kernels, m) {
  m.def("decode_attention(Tensor q, Tensor k, Tensor v, Tensor mask, int w, float scale) -> Tensor");
  m.def("argmax_rows(Tensor x) -> Tensor");
  m.def("bf16_gemm_supported() -> bool");
  m.def("bf16_gemm_isa() -> str");
  m.def("bf16_pack(Tensor w) -> Tensor");
  m.def("bf16_linear(Tensor x, Tensor w, int n, Tensor? bias) -> Tensor");
  m.def("fused_decode(Tensor ids, Tensor pos, Tensor last, Tensor embed, Tensor cos, Tensor sin, Tensor?[] weights, "
        "Tensor norm, Tensor? head, int[] dims, float eps, float scale, Tensor[] keys, Tensor[] values, int start, "
        "int end, int rows, int width, Tensor mask) -> Tensor");
  m.def("fused_prefill(Tensor ids, Tensor pos, Tensor last, Tensor embed, Tensor cos, Tensor sin, Tensor?[] weights, "
        "Tensor norm, Tensor? head, int[] dims, float eps, float scale, Tensor[] kvs, int[] bounds) -> Tensor");
}
TORCH_LIBRARY_IMPL(baton_kernels, CPU, m) {
  m.impl("decode_attention", &decode_attention);
  m.impl("argmax_rows", &argmax_rows);
  m.impl("bf16_pack", &bf16_pack);
  m.impl("bf16_linear", &bf16_linear);
  m.impl("fused_decode", &fused_decode);
  m.impl("fused_prefill", &fused_prefill);
}
TORCH_LIBRARY_IMPL(baton_kernels, CompositeExplicitAutograd, m) {
  m.impl("bf16_gemm_supported", &bf16_gemm_supported);
  m.impl("bf16_gemm_isa", &bf16_gemm_isa);
}
"""

_lock = threading.Lock()
_loaded = False
_failed: str | None = None


def _cpu_tag() -> str:
    """A short hash of this CPU's model and flags (the build is machine-specific)."""
    import hashlib
    from pathlib import Path

    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        keys = [x for x in lines if x.startswith(("model name", "flags"))][:2]
    except OSError:
        keys = []
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:8]


# torch's build lock is a file that a waiting process polls forever: a build killed mid-way (a
# SIGKILLed worker, a cancelled job) leaves it behind and every later load would hang. A build takes
# about a minute here, so a lock this old is stale.
STALE_LOCK_S = 900.0
CFLAGS = ("-O3", "-march=native", "-fopenmp")  # also what bench.gemm_ab builds with
LDFLAGS = ("-fopenmp",)
_NAME = f"baton_kernels_v29_{_cpu_tag()}"  # -march=native: one build per CPU kind


def clear_stale_lock(name: str = _NAME, max_age_s: float = STALE_LOCK_S) -> bool:
    """Remove the build lock of ``name`` if it is older than ``max_age_s``; True if one was removed."""
    from pathlib import Path

    try:
        from torch.utils.cpp_extension import _get_build_directory

        lock = Path(_get_build_directory(name, verbose=False)) / "lock"
        age = time.time() - lock.stat().st_mtime
    except (OSError, ImportError):  # no lock (the usual case), or torch moved its helper
        return False
    if age <= max_age_s:
        return False
    log.warning("fast runtime: removing a stale kernel build lock (%.0f s old): %s", age, lock)
    lock.unlink(missing_ok=True)
    return True


def _load() -> bool:
    """Build (first time on this machine, cached after) and load the kernel library."""
    global _loaded, _failed
    with _lock:
        if not _loaded and _failed is None:
            try:
                from torch.utils.cpp_extension import load_inline

                t0 = time.perf_counter()
                clear_stale_lock()
                load_inline(
                    name=_NAME,
                    cpp_sources=[_attention_src.SOURCE, _gemm_src.SOURCE, _forward_src.SOURCE, _GLUE],
                    extra_cflags=list(CFLAGS),
                    extra_ldflags=list(LDFLAGS),
                    is_python_module=False,
                    verbose=False,
                )
                _loaded = True
                log.info("fast runtime: CPU kernels ready in %.1f s", time.perf_counter() - t0)
            except Exception as e:  # no compiler, no headers: the torch-ops path serves
                _failed = f"{type(e).__name__}: {e}"
                log.warning("fast runtime: CPU kernels unavailable, using torch ops (%s)", _failed)
    return _loaded


def available(device: torch.device, head_dim: int) -> bool:
    """Whether the kernel can serve decode steps on ``device`` (builds it on first call)."""
    return device.type == "cpu" and head_dim % 16 == 0 and _load()


def decode_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float, width: int = 1
) -> torch.Tensor:
    """``q [n, kv_heads, groups * width, hd]`` (query ``j * width + p``: head ``j`` of the group at new
    column ``p``) over ``k``/``v [n, kv_heads, L, hd]``; ``mask [n, width, L]`` bool (or ``[n, L]``
    with width 1, or None: every column)."""
    if mask is None:
        mask = torch.empty(0, dtype=torch.bool)
    elif mask.dim() == 2:
        mask = mask.unsqueeze(1)
    return torch.ops.baton_kernels.decode_attention(q, k, v, mask, width, scale)


def argmax_rows(x: torch.Tensor) -> torch.Tensor:
    """``torch.argmax(x, -1)`` of float32 ``x [rows, n]`` (first maximum; a NaN counts as the
    maximum), ~18x faster at a decode step's logits. Falls back to torch where the kernels are not built."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 2 or x.shape[1] == 0 or not _load():
        return torch.argmax(x, dim=-1)
    return torch.ops.baton_kernels.argmax_rows(x)


def bf16_gemm_available(device: torch.device) -> bool:
    """Whether ``bf16_linear`` runs on ``device`` (a CPU with AVX-512; builds the library)."""
    return device.type == "cpu" and _load() and bool(torch.ops.baton_kernels.bf16_gemm_supported())


def bf16_gemm_isa() -> str:
    """How the bf16 GEMM computes here: "native" (AVX512-BF16 dot products), "avx512f" (bf16
    widened to float32 in registers, float32 FMAs) or "" (not built)."""
    return str(torch.ops.baton_kernels.bf16_gemm_isa()) if _load() else ""


def bf16_pack(w: torch.Tensor) -> torch.Tensor:
    """A ``[N, K]`` bf16 weight (``K`` even) in ``bf16_linear``'s layout ``[ceil(N/16), K/2, 16, 2]``."""
    return torch.ops.baton_kernels.bf16_pack(w)


def bf16_linear(x: torch.Tensor, packed: torch.Tensor, n: int, bias: torch.Tensor | None) -> torch.Tensor:
    """``x [M, K] @ W.T + bias`` -> ``[M, n]`` bf16 for a weight ``W [n, K]`` packed by ``bf16_pack``."""
    return torch.ops.baton_kernels.bf16_linear(x, packed, n, bias)


def fused_decode(
    ids: torch.Tensor,
    pos: torch.Tensor,
    last: torch.Tensor,
    keys: list[torch.Tensor],
    values: list[torch.Tensor],
    start: int,
    end: int,
    rows: int,
    width: int,
    mask: torch.Tensor | None,
    model: dict,
) -> torch.Tensor:
    """A whole decode forward of ``rows x width`` new tokens (flat ``ids``/``pos``, token
    ``r * width + p``) over cache buffers ``[max_rows, kv_heads, capacity, hd]`` per layer: K/V
    written at columns ``end..end+width-1``, attention over ``[start, end + width)`` with ``mask``
    (``[rows, width, L]`` bool, or None: every column). ``model``: ``LlamaModel.fused_args()``.
    Returns bf16 logits ``[len(last), vocab]``."""
    m = torch.empty(0, dtype=torch.bool) if mask is None else mask
    return torch.ops.baton_kernels.fused_decode(
        ids, pos, last, model["embed"], model["cos"], model["sin"], model["weights"], model["norm"],
        model["head"], model["dims"], model["eps"], model["scale"], keys, values, start, end, rows, width, m,
    )  # fmt: skip


def fused_prefill(
    ids: torch.Tensor,
    pos: torch.Tensor,
    last: torch.Tensor,
    kvs: list[torch.Tensor],
    bounds: list[int],
    model: dict,
) -> torch.Tensor:
    """A whole packed-prefill forward: prompt ``i`` is tokens ``bounds[i]:bounds[i + 1]``, attends to
    itself causally, and its K/V are written into ``kvs[i]`` ``[layers, 2, kv_heads, len, hd]``.
    Returns bf16 logits ``[len(last), vocab]``."""
    return torch.ops.baton_kernels.fused_prefill(
        ids, pos, last, model["embed"], model["cos"], model["sin"], model["weights"], model["norm"],
        model["head"], model["dims"], model["eps"], model["scale"], kvs, bounds,
    )  # fmt: skip
