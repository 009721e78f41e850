"""Fixtures of the fast-runtime tests: the tiny models loaded under each runtime and dtype, Llama
variants that exercise the config fields the fast runtime reads, and a spy on the runtime calls."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

_fast: dict[tuple, object] = {}
_hf: dict[tuple, object] = {}


@pytest.fixture(scope="session")
def fast_lm(model_dir):
    """``fast_lm(family, dtype="float32", compile="off")`` -> LoadedModel on the fast runtime."""
    from baton.core.models import load_model

    def get(family: str, dtype: str = "float32", compile: str = "off"):
        key = (family, dtype, compile)
        if key not in _fast:
            _fast[key] = load_model(str(model_dir(family)), dtype=dtype, runtime="fast", compile=compile)
        return _fast[key]

    return get


@pytest.fixture(scope="session")
def hf_lm(model_dir):
    """``hf_lm(family, dtype="float32")`` -> LoadedModel on the transformers runtime."""
    from baton.core.models import load_model

    def get(family: str, dtype: str = "float32"):
        key = (family, dtype)
        if key not in _hf:
            _hf[key] = load_model(str(model_dir(family)), dtype=dtype, runtime="hf")
        return _hf[key]

    return get


# Llama configs beyond the tiny family: tied embeddings, biases, llama3 rope scaling, an explicit
# head_dim; and configs the fast runtime must refuse (each names the config field).
VARIANTS = {
    "llama_tied_bias_llama3": dict(
        tie_word_embeddings=True,
        attention_bias=True,
        mlp_bias=True,
        head_dim=32,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 50000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    ),
    "llama_linear_rope": dict(rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}),
    "llama_yarn": dict(
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 4.0,
            "original_max_position_embeddings": 128,
        }
    ),
    "llama_gelu": dict(hidden_act="gelu"),
}


@pytest.fixture(scope="session")
def variant_dir(model_root):
    """``variant_dir(name)`` -> folder of a tiny random Llama with the ``VARIANTS[name]`` config fields."""

    def get(name: str) -> Path:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        from baton.bench import tiny_models

        folder = model_root / f"variant_{name}"
        if (folder / "config.json").exists():
            return folder
        base = tiny_models.build("llama", model_root / "llama")  # its tokenizer and size
        cfg = json.loads((base / "config.json").read_text())
        keep = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        kw = {k: cfg[k] for k in keep}
        kw.update(num_key_value_heads=2, max_position_embeddings=512, eos_token_id=cfg["eos_token_id"])
        kw.update(initializer_range=0.5, pad_token_id=0)
        kw.update(VARIANTS[name])
        torch.manual_seed(1)
        model = LlamaForCausalLM(LlamaConfig(**kw)).eval()
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "q_proj" in n or "k_proj" in n:
                    p *= 0.15  # spread attention, as the tiny family does
        model.save_pretrained(folder)
        for f in base.glob("tokenizer*"):
            (folder / f.name).write_bytes(f.read_bytes())
        return folder

    return get


class CallCounter:
    """Counts a runtime's prefill and decode calls (wraps the instance's methods)."""

    def __init__(self, runtime):
        self.prefill = self.decode = 0
        self._orig = (runtime.prefill, runtime.decode)

        def prefill(prompts):
            self.prefill += 1
            return self._orig[0](prompts)

        def decode(step, cache):
            self.decode += 1
            return self._orig[1](step, cache)

        runtime.prefill, runtime.decode = prefill, decode
        self.runtime = runtime

    def restore(self) -> None:
        del self.runtime.prefill, self.runtime.decode


@pytest.fixture
def count_calls():
    """``count_calls(runtime)`` -> CallCounter; the runtime's methods are restored after the test."""
    made: list[CallCounter] = []

    def wrap(runtime) -> CallCounter:
        made.append(CallCounter(runtime))
        return made[-1]

    yield wrap
    for c in made:
        c.restore()
