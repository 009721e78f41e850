"""The OpenAI-compatible HTTP API and /metrics: the official `openai` client against a real aiohttp server
on 127.0.0.1, on the router's loop beside a real gRPC server, over real Ray workers and a tiny model
that has a chat template."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import openai
import pytest
from helpers import free_port
from oracle import assert_exact, greedy_request
from prometheus_client.parser import text_string_to_metric_families

from baton.client import AsyncBatonClient, BatonClient
from baton.core.models import load_model
from cluster.grpc_server import GrpcServer
from cluster.http_server import HttpServer
from cluster.ray_cluster import Cluster, ClusterConfig

pytestmark = pytest.mark.slow  # a local Ray cluster and real workers
TOKEN = "http-s3cret"
MODEL = "tiny-chat"
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "The quick brown fox"}]


@pytest.fixture(scope="module")
def served(local_ray, chat_model_dir):
    assert local_ray.is_initialized()  # the cluster joins this Ray
    folder = chat_model_dir("llama")
    cfg = ClusterConfig(
        model=str(folder),
        dtype="float32",
        max_batch_size=4,
        max_seq_len=500,
        prefill_num_cpus=0.5,
        decode_num_cpus=0.5,
    )
    cluster = Cluster(cfg).start(log=lambda _msg: None)
    ports = {k: free_port() for k in ("grpc", "http", "auth", "metrics")}

    async def make():
        servers = [
            GrpcServer(cluster, MODEL, "127.0.0.1", ports["grpc"]),
            HttpServer(cluster, MODEL, "127.0.0.1", ports["http"]),
            HttpServer(cluster, MODEL, "127.0.0.1", ports["auth"], auth_token=TOKEN),
            HttpServer(cluster, MODEL, "127.0.0.1", ports["metrics"], metrics_only=True),
        ]
        for s in servers:
            await s.start()
        return servers

    servers = cluster.call(make())
    yield {
        "cluster": cluster,
        "folder": folder,
        "grpc": f"127.0.0.1:{ports['grpc']}",
        "http": f"http://127.0.0.1:{ports['http']}",
        "auth": f"http://127.0.0.1:{ports['auth']}",
        "metrics": f"http://127.0.0.1:{ports['metrics']}",
    }
    for s in servers:
        cluster.call(s.drain(1.0))
    cluster.shutdown()


def _client(base: str, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=120)


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _grpc_chat(served, messages, **kw):
    with BatonClient(served["grpc"]) as c:
        return c.complete(messages, **kw)


def _idle(cluster, timeout: float = 30.0) -> bool:
    """Wait until the router holds no request and every decode batch reported 0 rows."""
    r = cluster.router
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not r.states and all(w.load is None or w.load.rows == 0 for w in r.decode):
            return True
        time.sleep(0.05)
    return False


def test_models_health_and_metrics_only_port(served):
    models = _client(served["http"]).models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert _get(served["http"] + "/health") == (200, b'{"status": "ok"}')
    status, body = _get(served["metrics"] + "/metrics")
    assert status == 200 and b"baton:time_to_first_token_seconds" in body
    assert _get(served["metrics"] + "/v1/models")[0] == 404  # metrics and health only


def test_chat_greedy_matches_grpc_and_oracle(served):
    c = _client(served["http"])
    r = c.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=24, temperature=0)
    grpc_out = _grpc_chat(served, CHAT, max_tokens=24)
    msg = r.choices[0]
    assert msg.message.role == "assistant" and msg.message.content == grpc_out.text
    assert r.usage.completion_tokens == len(grpc_out.token_ids) == grpc_out.usage.completion_tokens
    assert r.usage.prompt_tokens == grpc_out.usage.prompt_tokens
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert msg.finish_reason == ("length" if len(grpc_out.token_ids) == 24 else "stop")
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion" and r.model == MODEL
    # The rendered template is what ran: the oracle (transformers generate alone) agrees on the tokens.
    lm = load_model(str(served["folder"]), dtype="float32")
    prompt = lm.tokenizer.apply_chat_template(
        CHAT, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert len(prompt) == grpc_out.usage.prompt_tokens
    assert_exact(lm, [greedy_request("chat", prompt, 24)], [list(grpc_out.token_ids)])


def test_chat_stream_with_usage(served):
    c = _client(served["http"])
    kw = dict(model=MODEL, messages=CHAT, max_tokens=20, temperature=0)
    whole = c.chat.completions.create(**kw)
    chunks = list(c.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole.choices[0].message.content
    finals = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(ch.usage is None for ch in chunks[:-1])
    assert len({ch.id for ch in chunks}) == 1


def test_completions_stream_and_not_match_grpc(served):
    c = _client(served["http"])
    prompt = "Padding on the left aligns rows"
    with BatonClient(served["grpc"]) as g:
        ref = g.complete(prompt, max_tokens=16, ignore_eos=True)
    kw = dict(model=MODEL, prompt=prompt, max_tokens=16, temperature=0, extra_body={"ignore_eos": True})
    r = c.completions.create(**kw)
    assert r.choices[0].text == ref.text and r.usage.completion_tokens == 16
    assert r.choices[0].finish_reason == "length" and r.object == "text_completion"
    chunks = list(c.completions.create(**kw, stream=True))
    assert "".join(ch.choices[0].text for ch in chunks) == ref.text
    assert chunks[-1].choices[0].finish_reason == "length"
    # Token ids as the prompt: the same answer as gRPC for the same ids.
    ids = list(range(5, 25))
    with BatonClient(served["grpc"]) as g:
        ref = g.complete(ids, max_tokens=8, ignore_eos=True)
    r = c.completions.create(
        model=MODEL, prompt=ids, max_tokens=8, temperature=0, extra_body={"ignore_eos": True}
    )
    assert r.choices[0].text == ref.text and r.usage.prompt_tokens == 20


def test_stop_and_seed(served):
    c = _client(served["http"])
    base = c.completions.create(
        model=MODEL, prompt="The quick", max_tokens=30, temperature=0, extra_body={"ignore_eos": True}
    ).choices[0]
    text = base.text
    cut = next(i for i in range(3, len(text)) if text[i].strip())  # a stop string the answer reaches
    stop = text[cut : cut + 2]
    r = c.completions.create(
        model=MODEL,
        prompt="The quick",
        max_tokens=30,
        temperature=0,
        stop=[stop],
        extra_body={"ignore_eos": True},
    )
    assert r.choices[0].finish_reason == "stop" and r.choices[0].text == text[: text.index(stop)]
    # A seed makes sampling reproducible, and the same over HTTP and gRPC.
    kw = dict(model=MODEL, messages=CHAT, max_tokens=20, temperature=1.0, seed=1234)
    a = c.chat.completions.create(**kw).choices[0].message.content
    b = c.chat.completions.create(**kw).choices[0].message.content
    g = _grpc_chat(served, CHAT, max_tokens=20, temperature=1.0, seed=1234).text
    assert a == b == g
    others = {c.chat.completions.create(**{**kw, "seed": s}).choices[0].message.content for s in (1, 2, 3)}
    assert len(others | {a}) > 1  # the seed matters (random tiny model: four seeds never agree)


BAD_FIELDS = [
    ({"n": 2}, "n"),
    ({"temperature": -1}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_completion_tokens": 5000}, "max_completion_tokens"),  # beyond the context
    ({"seed": -3}, "seed"),
    ({"stop": [""]}, "stop"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user"}]}, "messages"),
    ({"logprobs": True}, "logprobs"),
    ({"stream": "yes"}, "stream"),
]


@pytest.mark.parametrize(("fields", "param"), BAD_FIELDS)
def test_bad_field_is_400_naming_it(served, fields, param):
    c = _client(served["http"])
    kw = {"model": MODEL, "messages": CHAT, "max_tokens": 4, **fields}
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(**kw)
    assert e.value.status_code == 400 and e.value.param == param, e.value.body
    assert e.value.type == "invalid_request_error" and param in e.value.message


def test_other_errors(served):
    c = _client(served["http"])
    with pytest.raises(openai.NotFoundError) as e:
        c.chat.completions.create(model="gpt-4", messages=CHAT)
    assert e.value.param == "model"
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model=MODEL, prompt=["one", "two"], max_tokens=2)
    assert e.value.param == "prompt"
    req = urllib.request.Request(
        served["http"] + "/v1/completions", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as he:
        urllib.request.urlopen(req, timeout=30)
    assert he.value.code == 400 and json.loads(he.value.read())["error"]["param"] == "body"


def test_auth(served):
    for key in ("none", "wrong"):
        with pytest.raises(openai.AuthenticationError) as e:
            _client(served["auth"], key).models.list()
        assert e.value.status_code == 401
    r = _client(served["auth"], TOKEN).chat.completions.create(model=MODEL, messages=CHAT, max_tokens=3)
    assert r.usage.completion_tokens >= 1
    assert _get(served["auth"] + "/health")[0] == 200 and _get(served["auth"] + "/metrics")[0] == 200


def test_full_queue_is_429(served):
    router = served["cluster"].router
    old = router.cfg
    router.cfg = dataclasses.replace(old, max_queue=1, prefill_ahead=0)

    async def flood():
        client = openai.AsyncOpenAI(base_url=served["http"] + "/v1", api_key="none", max_retries=0)
        return await asyncio.gather(
            *(
                client.completions.create(
                    model=MODEL, prompt=list(range(5, 80)), max_tokens=30, extra_body={"ignore_eos": True}
                )
                for _ in range(30)
            ),
            return_exceptions=True,
        )

    try:
        results = asyncio.run(flood())
    finally:
        router.cfg = old
    errors = [r for r in results if isinstance(r, Exception)]
    ok = [r for r in results if not isinstance(r, Exception)]
    assert errors and all(isinstance(e, openai.RateLimitError) for e in errors), errors[:3]
    assert ok and all(r.usage.completion_tokens == 30 for r in ok)
    assert "queue" in errors[0].message


def _scrape(served) -> dict:
    """name -> {labels tuple: value} of every sample on /metrics."""
    status, body = _get(served["http"] + "/metrics")
    assert status == 200
    out: dict = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def _value(m: dict, name: str, **labels) -> float:
    return m.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


def delta(before: dict, after: dict, name: str, **labels) -> float:
    return _value(after, name, **labels) - _value(before, name, **labels)


def test_disconnect_frees_the_row_and_gauges_follow(served):
    """While a long stream decodes: running = 1, rows = 1, KV use > 0. The client goes away: the request
    ends as an abort (not by running to its length) and every gauge is back to 0."""
    cluster = served["cluster"]
    assert _idle(cluster)
    before = _scrape(served)
    c = _client(served["http"])
    stream = c.completions.create(
        model=MODEL, prompt="The quick", max_tokens=450, stream=True, extra_body={"ignore_eos": True}
    )
    it = iter(stream)
    for _ in range(5):
        next(it)
    busy = _scrape(served)
    assert len(cluster.router.states) == 1
    stream.close()  # the client goes away mid-stream
    assert _value(busy, "baton:num_requests_running") == 1
    assert _value(busy, "baton:decode_batch_rows", worker="decode-0") == 1
    assert _value(busy, "baton:kv_cache_usage_perc", worker="decode-0") > 0
    assert _idle(cluster), cluster.router.server_info()
    after = _scrape(served)
    assert delta(before, after, "baton:request_success_total", finished_reason="abort") == 1
    assert delta(before, after, "baton:request_success_total", finished_reason="length") == 0
    assert _value(after, "baton:num_requests_running") == 0
    assert _value(after, "baton:decode_batch_rows", worker="decode-0") == 0


def test_metrics_count_exactly_the_requests_sent(served):
    cluster = served["cluster"]
    assert _idle(cluster)
    before = _scrape(served)
    n_http, n_grpc, max_tokens = 4, 3, 12
    c = _client(served["http"])

    async def grpc_side():
        client = AsyncBatonClient(served["grpc"])
        try:
            return await asyncio.gather(
                *(
                    client.complete(list(range(5, 30 + i)), max_tokens=max_tokens, ignore_eos=True)
                    for i in range(n_grpc)
                )
            )
        finally:
            await client.close()

    g = asyncio.run(grpc_side())
    h = [
        c.chat.completions.create(
            model=MODEL, messages=CHAT, max_tokens=max_tokens, temperature=0, extra_body={"ignore_eos": True}
        )
        for _ in range(n_http)
    ]
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model=MODEL, messages=CHAT, top_p=7)
    assert _idle(cluster)
    after = _scrape(served)
    n = n_http + n_grpc

    def d(name: str, **labels) -> float:
        return delta(before, after, name, **labels)

    for hist in (
        "time_to_first_token_seconds",
        "e2e_request_latency_seconds",
        "request_queue_time_seconds",
        "request_prefill_time_seconds",
        "kv_transfer_seconds",
        "kv_transfer_bytes",
    ):
        assert d(f"baton:{hist}_count") == n, hist
        assert d(f"baton:{hist}_bucket", le="+Inf") == n, hist
    assert d("baton:inter_token_latency_seconds_count") == n * (max_tokens - 1)
    assert d("baton:request_success_total", finished_reason="length") == n
    assert d("baton:generation_tokens_total") == n * max_tokens
    prompt_tokens = sum(x.usage.prompt_tokens for x in g) + sum(x.usage.prompt_tokens for x in h)
    assert d("baton:prompt_tokens_total") == prompt_tokens
    assert d("baton:request_errors_total", code="invalid_argument") == 1
    assert d("baton:kv_transfer_bytes_sum") > 0 and d("baton:e2e_request_latency_seconds_sum") > 0
    # Gauges read the router's state at scrape time: back to 0 once idle.
    for gauge in ("baton:num_requests_running", "baton:num_requests_waiting"):
        assert _value(after, gauge) == 0, gauge
    for gauge in ("baton:decode_batch_rows", "baton:kv_cache_usage_perc", "baton:decode_padding_ratio"):
        assert _value(after, gauge, worker="decode-0") == 0, gauge
    assert ("baton:decode_batch_rows", (("worker", "decode-0"),)) in {
        (k, lab) for k, v in after.items() for lab in v
    }


def test_cli_generate_sends_chat(served):
    env = dict(os.environ)
    env.pop("BATON_AUTH_TOKEN", None)

    def generate(*extra: str) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "baton.cli", "generate", "--server", served["grpc"], "Hello there"]
        return subprocess.run(
            [*argv, "--max-tokens", "8", *extra], capture_output=True, text=True, timeout=120, env=env
        )

    p = generate()
    assert p.returncode == 0, p.stderr
    chat = _grpc_chat(served, [{"role": "user", "content": "Hello there"}], max_tokens=8)
    with BatonClient(served["grpc"]) as c:
        raw = c.complete("Hello there", max_tokens=8)
    assert p.stdout.rstrip("\n") == chat.text and chat.text != raw.text
    p = generate("--raw")
    assert p.returncode == 0 and p.stdout.rstrip("\n") == raw.text
