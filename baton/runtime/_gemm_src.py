"""C++ source of the bf16 GEMM over VNNI-packed weights (built by ``baton.runtime.kernels``)."""

SOURCE = r"""
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#if defined(__AVX512BF16__)
#include <immintrin.h>

// y[M, N] = x[M, K] @ W^T (+ b): bfloat16 in and out, float32 sums. W is packed as
// [ceil(N/16), K/2, 16, 2]: per block of 16 output columns, the k-pairs in order (what VDPBF16PS
// reads). Every output (m, n) is one accumulator lane that sums its k-pairs in order from k = 0 and
// is rounded once: its bits do not depend on M, on the row's place in the call or on the thread
// count (batch invariant by construction), unlike a library GEMM whose blocking follows M.
template <int MR, int NR>
static inline void gemm_tile(const uint16_t* x, int64_t ldx, const uint16_t* w, int64_t K2, const float* b,
                             uint16_t* y, int64_t ldy, const char* pf, int64_t pf_lines) {
  __m512 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
  const int64_t block = K2 * 32;  // elements between two column blocks
  // pf_lines cache lines from pf (the next column group's weights) into L2, spread over the k loop.
  const int64_t per = pf_lines > 0 ? (pf_lines + K2 - 1) / K2 : 0;
  for (int64_t kk = 0; kk < K2; ++kk) {
    for (int64_t l = kk * per, e = std::min(pf_lines, l + per); l < e; ++l) _mm_prefetch(pf + l * 64, _MM_HINT_T1);
    __m512bh wv[NR];
    for (int j = 0; j < NR; ++j) wv[j] = (__m512bh)_mm512_loadu_si512(w + j * block + kk * 32);
    for (int i = 0; i < MR; ++i) {
      const __m512bh xb =
          (__m512bh)_mm512_set1_epi32(*reinterpret_cast<const int32_t*>(x + i * ldx + 2 * kk));
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], xb, wv[j]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      __m512 r = acc[i][j];
      if (b) r = _mm512_add_ps(r, _mm512_loadu_ps(b + j * 16));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i * ldy + j * 16), (__m256i)_mm512_cvtneps_pbh(r));
    }
}

// All M rows of one column group, in row tiles. Each tile reads the group's weights (from memory
// for the first, from L2 after); meanwhile the tiles fetch the next group's weights (``pf``,
// ``pf_bytes``, or none) into L2, a share each, so the next group's first tile does not wait on memory: the
// weight stream is spread over the whole group's compute instead of bunched in one tile.
template <int NR>
static inline void gemm_rows(const uint16_t* x, int64_t ldx, int64_t M, const uint16_t* w, int64_t K2,
                             const float* b, uint16_t* y, int64_t ldy, const char* pf, int64_t pf_bytes) {
  constexpr int MR = 8;  // 8 x 3 accumulators + 3 weight registers (measured: as fast as 6 x 4 from
                         // 16 rows on, 1.3x at 7-8 rows, which then take one tile instead of two)
  // Each tile fetches a share of the lines in proportion to its rows (its compute time): a short
  // tail tile given an equal share would bunch its fetches and stall the next group's first tile.
  const int64_t lines = (pf_bytes + 63) / 64;
  auto first = [&](int64_t row) { return lines * row / M; };
  auto pf_at = [&](int64_t row) { return pf ? pf + first(row) * 64 : nullptr; };
  auto pf_n = [&](int64_t row, int64_t n) { return pf ? first(row + n) - first(row) : 0; };
  int64_t m = 0;
  for (; m + MR <= M; m += MR)
    gemm_tile<MR, NR>(x + m * ldx, ldx, w, K2, b, y + m * ldy, ldy, pf_at(m), pf_n(m, MR));
  const uint16_t* xm = x + m * ldx;
  uint16_t* ym = y + m * ldy;
  const char* pt = pf_at(m);
  const int64_t nt = pf_n(m, M - m);
  switch (M - m) {
    case 1: gemm_tile<1, NR>(xm, ldx, w, K2, b, ym, ldy, pt, nt); break;
    case 2: gemm_tile<2, NR>(xm, ldx, w, K2, b, ym, ldy, pt, nt); break;
    case 3: gemm_tile<3, NR>(xm, ldx, w, K2, b, ym, ldy, pt, nt); break;
    case 4: gemm_tile<4, NR>(xm, ldx, w, K2, b, ym, ldy, pt, nt); break;
    case 5: gemm_tile<5, NR>(xm, ldx, w, K2, b, ym, ldy, pt, nt); break;
    case 6: gemm_tile<6, NR>(xm, ldx, w, K2, b, ym, ldy, pt, nt); break;
    case 7: gemm_tile<7, NR>(xm, ldx, w, K2, b, ym, ldy, pt, nt); break;
    default: break;
  }
}
#elif defined(__AVX512F__)
#include <immintrin.h>

// Without AVX512-BF16 (AVX-512 Foundation only): the same packed layout, each bf16 pair widened to
// two float32 vectors in registers (a shift and a mask), then FMAs in float32. Per output the sum
// runs over k = 0, 1, 2, ... in order, one FMA each, whatever M is and whichever of the two loops
// below ran: batch invariant by construction, like the native path (whose bits differ from these).
static inline __m256i f32_to_bf16(__m512 r) {  // round to nearest even; NaN stays a quiet NaN
  const __m512i bits = _mm512_castps_si512(r);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i out = _mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
  out = _mm512_mask_mov_epi32(out, _mm512_cmp_ps_mask(r, r, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC00000));
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(out, 16));
}

template <int MR, int NR>
static inline void store_tile(__m512 (&acc)[MR][NR], const float* b, uint16_t* y, int64_t ldy) {
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      __m512 r = acc[i][j];
      if (b) r = _mm512_add_ps(r, _mm512_loadu_ps(b + j * 16));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i * ldy + j * 16), f32_to_bf16(r));
    }
}

// Small M (decode): weights widened in registers as they stream by. x is float32 [M, K]. Per k-pair,
// the NR weight vectors of k = 2 kk are widened (a shift), every row's FMAs run, then those of
// k = 2 kk + 1 (a mask of the same bytes, re-read from L1): MR x NR accumulators + NR weights.
// k-pairs [k0, k1) into ``acc``. SRC: WIDEN from ``w``; WIDEN_KEEP the same, also leaving the widened
// vectors in ``buf`` (NR x 2 per k-pair); FROM_BUF reads them there instead of widening again.
// ``pf``: the next column group's weights, fetched into L2 while the widening tile streams its own.
enum { WIDEN, WIDEN_KEEP, FROM_BUF };
template <int MR, int NR, int SRC>
static inline void pairs_emu(__m512 (&acc)[MR][NR], const float* x, int64_t ldx, const uint16_t* w, int64_t K2,
                             int64_t k0, int64_t k1, float* buf, const uint16_t* pf) {
  const int64_t block = K2 * 32;
  const __m512i hi = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  for (int64_t kk = k0; kk < k1; ++kk) {
    float* bk = SRC == WIDEN ? nullptr : buf + (kk - k0) * NR * 32;
    __m512 wv[NR];
    for (int j = 0; j < NR; ++j) {
      if constexpr (SRC == FROM_BUF) {
        wv[j] = _mm512_loadu_ps(bk + j * 16);
      } else {
        if (pf) _mm_prefetch(reinterpret_cast<const char*>(pf + j * block + kk * 32), _MM_HINT_T1);
        wv[j] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_loadu_si512(w + j * block + kk * 32), 16));
        if constexpr (SRC == WIDEN_KEEP) _mm512_storeu_ps(bk + j * 16, wv[j]);
      }
    }
    for (int i = 0; i < MR; ++i) {
      const __m512 xb = _mm512_set1_ps(x[i * ldx + 2 * kk]);
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_fmadd_ps(xb, wv[j], acc[i][j]);
    }
    for (int j = 0; j < NR; ++j) {
      if constexpr (SRC == FROM_BUF) {
        wv[j] = _mm512_loadu_ps(bk + (NR + j) * 16);
      } else {
        wv[j] = _mm512_castsi512_ps(_mm512_and_si512(_mm512_loadu_si512(w + j * block + kk * 32), hi));
        if constexpr (SRC == WIDEN_KEEP) _mm512_storeu_ps(bk + (NR + j) * 16, wv[j]);
      }
    }
    for (int i = 0; i < MR; ++i) {
      const __m512 xb = _mm512_set1_ps(x[i * ldx + 2 * kk + 1]);
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_fmadd_ps(xb, wv[j], acc[i][j]);
    }
  }
}

template <int MR, int NR>
static inline void tile_emu(const float* x, int64_t ldx, const uint16_t* w, int64_t K2, const float* b,
                            uint16_t* y, int64_t ldy, const uint16_t* pf) {
  __m512 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
  pairs_emu<MR, NR, WIDEN>(acc, x, ldx, w, K2, 0, K2, nullptr, pf);
  store_tile<MR, NR>(acc, b, y, ldy);
}

// Large M (prefill): the column group widened once into a float32 panel [NR][K][16] that every row
// tile reuses from cache. The same FMAs in the same order as tile_emu: the same bits.
template <int MR, int NR>
static inline void tile_panel(const float* x, int64_t ldx, const float* wf, int64_t K, const float* b,
                              uint16_t* y, int64_t ldy) {
  __m512 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    __m512 wv[NR];
    for (int j = 0; j < NR; ++j) wv[j] = _mm512_loadu_ps(wf + (j * K + k) * 16);
    for (int i = 0; i < MR; ++i) {
      const __m512 xb = _mm512_set1_ps(x[i * ldx + k]);
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_fmadd_ps(xb, wv[j], acc[i][j]);
    }
  }
  store_tile<MR, NR>(acc, b, y, ldy);
}

// From this many rows on, widening a column group's weights once into a panel pays (measured against
// rows_chunked: about equal at 96 and 128 rows, panel ahead at 256, chunks ahead 4-10% at 48-64).
constexpr int64_t PANEL_ROWS = 96;

constexpr int64_t CHUNK = 64;  // k-pairs per chunk: NR x 2 x 16 floats each, 24 KiB at NR = 3
constexpr int64_t CHUNK_ROWS = 16;  // measured: below 16 rows (one tile and a tail) it does not pay

// One chunk of k-pairs for the tile whose accumulators wait at ``accm`` between chunks.
template <int MR, int NR, int SRC>
static inline void chunk_emu(float* accm, const float* x, int64_t ldx, const uint16_t* w, int64_t K2, int64_t k0,
                             int64_t k1, float* buf, const uint16_t* pf) {
  __m512 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_loadu_ps(accm + (i * NR + j) * 16);
  pairs_emu<MR, NR, SRC>(acc, x, ldx, w, K2, k0, k1, buf, pf);
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) _mm512_storeu_ps(accm + (i * NR + j) * 16, acc[i][j]);
}

template <int MR, int NR>
static inline void finish_tile(const float* accm, const float* b, uint16_t* y, int64_t ldy) {
  __m512 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_loadu_ps(accm + (i * NR + j) * 16);
  store_tile<MR, NR>(acc, b, y, ldy);
}

// CHUNK_ROWS <= M < PANEL_ROWS (a few row tiles): the group's tiles go through K together, a chunk of
// k-pairs at a time; the first tile widens the weights as tile_emu does and leaves them as float32 in an
// L1 buffer, the other tiles (full 8-row tiles, then a tail of R rows) read them there, so the weights
// are widened and streamed once per group instead of once per tile. Accumulators wait in memory between
// chunks; each output still sums k = 0, 1, 2, ... in order, one FMA each: the same bits as tile_emu.
template <int NR, int R>
static inline void rows_chunked(const float* x, int64_t ldx, int64_t M, const uint16_t* w, int64_t K2,
                                const float* b, uint16_t* y, int64_t ldy, const uint16_t* pf) {
  constexpr int MR = 8;
  constexpr int64_t TILE = MR * NR * 16;  // floats of one tile's accumulators
  alignas(64) float buf[CHUNK * NR * 32];
  const int64_t T = M / MR;  // full tiles, then the tail
  thread_local std::vector<float> accs;
  if (accs.size() < static_cast<size_t>((T + 1) * TILE)) accs.resize((T + 1) * TILE);
  std::fill(accs.begin(), accs.begin() + (T + 1) * TILE, 0.0f);
  for (int64_t k0 = 0; k0 < K2; k0 += CHUNK) {
    const int64_t k1 = std::min<int64_t>(K2, k0 + CHUNK);
    chunk_emu<MR, NR, WIDEN_KEEP>(accs.data(), x, ldx, w, K2, k0, k1, buf, pf);
    for (int64_t t = 1; t < T; ++t)
      chunk_emu<MR, NR, FROM_BUF>(accs.data() + t * TILE, x + t * MR * ldx, ldx, w, K2, k0, k1, buf, nullptr);
    if constexpr (R > 0)
      chunk_emu<R, NR, FROM_BUF>(accs.data() + T * TILE, x + T * MR * ldx, ldx, w, K2, k0, k1, buf, nullptr);
  }
  for (int64_t t = 0; t < T; ++t) finish_tile<MR, NR>(accs.data() + t * TILE, b, y + t * MR * ldy, ldy);
  if constexpr (R > 0) finish_tile<R, NR>(accs.data() + T * TILE, b, y + T * MR * ldy, ldy);
}

template <int NR>
static inline void gemm_rows_emu(const float* x, int64_t ldx, int64_t M, const uint16_t* w, int64_t K2,
                                 const float* b, uint16_t* y, int64_t ldy, std::vector<float>& panel,
                                 const uint16_t* pf) {
  constexpr int MR = 8;  // 8 x 3 accumulators + 3 weight registers
  if (M >= CHUNK_ROWS && M < PANEL_ROWS) {
    switch (M % MR) {
#define BATON_CHUNKED(R) case R: rows_chunked<NR, R>(x, ldx, M, w, K2, b, y, ldy, pf); return;
      BATON_CHUNKED(0) BATON_CHUNKED(1) BATON_CHUNKED(2) BATON_CHUNKED(3) BATON_CHUNKED(4) BATON_CHUNKED(5)
      BATON_CHUNKED(6) BATON_CHUNKED(7)
#undef BATON_CHUNKED
    }
  }
  const int64_t K = 2 * K2;
  const float* wf = nullptr;
  if (M >= PANEL_ROWS) {
    if (panel.size() < static_cast<size_t>(NR * K * 16)) panel.resize(NR * K * 16);
    const __m512i hi = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
    for (int j = 0; j < NR; ++j)
      for (int64_t kk = 0; kk < K2; ++kk) {
        const __m512i raw = _mm512_loadu_si512(w + j * K2 * 32 + kk * 32);
        _mm512_storeu_ps(&panel[(j * K + 2 * kk) * 16], _mm512_castsi512_ps(_mm512_slli_epi32(raw, 16)));
        _mm512_storeu_ps(&panel[(j * K + 2 * kk + 1) * 16], _mm512_castsi512_ps(_mm512_and_si512(raw, hi)));
      }
    wf = panel.data();
  }
  int64_t m = 0;
  for (; m + MR <= M; m += MR) {
    if (wf) tile_panel<MR, NR>(x + m * ldx, ldx, wf, K, b, y + m * ldy, ldy);
    else tile_emu<MR, NR>(x + m * ldx, ldx, w, K2, b, y + m * ldy, ldy, m == 0 ? pf : nullptr);
  }
  const float* xm = x + m * ldx;
  uint16_t* ym = y + m * ldy;
  switch (M - m) {
#define BATON_TAIL(R) \
  case R: if (wf) tile_panel<R, NR>(xm, ldx, wf, K, b, ym, ldy); else tile_emu<R, NR>(xm, ldx, w, K2, b, ym, ldy, m == 0 ? pf : nullptr); break;
    BATON_TAIL(1) BATON_TAIL(2) BATON_TAIL(3) BATON_TAIL(4) BATON_TAIL(5) BATON_TAIL(6) BATON_TAIL(7)
#undef BATON_TAIL
    default: break;
  }
}
#endif

// "native" (AVX512-BF16), "avx512f" (bf16 widened to float32 in registers) or "" (not built).
static std::string bf16_gemm_isa() {
#if defined(__AVX512BF16__)
  return "native";
#elif defined(__AVX512F__)
  return "avx512f";
#else
  return "";
#endif
}

static bool bf16_gemm_supported() {
#if defined(__AVX512BF16__) || defined(__AVX512F__)
  return true;
#else
  return false;
#endif
}

// [N, K] bf16 (K even) -> [ceil(N/16), K/2, 16, 2], the rows past N zero.
static at::Tensor bf16_pack(at::Tensor w) {
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kBFloat16, "w: [N, K] bfloat16");
  const int64_t N = w.size(0), K = w.size(1), NB = (N + 15) / 16;
  TORCH_CHECK(K % 2 == 0, "w: K must be even");
  at::Tensor full = w.contiguous();
  if (NB * 16 != N) full = at::cat({full, at::zeros({NB * 16 - N, K}, w.options())});
  return full.view({NB, 16, K / 2, 2}).permute({0, 2, 1, 3}).contiguous();
}

// y[:, :NB*16] = x[M, K] @ packed W (+ bias, float32 padded to NB*16 columns, or null); x and y
// bf16 with row strides ldx / ldy. The core of bf16_linear and of the fused forward.
static void bf16_gemm(const uint16_t* x, int64_t ldx, int64_t M, int64_t K, const uint16_t* wp, int64_t NB,
                      const float* bias, uint16_t* y, int64_t ldy) {
  const int64_t K2 = K / 2;
#if defined(__AVX512BF16__)
  constexpr int64_t NR = 3;
  at::parallel_for(0, (NB + NR - 1) / NR, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t nb = g * NR;
      const uint16_t* wg = wp + nb * K2 * 32;
      const float* bg = bias ? bias + nb * 16 : nullptr;
      uint16_t* yg = y + nb * 16;
      // The next group of this thread's range, fetched into L2 while this one computes.
      const char* pf = g + 1 < g1 ? reinterpret_cast<const char*>(wg + NR * K2 * 32) : nullptr;
      const int64_t pf_bytes = pf ? std::min<int64_t>(NR, NB - nb - NR) * K2 * 64 : 0;
      switch (std::min<int64_t>(NR, NB - nb)) {
        case 3: gemm_rows<3>(x, ldx, M, wg, K2, bg, yg, ldy, pf, pf_bytes); break;
        case 2: gemm_rows<2>(x, ldx, M, wg, K2, bg, yg, ldy, pf, pf_bytes); break;
        default: gemm_rows<1>(x, ldx, M, wg, K2, bg, yg, ldy, pf, pf_bytes); break;
      }
    }
  });
#elif defined(__AVX512F__)
  constexpr int64_t NR = 3;
  // x widened once, into a buffer kept per thread (no allocation, zeroing or page faults per call).
  thread_local std::vector<float> xbuf;
  if (xbuf.size() < static_cast<size_t>(M * K)) xbuf.resize(M * K);
  float* xf = xbuf.data();
  for (int64_t m = 0; m < M; ++m) {
    const uint16_t* xr = x + m * ldx;
    float* xo = xf + m * K;
    int64_t k = 0;
    for (; k + 16 <= K; k += 16)
      _mm512_storeu_ps(xo + k, _mm512_castsi512_ps(_mm512_slli_epi32(
                                   _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr + k))), 16)));
    for (; k < K; ++k) {
      const uint32_t bits = static_cast<uint32_t>(xr[k]) << 16;
      std::memcpy(xo + k, &bits, 4);
    }
  }
  at::parallel_for(0, (NB + NR - 1) / NR, 1, [&](int64_t g0, int64_t g1) {
    thread_local std::vector<float> panel;
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t nb = g * NR;
      const uint16_t* wg = wp + nb * K2 * 32;
      const float* bg = bias ? bias + nb * 16 : nullptr;
      uint16_t* yg = y + nb * 16;
      const int64_t left = std::min<int64_t>(NR, NB - nb);
      const uint16_t* pf = nb + NR < NB && NB - nb - NR >= NR ? wg + NR * K2 * 32 : nullptr;
      switch (left) {
        case 3: gemm_rows_emu<3>(xf, K, M, wg, K2, bg, yg, ldy, panel, pf); break;
        case 2: gemm_rows_emu<2>(xf, K, M, wg, K2, bg, yg, ldy, panel, nullptr); break;
        default: gemm_rows_emu<1>(xf, K, M, wg, K2, bg, yg, ldy, panel, nullptr); break;
      }
    }
  });
#else
  TORCH_CHECK(false, "this build has no bf16 GEMM (needs AVX-512)");
#endif
}

// bias (any float dtype, N values) as float32 padded to NP, or undefined.
static at::Tensor padded_bias(const c10::optional<at::Tensor>& bias, int64_t N, int64_t NP) {
  if (!bias.has_value() || !bias->defined()) return at::Tensor();
  at::Tensor bf = at::zeros({NP}, bias->options().dtype(at::kFloat));
  bf.narrow(0, 0, N).copy_(*bias);
  return bf;
}

// x [M, K] bf16 @ packed W -> [M, N] bf16 (N = the unpacked weight's rows), + bias (any float dtype).
static at::Tensor bf16_linear(at::Tensor x, at::Tensor wp, int64_t N, c10::optional<at::Tensor> bias) {
  TORCH_CHECK(bf16_gemm_supported(), "this build has no bf16 GEMM (needs AVX-512)");
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kBFloat16, "x: [M, K] bfloat16");
  TORCH_CHECK(wp.dim() == 4 && wp.size(2) == 16 && wp.size(3) == 2, "w: packed [N/16, K/2, 16, 2]");
  x = x.contiguous();
  const int64_t M = x.size(0), K = x.size(1), NB = wp.size(0), K2 = wp.size(1), NP = NB * 16;
  TORCH_CHECK(K == 2 * K2 && N <= NP && N > NP - 16, "x / w / N: shapes do not match");
  auto y = at::empty({M, NP}, x.options());
  const at::Tensor bf = padded_bias(bias, N, NP);
  bf16_gemm(reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>()), K, M, K,
            reinterpret_cast<const uint16_t*>(wp.data_ptr<at::BFloat16>()), NB,
            bf.defined() ? bf.data_ptr<float>() : nullptr, reinterpret_cast<uint16_t*>(y.data_ptr<at::BFloat16>()), NP);
  return NP == N ? y : y.narrow(1, 0, N).contiguous();
}
"""
