"""Replays benchmark traces on vLLM (CPU build); run by ``baton.bench.external`` with the vLLM venv's python.

Standalone on purpose: it imports only vLLM and the standard library (the vLLM venv has no baton).

    VLLM_CPU_OMP_THREADS_BIND=0-1 VLLM_CPU_NUM_OF_RESERVED_CPU=0 OMP_NUM_THREADS=2 VLLM_CPU_KVCACHE_SPACE=1 \
        /work/vllm-venv/bin/python baton/bench/vllm_runner.py IN.json OUT.json

IN.json: ``{"model", "max_batch_size", "max_seq_len", "order", "ngram", "runs": [{"name", "prompts": [[ids]],
"max_tokens": [n], "arrivals": [s]}]}``. ``order``: ``"fcfs"`` (default) runs vLLM's FCFS scheduler,
``"lof"`` (longest output first) its priority scheduler with each request's priority ``-max_tokens``
(lower goes first, then arrival); ``ngram`` K > 0 turns on its prompt-lookup speculative decoding
with K draft tokens. The engine (``AsyncLLM``) starts once; the first run is a warm-up. Each request
is submitted at its arrival offset and streamed, so TTFT is the time its first token reached this
process. OUT.json: ``{"engine_start_s", "runs": [{"name", "requests": [{"ttft_ms", "total_ms",
"n_out"}], "wall_s"}]}`` (times from each request's planned arrival).

    ... vllm_runner.py --serve SPEC.json

Serve mode (benchmarks that interleave systems run by run): the engine starts once from SPEC.json
(its "runs" are ignored), ``BATON-READY`` is printed on stdout, then each stdin line is the path of
a JSON file with one run; its result is written to that path + ``.out`` and ``BATON-DONE PATH.out``
is printed. An empty line or end of input stops the engine.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time


async def _one(
    engine, sp_cls, i: int, name: str, prompt: list[int], n: int, t0: float, off: float, lof: bool = False
) -> dict:
    from vllm.inputs import TokensPrompt

    await asyncio.sleep(max(0.0, t0 + off - time.perf_counter()))
    arrival = t0 + off
    sp = sp_cls(max_tokens=n, ignore_eos=True, temperature=0.0)
    first = None
    n_out = 0
    prio = {"priority": -n} if lof else {}
    async for out in engine.generate(TokensPrompt(prompt_token_ids=prompt), sp, f"{name}-{i}", **prio):
        n_out = len(out.outputs[0].token_ids)
        if first is None and n_out > 0:
            first = time.perf_counter()
    done = time.perf_counter()
    return {"ttft_ms": ((first or done) - arrival) * 1e3, "total_ms": (done - arrival) * 1e3, "n_out": n_out}


async def _run(engine, sp_cls, run: dict, lof: bool = False) -> dict:
    t0 = time.perf_counter() + 0.05
    reqs = await asyncio.gather(
        *(
            _one(engine, sp_cls, i, run["name"], p, n, t0, off, lof)
            for i, (p, n, off) in enumerate(
                zip(run["prompts"], run["max_tokens"], run["arrivals"], strict=True)
            )
        )
    )
    return {"name": run["name"], "requests": list(reqs), "wall_s": time.perf_counter() - t0}


def _lof(spec: dict) -> bool:
    return spec.get("order", "fcfs") == "lof"


def _spec_decode(spec: dict) -> dict:
    """``"ngram": K``: vLLM's prompt-lookup speculative decoding, K draft tokens per step."""
    k = int(spec.get("ngram", 0))
    if not k:
        return {}
    cfg = {"method": "ngram", "num_speculative_tokens": k, "prompt_lookup_max": 3, "prompt_lookup_min": 1}
    return {"speculative_config": cfg}


def _engine(spec: dict):
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    args = AsyncEngineArgs(
        model=spec["model"],
        dtype=spec.get("dtype", "float32"),
        enforce_eager=True,
        max_model_len=spec["max_seq_len"],
        max_num_seqs=spec["max_batch_size"],
        disable_log_stats=True,
        scheduling_policy="priority" if _lof(spec) else "fcfs",
        **_spec_decode(spec),
    )
    return AsyncLLM.from_engine_args(args)


async def _serve(spec: dict) -> None:
    import torch
    import vllm
    from vllm import SamplingParams

    engine = _engine(spec)
    loop = asyncio.get_running_loop()
    print("BATON-READY " + json.dumps({"vllm": vllm.__version__, "torch": torch.__version__}), flush=True)
    try:
        while True:
            line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
            if not line:
                break
            with open(line) as f:
                run = json.load(f)
            res = await _run(engine, SamplingParams, run, _lof(spec))
            with open(line + ".out", "w") as f:
                json.dump(res, f)
            print(f"BATON-DONE {line}.out", flush=True)
    finally:
        engine.shutdown()


async def _main(spec: dict) -> dict:
    from vllm import SamplingParams

    t = time.perf_counter()
    engine = _engine(spec)
    start_s = time.perf_counter() - t
    import torch
    import vllm

    out = {"engine_start_s": start_s, "vllm": vllm.__version__, "torch": torch.__version__, "runs": []}
    try:
        for run in spec["runs"]:
            res = await _run(engine, SamplingParams, run, _lof(spec))
            out["runs"].append(res)
            print(
                f"[vllm_runner] {run['name']}: {len(res['requests'])} requests in {res['wall_s']:.1f} s",
                file=sys.stderr,
                flush=True,
            )
    finally:
        engine.shutdown()
    return out


if __name__ == "__main__":
    if sys.argv[1] == "--serve":
        asyncio.run(_serve(json.loads(open(sys.argv[2]).read())))  # noqa: SIM115
        sys.exit(0)
    spec = json.loads(open(sys.argv[1]).read())  # noqa: SIM115
    result = asyncio.run(_main(spec))
    with open(sys.argv[2], "w") as f:
        json.dump(result, f)
