"""The router: admission, placement of prefill and decode, request state. asyncio, in the driver.

It never touches KV bytes: a prefill worker returns (header, [ObjectRef]) per query and the router
passes the ref on to the chosen decode worker, which fetches the bytes itself (prefill node ->
decode node directly). The first token is delivered as soon as its prefill returns. A handoff
that finds every decode worker full waits in ``pending`` (it is never dropped) until rows free up.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from baton.core.errors import BatonError
from baton.core.handoff import HandoffHeader
from baton.core.policy import prefill_budget
from baton.core.request import Completion, Request


class QueueFull(BatonError):
    """The admission queue is full (gRPC: RESOURCE_EXHAUSTED)."""


class NoWorkers(BatonError):
    """No worker can take work (gRPC: UNAVAILABLE)."""


@dataclass(frozen=True)
class RouterConfig:
    max_queue: int = 1024  # waiting requests before QueueFull
    max_prefill_tokens: int = 4096  # padded tokens per prefill call
    prefill_calls_per_worker: int = 2  # outstanding prefill calls per worker
    prefill_ahead: int = 8  # handoffs prefilled beyond the decode side's free rows
    poll_timeout_s: float = 0.5


@dataclass
class Chunk:
    token_ids: list[int]
    text: str


@dataclass
class RequestState:
    req: Request
    out: asyncio.Queue  # Chunk ... then Completion
    tokens: list[int] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    t: dict[str, float] = field(default_factory=dict)
    prefill_worker: str = ""
    decode_worker: str = ""
    kv_bytes: int = 0
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
    load: dict = field(default_factory=dict)
    dead: bool = False


def _actor_died(e: Exception) -> bool:
    try:
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
    except ImportError:  # pragma: no cover
        return False
    return isinstance(e, (ActorDiedError, RayActorError, ActorUnavailableError))


def _ms(a: float | None, b: float | None) -> float:
    return round((b - a) * 1e3, 3) if a is not None and b is not None else 0.0


class Router:
    def __init__(self, prefill: list[tuple[str, Any]], decode: list[tuple[str, Any, int]], cfg: RouterConfig):
        self.cfg = cfg
        self.prefill = [_Worker(h, wid) for wid, h in prefill]
        self.decode = [_Worker(h, wid, max_rows=rows) for wid, h, rows in decode]
        self.waiting: deque[RequestState] = deque()
        self.pending: deque[tuple[RequestState, bytes, list]] = deque()  # prefilled, no decode row yet
        self.states: dict[str, RequestState] = {}
        self.in_prefill = 0
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._background: set[asyncio.Task] = set()  # prefill calls and sends in flight
        self.max_pending = 0  # most handoffs ever waiting for a decode row
        self._ids = itertools.count()
        self.closed = False
        self.refs_seen: list[Any] = []  # every KV object the router handled (tests: refs only)
        self.track_refs = False

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
        """With no live decode worker, nothing waiting for one can ever finish: fail it now."""
        if any(not w.dead for w in self.decode):
            return
        while self.pending:
            self._finish(self.pending.popleft()[0], "abort", error="no decode worker is available")
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
        st = RequestState(req, asyncio.Queue())
        st.t["arrival"] = req.arrival
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
            if item[0] is st:
                self.pending.remove(item)
                self._finish(st, "abort")
                return True
        if st.decode_worker:
            w = next(w for w in self.decode if w.worker_id == st.decode_worker)
            await w.handle.abort.remote(request_id)  # its row frees within one step
        else:
            st.t["abort_requested"] = time.time()  # still in prefill: dropped when it returns
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
                    **w.load,
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
                batch = self._take_batch(budget)
                tokens = sum(st.req.prompt_len for st in batch)
                w.outstanding_tokens += tokens
                w.calls += 1
                self.in_prefill += len(batch)
                self.spawn(self._run_prefill(w, batch, tokens))

    def _take_batch(self, budget: int) -> list[RequestState]:
        batch: list[RequestState] = []
        longest = 0
        while self.waiting and len(batch) < budget:
            p = self.waiting[0].req.prompt_len
            if batch and max(longest, p) * (len(batch) + 1) > self.cfg.max_prefill_tokens:
                break
            longest = max(longest, p)
            batch.append(self.waiting.popleft())
        return batch

    async def _run_prefill(self, w: _Worker, batch: list[RequestState], tokens: int) -> None:
        now = time.time()
        for st in batch:
            st.t["dispatched"] = now
            st.prefill_worker = w.worker_id
        try:
            results = await w.handle.prefill.remote([st.req for st in batch])
        except Exception as e:  # worker died or raised: these requests fail, others go on
            w.dead = w.dead or _actor_died(e)
            for st in batch:
                self._finish(st, "abort", error=f"prefill worker {w.worker_id} failed: {e}")
            results = None
            self._fail_stranded()
        finally:
            w.outstanding_tokens -= tokens
            w.calls -= 1
            self.in_prefill -= len(batch)
        if results is not None:
            for st, (header_bytes, refs, nbytes) in zip(batch, results, strict=True):
                self._prefilled(st, header_bytes, refs, nbytes)
            self._place()
        self._wake.set()

    def _prefilled(self, st: RequestState, header_bytes: bytes, refs: list | None, nbytes: int) -> None:
        h = HandoffHeader.from_bytes(header_bytes)
        now = time.time()
        st.t.update(prefill_start=h.timings["prefill_start"], prefill_end=h.timings["prefill_end"], first=now)
        st.kv_bytes = nbytes
        if self.track_refs and refs is not None:
            self.refs_seen.extend(refs)
        self._deliver(st, [h.first_token], h.first_text)
        if h.finish_reason is not None:
            self._finish(st, h.finish_reason)
        elif "abort_requested" in st.t:
            self._finish(st, "abort")
        else:
            self.pending.append((st, header_bytes, refs))
            self.max_pending = max(self.max_pending, len(self.pending))

    # ------------------------------------------------------------------ decode side
    def _place(self) -> None:
        while self.pending:
            free = [w for w in self.decode if not w.dead and w.assigned < w.max_rows]
            if not free:
                return  # every row is taken: the handoff waits here, never dropped
            w = max(free, key=lambda x: (x.max_rows - x.assigned, -x.load.get("window", 0)))
            st, header_bytes, refs = self.pending.popleft()
            w.assigned += 1
            st.decode_worker = w.worker_id
            st.t["sent"] = time.time()
            # The ref travels inside a list so Ray hands it over unresolved: the worker fetches it.
            self.spawn(self._send(w, st, header_bytes, refs))

    async def _send(self, w: _Worker, st: RequestState, header_bytes: bytes, refs: list) -> None:
        try:
            await w.handle.submit.remote(header_bytes, refs, {})
        except Exception as e:
            w.assigned -= 1
            w.dead = w.dead or _actor_died(e)
            self._finish(st, "abort", error=f"decode worker {w.worker_id} failed: {e}")
            self._place()
            self._fail_stranded()

    async def _pump(self, w: _Worker) -> None:
        while not self.closed:
            try:
                batch = await w.handle.events.remote(self.cfg.poll_timeout_s)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                w.dead = True
                for st in [s for s in self.states.values() if s.decode_worker == w.worker_id]:
                    self._finish(st, "abort", error=f"decode worker {w.worker_id} failed: {e}")
                self._fail_stranded()
                return
            w.load = batch["load"]
            for ev in batch["events"]:
                if "fatal" in ev:  # its step loop crashed: treat the worker as gone
                    w.dead = True
                    for st in [s for s in self.states.values() if s.decode_worker == w.worker_id]:
                        self._finish(st, "abort", error=f"decode worker {w.worker_id} failed: {ev['fatal']}")
                    self._fail_stranded()
                    return
                self._apply(w, ev)
            self._place()
            self._wake.set()

    def _apply(self, w: _Worker, ev: dict) -> None:
        for rid, t in ev["inserted"]:
            st = self.states.get(rid)
            if st:
                st.t["inserted"] = t
        for rid, tok, delta in ev["tokens"]:
            st = self.states.get(rid)
            if st and not st.done:
                self._deliver(st, [tok], delta)
        for rid, reason, _n, _text in ev["finished"]:
            w.assigned -= 1
            st = self.states.get(rid)
            if st:
                self._finish(st, reason)
        for rid, msg in ev["errors"]:
            w.assigned -= 1
            st = self.states.get(rid)
            if st:
                self._finish(st, "abort", error=msg)

    # ------------------------------------------------------------------ streams
    def _deliver(self, st: RequestState, tokens: list[int], text: str) -> None:
        st.tokens.extend(tokens)
        st.text.append(text)
        st.out.put_nowait(Chunk(tokens, text))

    def _finish(self, st: RequestState, reason: str, error: str | None = None) -> None:
        if st.done:
            return
        st.done = True
        now = time.time()
        t = st.t
        arrival = t.get("arrival", now)
        timings = {
            "queue": _ms(arrival, t.get("prefill_start")),
            "prefill": _ms(t.get("prefill_start"), t.get("prefill_end")),
            "kv_transfer": _ms(t.get("prefill_end"), t.get("inserted")),
            "ttft": _ms(arrival, t.get("first")),
            "decode": _ms(t.get("inserted"), now) if "inserted" in t else 0.0,
            "total": _ms(arrival, now),
            "kv_bytes": st.kv_bytes,
            "prefill_worker": st.prefill_worker,
            "decode_worker": st.decode_worker,
        }
        c = Completion(
            st.req.request_id,
            list(st.tokens),
            "".join(st.text),
            reason,
            st.req.prompt_len,
            timings,
            error=error,
        )
        st.out.put_nowait(c)
        self.states.pop(st.req.request_id, None)
