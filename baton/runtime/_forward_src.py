"""C++ source of the fused bf16 forward of the Llama family (built by ``baton.runtime.kernels``).

One call runs a whole forward, every layer, for a flat list of tokens: the decode step of a BATON
batch (the new column(s) of every row, attention over the batch's cache window, K/V written into
the cache in place) or a packed prefill (several prompts, each attending to itself causally, K/V
written into each prompt's own handoff tensor). The GEMMs are ``bf16_gemm`` and attention is the
decode-attention kernel of the sources before this one; what the eager forward spends in ~20 small
torch ops per layer (norms, rotary, SiLU, residual adds, KV writes, layout copies) is done here in
plain loops over a few hundred values per token.

Every op rounds to bfloat16 where the eager forward (``llama.py``) does: RMSNorm statistics in
float32, its output rounded, then scaled by the weight and rounded; rotary as two rounded
products and a rounded sum; SiLU rounded, times up rounded; residual sums rounded. Sums run in a
fixed order per token, so a token's result depends on nothing else in the call (batch invariance).
"""

SOURCE = r"""
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <cstring>
#include <vector>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace fwd {

using bf16 = uint16_t;

static inline float f(bf16 v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

static inline bf16 b(float v) {  // round to nearest even, as torch's float -> bfloat16
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  if (std::isnan(v)) return 0x7FC0;
  bits += 0x7FFF + ((bits >> 16) & 1);
  return static_cast<bf16>(bits >> 16);
}

static inline const bf16* ptr(const at::Tensor& t) { return reinterpret_cast<const bf16*>(t.data_ptr<at::BFloat16>()); }
static inline bf16* mptr(at::Tensor& t) { return reinterpret_cast<bf16*>(t.data_ptr<at::BFloat16>()); }

struct Dims {
  int64_t hidden, heads, kv_heads, head_dim, inter, vocab;
  double eps, scale;
  int64_t nq() const { return heads * head_dim; }
  int64_t nkv() const { return kv_heads * head_dim; }
  int64_t groups() const { return heads / kv_heads; }
};

#if defined(__AVX512F__)
// 16 bf16 -> float32; float32 -> rounded to bf16 (nearest even, NaN kept), as float32 or as bits.
static inline __m512 load16b(const bf16* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
}
static inline __m512 round16(__m512 v) { return _mm512_castsi512_ps(bf16_round_bits(v)); }
static inline void store16b(bf16* p, __m512 v) { bf16_store16(p, v); }
#endif

// out[t] = w * bf16(x[t] * rsqrt(mean(x[t]^2) + eps)) over n values per token (stride ld).
// The sum of squares runs in 16 lanes by index (i % 16), then over the lanes in order.
static void rms_norm(const bf16* x, int64_t ld, int64_t T, int64_t n, const bf16* w, double eps, bf16* out,
                     int64_t ldo) {
  at::parallel_for(0, T, 16, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const bf16* xr = x + t * ld;
      bf16* o = out + t * ldo;
      float lane[16] = {0};
      int64_t i = 0;
#if defined(__AVX512F__)
      __m512 acc = _mm512_setzero_ps();
      for (; i + 16 <= n; i += 16) {
        const __m512 v = load16b(xr + i);
        acc = _mm512_fmadd_ps(v, v, acc);
      }
      _mm512_storeu_ps(lane, acc);
#endif
      for (; i < n; ++i) lane[i % 16] = std::fma(f(xr[i]), f(xr[i]), lane[i % 16]);
      float ss = 0.f;
      for (int e = 0; e < 16; ++e) ss += lane[e];
      const float r = 1.0f / std::sqrt(ss / static_cast<float>(n) + static_cast<float>(eps));
      i = 0;
#if defined(__AVX512F__)
      const __m512 rv = _mm512_set1_ps(r);
      for (; i + 16 <= n; i += 16) store16b(o + i, _mm512_mul_ps(load16b(w + i), round16(_mm512_mul_ps(load16b(xr + i), rv))));
#endif
      for (; i < n; ++i) o[i] = b(f(w[i]) * f(b(f(xr[i]) * r)));
    }
  });
}

// Per-head RMSNorm (Qwen3's q/k norms) of `heads` heads of hd values at x[t * ld + h * hd], in place.
static void head_norm(bf16* x, int64_t ld, int64_t T, int64_t heads, int64_t hd, const bf16* w, double eps) {
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < heads; ++h) {
      bf16* p = x + t * ld + h * hd;
      rms_norm(p, hd, 1, hd, w, eps, p, hd);
    }
}

// Rotary embedding in place of `heads` heads at x[t * ld + h * hd], at positions pos[t]:
// x * cos + rotate_half(x) * sin, each product and the sum rounded.
static void rope(bf16* x, int64_t ld, int64_t T, int64_t heads, int64_t hd, const int64_t* pos,
                 const bf16* cos, const bf16* sin) {
  const int64_t half = hd / 2;
  at::parallel_for(0, T, 16, [&](int64_t t0, int64_t t1) {
    std::vector<float> tmp(hd);
    for (int64_t t = t0; t < t1; ++t) {
      const bf16* c = cos + pos[t] * hd;
      const bf16* s = sin + pos[t] * hd;
      for (int64_t h = 0; h < heads; ++h) {
        bf16* p = x + t * ld + h * hd;
#if defined(__AVX512F__)
        if (half % 16 == 0) {
          for (int64_t d = 0; d < half; d += 16) {
            const __m512 lo = load16b(p + d), hi = load16b(p + half + d);
            const __m512 nlo = round16(_mm512_add_ps(round16(_mm512_mul_ps(lo, load16b(c + d))),
                                                     round16(_mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), hi), load16b(s + d)))));
            const __m512 nhi = round16(_mm512_add_ps(round16(_mm512_mul_ps(hi, load16b(c + half + d))),
                                                     round16(_mm512_mul_ps(lo, load16b(s + half + d)))));
            store16b(p + d, nlo);
            store16b(p + half + d, nhi);
          }
          continue;
        }
#endif
        for (int64_t d = 0; d < hd; ++d) tmp[d] = f(p[d]);
        for (int64_t d = 0; d < hd; ++d) {
          const float rot = d < half ? -tmp[d + half] : tmp[d - half];
          p[d] = b(f(b(tmp[d] * f(c[d]))) + f(b(rot * f(s[d]))));
        }
      }
    }
  });
}

// x += y (each sum rounded), T tokens of n values.
static void add_into(bf16* x, int64_t ldx, const bf16* y, int64_t ldy, int64_t T, int64_t n) {
  at::parallel_for(0, T, 16, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      bf16* xr = x + t * ldx;
      const bf16* yr = y + t * ldy;
      int64_t i = 0;
#if defined(__AVX512F__)
      for (; i + 16 <= n; i += 16) store16b(xr + i, _mm512_add_ps(load16b(xr + i), load16b(yr + i)));
#endif
      for (; i < n; ++i) xr[i] = b(f(xr[i]) + f(yr[i]));
    }
  });
}

// out = bf16(silu(gate)) * up, gate = gu[:, :n], up = gu[:, n:2n].
static void silu_mul(const bf16* gu, int64_t ld, int64_t T, int64_t n, bf16* out) {
  at::parallel_for(0, T, 16, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const bf16* g = gu + t * ld;
      bf16* o = out + t * n;
      int64_t i = 0;
#if defined(__AVX512F__)
      const __m512 one = _mm512_set1_ps(1.0f);
      for (; i + 16 <= n; i += 16) {
        // silu(g) = g * sigmoid(g); sigmoid from e = exp(-|g|) (the attention kernel's exp): 1 / (1 + e)
        // for g >= 0, e / (1 + e) below.
        const __m512 gv = load16b(g + i);
        const __m512 e = exp_neg16(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(gv)));
        const __m512 num = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(gv, _mm512_setzero_ps(), _CMP_GE_OQ), e, one);
        const __m512 sv = round16(_mm512_mul_ps(gv, _mm512_div_ps(num, _mm512_add_ps(one, e))));
        store16b(o + i, _mm512_mul_ps(sv, load16b(g + n + i)));
      }
#endif
      for (; i < n; ++i) {
        const float gi = f(g[i]);
        o[i] = b(f(b(gi / (1.0f + std::exp(-gi)))) * f(g[n + i]));
      }
    }
  });
}

// A packed weight: [NB, K/2, 16, 2] bf16, and its bias (float32, NB * 16) or none.
struct Linear {
  const bf16* w = nullptr;
  int64_t nb = 0, k = 0;
  const float* bias = nullptr;
  int64_t cols() const { return nb * 16; }
};

static Linear linear_of(const c10::optional<at::Tensor>& w, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(w.has_value() && w->defined() && w->dim() == 4, "fused forward: a packed weight is missing");
  Linear l;
  l.w = ptr(*w);
  l.nb = w->size(0);
  l.k = w->size(1) * 2;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->numel() == l.cols(), "fused forward: bias padding");
    l.bias = bias->data_ptr<float>();
  }
  return l;
}

static void run_linear(const Linear& l, const bf16* x, int64_t ldx, int64_t T, bf16* y, int64_t ldy) {
  bf16_gemm(x, ldx, T, l.k, l.w, l.nb, l.bias, y, ldy);
}

struct Layer {
  const bf16* ln1;
  const bf16* ln2;
  const bf16* qn;
  const bf16* kn;
  Linear qkv, o, gu, down;
};

constexpr int64_t PER_LAYER = 12;  // ln1, wqkv, bqkv, wo, bo, qn, kn, ln2, wgu, bgu, wd, bd

static std::vector<Layer> layers_of(const c10::List<c10::optional<at::Tensor>>& ws) {
  TORCH_CHECK(ws.size() % PER_LAYER == 0, "fused forward: weights come in groups of 12 per layer");
  std::vector<Layer> out;
  auto get = [&](size_t i) -> c10::optional<at::Tensor> { return ws.get(i); };
  auto vec = [&](size_t i) -> const bf16* {
    c10::optional<at::Tensor> t = get(i);
    return t.has_value() && t->defined() ? ptr(*t) : nullptr;
  };
  for (size_t i = 0; i < ws.size(); i += PER_LAYER) {
    Layer l;
    l.ln1 = vec(i);
    l.qkv = linear_of(get(i + 1), get(i + 2));
    l.o = linear_of(get(i + 3), get(i + 4));
    l.qn = vec(i + 5);
    l.kn = vec(i + 6);
    l.ln2 = vec(i + 7);
    l.gu = linear_of(get(i + 8), get(i + 9));
    l.down = linear_of(get(i + 10), get(i + 11));
    out.push_back(l);
  }
  return out;
}

// Attention of one layer: reads q/k/v (rotated) from the qkv buffer, writes K/V where they belong,
// writes the attention output [T, nq] into o.
struct Attention {
  virtual ~Attention() = default;
  virtual void run(int64_t layer, const bf16* qkv, int64_t ld, bf16* o) = 0;
};

// q of tokens (r, p) -> [n, kvh, g * w, hd] (query j * w + p of group h), for the kernel.
static void gather_q(const bf16* qkv, int64_t ld, int64_t n, int64_t w, const Dims& d, bf16* qg) {
  const int64_t g = d.groups(), hd = d.head_dim;
  for (int64_t r = 0; r < n; ++r)
    for (int64_t p = 0; p < w; ++p) {
      const bf16* src = qkv + (r * w + p) * ld;
      for (int64_t h = 0; h < d.kv_heads; ++h)
        for (int64_t j = 0; j < g; ++j)
          std::memcpy(qg + (((r * d.kv_heads + h) * g + j) * w + p) * hd, src + (h * g + j) * hd, hd * 2);
    }
}

static void scatter_o(const bf16* og, int64_t n, int64_t w, const Dims& d, bf16* o) {
  const int64_t g = d.groups(), hd = d.head_dim;
  for (int64_t r = 0; r < n; ++r)
    for (int64_t p = 0; p < w; ++p) {
      bf16* dst = o + (r * w + p) * d.nq();
      for (int64_t h = 0; h < d.kv_heads; ++h)
        for (int64_t j = 0; j < g; ++j)
          std::memcpy(dst + (h * g + j) * hd, og + (((r * d.kv_heads + h) * g + j) * w + p) * hd, hd * 2);
    }
}

// A decode forward: rows x width new tokens (token r * width + p), K/V written at cache column
// end + p of row r, attention over [start, end + width) with the mask [rows, width, L] (or none).
struct DecodeAttention : Attention {
  const Dims& d;
  const std::vector<at::Tensor>& keys;
  const std::vector<at::Tensor>& values;
  int64_t start, end, rows, width;
  at::Tensor mask, qg, og;
  DecodeAttention(const Dims& d_, const std::vector<at::Tensor>& k, const std::vector<at::Tensor>& v, int64_t s,
                  int64_t e, int64_t n, int64_t w, at::Tensor m)
      : d(d_), keys(k), values(v), start(s), end(e), rows(n), width(w), mask(std::move(m)) {
    qg = at::empty({rows, d.kv_heads, d.groups() * width, d.head_dim}, k[0].options());
  }
  void run(int64_t layer, const bf16* qkv, int64_t ld, bf16* o) override {
    at::Tensor kb = keys[layer], vb = values[layer];  // [max_rows, kvh, capacity, hd]
    const int64_t hd = d.head_dim, s0 = kb.stride(0), s1 = kb.stride(1), s2 = kb.stride(2);
    bf16* kp = mptr(kb);
    bf16* vp = mptr(vb);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t p = 0; p < width; ++p) {
        const bf16* src = qkv + (r * width + p) * ld;
        for (int64_t h = 0; h < d.kv_heads; ++h) {
          const int64_t at_ = r * s0 + h * s1 + (end + p) * s2;
          std::memcpy(kp + at_, src + d.nq() + h * hd, hd * 2);
          std::memcpy(vp + at_, src + d.nq() + d.nkv() + h * hd, hd * 2);
        }
      }
    gather_q(qkv, ld, rows, width, d, mptr(qg));
    const int64_t L = end + width - start;
    at::Tensor kw = kb.narrow(0, 0, rows).narrow(2, start, L), vw = vb.narrow(0, 0, rows).narrow(2, start, L);
    og = at::empty_like(qg);
    dispatch<at::BFloat16>(qg, kw, vw, mask, width, d.scale, og);
    scatter_o(mptr(og), rows, width, d, o);
  }
};

// A packed prefill: prompt i is tokens [bounds[i], bounds[i + 1]); its K/V go to kvs[i]
// [layers, 2, kvh, len, hd]; it attends to itself, causally.
struct PrefillAttention : Attention {
  const Dims& d;
  const std::vector<at::Tensor>& kvs;
  std::vector<int64_t> bounds;
  std::vector<at::Tensor> masks;
  PrefillAttention(const Dims& d_, const std::vector<at::Tensor>& kv, std::vector<int64_t> b)
      : d(d_), kvs(kv), bounds(std::move(b)) {
    for (size_t i = 0; i + 1 < bounds.size(); ++i) {
      const int64_t p = bounds[i + 1] - bounds[i];
      masks.push_back(at::ones({p, p}, at::kBool).tril_().unsqueeze(0));
    }
  }
  void run(int64_t layer, const bf16* qkv, int64_t ld, bf16* o) override {
    const int64_t hd = d.head_dim;
    for (size_t i = 0; i + 1 < bounds.size(); ++i) {
      const int64_t a = bounds[i], p = bounds[i + 1] - a;
      at::Tensor kv = kvs[i];  // [layers, 2, kvh, p, hd] contiguous
      bf16* kp = mptr(kv) + layer * 2 * d.kv_heads * p * hd;
      bf16* vp = kp + d.kv_heads * p * hd;
      for (int64_t s = 0; s < p; ++s) {
        const bf16* src = qkv + (a + s) * ld;
        for (int64_t h = 0; h < d.kv_heads; ++h) {
          std::memcpy(kp + (h * p + s) * hd, src + d.nq() + h * hd, hd * 2);
          std::memcpy(vp + (h * p + s) * hd, src + d.nq() + d.nkv() + h * hd, hd * 2);
        }
      }
      at::Tensor qg = at::empty({1, d.kv_heads, d.groups() * p, hd}, kv.options());
      gather_q(qkv + a * ld, ld, 1, p, d, mptr(qg));
      at::Tensor kl = kv.select(0, layer).select(0, 0).unsqueeze(0), vl = kv.select(0, layer).select(0, 1).unsqueeze(0);
      at::Tensor og = at::empty_like(qg);
      dispatch<at::BFloat16>(qg, kl, vl, masks[i], p, d.scale, og);
      scatter_o(mptr(og), 1, p, d, o + a * d.nq());
    }
  }
};

// The forward of tokens ids/pos through every layer; logits [len(last), vocab] bf16 of the tokens
// at `last` (every token if empty).
static at::Tensor forward(const at::Tensor& ids, const at::Tensor& pos, const at::Tensor& last, const at::Tensor& embed,
                          const at::Tensor& cos, const at::Tensor& sin, const std::vector<Layer>& layers,
                          const at::Tensor& norm, const c10::optional<at::Tensor>& head, const Dims& d,
                          Attention& attn) {
  TORCH_CHECK(embed.scalar_type() == at::kBFloat16 && embed.is_contiguous(), "fused forward: bf16 embedding");
  const int64_t T = ids.numel(), H = d.hidden;
  const int64_t* idp = ids.data_ptr<int64_t>();
  const int64_t* pp = pos.data_ptr<int64_t>();
  auto opt = embed.options();
  const Layer& l0 = layers.at(0);
  const int64_t qkv_ld = l0.qkv.cols(), gu_ld = l0.gu.cols();
  at::Tensor x = at::empty({T, H}, opt), h = at::empty({T, H}, opt), y = at::empty({T, std::max(H, l0.o.cols())}, opt);
  at::Tensor qkv = at::empty({T, qkv_ld}, opt), o = at::empty({T, d.nq()}, opt);
  at::Tensor gu = at::empty({T, gu_ld}, opt), a = at::empty({T, d.inter}, opt);
  bf16* xp = mptr(x);
  bf16* hp = mptr(h);
  bf16* yp = mptr(y);
  bf16* qp = mptr(qkv);
  bf16* op = mptr(o);
  bf16* gp = mptr(gu);
  bf16* ap = mptr(a);
  const bf16* ep = ptr(embed);
  for (int64_t t = 0; t < T; ++t) {
    TORCH_CHECK(idp[t] >= 0 && idp[t] < embed.size(0), "fused forward: token id out of range");
    std::memcpy(xp + t * H, ep + idp[t] * H, H * 2);
  }
  const bf16* cp = ptr(cos);
  const bf16* sp = ptr(sin);
  const int64_t y_ld = y.size(1);
  for (size_t li = 0; li < layers.size(); ++li) {
    const Layer& L = layers[li];
    rms_norm(xp, H, T, H, L.ln1, d.eps, hp, H);
    run_linear(L.qkv, hp, H, T, qp, qkv_ld);
    if (L.qn) head_norm(qp, qkv_ld, T, d.heads, d.head_dim, L.qn, d.eps);
    if (L.kn) head_norm(qp + d.nq(), qkv_ld, T, d.kv_heads, d.head_dim, L.kn, d.eps);
    rope(qp, qkv_ld, T, d.heads, d.head_dim, pp, cp, sp);
    rope(qp + d.nq(), qkv_ld, T, d.kv_heads, d.head_dim, pp, cp, sp);
    attn.run(static_cast<int64_t>(li), qp, qkv_ld, op);
    run_linear(L.o, op, d.nq(), T, yp, y_ld);
    add_into(xp, H, yp, y_ld, T, H);
    rms_norm(xp, H, T, H, L.ln2, d.eps, hp, H);
    run_linear(L.gu, hp, H, T, gp, gu_ld);
    silu_mul(gp, gu_ld, T, d.inter, ap);
    run_linear(L.down, ap, d.inter, T, yp, y_ld);
    add_into(xp, H, yp, y_ld, T, H);
  }
  std::vector<int64_t> rows;
  if (last.numel()) {
    const int64_t* lp = last.data_ptr<int64_t>();
    rows.assign(lp, lp + last.numel());
  } else {
    for (int64_t t = 0; t < T; ++t) rows.push_back(t);
  }
  const int64_t R = static_cast<int64_t>(rows.size());
  at::Tensor xl = at::empty({R, H}, opt);
  for (int64_t i = 0; i < R; ++i) std::memcpy(mptr(xl) + i * H, xp + rows[i] * H, H * 2);
  at::Tensor hl = at::empty({R, H}, opt);
  rms_norm(ptr(xl), H, R, H, ptr(norm), d.eps, mptr(hl), H);
  Linear lm = linear_of(head, c10::nullopt);
  at::Tensor logits = at::empty({R, lm.cols()}, opt);
  run_linear(lm, ptr(hl), H, R, mptr(logits), lm.cols());
  return lm.cols() == d.vocab ? logits : logits.narrow(1, 0, d.vocab);
}

static Dims dims_of(const std::vector<int64_t>& shape, double eps, double scale) {
  TORCH_CHECK(shape.size() == 6, "fused forward: dims = [hidden, heads, kv_heads, head_dim, inter, vocab]");
  return Dims{shape[0], shape[1], shape[2], shape[3], shape[4], shape[5], eps, scale};
}

}  // namespace fwd

// The index of each row's first maximum of x [rows, n] float32, as torch.argmax (a NaN counts as the
// maximum: the first NaN's index). torch's CPU argmax over the last dim ran ~0.9 ms on a decode step's
// [16, 49152] logits, 18x its amax: this is a max pass, then a scan for the first index equal to it.
static at::Tensor argmax_rows(at::Tensor x) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.size(1) > 0, "x: [rows, n] float32, n > 0");
  x = x.contiguous();
  const int64_t R = x.size(0), n = x.size(1);
  at::Tensor out = at::empty({R}, x.options().dtype(at::kLong));
  const float* xp = x.data_ptr<float>();
  int64_t* op = out.data_ptr<int64_t>();
  for (int64_t r = 0; r < R; ++r) {
    const float* row = xp + r * n;
    int64_t at_ = -1;
#if defined(__AVX512F__)
    __m512 mx = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    int64_t i = 0;
    for (; i + 16 <= n && at_ < 0; i += 16) {
      const __m512 v = _mm512_loadu_ps(row + i);
      if (_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q)) {
        for (int64_t j = i; j < i + 16; ++j)
          if (std::isnan(row[j])) { at_ = j; break; }
      }
      mx = _mm512_max_ps(mx, v);
    }
    float m = _mm512_reduce_max_ps(mx);
    for (; i < n && at_ < 0; ++i) {
      if (std::isnan(row[i])) at_ = i;
      else m = std::max(m, row[i]);
    }
    if (at_ < 0) {
      const __m512 mv = _mm512_set1_ps(m);
      int64_t j = 0;
      for (; j + 16 <= n; j += 16) {
        const __mmask16 hit = _mm512_cmp_ps_mask(_mm512_loadu_ps(row + j), mv, _CMP_EQ_OQ);
        if (hit) { at_ = j + __builtin_ctz(static_cast<unsigned>(hit)); break; }
      }
      for (; at_ < 0 && j < n; ++j)
        if (row[j] == m) at_ = j;
    }
#else
    float m = row[0];
    at_ = 0;
    for (int64_t j = 0; j < n; ++j) {
      if (std::isnan(row[j])) { at_ = j; break; }
      if (row[j] > m) { m = row[j]; at_ = j; }
    }
#endif
    op[r] = at_;
  }
  return out;
}

// dims = [hidden, heads, kv_heads, head_dim, intermediate, vocab]; weights: 12 per layer.
static at::Tensor fused_decode(at::Tensor ids, at::Tensor pos, at::Tensor last, at::Tensor embed, at::Tensor cos,
                               at::Tensor sin, c10::List<c10::optional<at::Tensor>> weights, at::Tensor norm,
                               c10::optional<at::Tensor> head, std::vector<int64_t> dims, double eps, double scale,
                               std::vector<at::Tensor> keys, std::vector<at::Tensor> values, int64_t start, int64_t end,
                               int64_t rows, int64_t width, at::Tensor mask) {
  const fwd::Dims d = fwd::dims_of(dims, eps, scale);
  TORCH_CHECK(ids.numel() == rows * width, "fused decode: ids must be rows x width");
  if (mask.numel() && mask.dim() == 2) mask = mask.unsqueeze(1);
  fwd::DecodeAttention attn(d, keys, values, start, end, rows, width, mask);
  return fwd::forward(ids.contiguous(), pos.contiguous(), last.contiguous(), embed, cos, sin, fwd::layers_of(weights),
                      norm, head, d, attn);
}

// bounds: the packed prompts' token offsets (n + 1 values); kvs: one [layers, 2, kvh, len, hd] each.
static at::Tensor fused_prefill(at::Tensor ids, at::Tensor pos, at::Tensor last, at::Tensor embed, at::Tensor cos,
                                at::Tensor sin, c10::List<c10::optional<at::Tensor>> weights, at::Tensor norm,
                                c10::optional<at::Tensor> head, std::vector<int64_t> dims, double eps, double scale,
                                std::vector<at::Tensor> kvs, std::vector<int64_t> bounds) {
  const fwd::Dims d = fwd::dims_of(dims, eps, scale);
  TORCH_CHECK(bounds.size() == kvs.size() + 1 && bounds.back() == ids.numel(), "fused prefill: bounds");
  for (auto& kv : kvs) TORCH_CHECK(kv.is_contiguous() && kv.scalar_type() == at::kBFloat16, "fused prefill: kv");
  fwd::PrefillAttention attn(d, kvs, bounds);
  return fwd::forward(ids.contiguous(), pos.contiguous(), last.contiguous(), embed, cos, sin, fwd::layers_of(weights),
                      norm, head, d, attn);
}
"""
