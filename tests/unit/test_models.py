"""Model resolution (folders, hub ids, built-in names), dtype names and the KV layout arithmetic."""

from __future__ import annotations

import pytest
import torch

from baton.core.errors import ModelError
from baton.core.models import DEFAULT_MODEL, KVLayout, LoadedModel, resolve_dtype, resolve_model


def test_kv_layout_bytes_per_token():
    layout = KVLayout(num_layers=30, kv_heads=3, head_dim=64)
    assert layout.bytes_per_token(2) == 30 * 2 * 3 * 64 * 2
    assert layout.bytes_per_token(4) == 2 * layout.bytes_per_token(2)
    assert KVLayout(1, 1, 1).bytes_per_token(1) == 2  # key + value


@pytest.mark.parametrize(
    ("name", "device", "want"),
    [
        ("auto", "cpu", torch.float32),
        ("auto", "cuda", torch.bfloat16),
        ("auto", "cuda:1", torch.bfloat16),
        ("", "cpu", torch.float32),
        (None, "cuda", torch.bfloat16),
        ("float32", "cuda", torch.float32),
        ("fp32", "cpu", torch.float32),
        ("bfloat16", "cpu", torch.bfloat16),
        ("bf16", "cpu", torch.bfloat16),
        ("float16", "cpu", torch.float16),
        ("fp16", "cuda", torch.float16),
    ],
)
def test_resolve_dtype(name, device, want):
    assert resolve_dtype(name, device) == want


@pytest.mark.parametrize("name", ["float64", "int8", "FP32", "half"])
def test_resolve_dtype_unknown(name):
    with pytest.raises(ModelError, match=r"^dtype"):
        resolve_dtype(name, "cpu")


def test_dtype_name_matches_handoff_names():
    for dt, name in [(torch.float32, "float32"), (torch.bfloat16, "bfloat16"), (torch.float16, "float16")]:
        lm = LoadedModel(
            name="m",
            model=None,
            tokenizer=None,
            limits=None,
            layout=None,
            fingerprint="f",
            dtype=dt,
            device=torch.device("cpu"),
        )
        assert lm.dtype_name == name


def test_resolve_local_folder(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path)) == str(tmp_path)


def test_resolve_folder_without_config(tmp_path):
    with pytest.raises(ModelError, match=r"config\.json"):
        resolve_model(str(tmp_path))


@pytest.mark.parametrize("spec", ["./nope", "/definitely/not/here", "~/no-such-baton-model", "a/b/c"])
def test_resolve_missing_path(spec):
    with pytest.raises(ModelError, match=r"^model"):
        resolve_model(spec)


@pytest.mark.parametrize("spec", ["HuggingFaceTB/SmolLM2-135M-Instruct", "gpt2"])
def test_resolve_hub_id_passes_through(spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # so "gpt2" is not a local folder
    assert resolve_model(spec) == spec


@pytest.mark.parametrize("spec", ["", None, 5])
def test_resolve_bad_spec(spec):
    with pytest.raises(ModelError):
        resolve_model(spec)


def test_builtin_reuses_converted_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BATON_CACHE", str(tmp_path))
    target = tmp_path / DEFAULT_MODEL
    target.mkdir()
    (target / "config.json").write_text("{}")
    # Already converted: no conversion (which would need the GGUF package) happens.
    assert resolve_model(DEFAULT_MODEL) == str(target)
