"""The fast runtime: baton's own forward for the Llama family (Llama, Mistral, Qwen2, Qwen3).

Built from the model folder's ``config.json`` and ``*.safetensors`` (never the transformers model
class): fused QKV and gate/up projections, RMSNorm, rotary embeddings looked up in a cached cos/sin
table at each token's true position, grouped-query attention over the decode batch's window with
its padding mask, tied embeddings, and logits for each row's last column only.

Decode reads and writes the ``BatonKVCache`` in place through ``cache.write_layer`` (the one cache
layout, no copy); its attention is baton's CPU kernel (``kernels.py``: reads each row's real
columns in place, batch invariant) where it builds, torch ops otherwise. Prefill packs several
prompts into one forward with no padding: the projections and MLP run on the concatenated real
tokens and attention runs per prompt, causal (measured 2-3.6x faster here than one call with a
block-diagonal mask over 256 packed tokens). bf16 weights are packed once at load for baton's GEMM
(``kernels.bf16_linear``), or for oneDNN where that kernel cannot build.

Compiled decode steps (``warmup``) are in ``compile.py``; the layer math is here.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from baton.core.errors import ModelError
from baton.runtime import kernels
from baton.runtime.base import StepInput

log = logging.getLogger("baton.runtime")

FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
ROPE_TYPES = ("default", "linear", "llama3")  # exact here; others (yarn, dynamic, ...) are refused


# ---------------------------------------------------------------------------------------------- spec
@dataclass(frozen=True)
class LlamaSpec:
    """What the forward needs from a model's config, checked once."""

    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool
    tie_word_embeddings: bool
    max_positions: int
    rope_type: str
    rope_theta: float

    @property
    def groups(self) -> int:
        return self.num_heads // self.num_kv_heads

    @classmethod
    def from_config(cls, config: Any) -> LlamaSpec:
        """Check a transformers config; raise ModelError naming the field the fast runtime cannot do."""
        mt = getattr(config, "model_type", None)
        if mt not in FAMILIES:
            raise ModelError(
                f"model: the fast runtime does not support model type {mt!r} (it runs {', '.join(FAMILIES)})"
            )
        act = getattr(config, "hidden_act", "silu")
        if act != "silu":
            raise ModelError(f"hidden_act: the fast runtime supports silu, {mt} config has {act!r}")
        heads, kv = config.num_attention_heads, getattr(config, "num_key_value_heads", None) or 0
        kv = kv or heads
        if heads % kv:
            raise ModelError(f"num_key_value_heads: {kv} does not divide num_attention_heads {heads}")
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        sliding = getattr(config, "sliding_window", None)
        windowed = mt == "mistral" or getattr(config, "use_sliding_window", False)
        if windowed and sliding is not None and sliding < config.max_position_embeddings:
            raise ModelError(
                f"sliding_window: {sliding} (sliding-window attention) is not in the fast runtime"
            )
        rope = _rope_parameters(config)
        rope_type = rope.get("rope_type", "default")
        if rope_type not in ROPE_TYPES:
            raise ModelError(
                f"rope_parameters: rope type {rope_type!r} is not in the fast runtime "
                f"({', '.join(ROPE_TYPES)})"
            )
        if float(rope.get("partial_rotary_factor", 1.0)) != 1.0:
            raise ModelError("partial_rotary_factor: partial rotary embeddings are not in the fast runtime")
        attn_bias = bool(getattr(config, "attention_bias", False))
        return cls(
            model_type=mt,
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            num_layers=config.num_hidden_layers,
            num_heads=heads,
            num_kv_heads=kv,
            head_dim=head_dim,
            intermediate_size=config.intermediate_size,
            rms_norm_eps=float(config.rms_norm_eps),
            qkv_bias=True if mt == "qwen2" else attn_bias,  # Qwen2 always has q/k/v bias, no o bias
            o_bias=attn_bias and mt != "qwen2",
            mlp_bias=bool(getattr(config, "mlp_bias", False)),
            qk_norm=mt == "qwen3",
            tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
            max_positions=config.max_position_embeddings,
            rope_type=rope_type,
            rope_theta=float(rope["rope_theta"]),
        )


def _rope_parameters(config: Any) -> dict:
    """``rope_parameters`` (transformers 5), or the older ``rope_theta`` + ``rope_scaling`` fields."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and "rope_theta" in params:
        return params
    out = dict(getattr(config, "rope_scaling", None) or {})
    out.setdefault("rope_type", out.pop("type", "default"))
    out["rope_theta"] = getattr(config, "rope_theta", 10000.0)
    return out


def inv_freq(config: Any, spec: LlamaSpec) -> torch.Tensor:
    """Rotary inverse frequencies, exactly as transformers computes them for this rope type."""
    if spec.rope_type == "default":
        d = spec.head_dim
        return 1.0 / (spec.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    freq, scaling = ROPE_INIT_FUNCTIONS[spec.rope_type](config, torch.device("cpu"))
    if scaling != 1.0:
        raise ModelError(f"rope_parameters: attention scaling {scaling} is not in the fast runtime")
    return freq.float()


# ---------------------------------------------------------------------------------------------- weights
def weight_files(source: str) -> list[Path]:
    """The folder's ``*.safetensors`` (a sharded checkpoint's from its index). ModelError if none."""
    folder = Path(source)
    if not folder.is_dir():
        try:  # a hub id: from the hub cache (fetched from the hub if reachable and not cached yet)
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(source, allow_patterns=["*.json", "*.safetensors"]))
        except Exception as e:
            raise ModelError(f"model: no local safetensors for {source!r}: {e}") from e
    index = folder / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / s for s in shards]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelError(
            f"model: {source!r} has no *.safetensors weights (the fast runtime reads only those)"
        )
    return files


class _Tensors:
    """Lazy access to a checkpoint's tensors by name across its shards."""

    def __init__(self, files: list[Path]):
        from safetensors import safe_open

        self._handles = [safe_open(str(f), framework="pt") for f in files]
        # safe_open handles have keys() but no __iter__
        self._where = {k: h for h in self._handles for k in h.keys()}  # noqa: SIM118

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def get(self, name: str) -> torch.Tensor:
        if name not in self._where:
            raise ModelError(f"model: weight {name} is missing from the safetensors checkpoint")
        return self._where[name].get_tensor(name)

    def head_rows(self, name: str, rows: int) -> torch.Tensor:
        return self._where[name].get_slice(name)[:rows]


def embedding_sample(files: list[Path], hidden: int, dtype: torch.dtype, n: int = 4096) -> torch.Tensor:
    """The first ``n`` values of the input embedding, rounded to ``dtype`` as a loaded model holds them."""
    t = _Tensors(files)
    rows = math.ceil(n / hidden)
    return t.head_rows("model.embed_tokens.weight", rows).to(dtype).flatten()[:n]


# ---------------------------------------------------------------------------------------------- GEMMs
# bf16 weights on the CPU are packed once at load. Where baton's kernel builds (AVX512-BF16), in its
# own layout for ``kernels.bf16_linear``: every output sums K in one fixed order whatever the row
# count, so a query gets the same bits alone as in a busy batch, and small decode batches run
# 1.1-1.6x faster than oneDNN. Otherwise in oneDNN's blocked layout (what inductor's freezing with
# cpp.weight_prepack does; ~1.5x faster at 1-16 rows than plain weights, which oneDNN reorders on
# every call). The module then keeps a shape-only placeholder in the weight's place (a zero-stride
# view of one element, so the weight is not held twice); the packed tensor is found by the
# placeholder's address.
_PACKED: dict[int, tuple[str, torch.Tensor]] = {}
# oneDNN's bf16 GEMM sums a row differently below 7 rows than from 7 rows on (measured: the
# K=1536 down projection of SmolLM2); from 7 rows on, a row's result does not depend on how many
# rows are in the call. oneDNN GEMMs are therefore padded to at least this many rows (batch
# invariance), at a small cost for batches of fewer rows (memory-bound there).
MIN_GEMM_ROWS = 8


def packs_weights(device: torch.device, dtype: torch.dtype) -> bool:
    return device.type == "cpu" and dtype == torch.bfloat16 and torch.backends.mkldnn.is_available()


def gemm_kind(device: torch.device, dtype: torch.dtype) -> str:
    """How the model's GEMMs run: "baton" (own bf16 kernel), "onednn" (prepacked) or "torch"."""
    if device.type == "cpu" and dtype == torch.bfloat16 and kernels.bf16_gemm_available(device):
        return "baton"
    return "onednn" if packs_weights(device, dtype) else "torch"


def _pack(w: nn.Parameter, kind: str) -> nn.Parameter:
    if kind == "baton" and w.shape[1] % 2 == 0:
        packed = ("baton", kernels.bf16_pack(w.data))
    else:
        packed = ("onednn", torch.ops.mkldnn._reorder_linear_weight(w.data, None))
    stub = nn.Parameter(torch.zeros(1, dtype=w.dtype).expand(w.shape), requires_grad=False)
    _PACKED[stub.data_ptr()] = packed
    return stub


def _unpack_all(ptrs: list[int]) -> None:
    for ptr in ptrs:
        _PACKED.pop(ptr, None)


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear``, through the packed weight when ``w`` is a packed placeholder."""
    kind, packed = _PACKED.get(w.data_ptr(), (None, None)) if w.stride() == (0, 0) else (None, None)
    if packed is None:
        return F.linear(x, w, b)
    if kind == "baton":
        return kernels.bf16_linear(x, packed, w.shape[0], b)
    n = x.shape[0]
    if n < MIN_GEMM_ROWS:
        x = F.pad(x, (0, 0, 0, MIN_GEMM_ROWS - n))
    out = torch.ops.mkldnn._linear_pointwise(x, packed, b, "none", [], "")
    return out if n >= MIN_GEMM_ROWS else out[:n]


# ---------------------------------------------------------------------------------------------- the model
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm: statistics in float32, scaled in the activations' dtype."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of ``x [tokens, heads, head_dim]``; ``cos``/``sin`` are ``[tokens, 1, head_dim]``."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Layer(nn.Module):
    """One decoder layer. ``forward`` is what a compiled step compiles (once for all layers)."""

    def __init__(self, spec: LlamaSpec, w: _Tensors, i: int, dtype: torch.dtype, device):
        super().__init__()
        p = f"model.layers.{i}."
        a, m = p + "self_attn.", p + "mlp."

        def param(t: torch.Tensor | None) -> nn.Parameter | None:
            return None if t is None else nn.Parameter(t.to(device, dtype).contiguous(), requires_grad=False)

        def cat(names: list[str], present: bool = True) -> nn.Parameter | None:
            return param(torch.cat([w.get(n) for n in names])) if present else None

        self.spec = spec
        self.register_buffer("index", torch.tensor(i), persistent=False)  # a tensor: no recompile per layer
        self.ln1 = param(w.get(p + "input_layernorm.weight"))
        self.ln2 = param(w.get(p + "post_attention_layernorm.weight"))
        self.wqkv = cat([a + f"{x}_proj.weight" for x in "qkv"])
        self.bqkv = cat([a + f"{x}_proj.bias" for x in "qkv"], spec.qkv_bias)
        self.wo = param(w.get(a + "o_proj.weight"))
        self.bo = param(w.get(a + "o_proj.bias") if spec.o_bias else None)
        self.qn = param(w.get(a + "q_norm.weight") if spec.qk_norm else None)
        self.kn = param(w.get(a + "k_norm.weight") if spec.qk_norm else None)
        self.wgu = cat([m + "gate_proj.weight", m + "up_proj.weight"])
        self.bgu = cat([m + "gate_proj.bias", m + "up_proj.bias"], spec.mlp_bias)
        self.wd = param(w.get(m + "down_proj.weight"))
        self.bd = param(w.get(m + "down_proj.bias") if spec.mlp_bias else None)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend, gemm) -> torch.Tensor:
        """``x [T, hidden]`` -> ``[T, hidden]``. ``attend(index, q [T, heads, hd], k [T, kv, hd], v)``
        returns ``[T, heads * hd]``; ``gemm`` is ``linear`` (or its custom op when compiled)."""
        s = self.spec
        t, eps, hd = x.shape[0], s.rms_norm_eps, s.head_dim
        nq, nkv = s.num_heads * hd, s.num_kv_heads * hd
        qkv = gemm(rms_norm(x, self.ln1, eps), self.wqkv, self.bqkv)
        q = qkv[:, :nq].view(t, s.num_heads, hd)
        k = qkv[:, nq : nq + nkv].view(t, s.num_kv_heads, hd)
        v = qkv[:, nq + nkv :].view(t, s.num_kv_heads, hd)
        if self.qn is not None:
            q, k = rms_norm(q, self.qn, eps), rms_norm(k, self.kn, eps)
        o = attend(self.index, rope(q, cos, sin), rope(k, cos, sin), v)
        x = x + gemm(o, self.wo, self.bo)
        gate, up = gemm(rms_norm(x, self.ln2, eps), self.wgu, self.bgu).chunk(2, dim=-1)
        return x + gemm(F.silu(gate) * up, self.wd, self.bd)

    def pack(self, kind: str) -> list[int]:
        for name in ("wqkv", "wo", "wgu", "wd"):
            setattr(self, name, _pack(getattr(self, name), kind))
        return [getattr(self, n).data_ptr() for n in ("wqkv", "wo", "wgu", "wd")]


class LlamaModel(nn.Module):
    """The weights, the rotary table, and the forward of a flat token list. Attention is handed in
    by the caller, so the same forward serves packed prefill, eager and compiled decode."""

    def __init__(self, spec: LlamaSpec, config: Any, files: list[Path], dtype: torch.dtype, device):
        super().__init__()
        self.spec = spec
        w = _Tensors(files)

        def param(t: torch.Tensor) -> nn.Parameter:
            return nn.Parameter(t.to(device, dtype).contiguous(), requires_grad=False)

        self.embed = param(w.get("model.embed_tokens.weight"))
        if "lm_head.weight" in w and not spec.tie_word_embeddings:
            self.lm_head = param(w.get("lm_head.weight"))
        elif spec.tie_word_embeddings:
            self.lm_head = self.embed
        else:
            raise ModelError("tie_word_embeddings: false, but the checkpoint has no lm_head.weight")
        self.layers = nn.ModuleList(Layer(spec, w, i, dtype, device) for i in range(spec.num_layers))
        self.norm = param(w.get("model.norm.weight"))
        # cos/sin of every position once, as transformers computes them (float32), then in our dtype.
        freqs = torch.outer(
            torch.arange(spec.max_positions, dtype=torch.int64).float(), inv_freq(config, spec)
        )
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", emb.cos().to(device, dtype), persistent=False)
        self.register_buffer("sin", emb.sin().to(device, dtype), persistent=False)
        self.gemm = gemm_kind(torch.device(device), dtype)
        self.packed = self.gemm != "torch"
        if self.packed:
            ptrs = [p for layer in self.layers for p in layer.pack(self.gemm)]
            self.lm_head = _pack(self.lm_head, self.gemm)  # tied: the embedding stays for the lookup
            weakref.finalize(self, _unpack_all, [*ptrs, self.lm_head.data_ptr()])

    def fused_args(self) -> dict[str, Any]:
        """The model as ``kernels.fused_decode`` / ``fused_prefill`` take it (12 tensors per layer:
        norms, packed weights, biases as float32 padded to the packed width). Built once, cached."""
        if getattr(self, "_fused", None) is None:
            s = self.spec

            def packed(w: nn.Parameter | None) -> torch.Tensor | None:
                return None if w is None else _PACKED[w.data_ptr()][1]

            def bias(bv: nn.Parameter | None, w: nn.Parameter) -> torch.Tensor | None:
                if bv is None:
                    return None
                cols = _PACKED[w.data_ptr()][1].shape[0] * 16
                return F.pad(bv.detach().float(), (0, cols - bv.shape[0])).contiguous()

            weights: list[torch.Tensor | None] = []
            for ly in self.layers:
                weights += [
                    ly.ln1, packed(ly.wqkv), bias(ly.bqkv, ly.wqkv), packed(ly.wo), bias(ly.bo, ly.wo),
                    ly.qn, ly.kn, ly.ln2, packed(ly.wgu), bias(ly.bgu, ly.wgu), packed(ly.wd), bias(ly.bd, ly.wd),
                ]  # fmt: skip
            dims = [s.hidden_size, s.num_heads, s.num_kv_heads, s.head_dim, s.intermediate_size, s.vocab_size]
            self._fused = {
                "embed": self.embed.detach(), "cos": self.cos, "sin": self.sin,
                "weights": [None if w is None else w.detach() for w in weights], "norm": self.norm.detach(),
                "head": packed(self.lm_head), "dims": dims, "eps": s.rms_norm_eps, "scale": s.head_dim**-0.5,
            }  # fmt: skip
        return self._fused

    def forward(self, ids: torch.Tensor, pos: torch.Tensor, last: torch.Tensor | None, attend, layer_fn=None):
        """Tokens ``ids``/``pos`` (flat ``[T]``) -> logits ``[len(last), vocab]`` (all tokens if None).

        ``layer_fn(layer, x, cos, sin)`` runs a layer (default: eagerly with ``attend``)."""
        x = F.embedding(ids, self.embed)
        cos, sin = self.cos[pos].unsqueeze(1), self.sin[pos].unsqueeze(1)
        for layer in self.layers:
            x = layer(x, cos, sin, attend, linear) if layer_fn is None else layer_fn(layer, x, cos, sin)
        if last is not None:
            x = x[last]
        return linear(rms_norm(x, self.norm, self.spec.rms_norm_eps), self.lm_head)


# ---------------------------------------------------------------------------------------------- attention
@dataclass
class DecodeState:
    """What a decode forward's attention needs beyond q/k/v: the cache, the mask, the real shape."""

    cache: Any  # BatonKVCache (or anything with its write_layer)
    rows: int
    width: int
    bias: torch.Tensor | None  # torch path: [rows, 1, groups * width, window + width] 0 / -inf, or None
    scale: float
    groups: int
    mask: torch.Tensor | None = None  # kernel path: [rows, width, window + width] bool, or None
    kernel: bool = False  # attention by baton.runtime.kernels


def decode_mask(step: StepInput, window: int, device=None) -> torch.Tensor | None:
    """``[rows, width, window + width]`` bool (True = attend) of a decode forward over ``window``
    cached columns plus the new ones: each row's window mask for the cached columns, causal among
    the new columns, and every new column attends itself (so the query of a padded column stays
    finite). None when nothing is masked (one new column, no padding)."""
    am, (rows, width) = step.attention_mask, step.input_ids.shape
    if am is None and width == 1:
        return None
    total = window + width
    if am is None:
        am = torch.ones((rows, total), dtype=torch.bool, device=device)
    m = am[:, None, :].expand(rows, width, total).clone()
    m[:, :, window:] &= torch.ones((width, width), dtype=torch.bool, device=m.device).tril_()
    idx = torch.arange(width, device=m.device)
    m[:, idx, window + idx] = True
    return m


def mask_bias(mask: torch.Tensor | None, groups: int) -> torch.Tensor | None:
    """``decode_mask`` as an additive float32 bias ``[rows, 1, groups * width, total]`` (0 / -inf),
    in the query order of ``attend_decode`` (the heads of a group, then the new columns)."""
    if mask is None:
        return None
    rows, width, total = mask.shape
    bias = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill_(~mask, float("-inf"))
    return bias[:, None, None].expand(rows, 1, groups, width, total).reshape(rows, 1, groups * width, total)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, scale: float):
    """Softmax attention with float32 scores and softmax. ``q [..., m, hd]``, ``k``/``v [..., n, hd]``.

    ``k @ q^T`` rather than ``q @ k^T``: with the cache's layout (a strided window) the key block is
    the GEMM's plain left operand, which is markedly faster in bf16 on the CPU (measured)."""
    s = torch.matmul(k, q.transpose(-1, -2)).transpose(-1, -2).float() * scale
    if bias is not None:
        s = s + bias
    return torch.matmul(torch.softmax(s, dim=-1).to(v.dtype), v)


def attend_decode(
    st: DecodeState, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """One layer's attention of a decode forward over the cache window (writes the new K/V columns).

    Grouped-query attention without copying K/V: the ``groups`` query heads sharing a KV head are
    folded into the query-length axis, so each (row, KV head) is one small GEMM over the window.
    Rows past ``st.rows`` (bucket padding of a compiled step) get zeros.
    """
    n, w, g = st.rows, st.width, st.groups
    t_all, heads, hd = q.shape
    kvh = k.shape[1]
    nt = n * w
    kn = k[:nt].view(n, w, kvh, hd).transpose(1, 2)
    vn = v[:nt].view(n, w, kvh, hd).transpose(1, 2)
    kw, vw = st.cache.write_layer(layer, kn, vn)
    qg = q[:nt].view(n, w, kvh, g, hd).permute(0, 2, 3, 1, 4).reshape(n, kvh, g * w, hd)
    if st.kernel:
        o = kernels.decode_attention(qg, kw, vw, st.mask, st.scale, w)
    else:
        o = attention(qg, kw, vw, st.bias, st.scale)
    o = o.view(n, kvh, g, w, hd).permute(0, 3, 1, 2, 4).reshape(nt, heads * hd)
    if nt == t_all:
        return o
    out = o.new_zeros((t_all, heads * hd))
    out[:nt] = o
    return out


# ---------------------------------------------------------------------------------------------- runtime
class FastRuntime:
    """The ``ModelRuntime`` of the Llama family over baton's own forward."""

    name = "fast"
    padded_prefill = False  # prompts are packed: a prefill forward computes only real tokens

    def __init__(self, model: LlamaModel, device: torch.device, dtype: torch.dtype, compile: bool = False):
        self.model = model.eval()
        self.spec = model.spec
        self.device = device
        self.dtype = dtype
        self.scale = self.spec.head_dim**-0.5
        self.compile = compile
        # Decode attention by baton's CPU kernel where it builds (batch invariant, reads the window
        # in place); torch ops otherwise. Settable (tests compare the two).
        self.attention_kernel = kernels.available(device, self.spec.head_dim)
        # The whole forward in one C++ call (``kernels.fused_decode`` / ``fused_prefill``) where the
        # weights are in baton's bf16 layout and the attention kernel built; settable (tests compare
        # it with the layer-by-layer forward, which stays the path for float32 and elsewhere).
        self.fused = dtype == torch.bfloat16 and model.gemm == "baton" and self.attention_kernel
        self.compiled: Any = None  # baton.runtime.compile.CompiledDecode once warmed up
        self.compile_s = 0.0
        self.fused_calls = 0  # forwards run by the fused C++ forward (tests assert the path ran)
        self._warm_lock = threading.Lock()

    @classmethod
    def load(
        cls, source: str, config: Any, device: str, dtype: torch.dtype, compile: bool = False
    ) -> FastRuntime:
        spec = LlamaSpec.from_config(config)
        t0 = time.perf_counter()
        model = LlamaModel(spec, config, weight_files(source), dtype, torch.device(device))
        log.info("fast runtime: %s weights loaded in %.1f s", spec.model_type, time.perf_counter() - t0)
        return cls(model, torch.device(device), dtype, compile)

    def argmax(self, logits: torch.Tensor) -> torch.Tensor:
        """Greedy rows' tokens: baton's kernel where the attention kernel built (same result as
        ``torch.argmax``, whose CPU kernel took ~0.9 ms of a 16-row step), torch otherwise."""
        if self.attention_kernel:
            return kernels.argmax_rows(logits)
        return torch.argmax(logits, dim=-1)

    # ------------------------------------------------------------------ prefill
    @torch.inference_mode()
    def prefill(self, prompts: Sequence[Sequence[int]]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """All prompts in one forward with no padding: the projections and MLP see the concatenated
        real tokens; attention runs per prompt (causal), which is also where each prompt's K/V is
        copied into its own contiguous ``[layers, 2, kv_heads, len, head_dim]`` tensor."""
        s, dev = self.spec, self.device
        lens = [len(p) for p in prompts]
        ids = torch.tensor([t for p in prompts for t in p], dtype=torch.long, device=dev)
        pos = torch.cat([torch.arange(n) for n in lens]).to(dev)
        ends = list(itertools.accumulate(lens))
        shape = (s.num_layers, 2, s.num_kv_heads)
        kvs = [torch.empty((*shape, n, s.head_dim), dtype=self.dtype, device=dev) for n in lens]
        if self.fused:
            last = torch.tensor(ends, device=dev) - 1
            logits = kernels.fused_prefill(ids, pos, last, kvs, [0, *ends], self.model.fused_args())
            self.fused_calls += 1
            return kvs, logits
        bounds = [(e - n, e) for e, n in zip(ends, lens, strict=True)]
        g = s.groups

        def attend(index: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            layer = int(index)
            out = torch.empty((q.shape[0], q.shape[1] * q.shape[2]), dtype=q.dtype, device=q.device)
            for kv, (a, b) in zip(kvs, bounds, strict=True):
                kt, vt = k[a:b].transpose(0, 1), v[a:b].transpose(0, 1)  # [kv_heads, p, hd]
                kv[layer, 0].copy_(kt)
                kv[layer, 1].copy_(vt)
                if g > 1:
                    kt, vt = kt.repeat_interleave(g, dim=0), vt.repeat_interleave(g, dim=0)
                o = F.scaled_dot_product_attention(
                    q[a:b].transpose(0, 1)[None], kt[None], vt[None], is_causal=True, scale=self.scale
                )
                out[a:b] = o[0].transpose(0, 1).reshape(b - a, -1)
            return out

        logits = self.model(ids, pos, torch.tensor(ends, device=dev) - 1, attend)
        return kvs, logits

    # ------------------------------------------------------------------ decode
    @torch.inference_mode()
    def decode(self, step: StepInput, cache) -> torch.Tensor:
        rows, width = step.input_ids.shape
        kernel = self.attention_kernel
        mask = decode_mask(step, cache.length, cache.mask.device)
        bias = None if kernel else mask_bias(mask, self.spec.groups)
        st = DecodeState(cache, rows, width, bias, self.scale, self.spec.groups, mask, kernel)
        ids = step.input_ids.reshape(-1).to(self.device)
        pos = step.position_ids.reshape(-1).to(self.device)
        if self.compiled is not None and width == 1 and self.compiled.covers(rows):
            return self.compiled(st, ids, pos)
        if self.fused:
            keys, values, start, end = cache.fused_window(rows, width)
            last = torch.arange(rows, device=self.device) * width + (width - 1)
            self.fused_calls += 1
            return kernels.fused_decode(
                ids, pos, last, keys, values, start, end, rows, width, mask, self.model.fused_args()
            )
        last = None if width == 1 else torch.arange(rows, device=self.device) * width + (width - 1)
        return self.model(ids, pos, last, lambda i, q, k, v: attend_decode(st, int(i), q, k, v))

    # ------------------------------------------------------------------ compile
    def warmup(self, max_rows: int) -> float:
        """Compile the decode step for every row bucket up to ``max_rows`` (if compiling is on).

        Idempotent. Returns the seconds spent (also kept in ``compile_s``)."""
        if not self.compile:
            return 0.0
        with self._warm_lock:
            from baton.runtime.compile import CompiledDecode

            if self.compiled is None:
                self.compiled = CompiledDecode(self)
            t0 = time.perf_counter()
            self.compiled.warmup(max_rows)
            spent = time.perf_counter() - t0
            self.compile_s += spent
            return spent

    def describe(self) -> dict[str, Any]:
        """Runtime facts for a worker's info (merged into ``LoadedModel.describe()``)."""
        c = self.compiled
        return {
            "runtime_family": self.spec.model_type,
            "compiled": c is not None and bool(c.buckets),
            "compile_s": round(self.compile_s, 2),
            "compiled_rows": list(c.buckets) if c is not None else [],
            "attention_kernel": self.attention_kernel,
            "packed_weights": self.model.packed,
            "gemm": self.model.gemm,
            "gemm_isa": kernels.bf16_gemm_isa() if self.model.gemm == "baton" else "",
            "forward": "compiled" if c is not None and c.buckets else "fused" if self.fused else "layers",
        }
