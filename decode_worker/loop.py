"""The decode worker's step loop, without Ray: a thread that owns one DecodeBatch.

Handoffs arrive through ``submit`` (from any thread) with their KV already fetched, wait in the
inbox while the batch is full (never dropped), and are inserted between two steps. Each step's
tokens for all rows leave as one event batch (``drain``), not one message per token.

The loop thread never waits on the network: KV transfer happens in the caller's thread before
``submit``. ``blocked_ms`` counts the time the loop, with live rows, waited for anything other
than its own work (the inbox lock); ``insert_ms`` is BATON's embedding cost between steps.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import deque
from dataclasses import asdict, dataclass

from baton.core.errors import BatonError
from baton.core.handoff import KVHandoff
from baton.core.messages import EventBatch, Finished, Inserted, RowError, StepEvents, WorkerLoad
from decode_worker.batch import DecodeBatch, FinishedRow, StepResult

TOMBSTONE_S = 60.0  # how long an abort waits for a handoff that never came (its prefill was dropped)


@dataclass
class LoopStats:
    steps: int = 0
    row_steps: int = 0
    forward_ms: float = 0.0
    step_ms: float = 0.0  # whole step (forward + sampling + bookkeeping)
    insert_ms: float = 0.0
    blocked_ms: float = 0.0
    max_blocked_ms: float = 0.0
    inserted: int = 0
    padding_cells: int = 0
    attended_cells: int = 0
    kv_bytes_in: int = 0

    def record(self, res: StepResult, step_ms: float) -> None:
        self.steps += 1
        self.row_steps += res.rows
        self.step_ms += step_ms
        self.forward_ms += res.forward_ms
        self.padding_cells += res.padding_cells
        self.attended_cells += res.rows * res.width


def _thread_count() -> int:
    import torch

    return torch.get_num_threads()


def _finished(f: FinishedRow) -> Finished:
    return Finished(f.request_id, f.finish_reason, len(f.token_ids), f.text)


class _StepBuilder:
    """Collects what one loop iteration did into a StepEvents."""

    def __init__(self, step: int):
        self.step = step
        self.tokens: tuple = ()
        self.finished: list[Finished] = []
        self.inserted: list[Inserted] = []
        self.errors: list[RowError] = []

    def build(self) -> StepEvents:
        return StepEvents(
            self.step,
            time.time(),
            self.tokens,
            tuple(self.finished),
            tuple(self.inserted),
            tuple(self.errors),
        )


class DecodeLoop:
    def __init__(self, batch: DecodeBatch, worker_id: str):
        self.batch = batch
        self.worker_id = worker_id
        self.stats = LoopStats()
        self._cond = threading.Condition()
        self._inbox: deque[KVHandoff] = deque()
        self._aborts: set[str] = set()
        # Aborts that arrived before their handoff (still in transfer): dropped on arrival.
        self._tombstones: dict[str, float] = {}
        self._events: list[StepEvents] = []
        self._stop = threading.Event()
        self._error: str | None = None
        self._threads = 0  # wanted torch threads of the loop thread (0: as configured)
        self._threads_now = 0
        self._thread = threading.Thread(target=self._run, name=f"decode-{worker_id}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ called from other threads
    def submit(self, handoff: KVHandoff) -> None:
        with self._cond:
            self._inbox.append(handoff)
            self._cond.notify_all()

    def abort(self, request_id: str) -> None:
        with self._cond:
            self._aborts.add(request_id)
            self._cond.notify_all()

    def set_threads(self, threads: int) -> None:
        """Run steps on ``threads`` torch threads from the next one on (applied by the loop thread:
        the count is per thread)."""
        self._threads = max(1, int(threads))

    def drain(self, timeout: float) -> EventBatch:
        """Wait up to ``timeout`` s for events; return them with the worker's load."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._events and not self._stop.is_set() and self._error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            events, self._events = self._events, []
            return EventBatch(self.worker_id, tuple(events), self._load_locked(), self._error)

    def load(self) -> WorkerLoad:
        with self._cond:
            return self._load_locked()

    def _load_locked(self) -> WorkerLoad:
        b = self.batch
        return WorkerLoad(
            rows=len(b.rows),
            max_rows=b.max_rows,
            waiting=len(self._inbox),
            window=b.cache.length,
            capacity=b.capacity,
            kv_bytes=b.cache.nbytes(),
            stats=asdict(self.stats),
            threads=self._threads_now,
        )

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout)

    # ------------------------------------------------------------------ the loop thread
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._iterate()
        except Exception:  # keep the worker alive enough to report why it stopped
            with self._cond:
                self._error = traceback.format_exc()
                self._cond.notify_all()

    def _iterate(self) -> None:
        """One iteration: take what arrived, apply aborts, insert handoffs, step, publish."""
        got = self._take()
        if got is None:
            return
        handoffs, aborts = got
        ev = _StepBuilder(self.stats.steps)
        self._apply_aborts(aborts, ev)
        self._insert(handoffs, aborts, ev)
        if self.batch.rows:
            self._step(ev)
        out = ev.build()
        if not out.empty:
            with self._cond:
                self._events.append(out)
                self._cond.notify_all()

    def _take(self) -> tuple[list[KVHandoff], set[str]] | None:
        """Handoffs for the free rows and pending aborts; None after an idle wait."""
        b, s = self.batch, self.stats
        live = bool(b.rows)
        t_wait = time.perf_counter()
        with self._cond:
            if live:  # with rows waiting to decode, any wait for the lock is a stall
                waited = (time.perf_counter() - t_wait) * 1e3
                s.blocked_ms += waited
                s.max_blocked_ms = max(s.max_blocked_ms, waited)
            elif not self._inbox and not self._aborts:
                self._cond.wait(0.05)  # idle: nothing to decode
                return None
            take = [self._inbox.popleft() for _ in range(min(b.free_rows, len(self._inbox)))]
            aborts, self._aborts = self._aborts, set()
        return take, aborts

    def _apply_aborts(self, aborts: set[str], ev: _StepBuilder) -> None:
        now = time.monotonic()
        for rid in aborts:
            fin = self.batch.abort(rid)
            if fin is not None:
                ev.finished.append(_finished(fin))
                continue
            with self._cond:  # maybe still in the inbox, or not even fetched yet
                kept = deque(h for h in self._inbox if h.header.request_id != rid)
                dropped = len(self._inbox) - len(kept)
                self._inbox = kept
            if dropped:
                ev.finished.append(Finished(rid, "abort", 0, ""))
            else:
                self._tombstones[rid] = now
        for rid in [r for r, t in self._tombstones.items() if now - t > TOMBSTONE_S]:
            del self._tombstones[rid]

    def _insert(self, handoffs: list[KVHandoff], aborts: set[str], ev: _StepBuilder) -> None:
        """BATON's insertion between two steps; a refused handoff fails its own request only."""
        s = self.stats
        t0 = time.perf_counter()
        for h in handoffs:
            rid = h.header.request_id
            if rid in aborts or self._tombstones.pop(rid, None) is not None:
                ev.finished.append(Finished(rid, "abort", 0, ""))
                continue
            try:
                fin = self.batch.insert(h)
            except BatonError as e:
                ev.errors.append(RowError(rid, str(e)))
                continue
            s.inserted += 1
            s.kv_bytes_in += h.nbytes
            ev.inserted.append(Inserted(rid, time.time()))
            if fin is not None:
                ev.finished.append(_finished(fin))
        s.insert_ms += (time.perf_counter() - t0) * 1e3

    def _step(self, ev: _StepBuilder) -> None:
        if not self._threads_now or (self._threads and self._threads != self._threads_now):
            from baton.core.threads import set_thread_count

            if self._threads:
                set_thread_count(self._threads)
            self._threads_now = _thread_count()
        t0 = time.perf_counter()
        res = self.batch.step()
        self.stats.record(res, (time.perf_counter() - t0) * 1e3)
        ev.tokens = tuple(res.emitted)
        ev.finished += [_finished(f) for f in res.finished]
