"""Single-process engine: replays a request trace through a prefill engine and a decode batch.

Each loop iteration is schedule (policy.admit), run (one decode step), postprocess (emit tokens,
finish rows). ``baton`` runs the prefill engine on its own thread with its own share of the
cores, so decode steps never wait for a prefill; the other policies run everything on one
thread, which is exactly what they are meant to show. The Ray cluster (``cluster.ray_cluster``)
runs the same two engines in separate actors.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from baton.core.config import EngineConfig
from baton.core.handoff import KVHandoff
from baton.core.models import LoadedModel
from baton.core.policy import BatchState, Candidate, admit, prefill_budget
from baton.core.request import Completion, Request
from decode_worker.batch import DecodeBatch, Finished, StepResult
from prefill_worker.engine import PrefillEngine


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
    step_log: list[tuple[int, int, int, float]] = field(default_factory=list)  # rows, width, q, ms

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "step_log"}
        d["padding_share"] = self.padding_cells / self.attended_cells if self.attended_cells else 0.0
        return d


def _ms(a: float, b: float) -> float:
    return round((b - a) * 1e3, 3)


class LocalEngine:
    def __init__(self, lm: LoadedModel, cfg: EngineConfig):
        self.lm = lm
        self.cfg = cfg
        self.limits = lm.limits.capped(cfg.max_seq_len)
        self.prefill_engine = PrefillEngine(lm, cfg.max_prefill_tokens)
        # One extra column: the window holds prompt + max_tokens - 1 and the step writes one more.
        self.batch = DecodeBatch(lm, cfg.max_batch_size, self.limits.context_length + 1)
        self.stats = RunStats()

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

    def _complete(self, fin: Finished, now: float) -> Completion:
        info = fin.info
        arrival = info["arrival"]
        timings = {
            "queue": _ms(arrival, info.get("prefill_start", arrival)),
            "prefill": _ms(info.get("prefill_start", arrival), info.get("prefill_end", arrival)),
            "ttft": _ms(arrival, info.get("first_token", now)),
            "total": _ms(arrival, now),
        }
        if "inserted" in info:
            timings["kv_transfer"] = _ms(info["prefill_end"], info["inserted"])
            timings["kv_bytes"] = info.get("kv_bytes", 0)
        return Completion(fin.request_id, fin.token_ids, fin.text, fin.finish_reason, fin.prompt_len, timings)

    def _insert(self, h: KVHandoff, now: float, live: bool) -> Completion | None:
        hd = h.header
        t = hd.timings
        info = {
            "arrival": t["arrival"],
            "prefill_start": t["prefill_start"],
            "prefill_end": t["prefill_end"],
            "first_token": t["prefill_end"],
            "inserted": now,
            "kv_bytes": h.nbytes,
        }
        self.stats.kv_bytes += h.nbytes
        self.stats.joins_live += live
        fin = self.batch.insert(h, info)
        return self._complete(fin, now) if fin else None

    def _record(self, res: StepResult) -> None:
        s = self.stats
        s.steps += 1
        s.row_steps += res.rows * res.query_len
        s.pad_row_steps += res.rows * res.query_len - res.rows
        s.forward_ms += res.forward_ms
        s.padding_cells += res.padding_cells
        s.attended_cells += res.rows * res.width
        s.step_log.append((res.rows, res.width, res.query_len, res.forward_ms))

    def _prefill(self, reqs: list[Request]) -> list[KVHandoff]:
        t0 = time.perf_counter()
        out = self.prefill_engine.prefill(reqs)
        self.stats.prefill_ms += (time.perf_counter() - t0) * 1e3
        self.stats.prefills += 1
        return out

    # ------------------------------------------------------------------ the run
    def run(self, trace: list[tuple[Request, float]]) -> list[Completion]:
        """Replay ``(request, arrival offset in s)`` pairs in real time; completions in input order."""
        policy = self.cfg.policy
        order = [r.request_id for r, _ in trace]
        pending = deque(sorted(trace, key=lambda x: x[1]))
        waiting: deque[Request] = deque()
        done: dict[str, Completion] = {}
        t_start = time.time()
        threads = self.cfg.total_threads
        prev_threads = torch.get_num_threads()

        ready: queue.Queue = queue.Queue()
        prefill_thread = None
        in_flight = [0]
        lock = threading.Condition()
        stop = threading.Event()

        def arrive(now: float) -> None:
            while pending and pending[0][1] <= now - t_start:
                req, off = pending.popleft()
                waiting.append(
                    Request(req.request_id, req.prompt_token_ids, req.params, req.seed, arrival=t_start + off)
                )

        def prefill_loop() -> None:  # baton: the prefill side, on its own thread and cores
            torch.set_num_threads(max(1, threads // 2))
            while not stop.is_set():
                with lock:
                    budget = prefill_budget(
                        ready.qsize(), in_flight[0], self.batch.free_rows, self.cfg.prefill_ahead
                    )
                    take = [waiting.popleft() for _ in range(min(budget, len(waiting)))]
                    in_flight[0] += len(take)
                    if not take:
                        lock.wait(0.005)
                        continue
                for h in self._prefill(take):
                    ready.put(h)
                with lock:
                    in_flight[0] -= len(take)

        try:
            if policy == "baton":
                torch.set_num_threads(max(1, threads - threads // 2))
                prefill_thread = threading.Thread(target=prefill_loop, name="baton-prefill", daemon=True)
                prefill_thread.start()
            else:
                torch.set_num_threads(threads)

            while len(done) < len(order):
                now = time.time()
                with lock:
                    arrive(now)
                    lock.notify_all()
                state = self._state()
                orca_prompts: list[Request] = []
                if policy == "baton":
                    while self.batch.free_rows > 0:
                        try:
                            h = ready.get_nowait()
                        except queue.Empty:
                            break
                        c = self._insert(h, time.time(), state.live_rows > 0)
                        if c:
                            done[c.request_id] = c
                else:
                    cands = [Candidate(r.prompt_len, r.params.max_tokens) for r in waiting]
                    k = admit(policy, state, cands)
                    take = [waiting.popleft() for _ in range(k)]
                    if take and policy == "orca":
                        orca_prompts = take
                        self.stats.joins_live += len(take) if self.batch.rows else 0
                    elif take:
                        t0 = time.time()
                        for h in self._prefill(take):
                            c = self._insert(h, time.time(), state.live_rows > 0)
                            if c:
                                done[c.request_id] = c
                        if state.live_rows:  # the running rows sat idle for this prefill
                            self.stats.stall_ms += (time.time() - t0) * 1e3

                if not self.batch.rows and not orca_prompts:
                    # Idle: nothing to decode. Sleep until the next arrival or a ready handoff.
                    if policy == "baton":
                        try:
                            h = ready.get(timeout=0.002)
                            c = self._insert(h, time.time(), False)
                            if c:
                                done[c.request_id] = c
                        except queue.Empty:
                            pass
                    elif not waiting and pending:
                        time.sleep(max(0.0, min(0.01, pending[0][1] - (time.time() - t_start))))
                    continue

                infos = [{"arrival": r.arrival, "prefill_start": time.time()} for r in orca_prompts]
                res = self.batch.step(orca_prompts, infos)
                now = time.time()
                self._record(res)
                if orca_prompts:
                    for row in self.batch.rows:
                        if "prefill_end" not in row.info and "arrival" in row.info:
                            row.info.update(prefill_end=now, first_token=now)
                    for f in res.finished:
                        f.info.setdefault("prefill_end", now)
                        f.info.setdefault("first_token", now)
                for f in res.finished:
                    done[f.request_id] = self._complete(f, now)
        finally:
            stop.set()
            if prefill_thread is not None:
                prefill_thread.join(timeout=30)
            torch.set_num_threads(prev_threads)
        return [done[i] for i in order]


def run_specs(lm: LoadedModel, cfg: EngineConfig, specs: list[Any]) -> tuple[list[Completion], RunStats]:
    """Tokenise and validate ``specs`` (RequestSpec or errors), run the valid ones, keep input order.

    A bad spec becomes a Completion carrying its error (naming the field); the others still run.
    """
    from baton.core.requests_io import Batch

    engine = LocalEngine(lm, cfg)
    batch = Batch(specs, lm.tokenizer, engine.limits)
    return batch.merge(engine.run(batch.trace)), engine.stats
