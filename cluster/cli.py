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
    p.add_argument("--threads", type=int, default=0, help="total torch threads (0 = all cores)")


def cmd_run(args: argparse.Namespace) -> int:
    from baton_core.models import load_model
    from cluster.engine import run_specs

    cfg = EngineConfig(model=args.model, policy=args.policy, max_batch_size=args.max_batch_size,
                       max_seq_len=args.max_seq_len, max_prefill_tokens=args.max_prefill_tokens,
                       device=args.device, dtype=args.dtype, threads=args.threads)
    specs = _read_specs(args.requests)
    t0 = time.time()
    lm = load_model(cfg.model, cfg.device, cfg.dtype)
    print(f"[baton] loaded {cfg.model} in {time.time() - t0:.1f} s; {len(specs)} requests, "
          f"policy {cfg.policy}", file=sys.stderr)
    t0 = time.time()
    results, stats = run_specs(lm, cfg, specs)
    wall = time.time() - t0
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
          f"({toks / wall if wall else 0:.1f} tok/s); {stats.steps} decode steps, "
          f"stall {stats.stall_ms:.0f} ms, padding share {stats.to_dict()['padding_share']:.2%}",
          file=sys.stderr)
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
