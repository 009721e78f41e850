"""Worker faults on a real local Ray cluster, through real gRPC on 127.0.0.1: a SIGKILLed worker loses
no request (its requests migrate and end exactly as in a fault-free run), comes back and serves again;
with restarts off, the only worker of a role gone fails every request at once, naming the role."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import free_port, tiny_cluster_config
from oracle import assert_exact

from baton.client import BatonClient
from baton.core.params import SamplingParams
from baton.core.request import Request
from cluster.grpc_server import GrpcServer
from cluster.ray_cluster import Cluster, ClusterConfig

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]
N_STREAMS = 16
MAX_TOKENS = 200
BACK_WITHIN_S = 120.0  # a restarted worker loads the tiny model again (seconds; generous on a busy machine)


def _cluster_cfg(folder, p: int, d: int, **kw) -> ClusterConfig:
    return tiny_cluster_config(folder, p, d, **{"max_batch_size": 8, **kw})


class Served:
    """A cluster with a gRPC server in front of it, for one test module."""

    def __init__(self, cfg: ClusterConfig):
        self.cluster = Cluster(cfg).start(log=lambda _m: None)
        self.port = free_port()

        async def make() -> GrpcServer:
            s = GrpcServer(self.cluster, "tiny-llama", "127.0.0.1", self.port)
            await s.start()
            return s

        self.server = self.cluster.call(make())
        self.target = f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.cluster.call(self.server.drain(1.0))
        self.cluster.shutdown()

    def pid(self, role: str, i: int) -> int:
        import ray

        actors = self.cluster.prefill_actors if role == "prefill" else self.cluster.decode_actors
        return ray.get(actors[i].pid.remote(), timeout=60)

    def states(self) -> dict[str, str]:
        with BatonClient(self.target) as c:
            return {w.worker_id: w.state for w in c.server_info().workers}

    def health(self) -> int:
        with grpc.insecure_channel(self.target) as ch:
            return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest()).status

    def wait_live(self, timeout: float = BACK_WITHIN_S) -> float:
        """Seconds until every worker is live again (fails past ``timeout``)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if set(self.states().values()) == {"live"}:
                return time.monotonic() - t0
            time.sleep(0.2)
        raise AssertionError(f"workers not all live within {timeout} s: {self.states()}")


def _prompts(n: int) -> list[tuple[int, ...]]:
    return [tuple(5 + (7 * i + j) % 90 for j in range(8 + 3 * i)) for i in range(n)]


def _sampling(kind: str, i: int) -> dict:
    base = {"max_tokens": MAX_TOKENS, "ignore_eos": True}
    return base if kind == "greedy" else {**base, "temperature": 0.9, "top_p": 0.95, "seed": 1000 + i}


def _stream(target: str, prompt, kw: dict, rid: str, progress: list) -> tuple[list[list[int]], str, object]:
    """One streaming call: (chunks, text, complete or the RpcError that ended it)."""
    chunks, text = [], []
    with BatonClient(target) as c:
        try:
            for resp in c.generate(prompt, request_id=rid, timeout=300, **kw):
                if resp.HasField("chunk"):
                    chunks.append(list(resp.chunk.token_ids))
                    text.append(resp.chunk.text)
                    progress.append(1)
                else:
                    return chunks, "".join(text), resp.complete
        except grpc.RpcError as e:
            return chunks, "".join(text), e
    raise AssertionError(f"{rid}: stream ended without a Complete")


def _run_streams(served: Served, kind: str, tag: str, kill=None, kill_at: int = 3 * N_STREAMS) -> list:
    """N_STREAMS concurrent streams; ``kill()`` runs once ``kill_at`` chunks arrived in all."""
    progress: list = []
    prompts = _prompts(N_STREAMS)
    with ThreadPoolExecutor(N_STREAMS) as pool:
        futs = [
            pool.submit(_stream, served.target, p, _sampling(kind, i), f"{tag}-{i}", progress)
            for i, p in enumerate(prompts)
        ]
        if kill is not None:
            deadline = time.monotonic() + 120
            while len(progress) < kill_at and time.monotonic() < deadline:
                time.sleep(0.002)
            kill()
        return [f.result() for f in futs]


def _check_exact_streams(faulted: list, baseline: list, kind: str, lm) -> None:
    for i, ((chunks, text, end), (base_chunks, base_text, _base_end)) in enumerate(
        zip(faulted, baseline, strict=True)
    ):
        assert not isinstance(end, grpc.RpcError), f"stream {i}: {end}"
        tokens = [t for c in chunks for t in c]
        base = [t for c in base_chunks for t in c]
        # Every token once, in order: no gap, no duplicate, same as the fault-free run.
        assert tokens == base and len(tokens) == MAX_TOKENS, f"stream {i}"
        assert text == base_text, f"stream {i}"
        assert end.usage.completion_tokens == MAX_TOKENS
    if kind == "greedy":
        reqs = [
            Request(f"r{i}", p, SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True), 0)
            for i, p in enumerate(_prompts(N_STREAMS))
        ]
        assert_exact(lm, reqs, [[t for c in chunks for t in c] for chunks, _, _ in faulted])


def _sigkill(served: Served, role: str, i: int, seen: dict):
    pid = served.pid(role, i)

    def kill() -> None:
        os.kill(pid, signal.SIGKILL)
        seen["killed_at"] = time.monotonic()

    return kill


# ----------------------------------------------------------------------- 1 prefill + 2 decode
@pytest.fixture(scope="module")
def one_p_two_d(model_dir):
    served = Served(_cluster_cfg(model_dir("llama"), 1, 2))
    yield served
    served.close()


@pytest.mark.parametrize(("kind", "victim"), [("greedy", 0), ("seeded", 1)])
def test_decode_worker_killed_streams_migrate_exactly(one_p_two_d, tiny_lm, kind, victim):
    served = one_p_two_d
    router = served.cluster.router
    baseline = _run_streams(served, kind, f"base-{kind}")
    before = router.migrations
    seen: dict = {}
    faulted = _run_streams(served, kind, f"kill-{kind}", kill=_sigkill(served, "decode", victim, seen))
    assert router.migrations > before  # the kill landed while rows were decoding
    _check_exact_streams(faulted, baseline, kind, tiny_lm("llama"))
    back = served.wait_live()
    assert back < BACK_WITHIN_S
    info = served.cluster.server_info()
    assert all(w["state"] == "live" for w in info["decode"]) and info["queue_depth"] == 0
    assert served.health() == health_pb2.HealthCheckResponse.SERVING
    # The restarted worker serves again: with every row of the other taken, both are used.
    again = _run_streams(served, kind, f"again-{kind}")
    _check_exact_streams(again, baseline, kind, tiny_lm("llama"))


def test_only_prefill_worker_restarting_requests_wait_for_it(one_p_two_d, tiny_lm):
    served = one_p_two_d
    baseline = _run_streams(served, "greedy", "pbase")
    seen: dict = {}
    states: list[dict] = []
    kill = _sigkill(served, "prefill", 0, seen)

    def kill_and_watch() -> None:
        kill()
        t = threading.Thread(target=lambda: states.extend(_watch(served, 60)), daemon=True)
        t.start()

    before = served.cluster.router.migrations
    # At the first chunk: the other prompts are in prefill or still waiting for it.
    faulted = _run_streams(served, "greedy", "pkill", kill=kill_and_watch, kill_at=1)
    _check_exact_streams(faulted, baseline, "greedy", tiny_lm("llama"))
    assert served.cluster.router.migrations > before  # prefill calls in flight were sent again
    served.wait_live()
    # While its only worker restarted, the prefill role was not serving.
    assert any(
        s["state"] == "restarting" and s["health"] != health_pb2.HealthCheckResponse.SERVING for s in states
    )
    # A request sent now is prefilled by the restarted worker.
    with BatonClient(served.target) as c:
        done = c.complete([5, 6, 7], max_tokens=4)
    assert done.usage.completion_tokens == 4


def _watch(served: Served, seconds: float) -> list[dict]:
    """prefill-0's state and the health status, sampled until it is live again."""
    out = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        state = served.states()["prefill-0"]
        out.append({"state": state, "health": served.health()})
        if state == "live" and any(o["state"] != "live" for o in out):
            break
        time.sleep(0.05)
    return out


# ----------------------------------------------------------------------- 2 prefill + 1 decode
def test_prefill_worker_killed_its_calls_retry_on_the_other(model_dir, tiny_lm):
    # 4 decode rows for 16 streams: handoffs wait in `pending` holding KV refs the prefill workers own.
    served = Served(_cluster_cfg(model_dir("llama"), 2, 1, max_prefill_tokens=64, max_batch_size=4))
    try:
        baseline = _run_streams(served, "seeded", "base")
        seen: dict = {}
        before = served.cluster.router.migrations
        # Kill it at the first chunk: calls in flight, handoffs pending or in transfer with its KV.
        faulted = _run_streams(served, "seeded", "kill", kill=_sigkill(served, "prefill", 0, seen), kill_at=1)
        _check_exact_streams(faulted, baseline, "seeded", tiny_lm("llama"))
        assert served.cluster.router.migrations > before
        served.wait_live()
    finally:
        served.close()


# ----------------------------------------------------------------------- restarts off
@pytest.mark.parametrize("role", ["prefill", "decode"])
def test_only_worker_of_a_role_gone_fails_everything_at_once(model_dir, role):
    # One decode row and no look-ahead: one request decodes, the rest wait for the prefill side.
    served = Served(_cluster_cfg(model_dir("llama"), 1, 1, max_restarts=0, max_batch_size=1, prefill_ahead=0))
    try:
        seen: dict = {}
        ends: dict[int, float] = {}
        kill = _sigkill(served, role, 0, seen)
        progress: list = []

        def one(i: int):
            r = _stream(served.target, _prompts(8)[i], _sampling("greedy", i), f"x{i}", progress)
            ends[i] = time.monotonic()
            return r

        with ThreadPoolExecutor(8) as pool:
            futs = [pool.submit(one, i) for i in range(8)]
            deadline = time.monotonic() + 120
            while len(progress) < 5 and time.monotonic() < deadline:
                time.sleep(0.002)
            kill()
            results = [f.result() for f in futs]
        failed = [(i, end) for i, (_, _, end) in enumerate(results) if isinstance(end, grpc.RpcError)]
        assert len(failed) >= 6, results  # all but the decoding row (prefill killed) at least
        for i, e in failed:
            assert e.code() == grpc.StatusCode.UNAVAILABLE, e
            assert role in e.details() and len(e.details()) < 120 and "\n" not in e.details(), e.details()
            assert ends[i] - seen["killed_at"] < 2.0, (i, ends[i] - seen["killed_at"])
        states = served.states()
        assert states[f"{role}-0"] == "dead"
        assert served.health() == health_pb2.HealthCheckResponse.NOT_SERVING
        with BatonClient(served.target) as c, pytest.raises(grpc.RpcError) as err:
            c.complete([5, 6, 7], max_tokens=3)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and role in err.value.details()
    finally:
        served.close()
