"""Bad inputs get a clear error naming the field; a batch running beside them finishes unharmed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import BAD_REQUEST_LINES, BAD_REQUESTS, session_of_driver, wait_gone
from oracle import assert_exact, greedy_request

from baton.core.config import EngineConfig
from baton.core.errors import ModelError, ValidationError
from baton.core.models import load_model
from baton.core.request import Completion
from baton.core.requests_io import parse_spec
from baton.engine import run_specs

BAD = BAD_REQUESTS + BAD_REQUEST_LINES


def _specs(objs):
    out = []
    for i, o in enumerate(objs):
        try:
            out.append(parse_spec(o, f"r{i}"))
        except ValidationError as e:
            out.append(Completion(o.get("id", f"r{i}"), error=str(e), error_field=e.field))
    return out


def test_bad_inputs_named_and_good_ones_unharmed(tiny_lm):
    lm = tiny_lm("gpt2")
    good = [
        {
            "id": f"good{i}",
            "prompt_token_ids": list(range(3 + i, 40 + 3 * i)),
            "max_tokens": 20,
            "arrival_s": 0.01 * i,
        }
        for i in range(6)
    ]
    bad = [dict(o, id=f"bad{i}") for i, (o, _) in enumerate(BAD)]
    mixed = [x for pair in zip(good, bad, strict=False) for x in pair] + bad[len(good) :]
    res, _ = run_specs(lm, EngineConfig(max_seq_len=300), _specs(mixed))
    by = {c.request_id: c for c in res}
    for i, (_, field) in enumerate(BAD):
        c = by[f"bad{i}"]
        assert c.error is not None and c.error_field == field, (BAD[i], c)
        assert field in c.error
    assert all(by[g["id"]].error is None for g in good)
    assert_exact(
        lm,
        [greedy_request(g["id"], g["prompt_token_ids"], g["max_tokens"]) for g in good],
        [by[g["id"]] for g in good],
    )


def test_unknown_and_unsupported_models(tmp_path):
    with pytest.raises(ModelError, match="model"):
        load_model(str(tmp_path / "nope"))
    with pytest.raises(ModelError, match="model"):
        load_model("no-such-org/no-such-model-xyz")
    from transformers import DistilBertConfig, DistilBertModel, T5Config, T5ForConditionalGeneration

    t5 = tmp_path / "t5"
    T5ForConditionalGeneration(
        T5Config(d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16, vocab_size=100)
    ).save_pretrained(t5)
    with pytest.raises(ModelError, match="encoder-decoder"):
        load_model(str(t5))
    bert = tmp_path / "bert"
    DistilBertModel(
        DistilBertConfig(dim=32, hidden_dim=64, n_layers=1, n_heads=2, vocab_size=100)
    ).save_pretrained(bert)
    with pytest.raises(ModelError, match="causal LM"):
        load_model(str(bert))


@pytest.mark.parametrize(
    "where",
    [
        "local",  # --local: policy baton in the CLI's own process
        pytest.param("ray", marks=pytest.mark.slow),  # the default: a local Ray cluster, real actors
    ],
)
def test_cli_run_reports_bad_line_and_runs_the_rest(model_dir, tmp_path, where):
    folder = model_dir("llama")
    lines = [
        json.dumps({"id": "ok1", "prompt": "The quick brown fox", "max_tokens": 8}),
        "{not json",
        json.dumps({"id": "bad", "prompt": "x", "top_p": 2}),
        json.dumps({"id": "ok2", "prompt_token_ids": [5, 6, 7], "max_tokens": 4, "arrival_s": 0.05}),
    ]
    inp = tmp_path / "in.jsonl"
    inp.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    argv = [
        sys.executable,
        "-m",
        "baton.cli",
        "run",
        "--model",
        str(folder),
        "--requests",
        str(inp),
        "--out",
        str(out),
        "--max-seq-len",
        "300",
    ]
    argv += ["--local"] if where == "local" else ["--object-store-mb", "300"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    if where == "ray":
        left = wait_gone(session_of_driver(proc.pid))
        assert not left, f"Ray processes left behind: {left}"
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["ok1", "line-2", "bad", "ok2"]
    assert rows[0]["finish_reason"] in ("length", "eos") and rows[0]["token_ids"]
    assert set(rows[0]["timings"]) >= {"queue", "prefill", "ttft", "total"}
    assert rows[0]["prompt_tokens"] > 0
    assert "error" in rows[1] and rows[1]["field"] == "request"
    assert rows[2]["field"] == "top_p" and "top_p" in rows[2]["error"]
    assert len(rows[3]["token_ids"]) <= 4 and rows[3]["prompt_tokens"] == 3
