"""Launching baton on Ray: workers as actors, the router on an asyncio loop in the driver.

``Cluster`` connects to ``RAY_ADDRESS`` / ``ray_address`` when given (a GPU cluster, or the head
of ``ray start --head``), else starts a local Ray bound to 127.0.0.1 with an explicit object store
size. It starts the prefill and decode actors with their resources, waits until every worker
has its model loaded, and runs the router. Usable from Python (``submit`` then iterate) and from
``baton run`` / ``baton serve``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

from baton.core.config import ClusterConfig, parse_resources  # noqa: F401  (re-exported)
from baton.core.errors import BatonError
from baton.core.params import ModelLimits
from baton.core.request import Completion, Request
from cluster.metrics import RouterMetrics
from cluster.router import Chunk, Router

_log = logging.getLogger("baton.cluster")


def init_ray(cfg: ClusterConfig) -> bool:
    """Connect to or start Ray. Returns True when this process started it (and must stop it)."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if ray.is_initialized():
        return False
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return False
    need = cfg.prefill_workers * cfg.prefill_num_cpus + cfg.decode_workers * cfg.decode_num_cpus
    # address="local": start a new Ray even when `ray start` left a cluster record on this machine
    # (without it ray.init would join that cluster, which --ray-address did not ask for).
    ray.init(
        address="local",
        num_cpus=cfg.ray_num_cpus or max(os.cpu_count() or 1, int(need + 0.999)),
        object_store_memory=cfg.object_store_bytes,
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        log_to_driver=True,
    )
    return True


class Cluster:
    def __init__(self, cfg: ClusterConfig):
        self.cfg = cfg
        self.prefill_actors: list[Any] = []
        self.decode_actors: list[Any] = []
        self.infos: list[dict] = []
        self.router: Router | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._owns_ray = False
        self.tokenizer = None
        self.limits: ModelLimits | None = None
        self.metrics = RouterMetrics()  # the router's Prometheus metrics, served on /metrics

    # ------------------------------------------------------------------ lifecycle
    def start(self, log=None) -> Cluster:
        """Start the workers and the router; progress lines go to ``log`` (default: the logger)."""
        import ray

        from decode_worker.actor import DecodeWorker
        from prefill_worker.actor import PrefillWorker

        log = log or _log.info
        cfg = self.cfg
        self._owns_ray = init_ray(cfg)
        t0 = time.time()
        pt, dt = cfg.threads
        # A worker whose process dies is restarted by Ray (loading its model again) up to
        # max_restarts times; the router re-attaches it (Router._rejoin). No task is retried by Ray:
        # the router re-prefills what the dead worker held.
        P = ray.remote(max_restarts=cfg.max_restarts)(PrefillWorker)
        D = ray.remote(max_concurrency=8, max_restarts=cfg.max_restarts)(DecodeWorker)
        for i in range(cfg.prefill_workers):
            self.prefill_actors.append(
                P.options(
                    name=None,
                    num_cpus=cfg.prefill_num_cpus,
                    num_gpus=cfg.prefill_num_gpus,
                    resources=cfg.prefill_resources or None,
                ).remote(f"prefill-{i}", cfg, pt)
            )
        for i in range(cfg.decode_workers):
            self.decode_actors.append(
                D.options(
                    num_cpus=cfg.decode_num_cpus,
                    num_gpus=cfg.decode_num_gpus,
                    resources=cfg.decode_resources or None,
                ).remote(f"decode-{i}", cfg, dt)
            )
        log(
            f"starting {cfg.prefill_workers} prefill + {cfg.decode_workers} decode workers "
            f"for {cfg.model} on {cfg.device}; waiting for every worker to load the model"
        )
        try:
            self.infos = ray.get([a.info.remote() for a in self.prefill_actors + self.decode_actors])
        except Exception as e:
            self.shutdown()
            raise BatonError(f"a worker failed to start: {e}") from e
        fps = {i["fingerprint"] for i in self.infos}
        if len(fps) != 1:
            self.shutdown()
            raise BatonError(f"model: workers loaded different models ({sorted(fps)})")
        lim = self.infos[0]["limits"]
        self.limits = ModelLimits(**lim).capped(cfg.max_seq_len)
        self.tokenizer = _load_tokenizer(cfg.model)
        slowest = max(i["startup_s"] for i in self.infos)
        log(
            f"all {len(self.infos)} workers ready in {time.time() - t0:.1f} s "
            f"(model load in the slowest worker: {slowest:.1f} s; {describe_runtime(self.infos)})"
        )

        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="baton-router", daemon=True)
        self._thread.start()
        rows = [i["max_rows"] for i in self.infos if i["role"] == "decode"]
        padded = any(i.get("padded_prefill", True) for i in self.infos if i["role"] == "prefill")

        async def make() -> Router:
            r = Router(
                [(f"prefill-{i}", a) for i, a in enumerate(self.prefill_actors)],
                [(f"decode-{i}", a, rows[i]) for i, a in enumerate(self.decode_actors)],
                cfg,
                padded_prefill=padded,
                infos={i["worker_id"]: i for i in self.infos},
                observer=self.metrics,
            )
            self.metrics.bind(r)
            await r.start()
            return r

        self.router = self.call(make())
        if cfg.queue_order != "fcfs":
            log(
                f"queue order {cfg.queue_order}: the waiting request with the most max_tokens goes next "
                f"(one waiting {cfg.queue_max_wait_s:g} s goes first)"
            )
        for share in self.router.shares:
            log(
                f"{share.prefill_id} and {share.decode_id} share their node's cores while one is idle "
                "(--no-share-cores: fixed threads)"
                + (
                    f"; {', '.join(share.spill_ids)} run on {share.decode_id}'s cores {cfg.spill_nice} nice levels lower "
                    f"while >= {cfg.spill_prefill_tokens} prompt tokens wait"
                    if share.spill_ids
                    else ""
                )
            )
        return self

    def call(self, coro, timeout: float | None = None):
        """Run a coroutine on the router's loop from another thread and wait for it."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def shutdown(self) -> None:
        import ray

        if self.router is not None and self.loop is not None:
            with contextlib.suppress(Exception):
                self.call(self.router.stop(), timeout=10)
        for a in self.decode_actors:
            with contextlib.suppress(Exception):
                ray.get(a.stop.remote(), timeout=10)
        for a in self.prefill_actors + self.decode_actors:
            with contextlib.suppress(Exception):
                ray.kill(a)
        self.prefill_actors, self.decode_actors = [], []
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            if self._thread is not None:
                self._thread.join(5)
            self.loop = None
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
            self._owns_ray = False

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # ------------------------------------------------------------------ Python API
    def submit(self, req: Request) -> RequestStream:
        """Submit a validated request; iterate the result for its token chunks."""
        assert self.router is not None

        async def go():
            return self.router.submit(req)

        return RequestStream(self, self.call(go()))

    def server_info(self) -> dict:
        assert self.router is not None

        async def go():
            return self.router.server_info()

        return self.call(go())

    def decode_stats(self) -> list[dict]:
        """Each decode worker's load (``WorkerLoad`` as a dict, its ``stats`` included); a worker
        that is restarting or dead is left out."""
        import ray

        out = []
        for ref in [a.load.remote() for a in self.decode_actors]:
            try:
                out.append(asdict(ray.get(ref, timeout=30)))
            except (ray.exceptions.RayError, TimeoutError):
                continue
        return out

    def run_trace(self, trace: list[tuple[Request, float]]) -> list[Completion]:
        """Replay (request, arrival offset s) pairs in real time; completions in input order."""
        assert self.router is not None
        router = self.router

        async def one(req: Request, offset: float, t0: float) -> Completion:
            await asyncio.sleep(max(0.0, t0 + offset - time.time()))
            req = Request(req.request_id, req.prompt_token_ids, req.params, req.seed, arrival=time.time())
            try:
                st = router.submit(req)
            except BatonError as e:  # no worker of a role left, queue full: this request's error line
                return Completion(req.request_id, prompt_tokens=req.prompt_len, error=str(e))
            while True:
                item = await st.out.get()
                if isinstance(item, Completion):
                    return item

        async def all_() -> list[Completion]:
            t0 = time.time()
            return list(await asyncio.gather(*(one(r, off, t0) for r, off in trace)))

        return self.call(all_())


class RequestStream:
    """Iterates a request's Chunks; ``completion`` holds the final Completion once iteration ends."""

    def __init__(self, cluster: Cluster, state):
        self._cluster = cluster
        self._state = state
        self.request_id = state.req.request_id
        self.completion: Completion | None = None

    def __iter__(self) -> Iterator[Chunk]:
        while self.completion is None:
            item = self._cluster.call(self._state.out.get())
            if isinstance(item, Completion):
                self.completion = item
            else:
                yield item

    def result(self) -> Completion:
        for _ in self:
            pass
        assert self.completion is not None
        return self.completion


def describe_runtime(infos: list[dict]) -> str:
    """One line on how the workers run the model: runtime, dtype, compile time, threads."""
    parts = []
    for role in ("prefill", "decode"):
        ws = [i for i in infos if i["role"] == role]
        if ws:
            w = ws[0]
            how = ", ".join(
                x
                for x in (
                    f"{w['forward']} forward" if w.get("forward") else "",
                    f"bf16 GEMM {w['gemm_isa']}" if w.get("gemm_isa") else "",
                )
                if x
            )
            parts.append(
                f"{role}: runtime {w.get('runtime', '?')}{f' ({how})' if how else ''}, {w.get('dtype', '?')}, "
                f"{w.get('threads', '?')} threads, compile {max(i.get('compile_s', 0.0) for i in ws):.1f} s"
            )
    return "; ".join(parts)


def _load_tokenizer(model: str):
    from transformers import AutoTokenizer

    from baton.core.models import resolve_model

    try:
        return AutoTokenizer.from_pretrained(resolve_model(model))
    except Exception:
        return None
