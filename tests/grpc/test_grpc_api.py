"""The gRPC API: a real grpc.aio server on 127.0.0.1 over real Ray workers and a tiny model."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from helpers import BAD_REQUESTS, free_port, self_signed_cert
from oracle import make_queries

from baton.client import AsyncBatonClient, BatonClient
from baton.core.config import EngineConfig
from baton.engine import LocalEngine
from baton.v1 import generation_pb2 as pb
from cluster.grpc_server import GrpcServer
from cluster.ray_cluster import Cluster, ClusterConfig

pytestmark = pytest.mark.slow  # a local Ray cluster and real workers
TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def served(local_ray, model_dir):
    """One cluster (1 prefill + 1 decode worker) on the module's local Ray, three servers: plain,
    auth, TLS."""
    assert local_ray.is_initialized()  # the cluster joins this Ray instead of starting (and owning) one
    folder = model_dir("llama")
    cfg = ClusterConfig(
        model=str(folder),
        dtype="float32",  # as tiny_lm, which the offline comparison runs
        max_batch_size=8,
        max_seq_len=500,
        prefill_num_cpus=0.5,
        decode_num_cpus=0.5,
    )
    cluster = Cluster(cfg).start(log=lambda _msg: None)
    cert, key = self_signed_cert(["localhost"], ips=("127.0.0.1",))
    ports = {"plain": free_port(), "auth": free_port(), "tls": free_port()}

    async def make():
        servers = {
            "plain": GrpcServer(cluster, "tiny-llama", "127.0.0.1", ports["plain"]),
            "auth": GrpcServer(cluster, "tiny-llama", "127.0.0.1", ports["auth"], auth_token=TOKEN),
            "tls": GrpcServer(cluster, "tiny-llama", "127.0.0.1", ports["tls"], tls_cert=cert, tls_key=key),
        }
        for s in servers.values():
            await s.start()
        return servers

    servers = cluster.call(make())
    yield {
        "cluster": cluster,
        "servers": servers,
        "ports": ports,
        "cert": cert,
        "target": f"127.0.0.1:{ports['plain']}",
    }
    for s in servers.values():
        cluster.call(s.drain(1.0))
    cluster.shutdown()


def _live_rows(client: BatonClient) -> int:
    return sum(w.live_rows + w.waiting for w in client.server_info().workers if w.role == "decode")


def _wait_rows_free(client: BatonClient, timeout: float = 10.0) -> None:
    deadline = time.time() + timeout
    while _live_rows(client) and time.time() < deadline:
        time.sleep(0.05)
    assert _live_rows(client) == 0


def test_health_reflection_and_model_info(served):
    ch = grpc.insecure_channel(served["target"])
    h = health_pb2_grpc.HealthStub(ch)
    for service in ("", "baton.v1.Generation"):
        assert (
            h.Check(health_pb2.HealthCheckRequest(service=service)).status
            == health_pb2.HealthCheckResponse.SERVING
        )
    refl = reflection_pb2_grpc.ServerReflectionStub(ch)
    resp = next(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in resp.list_services_response.service}
    assert {"baton.v1.Generation", "grpc.health.v1.Health"} <= names
    with BatonClient(served["target"]) as c:
        info = c.model_info()
        assert info.name == "tiny-llama" and info.context_length == 500 and info.vocab_size > 0
        assert list(info.eos_token_ids) and info.dtype == "float32" and info.fingerprint


def test_16_concurrent_streams_match_offline_run(served, tiny_lm):
    lm = tiny_lm("llama")
    reqs = make_queries(lm, seed=41, n=16)
    offline = LocalEngine(lm, EngineConfig(policy="baton", max_batch_size=8, max_seq_len=300)).run(
        [(r, 0.0) for r in reqs]
    )

    async def one(client, r):
        toks, text, complete = [], [], None
        async for resp in client.generate(
            list(r.prompt_token_ids), max_tokens=r.params.max_tokens, stream=True
        ):
            if resp.WhichOneof("kind") == "chunk":
                toks += list(resp.chunk.token_ids)
                text.append(resp.chunk.text)
            else:
                complete = resp.complete
        return toks, "".join(text), complete

    async def all_():
        client = AsyncBatonClient(served["target"])
        try:
            return await asyncio.gather(*(one(client, r) for r in reqs))
        finally:
            await client.close()

    results = asyncio.run(all_())
    for r, off, (toks, text, complete) in zip(reqs, offline, results, strict=True):
        assert toks == off.token_ids, r.request_id
        assert text == off.text
        assert complete.usage.completion_tokens == len(toks) and complete.usage.prompt_tokens == r.prompt_len
        assert pb.FinishReason.Name(complete.finish_reason).lower() == off.finish_reason
        t = complete.timing
        assert t.total_ms >= t.ttft_ms > 0 and t.prefill_worker == "prefill-0"
        if len(toks) > 1:
            assert t.decode_worker == "decode-0" and t.kv_bytes > 0
    # Non-streaming: one message with every token and the text.
    with BatonClient(served["target"]) as c:
        resps = list(
            c.generate(list(reqs[0].prompt_token_ids), max_tokens=reqs[0].params.max_tokens, stream=False)
        )
        assert len(resps) == 1 and list(resps[0].complete.token_ids) == offline[0].token_ids
        assert resps[0].complete.text == offline[0].text


def test_bad_inputs_invalid_argument_while_others_stream(served):
    with BatonClient(served["target"]) as c:
        running = [
            c.generate(list(range(5, 30 + i)), max_tokens=60, ignore_eos=True, stream=True) for i in range(3)
        ]
        firsts = [next(s) for s in running]  # they are live now
        for fields, field in BAD_REQUESTS:
            kw = dict(fields)
            prompt = kw.pop("prompt") if "prompt" in kw else kw.pop("prompt_token_ids")
            with pytest.raises(grpc.RpcError) as e:
                c.complete(prompt, **kw)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (fields, field)
            assert field in e.value.details(), (field, e.value.details())
        with pytest.raises(grpc.RpcError) as e:
            list(c.stub.Generate(pb.GenerateRequest(stream=False)))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "input" in e.value.details()
        for s, first in zip(running, firsts, strict=True):
            rest = list(s)
            toks = list(first.chunk.token_ids) + [t for r in rest[:-1] for t in r.chunk.token_ids]
            assert len(toks) == 60 and pb.FinishReason.Name(rest[-1].complete.finish_reason) == "LENGTH"


def test_full_queue_resource_exhausted(served):
    cluster = served["cluster"]
    router = cluster.router
    old = router.cfg
    router.cfg = dataclasses.replace(old, max_queue=1, prefill_ahead=0)
    try:

        async def flood():
            client = AsyncBatonClient(served["target"])
            try:
                return await asyncio.gather(
                    *(client.complete(list(range(5, 80)), max_tokens=30, ignore_eos=True) for _ in range(40)),
                    return_exceptions=True,
                )
            finally:
                await client.close()

        results = asyncio.run(flood())
    finally:
        router.cfg = old
    codes = [r.code() for r in results if isinstance(r, grpc.RpcError)]
    ok = [r for r in results if isinstance(r, pb.Complete)]
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes and set(codes) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert ok and all(r.usage.completion_tokens == 30 for r in ok)
    assert "queue" in next(r.details() for r in results if isinstance(r, grpc.RpcError))


def test_cancel_and_deadline_free_the_row(served):
    with BatonClient(served["target"]) as c:
        _wait_rows_free(c)
        call = c.generate(list(range(5, 15)), max_tokens=480, ignore_eos=True, stream=True)
        next(call)
        next(call)
        assert _live_rows(c) == 1
        call.cancel()
        _wait_rows_free(c)
        with pytest.raises(grpc.RpcError) as e:
            list(c.generate(list(range(5, 15)), max_tokens=480, ignore_eos=True, stream=True, timeout=0.4))
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        _wait_rows_free(c)
        # Abort by id: the stream ends with ABORT and the row is free.
        call = c.generate(
            list(range(5, 15)), max_tokens=480, ignore_eos=True, stream=True, request_id="kill-me"
        )
        next(call)
        assert c.abort("kill-me") is True
        last = list(call)[-1]
        assert pb.FinishReason.Name(last.complete.finish_reason) == "ABORT"
        _wait_rows_free(c)
        with pytest.raises(grpc.RpcError) as e:
            c.abort("no-such-request")
        assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_auth_token(served):
    target = f"127.0.0.1:{served['ports']['auth']}"
    for token in (None, "wrong"):
        with BatonClient(target, auth_token=token or "") as c, pytest.raises(grpc.RpcError) as e:
            c.complete("hello", max_tokens=3)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with BatonClient(target, auth_token=token or "") as c, pytest.raises(grpc.RpcError) as e:
            c.model_info()
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with BatonClient(target, auth_token=TOKEN) as c:
        assert c.complete("hello", max_tokens=3).usage.completion_tokens >= 1
    # Health stays open for probes.
    h = health_pb2_grpc.HealthStub(grpc.insecure_channel(target))
    assert h.Check(health_pb2.HealthCheckRequest(service="")).status == health_pb2.HealthCheckResponse.SERVING


def test_tls_round_trip(served):
    target = f"localhost:{served['ports']['tls']}"
    with BatonClient(target, ca=served["cert"]) as c:
        out = c.complete("The quick brown fox", max_tokens=5)
        assert out.usage.completion_tokens >= 1
    with BatonClient(target) as c, pytest.raises(grpc.RpcError):  # plaintext against TLS fails
        c.complete("hi", max_tokens=2, timeout=3)


def test_cli_generate(served):
    env = dict(os.environ)
    env.pop("BATON_AUTH_TOKEN", None)
    base = [sys.executable, "-m", "baton.cli", "generate", "--server", served["target"]]
    p = subprocess.run(
        [*base, "The quick brown fox", "--max-tokens", "6", "--stream"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert p.returncode == 0, p.stderr
    assert "6 tokens" in p.stderr or "eos" in p.stderr
    p = subprocess.run(
        [*base, "hello", "--temperature", "-2"], capture_output=True, text=True, timeout=120, env=env
    )
    assert p.returncode == 1 and "INVALID_ARGUMENT" in p.stderr and "temperature" in p.stderr


# --------------------------------------------------------------------------- hostile input
def test_undecodable_bytes_get_invalid_argument(served):
    ch = grpc.insecure_channel(served["target"])
    for method, unary in (("Generate", False), ("Abort", True)):
        path = f"/baton.v1.Generation/{method}"
        raw = (ch.unary_unary if unary else ch.unary_stream)(path, request_serializer=None)
        for garbage in (b"\xff\xff\xff\xff", b"\x0a\x05ab", b"\x12"):  # bad tag, truncated field
            with pytest.raises(grpc.RpcError) as e:
                out = raw(garbage, timeout=10)
                if not unary:
                    list(out)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, garbage, e.value.details())
            assert e.value.details().startswith("request: not a valid baton.v1.")
    with BatonClient(served["target"]) as c:  # the server is fine after
        assert c.complete([5, 6, 7], max_tokens=3).usage.completion_tokens == 3


def test_request_id_prompt_and_stop_bounds(served):
    with BatonClient(served["target"]) as c:
        cases = [
            (dict(request_id="x" * 257), [5, 6, 7], "request_id"),
            (dict(), "a" * (1024 * 1024 + 1), "text"),
            (dict(), list(range(5, 6)) * (256 * 1024 + 1), "token_ids"),
            (dict(stop=[f"s{i}" for i in range(17)]), [5, 6, 7], "stop"),
            (dict(stop=["x" * 257]), [5, 6, 7], "stop"),
            (dict(stop_token_ids=list(range(257))), [5, 6, 7], "stop_token_ids"),
        ]
        for kw, prompt, field in cases:
            t0 = time.time()
            with pytest.raises(grpc.RpcError) as e:
                c.complete(prompt, max_tokens=3, **kw)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, e.value.details()[:200])
            assert e.value.details().startswith(f"{field}:"), e.value.details()[:200]
            assert len(e.value.details()) < 300  # short: the offending value is not echoed back
            assert time.time() - t0 < 5  # refused before any tokenising
        with pytest.raises(grpc.RpcError) as e:
            c.abort("y" * (1024 * 1024))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and e.value.details().startswith(
            "request_id:"
        )
        with pytest.raises(grpc.RpcError) as e:
            c.abort("not-in-flight")
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        assert c.complete([5, 6, 7], max_tokens=3, request_id="z" * 256).usage.completion_tokens == 3


def test_model_and_server_info_report_runtime_and_dtype(served):
    with BatonClient(served["target"]) as c:
        info = c.model_info()
        assert info.runtime in ("fast", "hf") and info.device == "cpu" and info.compile_s >= 0
        server = c.server_info()
        assert server.queue_order == "fcfs"  # the default order, reported as --queue-order names it
        workers = server.workers
        assert {w.role for w in workers} == {"prefill", "decode"}
        for w in workers:
            assert w.runtime == info.runtime and w.dtype == "float32" and w.threads >= 1 and w.startup_s > 0


def test_chat_messages_need_a_template(served):
    """The tiny model has no chat template: messages are refused naming the field, as empty messages are."""
    with BatonClient(served["target"]) as c:
        for messages, why in (([{"role": "user", "content": "hi"}], "chat template"), ([], "empty")):
            req = pb.GenerateRequest(stream=False)
            req.messages.messages.extend(pb.ChatMessage(**m) for m in messages)
            if not messages:
                req.messages.SetInParent()
            with pytest.raises(grpc.RpcError) as e:
                list(c.stub.Generate(req))
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert e.value.details().startswith("messages:") and why in e.value.details(), e.value.details()
