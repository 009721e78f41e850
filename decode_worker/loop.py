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
from dataclasses import dataclass, field
from typing import Any

from baton.core.errors import BatonError
from baton.core.handoff import KVHandoff
from decode_worker.batch import DecodeBatch


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

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _Inbound:
    handoff: KVHandoff
    meta: dict = field(default_factory=dict)


class DecodeLoop:
    def __init__(self, batch: DecodeBatch, worker_id: str):
        self.batch = batch
        self.worker_id = worker_id
        self.stats = LoopStats()
        self._cond = threading.Condition()
        self._inbox: deque[_Inbound] = deque()
        self._aborts: set[str] = set()
        # Aborts that arrived before their handoff (still in transfer): dropped on arrival.
        self._tombstones: dict[str, float] = {}
        self._events: list[dict] = []
        self._stop = threading.Event()
        self._error: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"decode-{worker_id}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ called from other threads
    def submit(self, handoff: KVHandoff, meta: dict | None = None) -> None:
        with self._cond:
            self._inbox.append(_Inbound(handoff, dict(meta or {})))
            self._cond.notify_all()

    def abort(self, request_id: str) -> None:
        with self._cond:
            self._aborts.add(request_id)
            self._cond.notify_all()

    def drain(self, timeout: float) -> dict:
        """Wait up to ``timeout`` s for events; return them with the worker's load."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._events and not self._stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            events, self._events = self._events, []
            return {
                "worker_id": self.worker_id,
                "events": events,
                "load": self._load_locked(),
                "error": self._error,
            }

    def load(self) -> dict:
        with self._cond:
            return self._load_locked()

    def _load_locked(self) -> dict:
        b = self.batch
        return {
            "rows": len(b.rows),
            "max_rows": b.max_rows,
            "waiting": len(self._inbox),
            "window": b.cache.length,
            "capacity": b.capacity,
            "kv_bytes": b.cache.nbytes(),
            "stats": self.stats.to_dict(),
        }

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout)

    # ------------------------------------------------------------------ the loop thread
    def _emit(self, event: dict) -> None:
        with self._cond:
            self._events.append(event)
            self._cond.notify_all()

    def _run(self) -> None:
        try:
            self._loop()
        except Exception:  # keep the worker alive enough to report why it stopped
            self._error = traceback.format_exc()
            self._emit({"fatal": self._error})

    def _loop(self) -> None:
        b = self.batch
        s = self.stats
        while not self._stop.is_set():
            live = bool(b.rows)
            t_wait = time.perf_counter()
            with self._cond:
                if live:
                    waited = (time.perf_counter() - t_wait) * 1e3
                    s.blocked_ms += waited
                    s.max_blocked_ms = max(s.max_blocked_ms, waited)
                elif not self._inbox and not self._aborts:
                    self._cond.wait(0.05)  # idle: nothing to decode
                    continue
                take = [self._inbox.popleft() for _ in range(min(b.free_rows, len(self._inbox)))]
                aborts, self._aborts = self._aborts, set()
            event: dict = {"step": s.steps, "tokens": [], "finished": [], "inserted": [], "errors": []}
            now = time.monotonic()
            for rid in aborts:
                fin = b.abort(rid)
                if fin is None:  # maybe still in the inbox, or not even here yet
                    with self._cond:
                        kept = [x for x in self._inbox if x.handoff.header.request_id != rid]
                        dropped = len(self._inbox) - len(kept)
                        self._inbox = deque(kept)
                    if dropped:
                        event["finished"].append([rid, "abort", 0, ""])
                    else:
                        self._tombstones[rid] = now
                else:
                    event["finished"].append([rid, "abort", len(fin.token_ids), fin.text])
            for rid in [r for r, t in self._tombstones.items() if now - t > 60.0]:
                del self._tombstones[rid]  # its handoff never came (the prefill was dropped)
            t0 = time.perf_counter()
            for item in take:
                rid = item.handoff.header.request_id
                if rid in aborts or self._tombstones.pop(rid, None) is not None:
                    event["finished"].append([rid, "abort", 0, ""])
                    continue
                try:
                    fin = b.insert(item.handoff, item.meta)
                except BatonError as e:
                    event["errors"].append([rid, str(e)])
                    continue
                s.inserted += 1
                s.kv_bytes_in += item.handoff.nbytes
                event["inserted"].append([rid, time.time()])
                if fin is not None:
                    event["finished"].append([rid, fin.finish_reason, len(fin.token_ids), fin.text])
            s.insert_ms += (time.perf_counter() - t0) * 1e3
            if b.rows:
                t1 = time.perf_counter()
                res = b.step()
                s.step_ms += (time.perf_counter() - t1) * 1e3
                s.steps += 1
                s.row_steps += res.rows
                s.forward_ms += res.forward_ms
                s.padding_cells += res.padding_cells
                s.attended_cells += res.rows * res.width
                event["tokens"] = [[rid, tok, delta] for rid, tok, delta in res.emitted]
                event["finished"] += [
                    [f.request_id, f.finish_reason, len(f.token_ids), f.text] for f in res.finished
                ]
                event["t"] = time.time()
            if event["tokens"] or event["finished"] or event["inserted"] or event["errors"]:
                self._emit(event)
