"""The ``baton`` command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from baton_core.errors import BatonError, ValidationError
from baton_core.models import DEFAULT_MODEL
from baton_core.request import Completion
from cluster.config import POLICIES, EngineConfig


def _read_specs(path: str) -> list:
    from cluster.requests_io import parse_spec

    specs: list = []
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        default_id = f"line-{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            specs.append(Completion(default_id, error=f"request: line {n} is not JSON ({e.msg})",
                                    error_field="request"))
            continue
        try:
            specs.append(parse_spec(obj, default_id))
        except ValidationError as e:
            rid = obj.get("id", default_id) if isinstance(obj, dict) else default_id
            specs.append(Completion(str(rid), error=str(e), error_field=e.field))
    return specs


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"local folder, hub id, or built-in name (default {DEFAULT_MODEL})")
    p.add_argument("--policy", default="baton", choices=POLICIES)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-seq-len", type=int, default=2048, help="KV columns per row (prompt + output)")
    p.add_argument("--max-prefill-tokens", type=int, default=4096)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--threads", type=int, default=0, help="in-process policies: total torch threads "
                   "(0 = all cores)")


def _add_cluster_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Ray cluster (policy baton)")
    g.add_argument("--ray-address", default=None, help="existing Ray cluster (default: $RAY_ADDRESS, else "
                   "start a local Ray on 127.0.0.1)")
    g.add_argument("--prefill-workers", type=int, default=1)
    g.add_argument("--decode-workers", type=int, default=1)
    for role in ("prefill", "decode"):
        g.add_argument(f"--{role}-num-cpus", type=float, default=1.0, help=f"CPUs per {role} worker "
                       "(its torch threads)")
        g.add_argument(f"--{role}-num-gpus", type=float, default=None, help=f"GPUs per {role} worker "
                       "(default 1 on cuda, 0 on cpu)")
        g.add_argument(f"--{role}-resources", default=None, help=f"custom Ray resources per {role} worker, "
                       f'JSON, e.g. \'{{"baton_{role}": 1}}\'')
    g.add_argument("--object-store-mb", type=int, default=2048, help="local Ray only: object store size")
    g.add_argument("--max-queue", type=int, default=1024, help="admission queue bound")
    g.add_argument("--local", action="store_true", help="run policy baton in this process (prefill on a "
                   "thread) instead of on Ray actors")


def cluster_config(args: argparse.Namespace):
    from cluster.ray_cluster import ClusterConfig, parse_resources

    gpus = 1.0 if args.device.startswith("cuda") else 0.0
    return ClusterConfig(
        model=args.model, device=args.device, dtype=args.dtype, prefill_workers=args.prefill_workers,
        decode_workers=args.decode_workers, max_batch_size=args.max_batch_size, max_seq_len=args.max_seq_len,
        max_prefill_tokens=args.max_prefill_tokens, max_queue=args.max_queue,
        prefill_num_cpus=args.prefill_num_cpus, decode_num_cpus=args.decode_num_cpus,
        prefill_num_gpus=gpus if args.prefill_num_gpus is None else args.prefill_num_gpus,
        decode_num_gpus=gpus if args.decode_num_gpus is None else args.decode_num_gpus,
        prefill_resources=parse_resources(args.prefill_resources, "prefill_resources"),
        decode_resources=parse_resources(args.decode_resources, "decode_resources"),
        ray_address=args.ray_address, object_store_bytes=args.object_store_mb * 1024**2,
    )


def _run_on_ray(args: argparse.Namespace, specs: list) -> list[Completion]:
    from cluster.ray_cluster import Cluster
    from cluster.requests_io import tokenize

    cfg = cluster_config(args)
    with Cluster(cfg).start(log=lambda m: print(m, file=sys.stderr)) as cluster:
        results: dict[int, Completion] = {}
        trace, index = [], {}
        for i, spec in enumerate(specs):
            if isinstance(spec, Completion):
                results[i] = spec
                continue
            try:
                req = tokenize(spec, cluster.tokenizer, cluster.limits)
            except BatonError as e:
                results[i] = Completion(spec.request_id, error=str(e), error_field=getattr(e, "field", None))
                continue
            if req.request_id in index:
                results[i] = Completion(spec.request_id, error=f"id: duplicate request id {req.request_id!r}",
                                        error_field="id")
                continue
            index[req.request_id] = i
            trace.append((req, spec.arrival_s))
        for c in cluster.run_trace(trace):
            results[index[c.request_id]] = c
        st = cluster.decode_stats()
        blocked = max((s["stats"]["max_blocked_ms"] for s in st), default=0.0)
        steps = sum(s["stats"]["steps"] for s in st)
        print(f"[baton] decode workers: {steps} steps, longest time a step waited on anything but its own "
              f"work: {blocked:.3f} ms", file=sys.stderr)
    return [results[i] for i in range(len(specs))]


def cmd_run(args: argparse.Namespace) -> int:
    from baton_core.models import load_model
    from cluster.engine import run_specs

    cfg = EngineConfig(model=args.model, policy=args.policy, max_batch_size=args.max_batch_size,
                       max_seq_len=args.max_seq_len, max_prefill_tokens=args.max_prefill_tokens,
                       device=args.device, dtype=args.dtype, threads=args.threads)
    specs = _read_specs(args.requests)
    t0 = time.time()
    if cfg.policy == "baton" and not args.local:
        results = _run_on_ray(args, specs)
        wall = time.time() - t0
        stats_line = ""
    else:
        lm = load_model(cfg.model, cfg.device, cfg.dtype)
        print(f"[baton] loaded {cfg.model} in {time.time() - t0:.1f} s; {len(specs)} requests, "
              f"policy {cfg.policy} (in-process)", file=sys.stderr)
        t0 = time.time()
        results, stats = run_specs(lm, cfg, specs)
        wall = time.time() - t0
        stats_line = (f"; {stats.steps} decode steps, stall {stats.stall_ms:.0f} ms, "
                      f"padding share {stats.to_dict()['padding_share']:.2%}")
    out = sys.stdout if args.out == "-" else open(args.out, "w")  # noqa: SIM115
    try:
        for c in results:
            out.write(json.dumps(c.to_json(), ensure_ascii=False) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    ok = [c for c in results if c.error is None]
    toks = sum(len(c.token_ids) for c in ok)
    print(f"[baton] {len(ok)} completed, {len(results) - len(ok)} rejected; {toks} tokens in {wall:.2f} s "
          f"({toks / wall if wall else 0:.1f} tok/s){stats_line}", file=sys.stderr)
    if args.show:
        for c in results:
            if c.error:
                print(f"--- {c.request_id}: ERROR {c.error}")
            else:
                print(f"--- {c.request_id} [{c.finish_reason}, {len(c.token_ids)} tokens, "
                      f"ttft {c.timings['ttft']:.0f} ms]\n{c.text.strip()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="baton", description="BATON disaggregated LLM serving")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="offline: run a JSONL file of requests, write JSONL results")
    _add_engine_args(run)
    run.add_argument("--requests", required=True, help="input JSONL ('-' for stdin)")
    run.add_argument("--out", default="-", help="output JSONL ('-' for stdout)")
    run.add_argument("--show", action="store_true", help="print each answer's text")
    _add_cluster_args(run)
    run.set_defaults(func=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (BatonError, ValueError) as e:
        print(f"baton: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
