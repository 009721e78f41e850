"""C++ source of the bf16 GEMM over VNNI-packed weights (built by ``baton.runtime.kernels``)."""

SOURCE = r"""
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cstdint>

#if defined(__AVX512BF16__)
#include <immintrin.h>

// y[M, N] = x[M, K] @ W^T (+ b): bfloat16 in and out, float32 sums. W is packed as
// [ceil(N/16), K/2, 16, 2]: per block of 16 output columns, the k-pairs in order (what VDPBF16PS
// reads). Every output (m, n) is one accumulator lane that sums its k-pairs in order from k = 0 and
// is rounded once: its bits do not depend on M, on the row's place in the call or on the thread
// count (batch invariant by construction), unlike a library GEMM whose blocking follows M.
template <int MR, int NR>
static inline void gemm_tile(const uint16_t* x, int64_t ldx, const uint16_t* w, int64_t K2, const float* b,
                             uint16_t* y, int64_t ldy) {
  __m512 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
  const int64_t block = K2 * 32;  // elements between two column blocks
  for (int64_t kk = 0; kk < K2; ++kk) {
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

template <int NR>
static inline void gemm_rows(const uint16_t* x, int64_t ldx, int64_t M, const uint16_t* w, int64_t K2,
                             const float* b, uint16_t* y, int64_t ldy) {
  constexpr int MR = 6;  // 6 x 4 accumulators + 4 weight registers of the 32
  int64_t m = 0;
  for (; m + MR <= M; m += MR) gemm_tile<MR, NR>(x + m * ldx, ldx, w, K2, b, y + m * ldy, ldy);
  const uint16_t* xm = x + m * ldx;
  uint16_t* ym = y + m * ldy;
  switch (M - m) {
    case 1: gemm_tile<1, NR>(xm, ldx, w, K2, b, ym, ldy); break;
    case 2: gemm_tile<2, NR>(xm, ldx, w, K2, b, ym, ldy); break;
    case 3: gemm_tile<3, NR>(xm, ldx, w, K2, b, ym, ldy); break;
    case 4: gemm_tile<4, NR>(xm, ldx, w, K2, b, ym, ldy); break;
    case 5: gemm_tile<5, NR>(xm, ldx, w, K2, b, ym, ldy); break;
    default: break;
  }
}
#endif

static bool bf16_gemm_supported() {
#if defined(__AVX512BF16__)
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

// x [M, K] bf16 @ packed W -> [M, N] bf16 (N = the unpacked weight's rows), + bias (any float dtype).
static at::Tensor bf16_linear(at::Tensor x, at::Tensor wp, int64_t N, c10::optional<at::Tensor> bias) {
  TORCH_CHECK(bf16_gemm_supported(), "this build has no AVX512-BF16 GEMM");
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kBFloat16, "x: [M, K] bfloat16");
  TORCH_CHECK(wp.dim() == 4 && wp.size(2) == 16 && wp.size(3) == 2, "w: packed [N/16, K/2, 16, 2]");
  x = x.contiguous();
  const int64_t M = x.size(0), K = x.size(1), NB = wp.size(0), K2 = wp.size(1), NP = NB * 16;
  TORCH_CHECK(K == 2 * K2 && N <= NP && N > NP - 16, "x / w / N: shapes do not match");
  auto y = at::empty({M, NP}, x.options());
  at::Tensor bf;
  if (bias.has_value() && bias->defined()) {
    bf = at::zeros({NP}, x.options().dtype(at::kFloat));
    bf.narrow(0, 0, N).copy_(*bias);
  }
#if defined(__AVX512BF16__)
  const float* bp = bf.defined() ? bf.data_ptr<float>() : nullptr;
  const uint16_t* xp = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
  const uint16_t* wpp = reinterpret_cast<const uint16_t*>(wp.data_ptr<at::BFloat16>());
  uint16_t* yp = reinterpret_cast<uint16_t*>(y.data_ptr<at::BFloat16>());
  constexpr int64_t NR = 4;
  at::parallel_for(0, (NB + NR - 1) / NR, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t nb = g * NR;
      const uint16_t* wg = wpp + nb * K2 * 32;
      const float* bg = bp ? bp + nb * 16 : nullptr;
      uint16_t* yg = yp + nb * 16;
      switch (std::min<int64_t>(NR, NB - nb)) {
        case 4: gemm_rows<4>(xp, K, M, wg, K2, bg, yg, NP); break;
        case 3: gemm_rows<3>(xp, K, M, wg, K2, bg, yg, NP); break;
        case 2: gemm_rows<2>(xp, K, M, wg, K2, bg, yg, NP); break;
        default: gemm_rows<1>(xp, K, M, wg, K2, bg, yg, NP); break;
      }
    }
  });
#endif
  return NP == N ? y : y.narrow(1, 0, N).contiguous();
}
"""
