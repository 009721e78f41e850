"""Choosing the runtime and the dtype, what the fast runtime reads from a model folder, and the
clear errors for what it cannot run (``fast`` refuses; ``auto`` falls back to transformers)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from baton.core.errors import ModelError
from baton.core.models import cpu_has_avx512, cpu_has_fast_bf16, load_model, resolve_dtype
from baton.runtime.llama import LlamaSpec


@pytest.mark.parametrize(
    ("variant", "field"),
    [("llama_yarn", "rope_parameters"), ("llama_gelu", "hidden_act")],
)
def test_unsupported_config_names_the_field_and_auto_falls_back(variant_dir, variant, field):
    folder = str(variant_dir(variant))
    with pytest.raises(ModelError, match=rf"^{field}: .*fast runtime"):
        load_model(folder, dtype="float32", runtime="fast")
    lm = load_model(folder, dtype="float32", runtime="auto")
    assert lm.runtime.name == "hf" and lm.model is not None


def test_fast_refuses_other_architectures_by_model_type(model_dir):
    with pytest.raises(ModelError, match="model type 'gpt2'"):
        load_model(str(model_dir("gpt2")), runtime="fast")


def test_unknown_runtime_and_compile_values_are_refused(model_dir):
    with pytest.raises(ModelError, match=r"^runtime:"):
        load_model(str(model_dir("llama")), runtime="vllm")
    with pytest.raises(ModelError, match=r"^compile:"):
        load_model(str(model_dir("llama")), compile="maybe")


def test_mistral_sliding_window_is_refused():
    from transformers import MistralConfig

    cfg = MistralConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, sliding_window=128)
    with pytest.raises(ModelError, match=r"^sliding_window"):
        LlamaSpec.from_config(cfg)
    cfg = MistralConfig(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=32, sliding_window=None
    )
    spec = LlamaSpec.from_config(cfg)
    assert spec.model_type == "mistral" and spec.head_dim == 32  # an explicit head_dim wins


def test_spec_reads_the_family_fields(model_dir, variant_dir):
    from transformers import AutoConfig

    q2 = LlamaSpec.from_config(AutoConfig.from_pretrained(model_dir("qwen2")))
    assert q2.qkv_bias and not q2.o_bias and not q2.qk_norm and q2.groups == 2
    q3 = LlamaSpec.from_config(AutoConfig.from_pretrained(model_dir("qwen3")))
    assert q3.qk_norm and q3.head_dim == 32 and not q3.qkv_bias
    v = LlamaSpec.from_config(AutoConfig.from_pretrained(variant_dir("llama_tied_bias_llama3")))
    assert v.tie_word_embeddings and v.qkv_bias and v.o_bias and v.mlp_bias and v.rope_type == "llama3"


def _bf16_kernels() -> bool:
    """Where dtype auto is bfloat16 on the CPU: baton's bf16 kernels run (AVX512-BF16/AMX, or AVX-512)."""
    from baton.runtime import kernels

    return (cpu_has_fast_bf16() or cpu_has_avx512()) and kernels.bf16_gemm_available(torch.device("cpu"))


def test_dtype_auto_rule():
    bf16_cpu = _bf16_kernels()
    assert resolve_dtype("auto", "cpu", "fast") == (torch.bfloat16 if bf16_cpu else torch.float32)
    assert resolve_dtype("auto", "cpu", "hf") == torch.float32  # eager transformers bf16 is slower here
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("auto", "cuda", "hf") == resolve_dtype("auto", "cuda:0", "fast") == torch.bfloat16
    assert resolve_dtype("float32", "cpu", "fast") == torch.float32


def test_auto_dtype_of_a_loaded_model(model_dir):
    lm = load_model(str(model_dir("llama")))  # runtime auto -> fast; dtype auto
    want = "bfloat16" if _bf16_kernels() else "float32"
    assert lm.runtime.name == "fast" and lm.dtype_name == want
    assert lm.describe()["compiled"] is False  # compiling happens at warm-up (DecodeBatch), not at load


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_hf_and_fast_agree_on_fingerprint_layout_and_limits(model_dir, dtype):
    folder = str(model_dir("qwen3"))
    fast = load_model(folder, dtype=dtype, runtime="fast", compile="off")
    hf = load_model(folder, dtype=dtype, runtime="hf")
    assert fast.fingerprint == hf.fingerprint
    assert fast.layout == hf.layout and fast.limits == hf.limits
    d = fast.describe()
    assert d["runtime"] == "fast" and d["dtype"] == dtype and d["layout"] == hf.describe()["layout"]


def test_sharded_checkpoint_loads(model_dir, tmp_path, fast_lm):
    """A checkpoint split into shards with an index: read from the shards, same model."""
    from transformers import AutoModelForCausalLM

    src = model_dir("llama")
    model = AutoModelForCausalLM.from_pretrained(src)
    model.save_pretrained(tmp_path, max_shard_size="50KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert (
        len(set(json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"].values()))
        > 1
    )
    for f in src.glob("tokenizer*"):
        shutil.copy(f, tmp_path / f.name)
    lm = load_model(str(tmp_path), dtype="float32", runtime="fast")
    ref = fast_lm("llama")
    prompts = [[5, 6, 7, 8], [9, 10]]
    assert torch.equal(lm.runtime.prefill(prompts)[1], ref.runtime.prefill(prompts)[1])
