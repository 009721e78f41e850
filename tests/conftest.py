"""Shared fixtures: small random models (Llama, Qwen2, GPT-2) built once per session from fixed seeds."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from baton.bench import tiny_models


@pytest.fixture(scope="session")
def model_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def model_dir(model_root):
    """``model_dir(family)`` -> folder of that family's tiny random model."""

    def get(family: str) -> Path:
        return tiny_models.build(family, model_root / family)

    return get


_loaded: dict[str, object] = {}


@pytest.fixture(scope="session")
def tiny_lm(model_dir):
    """``tiny_lm(family)`` -> LoadedModel (cached for the session)."""
    from baton.core.models import load_model

    def get(family: str):
        if family not in _loaded:
            _loaded[family] = load_model(str(model_dir(family)))
        return _loaded[family]

    return get
