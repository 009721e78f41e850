"""Hostile input: a seeded generator of >= 300 malformed requests against a real server (a local Ray
cluster, a tiny model, grpc.aio on 127.0.0.1). Each one is refused with its own status code and a
short message that starts with the field it names, while well-formed greedy streams keep their tokens
and their pace (inter-token gaps compared with the same streams alone, before and after, in this test).
"""

from __future__ import annotations

import itertools
import math
import random
import statistics
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import free_port

from baton.bench.tiny_models import CORPUS
from baton.client import BatonClient, build_request
from baton.v1 import generation_pb2 as pb
from cluster.grpc_server import GrpcServer
from cluster.ray_cluster import Cluster, ClusterConfig

pytestmark = pytest.mark.slow  # a local Ray cluster and real workers

SEED = 1111
N_LIGHT = 320  # cheap cases; the heavy ones (megabytes each) come on top
CONTEXT = 500  # --max-seq-len of the server
MAX_REQUEST_ID = 256  # bytes
MAX_PROMPT_BYTES = 1024 * 1024  # the server's default --max-prompt-bytes
MAX_MESSAGE = 16 * 1024 * 1024
INVALID, NOT_FOUND, EXHAUSTED = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
)
# The well-formed streams: greedy, fixed lengths, run alone, under fuzz, and alone again.
STREAM_PROMPTS = [list(range(7, 19)), list(range(40, 71)), [9, 30, 11, 250, 12, 77, 3, 90]]
STREAM_TOKENS = 120
GAP_FACTOR = 4.0  # under fuzz, median and p90 gaps stay within this factor of the alone run
GAP_SLACK_S = 0.02  # plus this, so a 2 ms gap that becomes 9 ms on a shared machine is not a failure
# Stalls: a stream's time spent in gaps longer than STALL_GAP_S, the most of any stream. The burst of
# near-limit prompts tokenised whole on the event loop stalled a stream 6.1 s in all (measured); off the
# loop ~4 s on 2 cores (CPU taken by the tokenising; CI failed on it); refused from a head, see Fuzz.cases.
N_NEAR_LIMIT = 8
STALL_GAP_S = 0.2
STALL_SLACK_S = 3.0


@dataclass(frozen=True)
class Case:
    kind: str
    method: str  # Generate | Abort | GetModelInfo | GetServerInfo
    payload: bytes  # sent as is (identity serializer)
    code: grpc.StatusCode
    field: str  # the message must start with "<field>:"


# --------------------------------------------------------------------------- wire helpers
def varint(n: int) -> bytes:
    """protobuf's base-128 varint, low 7 bits first."""
    return bytes([n & 0x7F | 0x80]) + varint(n >> 7) if n > 0x7F else bytes([n])


def tag(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def encoded(wire: int, rng: random.Random) -> bytes:
    """A value of wire type ``wire``: varint, fixed64, length-delimited, fixed32."""
    if wire == 0:
        return varint(rng.randrange(1, 2**40))
    if wire == 1:
        return struct.pack("<d", rng.uniform(-10, 10))
    if wire == 2:
        body = bytes(rng.randrange(97, 123) for _ in range(rng.randrange(0, 6)))
        return varint(len(body)) + body
    return struct.pack("<f", rng.uniform(-10, 10))


def accepted_wire_types(cls) -> dict[int, tuple[str, set[int]]]:
    """Each field number of message ``cls``: its name and the wire types a parser takes for it."""
    fd = cls.DESCRIPTOR.fields[0]
    out = {}
    for f in cls.DESCRIPTOR.fields:
        if f.type in (fd.TYPE_STRING, fd.TYPE_BYTES, fd.TYPE_MESSAGE):
            out[f.number] = (f.name, {2})
        else:  # these protos' scalars: float (fixed32) or varints; repeated ones may come packed
            wire = 5 if f.type == fd.TYPE_FLOAT else 0
            out[f.number] = (f.name, {wire, 2} if f.is_repeated else {wire})
    return out


def parses(cls, data: bytes) -> bool:
    try:
        cls.FromString(data)
    except Exception:
        return False
    return True


# --------------------------------------------------------------------------- the generator
class Fuzz:
    """Seeded makers of malformed requests; each returns one Case with its expected (code, field)."""

    def __init__(self, seed: int, vocab: int):
        self.rng = random.Random(seed)
        self.vocab = vocab

    # a valid base that each maker breaks in exactly one way
    def ids(self, n: int | None = None) -> list[int]:
        return [self.rng.randrange(2, self.vocab) for _ in range(n or self.rng.randrange(3, 20))]

    def gen(self, kind: str, field: str, prompt=None, code=INVALID, **kw) -> Case:
        kw.setdefault("max_tokens", self.rng.randrange(2, 8))
        kw.setdefault("stream", self.rng.random() < 0.5)
        req = build_request(self.ids() if prompt is None else prompt, **kw)
        if prompt == []:
            req.token_ids.SetInParent()  # token_ids given, with no ids in it
        return Case(kind, "Generate", req.SerializeToString(), code, field)

    def text(self, size: int) -> str:
        """About ``size`` UTF-8 bytes of the tiny models' corpus (never more)."""
        start = self.rng.randrange(len(CORPUS))
        reps = size // len(CORPUS) + 2
        return (CORPUS * reps)[start:].encode()[:size].decode(errors="ignore")

    # --- bytes that are not a message
    def garbage(self) -> Case:
        method, cls = self.rng.choice(
            [
                ("Generate", pb.GenerateRequest),
                ("Abort", pb.AbortRequest),
                ("GetModelInfo", pb.GetModelInfoRequest),
                ("GetServerInfo", pb.GetServerInfoRequest),
            ]
        )
        while True:
            data = bytes(self.rng.randrange(256) for _ in range(self.rng.randrange(1, 48)))
            if not parses(cls, data):
                return Case("garbage", method, data, INVALID, "request")

    def truncated(self) -> Case:
        full = build_request(
            self.ids(), max_tokens=5, temperature=0.5, stop=["ab"], request_id="trunc"
        ).SerializeToString()
        while True:
            data = full[: self.rng.randrange(1, len(full))]
            if not parses(pb.GenerateRequest, data):
                return Case("truncated", "Generate", data, INVALID, "request")

    def bad_utf8(self) -> Case:
        bad = self.rng.choice([b"\xff", b"\xc3\x28", b"\xe2\x82", b"\xed\xa0\x80", b"ok\xfe"])
        where = self.rng.choice(["request_id", "text", "stop", "abort"])
        if where == "abort":
            return Case("bad-utf8", "Abort", tag(1, 2) + varint(len(bad)) + bad, INVALID, "request")
        base = build_request(self.ids(), max_tokens=3).SerializeToString()
        if where == "stop":  # inside the nested SamplingParams
            inner = tag(6, 2) + varint(len(bad)) + bad
            return Case(
                "bad-utf8", "Generate", base + tag(4, 2) + varint(len(inner)) + inner, INVALID, "request"
            )
        number = 1 if where == "request_id" else 2
        return Case(
            "bad-utf8", "Generate", base + tag(number, 2) + varint(len(bad)) + bad, INVALID, "request"
        )

    def overlong_varint(self) -> Case:
        data = tag(5, 0) + b"\xff" * self.rng.randrange(11, 20)  # stream: a varint that never ends
        return Case("overlong-varint", "Generate", data, INVALID, "request")

    def wrong_wire_type(self) -> Case:
        """A known field sent with another wire type (protobuf would keep it as unknown and use a default)."""
        inside = self.rng.random() < 0.6
        fields = accepted_wire_types(pb.SamplingParams if inside else pb.GenerateRequest)
        number, (name, ok) = self.rng.choice(sorted(fields.items()))
        wrong = [w for w in (0, 1, 2, 5) if w not in ok]
        w = self.rng.choice(wrong)
        field = tag(number, w) + encoded(w, self.rng)
        if inside:
            req = build_request([5, 6, 7], max_tokens=3)
            body = req.sampling.SerializeToString() + field
            data = pb.GenerateRequest(token_ids=req.token_ids).SerializeToString() + tag(4, 2)
            return Case("wire-type", "Generate", data + varint(len(body)) + body, INVALID, name)
        if name in ("text", "token_ids"):  # the prompt itself arrives as something else: no input
            return Case("wire-type", "Generate", field, INVALID, name)
        base = build_request([5, 6, 7], max_tokens=3).SerializeToString()
        return Case("wire-type", "Generate", base + field, INVALID, name)

    # --- fields out of range
    def temperature(self) -> Case:
        v = self.rng.choice([-self.rng.uniform(1e-3, 100), math.nan, math.inf, -math.inf, 1e39])
        return self.gen("temperature", "temperature", temperature=v)

    def top_p(self) -> Case:
        v = self.rng.choice(
            [0.0, -self.rng.uniform(1e-3, 5), self.rng.uniform(1.01, 100), math.nan, math.inf]
        )
        return self.gen("top_p", "top_p", top_p=v)

    def top_k(self) -> Case:
        return self.gen(
            "top_k", "top_k", top_k=self.rng.choice([-1, -(2**31), -self.rng.randrange(2, 10**6)])
        )

    def max_tokens(self) -> Case:
        prompt = self.ids()
        v = self.rng.choice([0, -1, -(2**31), 2**31 - 1, CONTEXT - len(prompt) + self.rng.randrange(1, 100)])
        return self.gen("max_tokens", "max_tokens", prompt, max_tokens=v)

    def seed(self) -> Case:
        return self.gen("seed", "seed", seed=self.rng.randrange(2**63, 2**64), temperature=0.7)

    def token_out_of_vocab(self) -> Case:
        prompt = self.ids()
        prompt[self.rng.randrange(len(prompt))] = self.rng.choice(
            [self.vocab, self.rng.randrange(self.vocab, 2**32)]
        )
        return self.gen("token-vocab", "prompt_token_ids", prompt)

    def empty_input(self) -> Case:
        which = self.rng.choice(["none", "text", "ids"])
        if which == "none":
            req = pb.GenerateRequest(sampling=pb.SamplingParams(max_tokens=3), stream=self.rng.random() < 0.5)
            return Case("empty-input", "Generate", req.SerializeToString(), INVALID, "input")
        return self.gen("empty-input", "prompt", "" if which == "text" else [])

    def long_request_id(self) -> Case:
        n = self.rng.randrange(MAX_REQUEST_ID + 1, 4000)
        rid = self.rng.choice(["x" * n, "東" * (MAX_REQUEST_ID // 3 + 1)])  # 86 characters, 258 bytes
        if self.rng.random() < 0.3:
            return Case(
                "long-id", "Abort", pb.AbortRequest(request_id=rid).SerializeToString(), INVALID, "request_id"
            )
        return self.gen("long-id", "request_id", request_id=rid)

    def stop_strings(self) -> Case:
        which = self.rng.choice(["many", "long", "empty"])
        if which == "many":
            stop = [f"s{i}" for i in range(self.rng.randrange(17, 80))]
        elif which == "long":
            stop = ["ab", "c" * self.rng.randrange(257, 5000)]
        else:
            stop = ["ok", ""]
        return self.gen("stop", "stop", stop=stop)

    def stop_ids(self) -> Case:
        if self.rng.random() < 0.5:
            return self.gen(
                "stop-ids", "stop_token_ids", stop_token_ids=list(range(self.rng.randrange(257, 3000)))
            )
        return self.gen(
            "stop-ids", "stop_token_ids", stop_token_ids=[3, self.rng.randrange(self.vocab, 2**32)]
        )

    def prompt_over_context(self) -> Case:
        if self.rng.random() < 0.5:
            return self.gen("over-context", "prompt", self.ids(self.rng.randrange(CONTEXT, 3000)))
        return self.gen("over-context", "prompt", self.text(self.rng.randrange(4000, 40000)))

    def abort_unknown(self) -> Case:
        rid = self.rng.choice(["", "no-such", f"req-{self.rng.randrange(10**9)}", "é" * 85])
        return Case(
            "abort-unknown",
            "Abort",
            pb.AbortRequest(request_id=rid).SerializeToString(),
            NOT_FOUND,
            "request_id",
        )

    LIGHT = (
        "garbage",
        "truncated",
        "bad_utf8",
        "overlong_varint",
        "wrong_wire_type",
        "temperature",
        "top_p",
        "top_k",
        "max_tokens",
        "seed",
        "token_out_of_vocab",
        "empty_input",
        "long_request_id",
        "stop_strings",
        "stop_ids",
        "prompt_over_context",
        "abort_unknown",
    )

    # --- heavy: megabytes each, a few of them
    def heavy(self) -> list[Case]:
        over = MAX_PROMPT_BYTES + 1
        return [
            *(self.gen("big-text", "text", self.text(over + self.rng.randrange(0, 2**19))) for _ in range(3)),
            *(
                self.gen("big-ids", "token_ids", self.ids(over // 4 + 1 + self.rng.randrange(100)))
                for _ in range(2)
            ),
            self.gen("huge-id", "request_id", request_id="i" * 2**20),
            Case(
                "huge-id",
                "Abort",
                pb.AbortRequest(request_id="a" * 2**20).SerializeToString(),
                INVALID,
                "request_id",
            ),
            # Over gRPC's own 16 MiB message limit: refused by gRPC before any handler runs.
            *(self.gen("over-16mib", "", "z" * (MAX_MESSAGE + 10), code=EXHAUSTED) for _ in range(2)),
        ]

    def cases(self, n_light: int) -> list[Case]:
        makers: list[Callable[[], Case]] = [getattr(self, name) for name in self.LIGHT]
        out = [makers[i % len(makers)]() for i in range(n_light)] + self.heavy()
        self.rng.shuffle(out)
        # A burst of prompts just under the byte limit, sent together. Tokenised whole (about a
        # CPU-second each) they stalled every stream: seconds in a row on the event loop; off it, ~4 s
        # in all on 2 cores (CPU taken from decoding). A head that proves the prompt too long is
        # tokenised instead, and the streams go on.
        at = self.rng.randrange(len(out))
        out[at:at] = [
            self.gen("near-limit-text", "prompt", self.text(MAX_PROMPT_BYTES - 64))
            for _ in range(N_NEAR_LIMIT)
        ]
        return out


def send(channel: grpc.Channel, case: Case) -> tuple[grpc.StatusCode, str]:
    path = f"/baton.v1.Generation/{case.method}"
    try:
        if case.method == "Generate":
            list(channel.unary_stream(path)(case.payload, timeout=60))
        else:
            channel.unary_unary(path)(case.payload, timeout=60)
    except grpc.RpcError as e:
        return e.code(), e.details() or ""
    return grpc.StatusCode.OK, ""


# --------------------------------------------------------------------------- well-formed streams
def one_stream(target: str, prompt: list[int]) -> tuple[list[int], list[float]]:
    """(tokens, gaps in s between chunk arrivals after the first chunk) of one greedy stream."""
    with BatonClient(target) as c:
        toks, times = [], []
        for r in c.generate(prompt, max_tokens=STREAM_TOKENS, ignore_eos=True, stream=True, timeout=120):
            if r.WhichOneof("kind") == "chunk":
                times.append(time.perf_counter())
                toks += list(r.chunk.token_ids)
    return toks, [b - a for a, b in itertools.pairwise(times[1:])]


def stream_round(target: str) -> list[tuple[list[int], list[float]]]:
    with ThreadPoolExecutor(len(STREAM_PROMPTS)) as pool:
        return list(pool.map(lambda p: one_stream(target, p), STREAM_PROMPTS))


def gap_stats(rounds: list[list[tuple[list[int], list[float]]]]) -> dict[str, float]:
    gaps = sorted(g for rnd in rounds for _toks, gs in rnd for g in gs)
    stalled = max(sum(g for g in gs if g > STALL_GAP_S) for rnd in rounds for _toks, gs in rnd)
    return {
        "stalled_s": stalled,
        "median": statistics.median(gaps),
        "p90": gaps[int(0.9 * (len(gaps) - 1))],
        "max": gaps[-1],
        "n": len(gaps),
    }


# --------------------------------------------------------------------------- the server
@pytest.fixture(scope="module")
def server(local_ray, model_dir):
    assert local_ray.is_initialized()
    cfg = ClusterConfig(
        model=str(model_dir("llama")),
        dtype="float32",
        max_batch_size=8,
        max_seq_len=CONTEXT,
        prefill_num_cpus=0.5,
        decode_num_cpus=0.5,
    )
    cluster = Cluster(cfg).start(log=lambda _msg: None)
    port = free_port()

    async def make():
        s = GrpcServer(cluster, "tiny-llama", "127.0.0.1", port, max_prompt_bytes=MAX_PROMPT_BYTES)
        await s.start()
        return s

    srv = cluster.call(make())
    yield {"target": f"127.0.0.1:{port}", "cluster": cluster}
    cluster.call(srv.drain(1.0))
    cluster.shutdown()


def test_generator_is_deterministic_and_covers_every_kind():
    a, b = Fuzz(SEED, 400).cases(N_LIGHT), Fuzz(SEED, 400).cases(N_LIGHT)
    assert a == b and len(a) >= 300
    assert {c.kind for c in a} >= {"garbage", "truncated", "bad-utf8", "wire-type", "big-text", "huge-id"}
    assert {c.method for c in a} == {"Generate", "Abort", "GetModelInfo", "GetServerInfo"}
    for c in a:  # the undecodable ones really are, and the rest parse (their error is the field's)
        cls = getattr(pb, f"{c.method}Request") if c.method != "Generate" else pb.GenerateRequest
        assert parses(cls, c.payload) == (c.field != "request"), c.kind


def test_fuzz_refuses_each_case_by_field_while_streams_keep_pace(server):
    target = server["target"]
    with BatonClient(target) as c:
        vocab = c.model_info().vocab_size
    cases = Fuzz(SEED, vocab).cases(N_LIGHT)

    alone = [stream_round(target) for _ in range(2)]
    expected_tokens = [toks for toks, _ in alone[0]]
    assert all(len(t) == STREAM_TOKENS for t in expected_tokens)
    assert [[t for t, _ in rnd] for rnd in alone] == [expected_tokens] * 2

    under: list = []
    stream_errors: list[BaseException] = []
    fuzz_done = threading.Event()

    def keep_streaming() -> None:
        try:
            while not fuzz_done.is_set() or not under:
                under.append(stream_round(target))
        except BaseException as e:  # reported below, not lost in the thread
            stream_errors.append(e)

    streamer = threading.Thread(target=keep_streaming)
    streamer.start()
    channel = grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 2 * MAX_MESSAGE)])
    try:
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(lambda case: send(channel, case), cases))
    finally:
        fuzz_done.set()
        streamer.join(300)
        channel.close()

    wrong = []
    for case, (code, details) in zip(cases, got, strict=True):
        ok = code == case.code and len(details) < 400 and "\x1b[" not in details
        ok = ok and (details.startswith(f"{case.field}:") if case.field else "larger than max" in details)
        if not ok:
            wrong.append((case.kind, case.method, case.code.name, case.field, code.name, details[:200]))
    assert not wrong, f"{len(wrong)} of {len(cases)} cases refused wrongly: {wrong[:10]}"

    assert not stream_errors, stream_errors
    for rnd in under:  # every stream under fuzz wrote exactly what it wrote alone
        assert [toks for toks, _ in rnd] == expected_tokens
    # One more round alone after the fuzz: a baseline that spans the test, so a shared machine that
    # slows down while the fuzz runs (another tenant) slows the baseline too.
    alone.append(stream_round(target))
    assert [toks for toks, _ in alone[-1]] == expected_tokens
    base, fuzzed = gap_stats(alone), gap_stats(under)
    print(f"inter-token gaps alone {base}, under fuzz {fuzzed} ({len(under)} rounds)")
    for key in ("median", "p90"):
        assert fuzzed[key] <= GAP_FACTOR * base[key] + GAP_SLACK_S, (key, base, fuzzed)
    assert fuzzed["stalled_s"] <= base["stalled_s"] + STALL_SLACK_S, (base, fuzzed)

    # The server is healthy after, and nothing is left in flight.
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(target))
    assert (
        health.Check(health_pb2.HealthCheckRequest(service="")).status
        == health_pb2.HealthCheckResponse.SERVING
    )
    with BatonClient(target) as c:
        deadline = time.time() + 15
        while time.time() < deadline:
            info = c.server_info()
            rows = sum(w.live_rows + w.waiting for w in info.workers if w.role == "decode")
            if rows == 0 and info.queue_depth == info.in_prefill == info.pending_decode == 0:
                break
            time.sleep(0.1)
        assert rows == 0 and info.queue_depth == info.in_prefill == info.pending_decode == 0, info
        assert (
            list(c.complete(STREAM_PROMPTS[0], max_tokens=STREAM_TOKENS, ignore_eos=True).token_ids)
            == (expected_tokens[0])
        )
