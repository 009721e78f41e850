"""Bad inputs get a clear error naming the field; a batch running beside them finishes unharmed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from oracle import compare

from baton.core.config import EngineConfig
from baton.core.errors import ModelError, ValidationError
from baton.core.models import load_model
from baton.core.requests_io import parse_spec
from baton.engine import run_specs

BAD = [
    ({"prompt": ""}, "prompt"),
    ({"prompt_token_ids": []}, "prompt"),
    ({"prompt_token_ids": [5] * 400}, "prompt"),  # beyond the 300-token context used here
    ({"prompt": "hi", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "hi", "max_tokens": 5000}, "max_tokens"),
    ({"prompt": "hi", "temperature": -0.5}, "temperature"),
    ({"prompt": "hi", "temperature": float("nan")}, "temperature"),
    ({"prompt": "hi", "top_p": 0}, "top_p"),
    ({"prompt": "hi", "top_p": 1.5}, "top_p"),
    ({"prompt": "hi", "top_k": -1}, "top_k"),
    ({"prompt_token_ids": [1, 99999]}, "prompt_token_ids"),
    ({"prompt": "hi", "colour": "red"}, "colour"),
    ({"prompt": "hi", "stop": [""]}, "stop"),
]


def _specs(objs):
    out = []
    for i, o in enumerate(objs):
        try:
            out.append(parse_spec(o, f"r{i}"))
        except ValidationError as e:
            from baton.core.request import Completion

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
    for g in good:
        c = by[g["id"]]
        assert c.error is None
        assert compare(lm, g["prompt_token_ids"], c.token_ids, 20) in ("equal", "tie")


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


def test_cli_run_reports_bad_line_and_runs_the_rest(model_dir, tmp_path):
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
    proc = subprocess.run(
        [
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
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["ok1", "line-2", "bad", "ok2"]
    assert rows[0]["finish_reason"] in ("length", "eos") and rows[0]["token_ids"]
    assert set(rows[0]["timings"]) >= {"queue", "prefill", "ttft", "total"}
    assert rows[0]["prompt_tokens"] > 0
    assert "error" in rows[1] and rows[1]["field"] == "request"
    assert rows[2]["field"] == "top_p" and "top_p" in rows[2]["error"]
    assert len(rows[3]["token_ids"]) <= 4 and rows[3]["prompt_tokens"] == 3
