"""C++ source of the decode-attention kernel (built by ``baton.runtime.kernels``)."""

SOURCE = r"""
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
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
// exp_neg on 16 lanes (the same steps, vectorized).
static inline __m512 exp_neg16(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), _mm512_set1_ps(1.0f));
  const __m512i e = _mm512_slli_epi32(_mm512_cvtps_epi32(n), 23);
  return _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(p), e));
}
#endif

// s[c] = exp(s[c] - max(s)) for c < nc, and lane[c % 16] += s[c] in column order.
static inline void softmax_numerators(float* s, int64_t nc, float* lane) {
#if defined(__AVX512F__)
  __m512 mx = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t c = 0; c < nc; c += 16) {
    const __mmask16 m = nc - c >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (nc - c)) - 1);
    mx = _mm512_mask_max_ps(mx, m, mx, _mm512_maskz_loadu_ps(m, s + c));
  }
  const __m512 top = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
  __m512 acc = _mm512_setzero_ps();
  for (int64_t c = 0; c < nc; c += 16) {
    const __mmask16 m = nc - c >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (nc - c)) - 1);
    const __m512 e = exp_neg16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, s + c), top));
    _mm512_mask_storeu_ps(s + c, m, e);
    acc = _mm512_add_ps(acc, _mm512_maskz_mov_ps(m, e));
  }
  _mm512_storeu_ps(lane, acc);
#else
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t c = 0; c < nc; ++c) mx = std::max(mx, s[c]);
  for (int64_t c = 0; c < nc; ++c) s[c] = exp_neg(s[c] - mx);
  for (int64_t c = 0; c < nc; ++c) lane[c % 16] += s[c];
#endif
}

#if defined(__AVX512F__)
// Software prefetch of a K/V row PF columns ahead (the window is read once: DRAM-bound).
constexpr int64_t PF = 6;
template <typename T>
static inline void prefetch_row(const T* p, int64_t hd) {
  for (int64_t b = 0; b < hd * static_cast<int64_t>(sizeof(T)); b += 64)
    _mm_prefetch(reinterpret_cast<const char*>(p) + b, _MM_HINT_T0);
}

// The next (row, head)'s K or V window, fetched into L2 a few lines at a time while the current one
// computes (the windows are read once per step, from memory: without this, a job's first columns
// wait on DRAM and compute and memory take turns). Into L2: measured, into L1 it was slower.
struct Ahead {
  const char* base = nullptr;
  int64_t stride = 0, row = 0, cols = 0, c = 0, b = 0;  // bytes between columns, bytes per column
  Ahead() = default;
  Ahead(const void* p, int64_t stride_bytes, int64_t row_bytes, int64_t n)
      : base(static_cast<const char*>(p)), stride(stride_bytes), row(row_bytes), cols(p ? n : 0) {}
  int64_t lines() const { return cols * ((row + 63) / 64); }
  inline void fetch(int64_t n) {
    for (; n > 0 && c < cols; --n) {
      _mm_prefetch(base + c * stride + b, _MM_HINT_T1);
      b += 64;
      if (b >= row) {
        b = 0;
        ++c;
      }
    }
  }
};

// Load 16 values as float32.
static inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
static inline __m512 load16(const at::BFloat16* p) {
  __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}
static inline __m512 load16(const at::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// float32 -> bfloat16 bits in the upper half of each lane (round to nearest even, NaN kept quiet),
// as torch's conversion; bf16_store16 writes the 16 values.
static inline __m512i bf16_round_bits(__m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
  r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC00000));
  return _mm512_and_si512(r, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u)));
}
static inline void bf16_store16(void* p, __m512 v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(_mm512_srli_epi32(bf16_round_bits(v), 16)));
}
#endif


#if defined(__AVX512F__)
// Lane sums of 16 vectors, as one vector (lane i = the sum of v[i]'s lanes). Each lane is summed by
// the same tree whatever its position: (l0+l2)+(l1+l3) in each 128-bit quarter, then (q0+q1)+(q2+q3).
static inline __m512 sum16(__m512* v) {
  __m512 t[8], u[4];
  for (int i = 0; i < 8; ++i)
    t[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  for (int i = 0; i < 4; ++i)
    u[i] = _mm512_add_ps(_mm512_shuffle_ps(t[2 * i], t[2 * i + 1], 0x44), _mm512_shuffle_ps(t[2 * i], t[2 * i + 1], 0xEE));
  const __m512 x0 = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], 0x88), _mm512_shuffle_f32x4(u[0], u[1], 0xDD));
  const __m512 x1 = _mm512_add_ps(_mm512_shuffle_f32x4(u[2], u[3], 0x88), _mm512_shuffle_f32x4(u[2], u[3], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(x0, x1, 0x88), _mm512_shuffle_f32x4(x0, x1, 0xDD));
}
#endif

#if defined(__AVX512F__) && !defined(__AVX512BF16__)
// Without AVX512-BF16: 32 bf16 values as two float32 vectors, the even-indexed and the odd-indexed
// ones (a shift and a mask of one load). Dot products and weighted sums over head_dim then run in
// that split order, which is fixed: the same for every query, column and batch.
static inline void widen32(const at::BFloat16* p, __m512& even, __m512& odd) {
  const __m512i raw = _mm512_loadu_si512(p);
  even = _mm512_castsi512_ps(_mm512_slli_epi32(raw, 16));
  odd = _mm512_castsi512_ps(_mm512_and_si512(raw, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
}

// Scores of G queries (float32, even/odd split, scale applied: qs[(j * NZ + z) * 2 + {0, 1}]) against
// a row's real columns: 16 columns at a time widened once into kb (L1), then per query 16 dot products
// summed across lanes by sum16; prefetches the K rows two blocks ahead. s[j * L + c] = q_j . k_cols[c].
// A column's values as even/odd float32 pairs: widened from the bf16 cache (decode: each column is
// read once per query position, w == 1), or loaded from a float32 copy widened once per (row, head)
// (prefill and orca steps: every query position reads the same columns).
struct WideCols {
  const at::BFloat16* bf = nullptr;  // [L][hd] with row stride `stride`
  const float* f32 = nullptr;        // or [L][NZ][2][16]
  int64_t stride = 0, hd = 0;
  template <bool F32>
  inline void get(int64_t col, int z, __m512& even, __m512& odd) const {
    if constexpr (F32) {
      const float* p = f32 + (col * (hd / 32) + z) * 32;
      even = _mm512_loadu_ps(p);
      odd = _mm512_loadu_ps(p + 16);
    } else {
      widen32(bf + col * stride + z * 32, even, odd);
    }
  }
  template <bool F32>
  inline void prefetch(int64_t col) const {
    if constexpr (!F32) prefetch_row(bf + col * stride, hd);
  }
  // The next (row, head)'s columns, fetched into L2 while this one computes: a step's window is
  // read once, from memory, and without this the loads wait on memory latency (measured).
  const at::BFloat16* next = nullptr;
  inline void prefetch_next(int64_t col) const {  // `next` is never null (the job itself, last)
    const char* p = reinterpret_cast<const char*>(next + col * stride);
    for (int64_t b = 0; b < hd * 2; b += 64) _mm_prefetch(p + b, _MM_HINT_T1);
  }
};

static void widen_all(const at::BFloat16* src, int64_t stride, int64_t L, int64_t hd, std::vector<float>& dst) {
  dst.resize(L * hd);
  for (int64_t c = 0; c < L; ++c)
    for (int64_t z = 0; z < hd / 32; ++z) {
      __m512 e, o;
      widen32(src + c * stride + z * 32, e, o);
      _mm512_storeu_ps(&dst[(c * (hd / 32) + z) * 32], e);
      _mm512_storeu_ps(&dst[(c * (hd / 32) + z) * 32 + 16], o);
    }
}

template <int G, int NV, bool F32>
static inline void scores_wide(const __m512* qs, const WideCols& kc, const int64_t* cols, int64_t nc, float* s,
                               int64_t L) {
  constexpr int NZ = NV / 2;
  __m512 kb[16][NZ][2];
  for (int64_t c0 = 0; c0 < nc; c0 += 16) {
    const int64_t n = std::min<int64_t>(16, nc - c0);
    for (int64_t i = 0; i < n; ++i) {
      if (c0 + 32 + i < nc) kc.prefetch<F32>(cols[c0 + 32 + i]);
      if constexpr (!F32) kc.prefetch_next(cols[c0 + i]);
      for (int z = 0; z < NZ; ++z) kc.get<F32>(cols[c0 + i], z, kb[i][z][0], kb[i][z][1]);
    }
    for (int j = 0; j < G; ++j) {
      __m512 a[16];
      for (int i = 0; i < 16; ++i) {
        a[i] = _mm512_setzero_ps();
        if (i < n)
          for (int z = 0; z < NZ; ++z) {
            a[i] = _mm512_fmadd_ps(qs[(j * NZ + z) * 2], kb[i][z][0], a[i]);
            a[i] = _mm512_fmadd_ps(qs[(j * NZ + z) * 2 + 1], kb[i][z][1], a[i]);
          }
      }
      _mm512_mask_storeu_ps(s + j * L + c0, (__mmask16)((1u << n) - 1), sum16(a));
    }
  }
}

// o_j = sum_c p_j[c] v[c] over the real columns, in column order, even/odd split; the result in
// head_dim order in acc[j * hd + d] (not yet divided by the softmax denominator).
template <int G, int NV, bool F32>
static inline void weighted_wide(const float* s, int64_t L, const WideCols& vc, const int64_t* cols, int64_t nc,
                                 float* acc) {
  constexpr int NZ = NV / 2;
  __m512 o[G][NZ][2];
  for (int j = 0; j < G; ++j)
    for (int z = 0; z < NZ; ++z) o[j][z][0] = o[j][z][1] = _mm512_setzero_ps();
  for (int64_t c = 0; c < nc; ++c) {
    if (c + PF < nc) vc.prefetch<F32>(cols[c + PF]);
    if constexpr (!F32) vc.prefetch_next(cols[c]);
    for (int z = 0; z < NZ; ++z) {
      __m512 ve, vo;
      vc.get<F32>(cols[c], z, ve, vo);
      for (int j = 0; j < G; ++j) {
        const __m512 pj = _mm512_set1_ps(s[j * L + c]);
        o[j][z][0] = _mm512_fmadd_ps(pj, ve, o[j][z][0]);
        o[j][z][1] = _mm512_fmadd_ps(pj, vo, o[j][z][1]);
      }
    }
  }
  const __m512i lo_idx = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  const __m512i hi_idx = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
  for (int j = 0; j < G; ++j)
    for (int z = 0; z < NZ; ++z) {  // interleave even/odd back into head_dim order
      _mm512_storeu_ps(acc + j * NV * 16 + z * 32, _mm512_permutex2var_ps(o[j][z][0], lo_idx, o[j][z][1]));
      _mm512_storeu_ps(acc + j * NV * 16 + z * 32 + 16, _mm512_permutex2var_ps(o[j][z][0], hi_idx, o[j][z][1]));
    }
}
#endif

#if defined(__AVX512BF16__)
// bf16 scores of G queries (head_dim = NV * 16) against a row's real columns: products of bf16
// pairs summed in float32 by VDPBF16PS (exact products), 16 columns at a time, one fixed order per
// column; s[j * L + c] = scale * (q_j . k_cols[c]). Each block of 16 columns serves all G queries
// while it is in L1 (a window is read from memory once, not once per query from L2).
template <int G, int NV>
static inline void scores_bf16(const at::BFloat16* q, int64_t qstride, const at::BFloat16* kr, int64_t ks2,
                               const int64_t* cols, int64_t nc, float scale, float* s, int64_t L, Ahead& ahead) {
  constexpr int NZ = NV / 2;  // 32 bf16 per register
  const __m512 sc = _mm512_set1_ps(scale);
  const int64_t chunks = (nc + 15) / 16, per = chunks ? (ahead.lines() + chunks - 1) / chunks : 0;
  for (int64_t c0 = 0; c0 < nc; c0 += 16) {
    ahead.fetch(per);
    const int64_t n = std::min<int64_t>(16, nc - c0);
    for (int j = 0; j < G; ++j) {
      __m512bh qz[NZ];
      for (int z = 0; z < NZ; ++z) qz[z] = (__m512bh)_mm512_loadu_si512(q + j * qstride + z * 32);
      __m512 a[16];
      for (int i = 0; i < 16; ++i) {
        a[i] = _mm512_setzero_ps();
        if (i < n) {
          const at::BFloat16* kl = kr + cols[c0 + i] * ks2;
          for (int z = 0; z < NZ; ++z)
            a[i] = _mm512_dpbf16_ps(a[i], qz[z], (__m512bh)_mm512_loadu_si512(kl + z * 32));
        }
      }
      const __m512 r = _mm512_mul_ps(sum16(a), sc);
      _mm512_mask_storeu_ps(s + j * L + c0, (__mmask16)((1u << n) - 1), r);
    }
  }
}

// o_j = sum_c p_j[c] v[c] over the real columns, in column order (acc[j * hd + d], not yet divided by
// the softmax denominator). A column's 32-value chunks are widened as the even- and the odd-indexed
// values (a shift and a mask of one load, half the widening work of 16 at a time); each output is
// the same chain of FMAs over the columns either way, so the bits are those of a per-16 widening.
template <int G, int NV>
static inline void weighted_bf16(const float* s, int64_t L, const at::BFloat16* vr, int64_t vs2, const int64_t* cols,
                                 int64_t nc, float* acc, Ahead& ahead) {
  constexpr int NZ = NV / 2;
  const __m512i hi = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  __m512 o[G][NZ][2];
  for (int j = 0; j < G; ++j)
    for (int z = 0; z < NZ; ++z) o[j][z][0] = o[j][z][1] = _mm512_setzero_ps();
  const int64_t per = nc ? (ahead.lines() + nc - 1) / nc : 0;
  for (int64_t c = 0; c < nc; ++c) {
    const at::BFloat16* vl = vr + cols[c] * vs2;
    if (c + PF < nc) prefetch_row(vr + cols[c + PF] * vs2, NV * 16);
    ahead.fetch(per);
    __m512 p[G];
    for (int j = 0; j < G; ++j) p[j] = _mm512_set1_ps(s[j * L + c]);
    for (int z = 0; z < NZ; ++z) {
      const __m512i raw = _mm512_loadu_si512(vl + z * 32);
      const __m512 even = _mm512_castsi512_ps(_mm512_slli_epi32(raw, 16));
      const __m512 odd = _mm512_castsi512_ps(_mm512_and_si512(raw, hi));
      for (int j = 0; j < G; ++j) {
        o[j][z][0] = _mm512_fmadd_ps(p[j], even, o[j][z][0]);
        o[j][z][1] = _mm512_fmadd_ps(p[j], odd, o[j][z][1]);
      }
    }
  }
  const __m512i lo_idx = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  const __m512i hi_idx = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
  for (int j = 0; j < G; ++j)
    for (int z = 0; z < NZ; ++z) {  // even/odd back into head_dim order
      _mm512_storeu_ps(acc + j * NV * 16 + z * 32, _mm512_permutex2var_ps(o[j][z][0], lo_idx, o[j][z][1]));
      _mm512_storeu_ps(acc + j * NV * 16 + z * 32 + 16, _mm512_permutex2var_ps(o[j][z][0], hi_idx, o[j][z][1]));
    }
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
#if defined(__AVX512F__) && !defined(__AVX512BF16__)
  constexpr bool WIDE = G > 0 && G <= 4 && NV % 2 == 0 && std::is_same_v<T, at::BFloat16>;
#else
  constexpr bool WIDE = false;
#endif
  at::parallel_for(0, n * kvh, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qf(g * w * hd), s(g * L), acc(g * hd), denom(g);
    std::vector<int64_t> cols(L);
    int64_t cols_of = -1, nc_of = 0;  // decode steps (w == 1): the row whose columns `cols` holds
    for (int64_t job = begin; job < end; ++job) {
      const int64_t r = job / kvh, h = job % kvh;
      const T* kr = kp + r * ks0 + h * ks1;
      const T* vr = vp + r * vs0 + h * vs1;
      const T* qr = qp + (r * kvh + h) * g * w * hd;
      T* orow = op + (r * kvh + h) * g * w * hd;
#if defined(__AVX512F__)
      Ahead k_ahead, v_ahead;  // the next job's windows (decode steps: each is read once)
      if (w == 1 && job + 1 < end) {  // measured: attention 24% faster, 2 jobs ahead 20%
        const int64_t r1 = (job + 1) / kvh, h1 = (job + 1) % kvh;
        k_ahead = Ahead(kp + r1 * ks0 + h1 * ks1, ks2 * sizeof(T), hd * sizeof(T), L);
        v_ahead = Ahead(vp + r1 * vs0 + h1 * vs1, vs2 * sizeof(T), hd * sizeof(T), L);
      }
#endif
      if (!WIDE)
        for (int64_t i = 0; i < g * w * hd; ++i) qf[i] = static_cast<float>(qr[i]) * static_cast<float>(scale);
#if defined(__AVX512F__) && !defined(__AVX512BF16__)
      WideCols kc, vc;
      if constexpr (std::is_same_v<T, at::BFloat16>) {
        kc = WideCols{kr, nullptr, ks2, hd, kr};
        vc = WideCols{vr, nullptr, vs2, hd, vr};
        if (job + 1 < end) {
          const int64_t r1 = (job + 1) / kvh, h1 = (job + 1) % kvh;
          kc.next = kp + r1 * ks0 + h1 * ks1;
          vc.next = vp + r1 * vs0 + h1 * vs1;
        }
        if (w > 1 && hd % 32 == 0) {  // every query position reads these columns: widen them once
          thread_local std::vector<float> kw, vw;
          widen_all(kr, ks2, L, hd, kw);
          widen_all(vr, vs2, L, hd, vw);
          kc.f32 = kw.data();
          vc.f32 = vw.data();
        }
      }
#endif
      for (int64_t p = 0; p < w; ++p) {
        int64_t nc = 0;
        const bool* mrow = mp ? mp + r * ms0 + p * ms1 : nullptr;
        if (w == 1 && cols_of == r) {
          nc = nc_of;  // the row's other heads: same mask, same columns
        } else {
          for (int64_t l = 0; l < L; ++l)
            if (!mrow || mrow[l]) cols[nc++] = l;
          cols_of = w == 1 ? r : -1;
          nc_of = nc;
        }
        std::fill(acc.begin(), acc.end(), 0.f);
#if defined(__AVX512BF16__)
        if constexpr (G > 0 && NV % 2 == 0 && std::is_same_v<T, at::BFloat16>) {
          scores_bf16<G, NV>(qr + p * hd, w * hd, kr, ks2, cols.data(), nc, static_cast<float>(scale), s.data(), L,
                             k_ahead);
        } else
#elif defined(__AVX512F__)
        if constexpr (G > 0 && G <= 4 && NV % 2 == 0 && std::is_same_v<T, at::BFloat16>) {
          __m512 qs[G > 0 ? G * NV : 1];
          for (int j = 0; j < G; ++j)
            for (int z = 0; z < NV / 2; ++z) {
              widen32(qr + (j * w + p) * hd + z * 32, qs[(j * (NV / 2) + z) * 2], qs[(j * (NV / 2) + z) * 2 + 1]);
              const __m512 sc = _mm512_set1_ps(static_cast<float>(scale));
              qs[(j * (NV / 2) + z) * 2] = _mm512_mul_ps(qs[(j * (NV / 2) + z) * 2], sc);
              qs[(j * (NV / 2) + z) * 2 + 1] = _mm512_mul_ps(qs[(j * (NV / 2) + z) * 2 + 1], sc);
            }
          if (kc.f32) scores_wide<G, NV, true>(qs, kc, cols.data(), nc, s.data(), L);
          else scores_wide<G, NV, false>(qs, kc, cols.data(), nc, s.data(), L);
        } else
#endif
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
          float lane[V] = {0};  // the sum in 16 lanes by column index, then lanes in order
          softmax_numerators(sj, nc, lane);
          float sum = 0.f;
          for (int e = 0; e < V; ++e) sum += lane[e];
          denom[j] = sum;
        }
#if defined(__AVX512BF16__)
        if constexpr (G > 0 && NV % 2 == 0 && std::is_same_v<T, at::BFloat16>) {
          weighted_bf16<G, NV>(s.data(), L, vr, vs2, cols.data(), nc, acc.data(), v_ahead);
        } else
#elif defined(__AVX512F__)
        if constexpr (G > 0 && G <= 4 && NV % 2 == 0 && std::is_same_v<T, at::BFloat16>) {
          if (vc.f32) weighted_wide<G, NV, true>(s.data(), L, vc, cols.data(), nc, acc.data());
          else weighted_wide<G, NV, false>(s.data(), L, vc, cols.data(), nc, acc.data());
        } else
#endif
#if defined(__AVX512F__)
        if (G > 0) {
          __m512 o[G > 0 ? G * NV : 1];
          for (int i = 0; i < G * NV; ++i) o[i] = _mm512_setzero_ps();
          const int64_t v_per = nc ? (v_ahead.lines() + nc - 1) / nc : 0;
          for (int64_t c = 0; c < nc; ++c) {
            const T* vl = vr + cols[c] * vs2;
            if (c + PF < nc) prefetch_row(vr + cols[c + PF] * vs2, hd);
            v_ahead.fetch(v_per);
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
#if defined(__AVX512F__)
          if constexpr (std::is_same_v<T, at::BFloat16>) {
            if (hd % 16 == 0) {
              const __m512 dn = _mm512_set1_ps(denom[j]);
              for (int64_t d = 0; d < hd; d += 16) bf16_store16(oq + d, _mm512_div_ps(_mm512_loadu_ps(&acc[j * hd + d]), dn));
              continue;
            }
          }
#endif
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
"""
