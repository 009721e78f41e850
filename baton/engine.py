"""Single-process engine: replays a request trace through a prefill engine and a decode batch.

Each loop iteration is schedule (who joins the batch, per policy), run (one decode step),
postprocess (record, finish rows). ``baton`` runs the prefill engine on its own thread
(``PrefillThread``) with its own share of the cores, so decode steps never wait for a prefill; the
other policies run everything on one thread, which is exactly what they are meant to show. The
Ray cluster (``cluster.ray_cluster``) runs the same two engines in separate actors.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from baton.core.config import EngineConfig
from baton.core.handoff import KVHandoff
from baton.core.messages import Stamps, Timings
from baton.core.models import LoadedModel
from baton.core.policy import BatchState, Candidate, Queued, admit, prefill_budget, queue_order
from baton.core.request import Completion, Request
from decode_worker.batch import DecodeBatch, FinishedRow, StepResult
from prefill_worker.engine import PrefillEngine

log = logging.getLogger("baton.engine")


@dataclass
class RunStats:
    """What a run measured, beside each request's own timings."""

    steps: int = 0
    row_steps: int = 0  # sum over steps of rows in the forward
    pad_row_steps: int = 0  # row-steps that produced no token for the row (orca padding columns)
    forward_ms: float = 0.0
    stall_ms: float = 0.0  # time live rows waited on something other than their own forward
    padding_cells: int = 0
    attended_cells: int = 0
    prefill_ms: float = 0.0
    prefills: int = 0
    kv_bytes: int = 0
    joins_live: int = 0  # queries that joined while other rows were live
    failure: str | None = None  # why requests failed without their own fault (a dead prefill thread)
    step_log: list[tuple[int, int, int, float]] = field(default_factory=list)  # rows, width, q, ms

    def record(self, res: StepResult) -> None:
        self.steps += 1
        self.row_steps += res.rows * res.query_len
        self.pad_row_steps += res.rows * res.query_len - res.rows
        self.forward_ms += res.forward_ms
        self.padding_cells += res.padding_cells
        self.attended_cells += res.rows * res.width
        self.step_log.append((res.rows, res.width, res.query_len, res.forward_ms))

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "step_log"}
        d["padding_share"] = self.padding_cells / self.attended_cells if self.attended_cells else 0.0
        return d


class _Trace:
    """A run's requests: not yet arrived, waiting for admission, and done."""

    def __init__(
        self, trace: list[tuple[Request, float]], queue_order: str = "fcfs", max_wait_s: float = 60.0
    ):
        self.order = [r.request_id for r, _ in trace]
        self.queue_order, self.max_wait_s = queue_order, max_wait_s
        self._ordered_at = -math.inf  # when the queue was last put in order (lof)
        self.future = deque(sorted(trace, key=lambda x: x[1]))
        self.waiting: deque[Request] = deque()
        self.done: dict[str, Completion] = {}
        self.t0 = time.time()

    @property
    def complete(self) -> bool:
        return len(self.done) == len(self.order)

    def arrive(self, now: float) -> None:
        """Move requests whose arrival offset has passed into ``waiting``, stamped with it; keep
        ``waiting`` in queue order (after arrivals, and once a second for the waiting time)."""
        came = bool(self.future) and self.future[0][1] <= now - self.t0
        while self.future and self.future[0][1] <= now - self.t0:
            req, off = self.future.popleft()
            self.waiting.append(
                Request(req.request_id, req.prompt_token_ids, req.params, req.seed, arrival=self.t0 + off)
            )
        if self.queue_order != "fcfs" and len(self.waiting) > 1 and (came or now - self._ordered_at >= 1.0):
            self._ordered_at = now
            reqs = list(self.waiting)
            queued = [Queued(r.arrival, r.params.max_tokens) for r in reqs]
            self.waiting = deque(reqs[i] for i in queue_order(queued, self.queue_order, now, self.max_wait_s))

    def next_arrival_in(self) -> float:
        return self.future[0][1] - (time.time() - self.t0) if self.future else 0.0

    def results(self) -> list[Completion]:
        return [self.done[i] for i in self.order]


class PrefillThread:
    """``baton`` in one process: the prefill side on its own thread and its own torch threads.

    It starts no more prefills than the decode batch has free rows (+ ``ahead``): space is reserved
    before the work starts. Finished handoffs wait in ``ready`` for the decode loop.
    """

    def __init__(self, engine: LocalEngine, trace: _Trace, threads: int):
        self.engine = engine
        self.trace = trace
        self.threads = threads
        self.ready: queue.Queue[KVHandoff] = queue.Queue()
        self.lock = threading.Condition()
        self.in_flight = 0
        self.error: str | None = None  # set when the thread died: the run fails what it had not prefilled
        self.lost: list[Request] = []  # the requests it was prefilling when it died
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="baton-prefill", daemon=True)

    def start(self) -> PrefillThread:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self.lock:
            self.lock.notify_all()
        self._thread.join(timeout=30)

    def arrive(self, now: float) -> None:
        with self.lock:
            self.trace.arrive(now)
            self.lock.notify_all()

    def _take(self) -> list[Request]:
        with self.lock:
            budget = prefill_budget(
                self.ready.qsize(), self.in_flight, self.engine.batch.free_rows, self.engine.cfg.prefill_ahead
            )
            waiting = self.trace.waiting
            take = [waiting.popleft() for _ in range(min(budget, len(waiting)))]
            self.in_flight += len(take)
            if not take:
                self.lock.wait(0.005)
            return take

    def _loop(self) -> None:
        torch.set_num_threads(self.threads)
        take: list[Request] = []
        try:
            while not self._stop.is_set():
                take = self._take()
                if not take:
                    continue
                for h in self.engine.prefill(take):
                    self.ready.put(h)
                with self.lock:
                    self.in_flight -= len(take)
                take = []
        except Exception as e:
            log.exception("prefill thread failed")
            with self.lock:
                self.error = f"prefill failed ({type(e).__name__}: {e})"
                self.lost = list(take)


class LocalEngine:
    def __init__(self, lm: LoadedModel, cfg: EngineConfig):
        self.lm = lm
        self.cfg = cfg
        self.limits = lm.limits.capped(cfg.max_seq_len)
        self.prefill_engine = PrefillEngine(lm, cfg.max_prefill_tokens)
        # One extra column: the window holds prompt + max_tokens - 1 and the step writes one more.
        self.batch = DecodeBatch(lm, cfg.max_batch_size, self.limits.context_length + 1)
        self.stats = RunStats()

    # ------------------------------------------------------------------ the run
    def run(self, trace: list[tuple[Request, float]]) -> list[Completion]:
        """Replay ``(request, arrival offset in s)`` pairs in real time; completions in input order."""
        run = _Trace(trace, self.cfg.queue_order, self.cfg.queue_max_wait_s)
        with self._prefill_side(run) as prefill:
            try:
                while not run.complete:
                    if prefill is not None and prefill.error:
                        self._fail_unprefilled(run, prefill)
                    self._arrive(run, prefill)
                    prompts = self._schedule(run, prefill)
                    if not self.batch.rows and not prompts:
                        self._idle(run, prefill)
                        continue
                    stamps = [Stamps(arrival=r.arrival, prefill_start=time.time()) for r in prompts]
                    res = self.batch.step(prompts, stamps)
                    self._postprocess(run, res, stamps)
            except Exception as e:  # the decode side failed: what is not done fails now, nothing hangs
                log.exception("decode loop failed")
                self.stats.failure = f"decode failed ({type(e).__name__}: {e})"
                for rid in run.order:
                    run.done.setdefault(rid, Completion(rid, error=self.stats.failure, error_field=None))
        return run.results()

    @contextlib.contextmanager
    def _prefill_side(self, run: _Trace):
        """``baton``: a PrefillThread with half the threads; the others: everything on this thread."""
        threads = self.cfg.total_threads
        prev = torch.get_num_threads()
        prefill = None
        if self.cfg.policy == "baton":
            prefill = PrefillThread(self, run, max(1, threads // 2))
            torch.set_num_threads(max(1, threads - threads // 2))
            prefill.start()
        else:
            torch.set_num_threads(threads)
        try:
            yield prefill
        finally:
            if prefill is not None:
                prefill.stop()
            torch.set_num_threads(prev)

    def _fail_unprefilled(self, run: _Trace, prefill: PrefillThread) -> None:
        """The prefill side is gone: what it never prefilled fails now; live rows still finish."""
        self.stats.failure = prefill.error
        with prefill.lock:
            lost = [*prefill.lost, *run.waiting, *(r for r, _ in run.future)]
            prefill.lost, run.future = [], deque()
            run.waiting.clear()
        for r in lost:
            run.done[r.request_id] = Completion(r.request_id, error=prefill.error, error_field=None)

    def _arrive(self, run: _Trace, prefill: PrefillThread | None) -> None:
        if prefill is not None:
            prefill.arrive(time.time())
        else:
            run.arrive(time.time())

    def _schedule(self, run: _Trace, prefill: PrefillThread | None) -> list[Request]:
        """Admit waiting work before the next step. Returns orca prompts for the step to compute."""
        live = bool(self.batch.rows)
        if prefill is not None:  # baton: insert every ready handoff there is room for
            while self.batch.free_rows > 0:
                try:
                    self._insert(run, prefill.ready.get_nowait(), live)
                except queue.Empty:
                    break
            return []
        k = admit(
            self.cfg.policy,
            self._state(),
            [Candidate(r.prompt_len, r.params.max_tokens) for r in run.waiting],
        )
        take = [run.waiting.popleft() for _ in range(k)]
        if take and self.cfg.policy == "orca":
            self.stats.joins_live += len(take) if live else 0
            return take
        if take:  # static / colocated: the decode side prefills them itself, its rows stalled
            t0 = time.time()
            for h in self.prefill(take):
                self._insert(run, h, live)
            if live:
                self.stats.stall_ms += (time.time() - t0) * 1e3
        return []

    def _idle(self, run: _Trace, prefill: PrefillThread | None) -> None:
        """Nothing to decode: wait for a ready handoff or the next arrival."""
        if prefill is not None:
            with contextlib.suppress(queue.Empty):
                self._insert(run, prefill.ready.get(timeout=0.002), False)
        elif not run.waiting and run.future:
            time.sleep(max(0.0, min(0.01, run.next_arrival_in())))

    def _postprocess(self, run: _Trace, res: StepResult, orca_stamps: list[Stamps]) -> None:
        now = time.time()
        self.stats.record(res)
        for st in orca_stamps:  # orca prompts got their first token from this very step
            st.prefill_end = st.first_token = now
        for f in res.finished:
            run.done[f.request_id] = self._complete(f, now)

    # ------------------------------------------------------------------ helpers
    def _state(self) -> BatchState:
        rows = self.batch.rows
        return BatchState(
            live_rows=len(rows),
            free_rows=self.batch.free_rows,
            window=self.batch.cache.length,
            capacity=self.limits.context_length,
            max_remaining=max((r.params.max_tokens - len(r.tracker.token_ids) for r in rows), default=0),
        )

    def prefill(self, reqs: list[Request]) -> list[KVHandoff]:
        t0 = time.perf_counter()
        out = self.prefill_engine.prefill(reqs)
        self.stats.prefill_ms += (time.perf_counter() - t0) * 1e3
        self.stats.prefills += 1
        return out

    def _insert(self, run: _Trace, h: KVHandoff, live: bool) -> None:
        stamps = Stamps.from_header(h.header.timings, h.nbytes)
        stamps.inserted = time.time()
        self.stats.kv_bytes += h.nbytes
        self.stats.joins_live += live
        fin = self.batch.insert(h, stamps)
        if fin is not None:
            run.done[fin.request_id] = self._complete(fin, stamps.inserted)

    @staticmethod
    def _complete(fin: FinishedRow, now: float) -> Completion:
        timings = Timings.of(fin.stamps, now) if fin.stamps else None
        return Completion(
            fin.request_id,
            fin.token_ids,
            fin.text,
            fin.finish_reason,
            fin.prompt_len,
            timings.to_dict() if timings else {},
        )


def run_specs(lm: LoadedModel, cfg: EngineConfig, specs: list[Any]) -> tuple[list[Completion], RunStats]:
    """Tokenise and validate ``specs`` (RequestSpec or errors), run the valid ones, keep input order.

    A bad spec becomes a Completion carrying its error (naming the field); the others still run.
    """
    from baton.core.requests_io import Batch

    engine = LocalEngine(lm, cfg)
    batch = Batch(specs, lm.tokenizer, engine.limits)
    return batch.merge(engine.run(batch.trace)), engine.stats
