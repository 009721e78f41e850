"""A CPU kernel for one decode step's attention over the BATON window (built on first use).

Why: the window is a strided view of the cache buffers (``[rows, kv_heads, start:end, hd]``) and
torch's bf16 batched GEMMs copy such a view to a contiguous tensor first, so on the CPU attention
cost ~3x the bytes it reads. This kernel reads each row's keys and values in place, once, skips the
row's padding columns, and computes in float32 with a fixed order over the row's real columns: a
row's result does not depend on its padding, its batch-mates or where its window sits in the
buffer (batch invariance), for float32 and bfloat16 alike.

It covers decode steps of one new column per row and ``orca`` steps of several (causal among the
new columns), for head sizes that are a multiple of 16. It is compiled with ``torch.utils.cpp_extension`` the
first time a machine needs it (~20-30 s on 2 cores, then cached in
``$TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``); where that fails (no C++ compiler),
``available()`` is False and the runtime uses torch ops.
"""

from __future__ import annotations

import logging
import threading
import time

import torch

log = logging.getLogger("baton.runtime")

_SOURCE = r"""
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

// exp(x) for x <= 0 (softmax after subtracting the max): 2^n * p(r), |rel err| < 2e-7.
// Branch-free and inline, so the loop that calls it vectorizes; same result wherever it runs.
static inline float exp_neg(float x) {
  x = std::max(x, -87.0f);
  const float n = std::nearbyint(x * 1.44269504088896341f);
  const float r = x - n * 0.693145751953125f - n * 1.428606765330187045e-06f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits;
  std::memcpy(&bits, &p, 4);
  bits += static_cast<int32_t>(n) << 23;
  std::memcpy(&p, &bits, 4);
  return p;
}

#if defined(__AVX512F__)
// Software prefetch of a K/V row PF columns ahead (the window is read once: DRAM-bound).
constexpr int64_t PF = 6;
template <typename T>
static inline void prefetch_row(const T* p, int64_t hd) {
  for (int64_t b = 0; b < hd * static_cast<int64_t>(sizeof(T)); b += 64)
    _mm_prefetch(reinterpret_cast<const char*>(p) + b, _MM_HINT_T0);
}

// Load 16 values as float32.
static inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
static inline __m512 load16(const at::BFloat16* p) {
  __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}
static inline __m512 load16(const at::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
#endif

// q [n, kvh, g * w, hd] (contiguous; query i = j * w + p is head j of the group at new column p),
// k/v [n, kvh, L, hd] (last dim contiguous, any other strides), mask [n, w, L] bool (True = attend)
// or empty (all attend; then w == 1). Returns q's shape and dtype. Only the attended columns are
// read, in order, and every sum has a fixed order: a query's result does not depend on padding,
// batch-mates, or where the window sits in the buffer.
// G (query heads per KV head) and NV (head_dim / 16) are compile-time in the vector path, so the
// accumulators live in registers; G == 0 is the generic (scalar) path.
template <typename T, int G, int NV>
static void run(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                int64_t w, double scale, at::Tensor& out) {
  constexpr int V = 16;
  const int64_t n = q.size(0), kvh = q.size(1), g = q.size(2) / w, hd = q.size(3), L = k.size(2);
  const T* qp = q.data_ptr<T>();
  const T* kp = k.data_ptr<T>();
  const T* vp = v.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const bool* mp = mask.numel() ? mask.data_ptr<bool>() : nullptr;
  const int64_t ks0 = k.stride(0), ks1 = k.stride(1), ks2 = k.stride(2);
  const int64_t vs0 = v.stride(0), vs1 = v.stride(1), vs2 = v.stride(2);
  const int64_t ms0 = mp ? mask.stride(0) : 0, ms1 = mp ? mask.stride(1) : 0;
  at::parallel_for(0, n * kvh, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qf(g * w * hd), s(g * L), acc(g * hd), denom(g);
    std::vector<int64_t> cols(L);
    for (int64_t job = begin; job < end; ++job) {
      const int64_t r = job / kvh, h = job % kvh;
      const T* kr = kp + r * ks0 + h * ks1;
      const T* vr = vp + r * vs0 + h * vs1;
      const T* qr = qp + (r * kvh + h) * g * w * hd;
      T* orow = op + (r * kvh + h) * g * w * hd;
      for (int64_t i = 0; i < g * w * hd; ++i) qf[i] = static_cast<float>(qr[i]) * static_cast<float>(scale);
      for (int64_t p = 0; p < w; ++p) {
        int64_t nc = 0;
        const bool* mrow = mp ? mp + r * ms0 + p * ms1 : nullptr;
        for (int64_t l = 0; l < L; ++l)
          if (!mrow || mrow[l]) cols[nc++] = l;
        std::fill(acc.begin(), acc.end(), 0.f);
#if defined(__AVX512F__)
        if (G > 0) {
          // scores: per column, hd in 16-lane chunks, one horizontal sum per (query, column)
          for (int64_t c = 0; c < nc; ++c) {
            const T* kl = kr + cols[c] * ks2;
            if (c + PF < nc) prefetch_row(kr + cols[c + PF] * ks2, hd);
            __m512 a[G > 0 ? G : 1];
            for (int j = 0; j < G; ++j) a[j] = _mm512_setzero_ps();
            for (int d = 0; d < NV; ++d) {
              const __m512 kv = load16(kl + d * V);
              for (int j = 0; j < G; ++j)
                a[j] = _mm512_fmadd_ps(_mm512_loadu_ps(&qf[((j * w) + p) * hd + d * V]), kv, a[j]);
            }
            for (int j = 0; j < G; ++j) s[j * L + c] = _mm512_reduce_add_ps(a[j]);
          }
        } else
#endif
        {
          for (int64_t c = 0; c < nc; ++c) {
            const T* kl = kr + cols[c] * ks2;
            for (int64_t j = 0; j < g; ++j) {
              const float* qj = &qf[((j * w) + p) * hd];
              float t = 0.f;
              for (int64_t d = 0; d < hd; ++d) t += qj[d] * static_cast<float>(kl[d]);
              s[j * L + c] = t;
            }
          }
        }
        for (int64_t j = 0; j < g; ++j) {
          float* sj = s.data() + j * L;
          float mx = -std::numeric_limits<float>::infinity();
          for (int64_t c = 0; c < nc; ++c) mx = std::max(mx, sj[c]);
          for (int64_t c = 0; c < nc; ++c) sj[c] = exp_neg(sj[c] - mx);
          float lane[V] = {0};  // the sum in 16 lanes by column index, then lanes in order
          for (int64_t c = 0; c < nc; ++c) lane[c % V] += sj[c];
          float sum = 0.f;
          for (int e = 0; e < V; ++e) sum += lane[e];
          denom[j] = sum;
        }
#if defined(__AVX512F__)
        if (G > 0) {
          __m512 o[G > 0 ? G * NV : 1];
          for (int i = 0; i < G * NV; ++i) o[i] = _mm512_setzero_ps();
          for (int64_t c = 0; c < nc; ++c) {
            const T* vl = vr + cols[c] * vs2;
            if (c + PF < nc) prefetch_row(vr + cols[c + PF] * vs2, hd);
            for (int d = 0; d < NV; ++d) {
              const __m512 vv = load16(vl + d * V);
              for (int j = 0; j < G; ++j)
                o[j * NV + d] = _mm512_fmadd_ps(_mm512_set1_ps(s[j * L + c]), vv, o[j * NV + d]);
            }
          }
          for (int i = 0; i < G * NV; ++i) _mm512_storeu_ps(&acc[i * V], o[i]);
        } else
#endif
        {
          for (int64_t c = 0; c < nc; ++c) {
            const T* vl = vr + cols[c] * vs2;
            for (int64_t j = 0; j < g; ++j) {
              const float pj = s[j * L + c];
              for (int64_t d = 0; d < hd; ++d) acc[j * hd + d] += pj * static_cast<float>(vl[d]);
            }
          }
        }
        for (int64_t j = 0; j < g; ++j) {
          T* oq = orow + ((j * w) + p) * hd;
          for (int64_t d = 0; d < hd; ++d) oq[d] = static_cast<T>(acc[j * hd + d] / denom[j]);
        }
      }
    }
  });
}

template <typename T>
static void dispatch(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                     int64_t w, double scale, at::Tensor& out) {
  const int64_t g = q.size(2) / w, nv = q.size(3) / 16;
#define BATON_CASE(GG, NN) if (g == GG && nv == NN) return run<T, GG, NN>(q, k, v, mask, w, scale, out);
#define BATON_CASES(NN) BATON_CASE(1, NN) BATON_CASE(2, NN) BATON_CASE(3, NN) BATON_CASE(4, NN) \
  BATON_CASE(5, NN) BATON_CASE(6, NN) BATON_CASE(7, NN) BATON_CASE(8, NN)
  BATON_CASES(4) BATON_CASES(8)
#undef BATON_CASES
#undef BATON_CASE
  run<T, 0, 0>(q, k, v, mask, w, scale, out);
}

static at::Tensor decode_attention(at::Tensor q, at::Tensor k, at::Tensor v, at::Tensor mask, int64_t w,
                                   double scale) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "q, k, v must be 4-D");
  TORCH_CHECK(k.stride(3) == 1 && v.stride(3) == 1, "k, v: last dim must be contiguous");
  TORCH_CHECK(q.size(3) % 16 == 0, "head_dim must be a multiple of 16");
  TORCH_CHECK(w >= 1 && q.size(2) % w == 0, "q: dim 2 must be groups * width");
  TORCH_CHECK(mask.numel() ? (mask.dim() == 3 && mask.size(1) == w && mask.size(2) == k.size(2) &&
                              mask.scalar_type() == at::kBool && mask.stride(2) == 1)
                           : w == 1, "mask: [n, width, L] bool (or empty with width 1)");
  q = q.contiguous();
  auto out = at::empty_like(q);
  if (q.scalar_type() == at::kFloat) dispatch<float>(q, k, v, mask, w, scale, out);
  else if (q.scalar_type() == at::kBFloat16) dispatch<at::BFloat16>(q, k, v, mask, w, scale, out);
  else if (q.scalar_type() == at::kHalf) dispatch<at::Half>(q, k, v, mask, w, scale, out);
  else TORCH_CHECK(false, "unsupported dtype");
  return out;
}

TORCH_LIBRARY(baton_kernels, m) {
  m.def("decode_attention(Tensor q, Tensor k, Tensor v, Tensor mask, int w, float scale) -> Tensor");
}
TORCH_LIBRARY_IMPL(baton_kernels, CPU, m) { m.impl("decode_attention", &decode_attention); }
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


def _load() -> bool:
    """Build (first time on this machine, cached after) and load the kernel library."""
    global _loaded, _failed
    with _lock:
        if not _loaded and _failed is None:
            try:
                from torch.utils.cpp_extension import load_inline

                t0 = time.perf_counter()
                load_inline(
                    name=f"baton_decode_attention_v8_{_cpu_tag()}",  # -march=native: one build per CPU kind
                    cpp_sources=_SOURCE,
                    extra_cflags=["-O3", "-march=native", "-fopenmp"],
                    extra_ldflags=["-fopenmp"],
                    is_python_module=False,
                    verbose=False,
                )
                _loaded = True
                log.info("fast runtime: CPU attention kernel ready in %.1f s", time.perf_counter() - t0)
            except Exception as e:  # no compiler, no headers: the torch-ops path serves
                _failed = f"{type(e).__name__}: {e}"
                log.warning("fast runtime: CPU attention kernel unavailable, using torch ops (%s)", _failed)
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
