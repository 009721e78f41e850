"""The router: admission, placement of prefill and decode, request state. asyncio, in the driver.

It never touches KV bytes: a prefill worker returns a ``PrefillResult`` (header, [ObjectRef]) per
query and the router passes the ref on to the chosen decode worker, which fetches the bytes itself
(prefill node -> decode node directly). The first token is delivered as soon as its prefill
returns. A handoff that finds every decode worker full waits in ``pending`` (it is never dropped)
until rows free up. Decode workers report through ``EventBatch``es, one long poll per worker.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

from baton.core.config import ClusterConfig
from baton.core.errors import BatonError
from baton.core.handoff import HandoffHeader
from baton.core.logs import access_line
from baton.core.messages import EventBatch, PrefillResult, Stamps, StepEvents, Timings, WorkerLoad
from baton.core.policy import prefill_budget, prefill_take
from baton.core.request import Completion, Request
from cluster.metrics import NullObserver

log = logging.getLogger("baton.router")


def _short(e: BaseException) -> str:
    """A worker failure for the client: its kind, not Ray's multi-line report (that goes to the log)."""
    return type(e).__name__


class QueueFull(BatonError):
    """The admission queue is full (gRPC: RESOURCE_EXHAUSTED)."""


class NoWorkers(BatonError):
    """No worker can take work (gRPC: UNAVAILABLE)."""


@dataclass
class Chunk:
    token_ids: list[int]
    text: str


@dataclass
class RequestState:
    req: Request
    out: asyncio.Queue  # Chunk ... then Completion
    stamps: Stamps
    tokens: list[int] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    prefill_worker: str = ""
    decode_worker: str = ""
    abort_requested: bool = False  # aborted while in prefill: dropped when the prefill returns
    done: bool = False


@dataclass
class _Worker:
    handle: Any
    worker_id: str
    max_rows: int = 0
    assigned: int = 0  # rows in use or promised (handoffs sent, not finished)
    outstanding_tokens: int = 0  # prefill: prompt tokens in calls not yet returned
    calls: int = 0
    dispatched: int = 0  # calls ever sent: equally loaded workers take turns
    load: WorkerLoad | None = None
    dead: bool = False


@dataclass(frozen=True)
class _Pending:
    state: RequestState
    header_bytes: bytes
    kv_refs: list


def _actor_died(e: Exception) -> bool:
    try:
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
    except ImportError:  # pragma: no cover
        return False
    return isinstance(e, (ActorDiedError, RayActorError, ActorUnavailableError))


class Router:
    def __init__(
        self,
        prefill: list[tuple[str, Any]],
        decode: list[tuple[str, Any, int]],
        cfg: ClusterConfig,
        padded_prefill: bool = True,
        observer: Any = None,
    ):
        self.cfg = cfg
        # Told of token deliveries and finished requests (cluster/metrics.py); None: nobody listens.
        self.observer = observer if observer is not None else NullObserver()
        self.padded_prefill = padded_prefill  # the prefill runtime pays for padding (HF) or not
        self.prefill = [_Worker(h, wid) for wid, h in prefill]
        self.decode = [_Worker(h, wid, max_rows=rows) for wid, h, rows in decode]
        self.waiting: deque[RequestState] = deque()
        self.pending: deque[_Pending] = deque()  # prefilled, no decode row yet
        self.states: dict[str, RequestState] = {}
        self.in_prefill = 0
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._background: set[asyncio.Task] = set()  # prefill calls and sends in flight
        self.max_pending = 0  # most handoffs ever waiting for a decode row
        self._ids = itertools.count()
        self.closed = False

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._prefill_dispatcher(), name="prefill-dispatch"))
        for w in self.decode:
            self._tasks.append(asyncio.create_task(self._pump(w), name=f"pump-{w.worker_id}"))

    async def stop(self) -> None:
        self.closed = True
        self._wake.set()
        tasks = self._tasks + list(self._background)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for st in list(self.states.values()):
            self._finish(st, "abort", error="server shutting down")

    def spawn(self, coro) -> None:
        """Run ``coro`` in the background, keeping a reference until it is done."""
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @property
    def healthy(self) -> bool:
        """At least one live worker of each role."""
        return any(not w.dead for w in self.prefill) and any(not w.dead for w in self.decode)

    def _fail_stranded(self) -> None:
        """A role with no live worker can finish nothing waiting for it: fail that work now."""
        if not any(not w.dead for w in self.decode):
            while self.pending:
                self._finish(self.pending.popleft().state, "abort", error="no decode worker is available")
            # Nothing prefilled now could be decoded either.
            while self.waiting:
                self._finish(self.waiting.popleft(), "abort", error="no decode worker is available")
        if not any(not w.dead for w in self.prefill):
            while self.waiting:
                self._finish(self.waiting.popleft(), "abort", error="no prefill worker is available")

    # ------------------------------------------------------------------ API
    def new_request_id(self) -> str:
        return f"req-{next(self._ids)}-{int(time.time() * 1e3) % 10**9}"

    def submit(self, req: Request) -> RequestState:
        if self.closed:
            raise NoWorkers("the router is shutting down")
        if not self.healthy:
            raise NoWorkers("no prefill or decode worker is available")
        if req.request_id in self.states:
            raise BatonError(f"request_id: {req.request_id!r} is already in flight")
        if len(self.waiting) >= self.cfg.max_queue:
            raise QueueFull(f"admission queue is full ({self.cfg.max_queue} waiting)")
        st = RequestState(req, asyncio.Queue(), Stamps(arrival=req.arrival))
        self.states[req.request_id] = st
        self.waiting.append(st)
        self._wake.set()
        return st

    async def abort(self, request_id: str) -> bool:
        st = self.states.get(request_id)
        if st is None or st.done:
            return False
        if st in self.waiting:
            self.waiting.remove(st)
            self._finish(st, "abort")
            return True
        for item in list(self.pending):
            if item.state is st:
                self.pending.remove(item)
                self._finish(st, "abort")
                return True
        if st.decode_worker:
            w = next(w for w in self.decode if w.worker_id == st.decode_worker)
            await w.handle.abort.remote(request_id)  # its row frees within one step
        else:
            st.abort_requested = True  # still in prefill: dropped when it returns
        return True

    def server_info(self) -> dict:
        return {
            "queue_depth": len(self.waiting),
            "in_prefill": self.in_prefill,
            "pending_decode": len(self.pending),
            "prefill": [
                {"worker_id": w.worker_id, "outstanding_tokens": w.outstanding_tokens, "calls": w.calls}
                for w in self.prefill
            ],
            "decode": [
                {
                    "worker_id": w.worker_id,
                    "assigned": w.assigned,
                    "dead": w.dead,
                    **(asdict(w.load) if w.load else {}),
                    "max_rows": w.max_rows,
                }
                for w in self.decode
            ],
        }

    # ------------------------------------------------------------------ prefill side
    def _decode_free(self) -> int:
        return sum(w.max_rows - w.assigned for w in self.decode)

    async def _prefill_dispatcher(self) -> None:
        while not self.closed:
            await self._wake.wait()
            self._wake.clear()
            while self.waiting:
                budget = prefill_budget(
                    len(self.pending), self.in_prefill, self._decode_free(), self.cfg.prefill_ahead
                )
                idle = [w for w in self.prefill if not w.dead and w.calls < self.cfg.prefill_calls_per_worker]
                if budget <= 0 or not idle:
                    break
                w = min(idle, key=lambda x: (x.outstanding_tokens, x.calls, x.dispatched))
                w.dispatched += 1
                count = prefill_take(
                    [st.req.prompt_len for st in self.waiting],
                    self.cfg.max_prefill_tokens,
                    budget,
                    self.padded_prefill,
                )
                batch = [self.waiting.popleft() for _ in range(count)]
                tokens = sum(st.req.prompt_len for st in batch)
                w.outstanding_tokens += tokens
                w.calls += 1
                self.in_prefill += len(batch)
                self.spawn(self._run_prefill(w, batch, tokens))

    async def _run_prefill(self, w: _Worker, batch: list[RequestState], tokens: int) -> None:
        for st in batch:
            st.prefill_worker = w.worker_id
        try:
            results = await w.handle.prefill.remote([st.req for st in batch])
        except Exception as e:  # worker died or raised: these requests fail, others go on
            w.dead = w.dead or _actor_died(e)
            log.error("prefill worker %s failed on %d requests: %s", w.worker_id, len(batch), e)
            for st in batch:
                self._finish(st, "abort", error=f"prefill worker {w.worker_id} failed ({_short(e)})")
            results = None
            self._fail_stranded()
        finally:
            w.outstanding_tokens -= tokens
            w.calls -= 1
            self.in_prefill -= len(batch)
        if results is not None:
            for st, res in zip(batch, results, strict=True):
                self._prefilled(st, res)
            self._place()
        self._wake.set()

    def _prefilled(self, st: RequestState, res: PrefillResult) -> None:
        h = HandoffHeader.from_bytes(res.header_bytes)
        st.stamps = Stamps.from_header(h.timings, res.kv_bytes)
        st.stamps.first_token = time.time()  # when the client gets it, not when it was sampled
        self._deliver(st, [h.first_token], h.first_text)
        if h.finish_reason is not None:
            self._finish(st, h.finish_reason)
        elif st.abort_requested:
            self._finish(st, "abort")
        else:
            self.pending.append(_Pending(st, res.header_bytes, res.kv_refs))
            self.max_pending = max(self.max_pending, len(self.pending))

    # ------------------------------------------------------------------ decode side
    def _place(self) -> None:
        while self.pending:
            free = [w for w in self.decode if not w.dead and w.assigned < w.max_rows]
            if not free:
                return  # every row is taken: the handoff waits here, never dropped
            w = max(free, key=lambda x: (x.max_rows - x.assigned, -(x.load.window if x.load else 0)))
            item = self.pending.popleft()
            w.assigned += 1
            item.state.decode_worker = w.worker_id
            # The ref travels inside a list so Ray hands it over unresolved: the worker fetches it.
            self.spawn(self._send(w, item))

    async def _send(self, w: _Worker, item: _Pending) -> None:
        try:
            await w.handle.submit.remote(item.header_bytes, item.kv_refs)
        except Exception as e:
            w.assigned -= 1
            w.dead = w.dead or _actor_died(e)
            log.error("decode worker %s refused a handoff: %s", w.worker_id, e)
            self._finish(item.state, "abort", error=f"decode worker {w.worker_id} failed ({_short(e)})")
            self._place()
            self._fail_stranded()

    async def _pump(self, w: _Worker) -> None:
        while not self.closed:
            try:
                batch: EventBatch = await w.handle.events.remote(self.cfg.poll_timeout_s)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.error("decode worker %s is gone: %s", w.worker_id, e)
                self._lose(w, _short(e))
                return
            w.load = batch.load
            for ev in batch.events:
                self._apply(w, ev)
            if batch.fatal:  # its step loop crashed: treat the worker as gone
                log.error("decode worker %s: its step loop died:\n%s", w.worker_id, batch.fatal)
                self._lose(w, "its step loop died")
                return
            self._place()
            self._wake.set()

    def _lose(self, w: _Worker, why: str) -> None:
        """A decode worker is gone: its requests fail, nothing else waits on it."""
        w.dead = True
        for st in [s for s in self.states.values() if s.decode_worker == w.worker_id]:
            self._finish(st, "abort", error=f"decode worker {w.worker_id} failed: {why}")
        self._fail_stranded()

    def _apply(self, w: _Worker, ev: StepEvents) -> None:
        for ins in ev.inserted:
            if st := self.states.get(ins.request_id):
                st.stamps.inserted = ins.at
        for tok in ev.tokens:
            st = self.states.get(tok.request_id)
            if st and not st.done:
                self._deliver(st, [tok.token], tok.text)
        for fin in ev.finished:
            w.assigned -= 1
            if st := self.states.get(fin.request_id):
                self._finish(st, fin.reason)
        for err in ev.errors:
            w.assigned -= 1
            if st := self.states.get(err.request_id):
                self._finish(st, "abort", error=err.message)

    # ------------------------------------------------------------------ streams
    def _deliver(self, st: RequestState, tokens: list[int], text: str) -> None:
        st.tokens.extend(tokens)
        st.text.append(text)
        st.out.put_nowait(Chunk(tokens, text))
        self.observer.tokens(st, len(tokens))

    def _finish(self, st: RequestState, reason: str, error: str | None = None) -> None:
        if st.done:
            return
        st.done = True
        timings = Timings.of(st.stamps, time.time(), st.prefill_worker, st.decode_worker)
        c = Completion(
            st.req.request_id,
            list(st.tokens),
            "".join(st.text),
            reason,
            st.req.prompt_len,
            timings.to_dict(),
            error=error,
        )
        st.out.put_nowait(c)
        self.states.pop(st.req.request_id, None)
        self.observer.finished(st, c, timings)
        access_line(c)
