"""The router: admission, placement of prefill and decode, request state. asyncio, in the driver.

It never touches KV bytes: a prefill worker returns a ``PrefillResult`` (header, [ObjectRef]) per
query and the router passes the ref on to the chosen decode worker, which fetches the bytes itself
(prefill node -> decode node directly). The first token is delivered as soon as its prefill
returns. A handoff that finds every decode worker full waits in ``pending`` (it is never dropped)
until rows free up. Decode workers report through ``EventBatch``es, one long poll per worker.

Faults (docs/architecture.md, "Faults"): a worker whose actor dies is ``restarting`` (Ray restarts
it; ``_rejoin`` waits for its model) or ``dead``. The requests it held are re-prefilled from their
prompt plus the tokens already streamed (``RequestState.work``) and go on elsewhere, at most
``max_request_retries`` times each. A role with no live or restarting worker fails at once
everything waiting for it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from baton.core.config import ClusterConfig
from baton.core.errors import BatonError
from baton.core.handoff import HandoffHeader
from baton.core.logs import access_line
from baton.core.messages import EventBatch, PrefillResult, Stamps, StepEvents, Timings
from baton.core.policy import CoreShare, Queued, core_shares, prefill_budget, prefill_take, queue_order
from baton.core.request import Completion, Request
from cluster.metrics import NullObserver
from cluster.workers import DEAD, LIVE, RESTARTING, STARTING, Worker, actor_gone, object_lost, unavailable

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
    retries: int = 0  # re-prefills after a worker died

    def work(self) -> Request:
        """What its next prefill computes: the request, resumed after the tokens already streamed."""
        return dataclasses.replace(self.req, resume=tuple(self.tokens)) if self.tokens else self.req

    @property
    def work_len(self) -> int:
        return self.req.prompt_len + len(self.tokens)


@dataclass(frozen=True)
class _Pending:
    state: RequestState
    header_bytes: bytes
    kv_refs: list


class Router:
    def __init__(
        self,
        prefill: list[tuple[str, Any]],
        decode: list[tuple[str, Any, int]],
        cfg: ClusterConfig,
        padded_prefill: bool = True,
        infos: dict[str, dict] | None = None,
        observer: Any = None,
    ):
        self.cfg = cfg
        # Told of token deliveries and finished requests (cluster/metrics.py); None: nobody listens.
        self.observer = observer if observer is not None else NullObserver()
        self.padded_prefill = padded_prefill  # the prefill runtime pays for padding (HF) or not
        self.prefill = [Worker(h, wid, "prefill") for wid, h in prefill]
        self.decode = [Worker(h, wid, "decode", max_rows=rows) for wid, h, rows in decode]
        self.infos = infos if infos is not None else {}  # worker_id -> its info() (refreshed on restart)
        self.waiting: deque[RequestState] = deque()
        self._ordered_at, self._last_ordered = 0.0, None  # the last queue ordering (lof)
        self.pending: deque[_Pending] = deque()  # prefilled, no decode row yet
        self.states: dict[str, RequestState] = {}
        self.in_prefill = 0
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._background: set[asyncio.Task] = set()  # prefill calls, sends, pings, restarts in flight
        self._pinging: set[str] = set()
        self.listeners: list[Callable[[], None]] = []  # called after any worker changes state
        self.max_pending = 0  # most handoffs ever waiting for a decode row
        self.migrations = 0  # requests re-prefilled after a worker died
        self._ids = itertools.count()
        self.closed = False
        # Prefill/decode pairs alone on a CPU node lend each other idle cores (baton.core.policy).
        self.shares: list[CoreShare] = []
        if cfg.share_cores and not cfg.device.startswith("cuda"):
            known = [(w, info) for w in self.prefill + self.decode if (info := self.infos.get(w.worker_id))]
            self.shares = core_shares(
                [(w.worker_id, w.role, i.get("node_id", ""), int(i.get("threads", 1))) for w, i in known],
                # Nodes' cores known only with spill workers on: else a node of several prefill workers keeps
                # fixed threads, every prefill worker taking calls alike.
                {i.get("node_id", ""): int(i.get("node_cpus", 0)) for _, i in known}
                if cfg.spill_prefill_tokens
                else None,
            )
        self.lent_calls = 0  # prefill calls that ran on an idle decode worker's cores too
        self.spill_ids = frozenset(wid for share in self.shares for wid in share.spill_ids)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """The workers have their models (the launcher waited for them): they are live."""
        for w in self.prefill + self.decode:
            w.set_state(LIVE, "model loaded")
        self._tasks.append(asyncio.create_task(self._prefill_dispatcher(), name="prefill-dispatch"))
        self._tasks.append(asyncio.create_task(self._monitor(), name="prefill-monitor"))
        for w in self.decode:
            self._start_pump(w)
        for w in self.prefill:
            self._yield_cores(w)

    def _yield_cores(self, w: Worker) -> None:
        """A spill worker runs at a lower CPU priority (``spill_nice``), so on the cores it shares
        the decode worker keeps most of the time."""
        if w.worker_id in self.spill_ids and self.cfg.spill_nice > 0:
            self.spawn(self._set_nice(w, self.cfg.spill_nice))

    async def _set_nice(self, w: Worker, nice: int) -> None:
        try:
            got = await w.handle.set_nice.remote(nice)
            log.info("prefill worker %s (spill): CPU priority nice %d", w.worker_id, got)
        except Exception as e:  # the worker is gone: the monitor notices
            log.debug("prefill worker %s: set_nice failed: %s", w.worker_id, e)

    def _start_pump(self, w: Worker) -> None:
        self._tasks.append(asyncio.create_task(self._pump(w, w.epoch), name=f"pump-{w.worker_id}"))

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
        """Each role has a worker that is live or coming back: work may still be served."""
        return any(w.available for w in self.prefill) and any(w.available for w in self.decode)

    @property
    def serving(self) -> bool:
        """Each role has a live worker (gRPC health SERVING)."""
        return any(w.live for w in self.prefill) and any(w.live for w in self.decode)

    def _changed(self) -> None:
        for fn in self.listeners:
            fn()

    def _fail_stranded(self) -> None:
        """A role with no live or restarting worker can finish nothing waiting for it: fail that now."""
        if not any(w.available for w in self.decode):
            while self.pending:
                self._finish(self.pending.popleft().state, "abort", error="no decode worker is available")
            # Nothing prefilled now could be decoded either.
            while self.waiting:
                self._finish(self.waiting.popleft(), "abort", error="no decode worker is available")
        if not any(w.available for w in self.prefill):
            while self.waiting:
                self._finish(self.waiting.popleft(), "abort", error="no prefill worker is available")

    # ------------------------------------------------------------------ faults
    def _worker_lost(self, w: Worker, e: BaseException | str) -> None:
        """A call found ``w``'s actor gone: it restarts (restarts left) or is dead; its work moves on."""
        if w.state not in (STARTING, LIVE):
            return  # already handled
        why = e if isinstance(e, str) else _short(e)
        if not isinstance(e, str):
            log.debug("%s worker %s: Ray reported: %s", w.role, w.worker_id, e)
        w.lost()
        if w.restarts < self.cfg.max_restarts:
            w.restarts += 1
            w.set_state(RESTARTING, f"{why}; restart {w.restarts} of {self.cfg.max_restarts}")
            self.spawn(self._rejoin(w))
        else:
            w.set_state(DEAD, f"{why}; no restarts left" if self.cfg.max_restarts else why)
        if w.role == "decode":
            for st in [s for s in self.states.values() if s.decode_worker == w.worker_id]:
                self._retry(st, w)
        else:  # handoffs not yet sent whose KV died with this worker (it owned the objects)
            for item in [i for i in self.pending if i.state.prefill_worker == w.worker_id]:
                self.pending.remove(item)
                self._retry(item.state, w)
        self._fail_stranded()
        self._place()
        self._wake.set()
        self._changed()

    def _retry(self, st: RequestState, w: Worker) -> None:
        """Re-prefill ``st`` (prompt + tokens streamed so far) after ``w`` failed it, within the bound."""
        if st.done:
            return
        st.decode_worker = ""
        if st.abort_requested:
            self._finish(st, "abort")
        elif st.retries >= self.cfg.max_request_retries:
            self._finish(
                st, "abort", error=f"{w.role} worker {w.worker_id} failed; gave up after {st.retries} retries"
            )
        else:
            st.retries += 1
            self.migrations += 1
            self.waiting.appendleft(st)  # ahead of new work: it already waited its turn

    async def _rejoin(self, w: Worker) -> None:
        """Wait (bounded) until the restarted actor has loaded its model; then it takes work again."""
        deadline = time.monotonic() + self.cfg.restart_timeout_s
        why = f"not back within {self.cfg.restart_timeout_s:g} s"
        while (left := deadline - time.monotonic()) > 0:
            try:
                info = await asyncio.wait_for(_awaitable(w.handle.info.remote()), left)
            except asyncio.TimeoutError:
                break
            except Exception as e:
                if unavailable(e):  # still restarting
                    await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
                    continue
                log.debug("%s worker %s: restart failed: %s", w.role, w.worker_id, e)
                why = f"restart failed ({_short(e)})"
                break
            self.infos[w.worker_id] = info
            w.max_rows = info.get("max_rows", w.max_rows)
            w.set_state(LIVE, f"restarted; model loaded in {info.get('startup_s', 0.0):.1f} s")
            if w.role == "decode":
                self._start_pump(w)
            else:
                self._yield_cores(w)
            self._place()
            self._wake.set()
            self._changed()
            return
        w.set_state(DEAD, why)
        self._fail_stranded()
        self._changed()

    async def _monitor(self) -> None:
        """Ping idle prefill workers: a death between calls is noticed (decode workers long-poll)."""
        while not self.closed:
            await asyncio.sleep(self.cfg.ping_interval_s)
            for w in self.prefill:
                if w.live and w.calls == 0 and w.worker_id not in self._pinging:
                    self._pinging.add(w.worker_id)
                    self.spawn(self._ping(w))

    async def _ping(self, w: Worker) -> None:
        epoch = w.epoch
        try:
            await w.handle.pid.remote()
        except Exception as e:
            if actor_gone(e) and w.epoch == epoch:
                self._worker_lost(w, e)
        finally:
            self._pinging.discard(w.worker_id)

    # ------------------------------------------------------------------ API
    def new_request_id(self) -> str:
        return f"req-{next(self._ids)}-{int(time.time() * 1e3) % 10**9}"

    def submit(self, req: Request) -> RequestState:
        if self.closed:
            raise NoWorkers("the router is shutting down")
        for role, workers in (("prefill", self.prefill), ("decode", self.decode)):
            if not any(w.available for w in workers):
                raise NoWorkers(f"no {role} worker is available")
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
        st.abort_requested = True  # in prefill or in flight to a row: dropped when it comes back
        w = next((w for w in self.decode if w.worker_id == st.decode_worker), None)
        if w is not None and w.live:
            try:
                await w.handle.abort.remote(request_id)  # its row frees within one step
            except Exception as e:  # the worker just died: the request ends when it would migrate
                log.debug("abort of %s on decode worker %s failed: %s", request_id, w.worker_id, e)
        return True

    def server_info(self) -> dict:
        return {
            "queue_depth": len(self.waiting),
            "queue_order": self.cfg.queue_order,
            "in_prefill": self.in_prefill,
            "pending_decode": len(self.pending),
            "serving": self.serving,
            "migrations": self.migrations,
            "prefill": [w.row() for w in self.prefill],
            "decode": [w.row() for w in self.decode],
        }

    # ------------------------------------------------------------------ prefill side
    def _decode_free(self) -> int:
        return sum(w.max_rows - w.assigned for w in self.decode if w.live)

    async def _prefill_dispatcher(self) -> None:
        while not self.closed:
            await self._wake.wait()
            self._wake.clear()
            while self.waiting:
                budget = prefill_budget(
                    len(self.pending), self.in_prefill, self._decode_free(), self.cfg.prefill_ahead
                )
                idle = [w for w in self.prefill if w.live and w.calls < self.cfg.prefill_calls_per_worker]
                spill = self.spill_ids
                if spill:
                    idle = [w for w in idle if w.worker_id not in spill or self._may_spill(w)]
                if budget <= 0 or not idle:
                    break
                # A spill worker (on a decode worker's cores) only when no other worker can take the call.
                w = min(
                    idle, key=lambda x: (x.worker_id in spill, x.outstanding_tokens, x.calls, x.dispatched)
                )
                w.dispatched += 1
                self._order_queue()
                count = prefill_take(
                    [st.work_len for st in self.waiting],
                    self.cfg.max_prefill_tokens,
                    budget,
                    self.padded_prefill,
                )
                batch = [self.waiting.popleft() for _ in range(count)]
                tokens = sum(st.work_len for st in batch)
                threads = self._prefill_threads(w)
                w.lent += threads > 0
                w.outstanding_tokens += tokens
                w.calls += 1
                self.in_prefill += len(batch)
                self.spawn(self._run_prefill(w, batch, tokens, threads))
            self._share_cores()

    def _order_queue(self) -> None:
        """Put the waiting queue in ``queue_order`` (fcfs: nothing to do): after arrivals, and once
        a second for the waiting time."""
        if self.cfg.queue_order == "fcfs" or len(self.waiting) < 2:
            return
        now = time.time()
        if self.waiting[-1] is self._last_ordered and now - self._ordered_at < 1.0:
            return  # nothing joined since the last ordering (retries join at the front, and go first)
        states = list(self.waiting)
        queued = [
            Queued(st.stamps.arrival, st.req.params.max_tokens - len(st.tokens), st.retries > 0)
            for st in states
        ]
        order = queue_order(queued, self.cfg.queue_order, now, self.cfg.queue_max_wait_s)
        self.waiting.clear()
        self.waiting.extend(states[i] for i in order)
        self._ordered_at, self._last_ordered = now, self.waiting[-1]

    # ------------------------------------------------------------------ shared cores
    def _share(self, worker_id: str) -> tuple[CoreShare, Worker, Worker] | None:
        for s in self.shares:
            if worker_id in (s.prefill_id, s.decode_id, *s.spill_ids):
                p = next(w for w in self.prefill if w.worker_id == s.prefill_id)
                d = next(w for w in self.decode if w.worker_id == s.decode_id)
                return s, p, d
        return None

    def _node_busy(self, share: CoreShare) -> bool:
        """A prefill call of the share's partner or of one of its spill workers is in flight."""
        ids = {share.prefill_id, *share.spill_ids}
        return any(w.calls > 0 for w in self.prefill if w.worker_id in ids and w.live)

    def _may_spill(self, w: Worker) -> bool:
        share, p, _ = self._share(w.worker_id)  # a spill worker always belongs to a share
        waiting = sum(st.work_len for st in self.waiting)
        return share.spill_allowed(waiting, self.cfg.spill_prefill_tokens, partner_lent=p.lent > 0)

    def _prefill_threads(self, w: Worker) -> int:
        """Threads of the call about to go to ``w``: its own, plus its decode partner's when that one
        holds no row and nothing is on its way to it (0: the worker's own, unchanged)."""
        found = self._share(w.worker_id)
        if found is None or w.worker_id != found[0].prefill_id:
            return 0  # not shared, or a spill worker: its own threads
        share, _, d = found
        decode_idle = d.live and d.assigned == 0 and not self.pending
        n = share.prefill_threads(decode_idle, prefill_busy=self._node_busy(share))
        if n == share.prefill_cpus:
            return 0
        self.lent_calls += 1
        return n

    def _share_cores(self) -> None:
        """Give each decode worker its prefill partner's cores while that partner has no call in
        flight; take them back when a call goes out (applied at the worker's next step)."""
        for share in self.shares:
            found = self._share(share.decode_id)
            if found is None:
                continue
            _, _, d = found
            if not d.live:
                continue
            want = share.decode_threads(prefill_busy=self._node_busy(share))
            if want != (d.threads or share.decode_cpus):
                d.threads = want
                log.debug("decode worker %s: %d threads", d.worker_id, want)
                self.spawn(self._set_threads(d, want))

    async def _set_threads(self, d: Worker, threads: int) -> None:
        try:
            await d.handle.set_threads.remote(threads)
        except Exception as e:  # the worker is gone: its pump notices and handles it
            log.debug("decode worker %s: set_threads failed: %s", d.worker_id, e)

    async def _run_prefill(self, w: Worker, batch: list[RequestState], tokens: int, threads: int = 0) -> None:
        for st in batch:
            st.prefill_worker = w.worker_id
        try:
            results = await w.handle.prefill.remote([st.work() for st in batch], threads)
        except Exception as e:
            results = None
            if actor_gone(e):  # the worker died: these requests go to another (or the restarted) one
                self._worker_lost(w, e)
                for st in batch:
                    self._retry(st, w)
            else:  # the worker raised: these requests fail, others go on
                log.error("prefill worker %s failed on %d requests: %s", w.worker_id, len(batch), e)
                for st in batch:
                    self._finish(st, "abort", error=f"prefill worker {w.worker_id} failed ({_short(e)})")
        finally:
            w.outstanding_tokens -= tokens
            w.calls -= 1
            w.lent -= threads > 0
            self.in_prefill -= len(batch)
        if results is not None:
            for st, res in zip(batch, results, strict=True):
                self._prefilled(st, res)
            self._place()
        self._fail_stranded()
        self._wake.set()

    def _prefilled(self, st: RequestState, res: PrefillResult) -> None:
        if st.done:
            return
        h = HandoffHeader.from_bytes(res.header_bytes)
        if not h.resumed:  # a resumed request keeps the stamps of its first prefill
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
            free = [w for w in self.decode if w.live and w.assigned < w.max_rows]
            if not free:
                return  # every row is taken: the handoff waits here, never dropped
            w = max(free, key=lambda x: (x.max_rows - x.assigned, -(x.load.window if x.load else 0)))
            item = self.pending.popleft()
            w.assigned += 1
            item.state.decode_worker = w.worker_id
            # The ref travels inside a list so Ray hands it over unresolved: the worker fetches it.
            self.spawn(self._send(w, item, w.epoch))

    async def _send(self, w: Worker, item: _Pending, epoch: int) -> None:
        try:
            await w.handle.submit.remote(item.header_bytes, item.kv_refs)
        except Exception as e:
            st = item.state
            if w.epoch != epoch:
                return  # the worker was lost meanwhile: its requests, this one too, moved on
            if object_lost(e):  # the KV died with its prefill worker: not the decode side's fault
                w.assigned -= 1
                log.warning(
                    "request %s: its KV was lost with prefill worker %s; prefilling it again",
                    st.req.request_id,
                    st.prefill_worker,
                )
                self._retry(st, next(p for p in self.prefill if p.worker_id == st.prefill_worker))
                self._wake.set()
            elif actor_gone(e):
                self._worker_lost(w, e)
            else:
                w.assigned -= 1
                log.error("decode worker %s refused a handoff: %s", w.worker_id, e)
                self._finish(st, "abort", error=f"decode worker {w.worker_id} failed ({_short(e)})")
            self._place()

    async def _pump(self, w: Worker, epoch: int) -> None:
        while not self.closed and w.epoch == epoch:
            try:
                batch: EventBatch = await w.handle.events.remote(self.cfg.poll_timeout_s)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if w.epoch == epoch:
                    self._worker_lost(w, e)
                return
            if w.epoch != epoch:
                return
            w.load = batch.load
            for ev in batch.events:
                self._apply(w, ev)
            if batch.fatal:  # its step loop crashed: end the actor, so that Ray restarts it
                log.error("decode worker %s: its step loop died:\n%s", w.worker_id, batch.fatal)
                _end_actor(w.handle)
                self._worker_lost(w, "its step loop died")
                return
            self._place()
            self._wake.set()

    def _apply(self, w: Worker, ev: StepEvents) -> None:
        def mine(rid: str) -> RequestState | None:
            st = self.states.get(rid)
            return st if st is not None and st.decode_worker == w.worker_id else None

        for ins in ev.inserted:
            if st := mine(ins.request_id):
                st.stamps.inserted = ins.at
        for tok in ev.tokens:
            if st := mine(tok.request_id):
                self._deliver(st, [tok.token], tok.text)
        for fin in ev.finished:
            w.assigned -= 1
            if st := mine(fin.request_id):
                self._finish(st, fin.reason)
        for err in ev.errors:
            w.assigned -= 1
            if st := mine(err.request_id):
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


async def _awaitable(ref):
    return await ref


def _end_actor(handle) -> None:
    """Kill an actor that is up but useless; Ray restarts it if it has restarts left."""
    try:
        import ray

        ray.kill(handle, no_restart=False)
    except Exception as e:  # already gone
        log.debug("could not end an actor: %s", e)
