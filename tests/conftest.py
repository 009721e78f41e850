"""Shared fixtures: small random models (Llama, Qwen2, GPT-2) built once per session from fixed seeds,
and a local in-process Ray cluster for the modules that run real Ray actors.

Helper modules (``oracle``, ``helpers``) live beside this file and are imported by name.
"""

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


# A plain chat template for the tiny models (their tokenizers have none): role markers, then the turn.
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


@pytest.fixture(scope="session")
def chat_model_dir(model_dir, model_root):
    """``chat_model_dir(family)`` -> a copy of that tiny model whose tokenizer has CHAT_TEMPLATE."""
    import shutil

    from transformers import AutoTokenizer

    def get(family: str) -> Path:
        folder = model_root / f"{family}-chat"
        if not (folder / "config.json").exists():
            shutil.copytree(model_dir(family), folder, dirs_exist_ok=True)
            tok = AutoTokenizer.from_pretrained(folder)
            tok.chat_template = CHAT_TEMPLATE
            tok.save_pretrained(folder)
        return folder

    return get


_loaded: dict[str, object] = {}


@pytest.fixture(scope="session")
def tiny_lm(model_dir):
    """``tiny_lm(family)`` -> LoadedModel (cached for the session), in float32: the oracle's tie rule
    (top-2 logits within 1e-4) assumes float32, where any two correct forwards agree that closely."""
    from baton.core.models import load_model

    def get(family: str):
        if family not in _loaded:
            _loaded[family] = load_model(str(model_dir(family)), dtype="float32")
        return _loaded[family]

    return get


@pytest.fixture(scope="module")
def local_ray():
    """A fresh local Ray cluster on 127.0.0.1 for one test module, shut down at the module's end.

    Module scope, not session: other modules start Ray in subprocesses of their own (`ray start`,
    `baton serve`, `baton run`) and must not find an in-process cluster running beside them. The
    teardown fails the module if any of this cluster's processes outlive ``ray.shutdown()``.
    """
    import ray
    from helpers import wait_gone

    with pytest.MonkeyPatch.context() as mp:
        # No token auth: a local ray.init() would otherwise write ~/.ray/auth_token, which later
        # `ray start` / `ray job submit` processes would pick up (see the Makefile).
        mp.setenv("RAY_AUTH_MODE", "disabled")
        mp.delenv("RAY_ADDRESS", raising=False)
        ray.init(
            address="local",
            num_cpus=4,
            object_store_memory=300 * 1024**2,
            _node_ip_address="127.0.0.1",
            include_dashboard=False,
            log_to_driver=False,
        )
        session = ray._private.worker._global_node.get_session_dir_path()
        try:
            yield ray
        finally:
            ray.shutdown()
    left = wait_gone(session)
    assert not left, f"Ray processes left behind: {left}"
