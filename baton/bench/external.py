"""Serving systems from other projects, replaying the suite's traces: transformers ``generate`` on static
batches (``hf-static``), transformers continuous batching (``hf-cb``) and vLLM's CPU build (``vllm``)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from baton.bench.metrics import DecodeStats, Record
from baton.bench.systems import BenchConfig, RunResult, System, Trace


# ------------------------------------------------------------------------------ transformers generate
class _StepTimes:
    """A generate() streamer that notes when each step's tokens came out (first put = the prompt)."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, _value: Any) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def _sleep_until(t: float) -> None:
    d = t - time.perf_counter()
    if d > 0:
        time.sleep(d)


def transformers_model(lm: Any) -> Any:
    """The transformers model of ``lm``'s weights (loaded in float32 when ``lm`` runs baton's own runtime)."""
    if lm.model is not None:
        return lm.model
    from baton.core.models import load_model

    return load_model(lm.name, runtime="hf", dtype="float32").model


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
        model = transformers_model(self.lm)
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
        self.model = load_model(self.cfg.model, runtime="hf", dtype="float32").model
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
    "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    "VLLM_CPU_KVCACHE_SPACE": "1",
}  # + threads: OMP, bind (1 GB: 32 x 641 tokens need <0.2)


class VLLM(System):
    """vLLM's CPU build in its own venv: every trace runs in one subprocess (one engine start);
    ``serve`` keeps one engine up instead and ``run`` then replays each trace on it (benchmarks that
    interleave systems run by run, so machine drift hits every system alike)."""

    name = "vllm"

    def __init__(self, cfg: BenchConfig, lm: Any):
        super().__init__(cfg, lm)
        self.decode_threads = cfg.threads
        if not cfg.vllm_python:
            raise ValueError("vllm: needs --vllm-python PATH (the python of a venv with vllm-cpu)")
        self.warmup: Trace = []
        self.meta: dict[str, Any] = {}
        self._proc: subprocess.Popen | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._runs = 0

    def setup(self, warmup: Trace) -> None:
        self.warmup = warmup

    def _env(self) -> dict[str, str]:
        threads = {
            "OMP_NUM_THREADS": str(self.cfg.threads),
            "VLLM_CPU_OMP_THREADS_BIND": f"0-{self.cfg.threads - 1}",
        }
        return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | VLLM_ENV | threads

    @staticmethod
    def _run_spec(name: str, trace: Trace) -> dict:
        return {
            "name": name,
            "prompts": [list(r.prompt_token_ids) for r, _ in trace],
            "max_tokens": [r.params.max_tokens for r, _ in trace],
            "arrivals": [off for _, off in trace],
        }

    def _spec(self, runs: list[tuple[str, Trace]]) -> dict:
        from baton.core.models import resolve_model

        return {
            "model": resolve_model(self.cfg.model),
            "max_batch_size": self.cfg.max_batch_size,
            "max_seq_len": self.cfg.max_seq_len + 1,
            "dtype": self.cfg.vllm_dtype,
            "order": self.cfg.queue_order,
            "ngram": self.cfg.ngram,
            "runs": [self._run_spec(n, t) for n, t in runs],
        }

    def _log_path(self) -> Path:
        path = Path(self.cfg.log_path or Path(tempfile.gettempdir()) / "baton-bench-vllm.log")
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _result(self, trace: Trace, res: dict) -> RunResult:
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
        return RunResult(recs, None, self.decode_threads, res["wall_s"], {"vllm": self.meta})

    # ------------------------------------------------------------------ one engine per call
    def run(self, trace: Trace) -> RunResult:
        if self._proc is not None:
            return self._serve_run(trace)
        return self.run_many([trace])[0]

    def run_many(self, traces: list[Trace], timeout_s: float = 3600) -> list[RunResult]:
        runs = ([("warmup", self.warmup)] if self.warmup else []) + [
            (f"run{i}", t) for i, t in enumerate(traces)
        ]
        runner = Path(__file__).with_name("vllm_runner.py")
        log_path = self._log_path()
        with tempfile.TemporaryDirectory() as tmp:
            inp, outp = Path(tmp) / "in.json", Path(tmp) / "out.json"
            inp.write_text(json.dumps(self._spec(runs)))
            with open(log_path, "w") as log:
                proc = subprocess.run(
                    [self.cfg.vllm_python, str(runner), str(inp), str(outp)],
                    cwd=tmp,
                    env=self._env(),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=timeout_s,
                )
            if proc.returncode != 0 or not outp.exists():
                tail = log_path.read_text()[-3000:]
                raise RuntimeError(f"vllm runner failed (exit {proc.returncode}); log {log_path}:\n{tail}")
            result = json.loads(outp.read_text())
        self.meta = {k: v for k, v in result.items() if k != "runs"} | {"log": str(log_path)}
        by_name = {r["name"]: r for r in result["runs"]}
        return [self._result(trace, by_name[f"run{i}"]) for i, trace in enumerate(traces)]

    # ------------------------------------------------------------------ one engine kept up
    def serve(self, warmup: Trace) -> None:
        """Start one engine (its runner's serve mode) and replay ``warmup`` on it, untimed."""
        self._tmp = tempfile.TemporaryDirectory()
        spec = Path(self._tmp.name) / "engine.json"
        spec.write_text(json.dumps(self._spec([])))
        log_path = self._log_path()
        t0 = time.time()
        self._log = open(log_path, "w")  # noqa: SIM115  (closed in close())
        self._proc = subprocess.Popen(
            [self.cfg.vllm_python, str(Path(__file__).with_name("vllm_runner.py")), "--serve", str(spec)],
            cwd=self._tmp.name,
            env=self._env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            start_new_session=True,  # its engine's worker processes go with it in close()
        )
        # the JSON object first: the engine's own processes share this stdout and may finish the line
        versions, _ = json.JSONDecoder().raw_decode(self._expect("BATON-READY") or "{}")
        self.meta = {"engine_start_s": time.time() - t0, **versions, "log": str(log_path), "mode": "serve"}
        if warmup:
            self._serve_run(warmup)

    def _expect(self, prefix: str) -> str:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            if line.startswith(prefix):
                return line[len(prefix) :].strip()
        tail = self._log_path().read_text()[-3000:]
        raise RuntimeError(f"vllm runner ended before {prefix} (exit {self._proc.poll()}):\n{tail}")

    def _serve_run(self, trace: Trace) -> RunResult:
        assert self._proc is not None and self._proc.stdin is not None and self._tmp is not None
        self._runs += 1
        path = Path(self._tmp.name) / f"run{self._runs}.json"
        path.write_text(json.dumps(self._run_spec(f"run{self._runs}", trace)))
        self._proc.stdin.write(f"{path}\n")
        self._proc.stdin.flush()
        out = self._expect("BATON-DONE").split()[0]  # a temp path, no spaces; the engine may add text
        return self._result(trace, json.loads(Path(out).read_text()))

    def close(self) -> None:
        if self._proc is not None:
            try:
                if self._proc.stdin is not None:
                    self._proc.stdin.write("\n")
                    self._proc.stdin.close()
                self._proc.wait(timeout=120)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
            with contextlib.suppress(OSError):  # what its engine left behind (a failed start leaks a worker)
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc = None
            self._log.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


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
