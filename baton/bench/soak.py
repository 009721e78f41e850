"""Soak: a real cluster serving many requests over gRPC, a seeded share of them cut short, while the
decode worker's memory is watched. Not a timed test: it checks that nothing is left behind.

    python -m baton.bench.soak [--model tiny|smollm2-135m|PATH] [--requests 400] [--concurrency 16]

1 prefill + 1 decode worker on a local Ray cluster (127.0.0.1) behind a real grpc.aio server.
Each request's fate is drawn from ``--seed``: cancelled by the client after some chunks
(``--cancel-frac``), a short deadline (``--deadline-frac``), aborted by id with ``Abort``
(``--abort-frac``), or left to complete. Every ``--sample-s`` the decode worker's RSS
(``/proc/PID/status``) and the server's live rows and queues are sampled. At the end it reports
and checks: 0 live rows, 0 waiting and no request state left; every request accounted for
(completed, cancelled, deadline, aborted; no error); RSS flat after warm-up (the first
``--warmup-frac`` of the requests), as first-after-warm-up vs end and a slope. Exit code 1 when a
check fails. ``--model tiny`` (the default) builds a tiny random Llama for the run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from baton.bench.common import (
    Outputs,
    Progress,
    add_output_arguments,
    command_line,
    machine_info,
    md_table,
    setup_logging,
    write_json,
)

log = logging.getLogger("baton.bench")
NAME = "soak"
PROG = "python -m baton.bench.soak"
FATES = ("complete", "cancel", "deadline", "abort")
OUTCOMES = ("completed", "cancelled", "deadline", "aborted", "error")
# What each planned fate may end as: a request can finish before its cut comes.
ALLOWED = {
    "complete": {"completed"},
    "cancel": {"cancelled", "completed"},
    "deadline": {"deadline", "completed"},
    "abort": {"aborted", "completed"},
}


@dataclass(frozen=True)
class Plan:
    """One request of the soak: its prompt, length and fate (with when the cut comes)."""

    request_id: str
    prompt: tuple[int, ...]
    max_tokens: int
    fate: str
    cut_after: int = 0  # cancel / abort: after this many chunks
    timeout_s: float | None = None  # deadline


def plan_requests(args: argparse.Namespace, vocab: int) -> list[Plan]:
    rng = random.Random(args.seed)
    weights = [1 - args.cancel_frac - args.deadline_frac - args.abort_frac]
    weights += [args.cancel_frac, args.deadline_frac, args.abort_frac]
    lo, hi = args.prompt_len
    plans = []
    for i in range(args.requests):
        fate = rng.choices(FATES, weights)[0]
        prompt = tuple(rng.randrange(2, vocab) for _ in range(rng.randint(lo, hi)))
        max_tokens = rng.randint(max(2, args.max_tokens // 4), args.max_tokens)
        plans.append(
            Plan(
                f"soak-{i}",
                prompt,
                max_tokens,
                fate,
                cut_after=rng.randint(1, max_tokens - 1) if fate in ("cancel", "abort") else 0,
                timeout_s=rng.uniform(*args.deadline_s) if fate == "deadline" else None,
            )
        )
    return plans


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument(
        "--model", default="tiny", help="tiny (a random Llama built for the run), a name or a path"
    )
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight at once")
    p.add_argument("--max-tokens", type=int, default=64, help="most tokens a request asks for")
    p.add_argument("--prompt-len", type=_pair(int, 1), default=(8, 96), help="LO:HI prompt tokens")
    p.add_argument("--cancel-frac", type=float, default=0.3)
    p.add_argument("--deadline-frac", type=float, default=0.1)
    p.add_argument("--abort-frac", type=float, default=0.1)
    p.add_argument("--deadline-s", type=_pair(float, 0.001), default=(0.05, 0.8), help="LO:HI seconds")
    p.add_argument(
        "--warmup-frac",
        type=float,
        default=0.5,
        help="share of requests before RSS counts (the KV buffers' pages are first touched meanwhile)",
    )
    p.add_argument("--rss-tolerance-mb", type=float, default=32.0, help="most RSS growth after warm-up")
    p.add_argument("--sample-s", type=float, default=0.5, help="sampling period of RSS and rows")
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--max-seq-len", type=int, default=512)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--runtime", default="auto")
    p.add_argument("--seed", type=int, default=0)
    add_output_arguments(p, NAME)
    args = p.parse_args(argv)
    if not 0 <= args.cancel_frac + args.deadline_frac + args.abort_frac <= 1:
        p.error("--cancel-frac + --deadline-frac + --abort-frac: must be in [0, 1]")
    if args.requests < 1 or args.concurrency < 1 or args.max_tokens < 2:
        p.error("--requests and --concurrency must be >= 1, --max-tokens >= 2")
    if args.prompt_len[1] + args.max_tokens > args.max_seq_len:
        p.error("--prompt-len HI + --max-tokens: must fit --max-seq-len")
    return args


def _pair(cast, low):
    """An argparse type: ``LO:HI`` (or one value for both) with ``low <= LO <= HI``."""

    def parse(text: str):
        lo, _, hi = text.partition(":")
        try:
            a, b = cast(lo), cast(hi or lo)
        except ValueError:
            a, b = low, None
        if b is None or not low <= a <= b:
            raise argparse.ArgumentTypeError(f"expected LO:HI with {low} <= LO <= HI, got {text!r}")
        return a, b

    return parse


# ---------------------------------------------------------------------------------------------- sampling
def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise OSError(f"no VmRSS for pid {pid}")


def server_info(stub):
    from baton.v1 import generation_pb2 as pb

    return stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=10)


def server_load(stub) -> dict[str, int]:
    info = server_info(stub)
    decode = [w for w in info.workers if w.role == "decode"]
    return {
        "live_rows": sum(w.live_rows for w in decode),
        "waiting": sum(w.waiting for w in decode),
        "queue": info.queue_depth,
        "in_prefill": info.in_prefill,
        "pending": info.pending_decode,
    }


class Sampler:
    """A thread sampling the decode worker's RSS and the server's load every ``period`` s."""

    def __init__(self, pid: int, target: str, period: float, done: Counter):
        import grpc

        from baton.v1 import generation_pb2_grpc as pb_grpc

        self.pid, self.period, self.done = pid, period, done
        self.channel = grpc.insecure_channel(target)
        self.stub = pb_grpc.GenerationStub(self.channel)
        self.samples: list[dict[str, Any]] = []
        self.t0 = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-sampler", daemon=True)

    def sample(self) -> dict[str, Any]:
        s = {"t_s": time.time() - self.t0, "rss_mb": rss_mb(self.pid), "done": sum(self.done.values())}
        s.update(server_load(self.stub))
        self.samples.append(s)
        return s

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.sample()

    def start(self) -> Sampler:
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self.channel.close()


# ---------------------------------------------------------------------------------------------- the client
async def one(client, plan: Plan) -> dict[str, Any]:
    """Run one planned request; its observed outcome and chunk count."""
    import grpc

    call = client.generate(
        list(plan.prompt),
        max_tokens=plan.max_tokens,
        ignore_eos=plan.fate != "complete",
        stream=True,
        request_id=plan.request_id,
        timeout=plan.timeout_s,
    )
    chunks, outcome, t0 = 0, "error", time.time()
    try:
        async for r in call:
            if r.WhichOneof("kind") == "complete":
                aborted = r.complete.finish_reason == 4  # pb.ABORT
                outcome = "aborted" if aborted else "completed"
                break
            chunks += 1
            if plan.fate == "cancel" and chunks == plan.cut_after:
                call.cancel()  # the server sees the call end and frees the row
                outcome = "cancelled"
                break
            if plan.fate == "abort" and chunks == plan.cut_after:
                try:
                    await client.abort(plan.request_id)
                except grpc.RpcError as e:  # NOT_FOUND: it finished first; the stream says how
                    if e.code() != grpc.StatusCode.NOT_FOUND:
                        raise
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.CANCELLED:
            outcome = "cancelled"
        elif e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            outcome = "deadline"
        else:
            log.error(f"{plan.request_id}: {e.code().name}: {e.details()}")
    return {
        "request_id": plan.request_id,
        "fate": plan.fate,
        "outcome": outcome,
        "chunks": chunks,
        "s": time.time() - t0,
    }


async def drive(target: str, plans: list[Plan], concurrency: int, done: Counter, report) -> list[dict]:
    from baton.client import AsyncBatonClient

    client = AsyncBatonClient(target)
    gate = asyncio.Semaphore(concurrency)

    async def guarded(plan: Plan) -> dict:
        async with gate:
            r = await one(client, plan)
        done[r["outcome"]] += 1
        report()
        return r

    try:
        return list(await asyncio.gather(*(guarded(p) for p in plans)))
    finally:
        await client.close()


# ---------------------------------------------------------------------------------------------- figures
def _slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs (0 for fewer than two distinct xs)."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0


def rss_figures(samples: list[dict], warm_done: int) -> dict[str, Any]:
    """RSS at the first sample after warm-up and at the end, and its slopes after warm-up (per minute
    and per 100 requests finished)."""
    after = [s for s in samples if s["done"] >= warm_done] or samples[-1:]
    ys = [s["rss_mb"] for s in after]
    return {
        "rss_start_mb": samples[0]["rss_mb"],
        "rss_after_warmup_mb": ys[0],
        "rss_end_mb": ys[-1],
        "rss_max_mb": max(s["rss_mb"] for s in samples),
        "rss_growth_after_warmup_mb": ys[-1] - ys[0],
        "rss_slope_mb_per_min": 60 * _slope([s["t_s"] for s in after], ys),
        "rss_slope_mb_per_100_requests": 100 * _slope([s["done"] for s in after], ys),
        "warmup_t_s": after[0]["t_s"],
        "samples_after_warmup": len(after),
    }


def settle(stub, timeout: float = 30.0) -> dict[str, int]:
    """The server's load once nothing is in flight (or at the deadline)."""
    deadline = time.time() + timeout
    while True:
        load = server_load(stub)
        if not any(load.values()) or time.time() > deadline:
            return load
        time.sleep(0.2)


def summarize(
    args, results: list[dict], samples: list[dict], final: dict, states_left: int
) -> dict[str, Any]:
    outcomes = Counter(r["outcome"] for r in results)
    planned = Counter(r["fate"] for r in results)
    off_plan = [r["request_id"] for r in results if r["outcome"] not in ALLOWED[r["fate"]]]
    rss = rss_figures(samples, int(args.warmup_frac * args.requests))
    checks = {
        "no_rows_left": not any(final.values()) and states_left == 0,
        "all_accounted": sum(outcomes.values()) == args.requests and not off_plan,
        "no_errors": outcomes["error"] == 0,
        "rss_flat": abs(rss["rss_growth_after_warmup_mb"]) <= args.rss_tolerance_mb,
    }
    return {
        "requests": args.requests,
        "planned": {f: planned[f] for f in FATES},
        "outcomes": {o: outcomes[o] for o in OUTCOMES},
        "off_plan": off_plan,
        "final_load": final,
        "router_states_left": states_left,
        **rss,
        "checks": checks,
        "ok": all(checks.values()),
    }


def plot(samples: list[dict], summary: dict, meta: dict, out: Outputs) -> Path | None:
    from baton.bench.plots import soak_plot

    return soak_plot(samples, summary, meta, out.plot())


def table(summary: dict) -> list[str]:
    o = summary["outcomes"]
    return md_table(
        [
            {
                "requests": summary["requests"],
                "completed / cancelled / deadline / aborted / error": " / ".join(str(o[k]) for k in OUTCOMES),
                "rows + waiting left": summary["final_load"]["live_rows"] + summary["final_load"]["waiting"],
                "RSS after warm-up -> end (MiB)": f"{summary['rss_after_warmup_mb']:.1f} -> "
                f"{summary['rss_end_mb']:.1f}",
                "RSS slope (MiB/min, MiB/100 req)": f"{summary['rss_slope_mb_per_min']:+.2f}, "
                f"{summary['rss_slope_mb_per_100_requests']:+.2f}",
                "checks": "pass"
                if summary["ok"]
                else "FAIL: " + ", ".join(k for k, v in summary["checks"].items() if not v),
            }
        ]
    )


# ---------------------------------------------------------------------------------------------- main
def serve(model: str, args: argparse.Namespace):
    """A cluster (1 prefill + 1 decode) and a gRPC server on 127.0.0.1: (cluster, server, target)."""
    import socket

    from cluster.grpc_server import GrpcServer
    from cluster.ray_cluster import Cluster, ClusterConfig

    cfg = ClusterConfig(
        model=model,
        dtype=args.dtype,
        runtime=args.runtime,
        max_batch_size=args.max_batch_size,
        max_seq_len=args.max_seq_len,
        object_store_bytes=512 * 1024**2,
    )
    cluster = Cluster(cfg).start(log=log.info)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def make():
        server = GrpcServer(cluster, Path(model).name, "127.0.0.1", port)
        await server.start()
        return server

    try:
        return cluster, cluster.call(make()), f"127.0.0.1:{port}"
    except Exception:
        cluster.shutdown()
        raise


def run(args: argparse.Namespace, model: str, command: str) -> dict[str, Any]:
    cluster, server, target = serve(model, args)
    try:
        decode = next(i for i in cluster.infos if i["role"] == "decode")
        plans = plan_requests(args, cluster.limits.vocab_size)
        done: Counter = Counter()
        sampler = Sampler(decode["pid"], target, args.sample_s, done).start()
        progress = Progress(args.requests)
        step = max(1, args.requests // 20)

        def report() -> None:
            line = progress.advance()
            if progress.done % step == 0 or progress.done == args.requests:
                s = sampler.samples[-1]
                log.info(f"{line} decode RSS {s['rss_mb']:.1f} MiB, live rows {s['live_rows']}, {dict(done)}")

        log.info(f"soak: {args.requests} requests, {args.concurrency} at a time, decode pid {decode['pid']}")
        t0 = time.time()
        # A loop of its own, left open: grpc.aio's poller may still deliver events of cancelled calls
        # after the last one ends, and a closed loop would make each a logged RuntimeError.
        results = asyncio.new_event_loop().run_until_complete(
            drive(target, plans, args.concurrency, done, report)
        )
        wall = time.time() - t0
        final = settle(sampler.stub)
        kv_mib = sum(w.kv_bytes for w in server_info(sampler.stub).workers if w.role == "decode") / 2**20
        sampler.sample()  # the end point: nothing in flight
        sampler.stop()

        async def states() -> int:
            return len(cluster.router.states)

        states_left = cluster.call(states())
        summary = summarize(args, results, sampler.samples, final, states_left)
        summary["wall_s"] = wall
        summary["decode_kv_buffer_mb"] = kv_mib
        meta = {
            "command": command,
            "model": model,
            "args": {k: v for k, v in vars(args).items() if k not in ("out_dir", "name")},
            "runtime": decode.get("runtime", ""),
            "dtype": decode.get("dtype", ""),
            "machine": machine_info(),
        }
        return {
            "meta": meta,
            "summary": summary,
            "samples": sampler.samples,
            "requests": results,
            "plans": [asdict(p) | {"prompt": len(p.prompt)} for p in plans],
        }
    finally:
        cluster.call(server.drain(1.0))
        cluster.shutdown()


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = parse_args(argv)
    out = Outputs.of(args.out_dir, args.name or NAME)
    command = command_line(PROG, argv)
    with contextlib.ExitStack() as stack:
        model = args.model
        if model == "tiny":
            from baton.bench import tiny_models

            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="baton-soak-")))
            model = str(tiny_models.build("llama", tmp / "tiny-llama"))
        data = run(args, model, command)
    summary, meta = data["summary"], data["meta"]
    write_json(out.raw(".json"), data)
    out.publish({"meta": {k: v for k, v in meta.items() if k != "machine"}, **summary})
    path = plot(data["samples"], summary, meta, out)
    print("\n".join(table(summary)))
    print(f"\n{command}" + (f"\nplot: {path}" if path else ""))
    if not summary["ok"]:
        log.error(f"soak failed: {summary['checks']}")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
