"""The ``baton`` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path

from baton.core.config import COMPILE, DTYPES, POLICIES, QUEUE_ORDERS, RUNTIMES, EngineConfig
from baton.core.errors import BatonError, ValidationError
from baton.core.models import DEFAULT_MODEL
from baton.core.request import Completion

log = logging.getLogger("baton.cli")
NO_TEMPLATE = "messages: this model has no chat template"


def _read_specs(path: str) -> list:
    from baton.core.requests_io import parse_spec

    specs: list = []
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        default_id = f"line-{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            specs.append(
                Completion(
                    default_id, error=f"request: line {n} is not JSON ({e.msg})", error_field="request"
                )
            )
            continue
        try:
            specs.append(parse_spec(obj, default_id))
        except ValidationError as e:
            rid = obj.get("id", default_id) if isinstance(obj, dict) else default_id
            specs.append(Completion(str(rid), error=str(e), error_field=e.field))
    return specs


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"local folder, hub id, or built-in name (default {DEFAULT_MODEL})",
    )
    p.add_argument("--policy", default="baton", choices=POLICIES)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-seq-len", type=int, default=2048, help="KV columns per row (prompt + output)")
    p.add_argument(
        "--max-prefill-tokens",
        type=int,
        default=0,
        help="padded prompt tokens per prefill forward (0: 256 on cpu, 4096 on cuda)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPES,
        help="auto: bfloat16 on CUDA and, with the fast runtime, on CPUs with bf16 units; else float32",
    )
    p.add_argument(
        "--runtime",
        default="auto",
        choices=RUNTIMES,
        help="fast: baton's own Llama-family forward; hf: transformers (any family); auto: fast where supported",
    )
    p.add_argument(
        "--compile",
        default="auto",
        choices=COMPILE,
        help="compile the fast runtime's steps at worker start-up (auto: on CUDA and for bf16/fp16 on the CPU)",
    )
    p.add_argument(
        "--threads", type=int, default=0, help="in-process policies: total torch threads (0 = all cores)"
    )
    p.add_argument(
        "--queue-order",
        default="fcfs",
        choices=QUEUE_ORDERS,
        help="which waiting request goes next: fcfs, or lof (longest output first: most max_tokens first; "
        "drains a burst or a batch job together, so it ends sooner)",
    )
    p.add_argument(
        "--queue-max-wait-s",
        type=float,
        default=60.0,
        help="with --queue-order lof: a request waiting this long goes first anyway (no starvation)",
    )


def _add_cluster_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Ray cluster (policy baton)")
    g.add_argument(
        "--ray-address",
        default=None,
        help="existing Ray cluster (default: $RAY_ADDRESS, else start a local Ray on 127.0.0.1)",
    )
    g.add_argument("--prefill-workers", type=int, default=1)
    g.add_argument("--decode-workers", type=int, default=1)
    for role in ("prefill", "decode"):
        g.add_argument(
            f"--{role}-num-cpus", type=float, default=1.0, help=f"CPUs per {role} worker (its torch threads)"
        )
        g.add_argument(
            f"--{role}-num-gpus",
            type=float,
            default=None,
            help=f"GPUs per {role} worker (default 1 on cuda, 0 on cpu)",
        )
        g.add_argument(
            f"--{role}-resources",
            default=None,
            help=f"custom Ray resources per {role} worker, JSON, e.g. '{{\"baton_{role}\": 1}}'",
        )
    g.add_argument("--object-store-mb", type=int, default=2048, help="local Ray only: object store size")
    g.add_argument("--max-queue", type=int, default=1024, help="admission queue bound")
    g.add_argument(
        "--max-restarts",
        type=int,
        default=3,
        help="restarts of a dead worker (Ray restarts it and it loads the model again); 0: never",
    )
    g.add_argument(
        "--max-request-retries",
        type=int,
        default=3,
        help="times a request whose worker died is prefilled again (migrated) before it fails",
    )
    g.add_argument(
        "--no-share-cores",
        dest="share_cores",
        action="store_false",
        help="keep each worker's threads fixed (by default a prefill and a decode worker alone on one "
        "CPU node borrow each other's cores while the other has no work)",
    )
    g.add_argument(
        "--spill-prefill-tokens",
        type=int,
        default=0,
        help="> 0: on a CPU node whose workers ask for more CPUs than it has (e.g. --prefill-workers 2 on 2 "
        "cores), prefill workers beyond the first run on the decode worker's cores and take calls only "
        "while this many prompt tokens wait, e.g. 1024 (default 0: off, all prefill workers alike)",
    )
    g.add_argument(
        "--spill-nice",
        type=int,
        default=4,
        help="nice levels those spill prefill workers run below the others (capped at nice 19; Ray's workers "
        "run at 15), so the decode worker keeps most of its cores",
    )
    g.add_argument(
        "--local",
        action="store_true",
        help="run policy baton in this process (prefill on a thread) instead of on Ray actors",
    )


def serving_fields(args: argparse.Namespace) -> dict:
    """The ServingConfig fields every deployment takes from the engine flags."""
    names = (
        "model",
        "device",
        "dtype",
        "runtime",
        "compile",
        "max_batch_size",
        "max_seq_len",
        "max_prefill_tokens",
        "queue_order",
        "queue_max_wait_s",
    )
    return {name: getattr(args, name) for name in names}


def cluster_config(args: argparse.Namespace):
    from baton.core.config import ClusterConfig, parse_resources

    gpus = 1.0 if args.device.startswith("cuda") else 0.0
    return ClusterConfig(
        **serving_fields(args),
        prefill_workers=args.prefill_workers,
        decode_workers=args.decode_workers,
        max_queue=args.max_queue,
        max_restarts=args.max_restarts,
        max_request_retries=args.max_request_retries,
        share_cores=args.share_cores,
        spill_prefill_tokens=args.spill_prefill_tokens,
        spill_nice=args.spill_nice,
        prefill_num_cpus=args.prefill_num_cpus,
        decode_num_cpus=args.decode_num_cpus,
        prefill_num_gpus=gpus if args.prefill_num_gpus is None else args.prefill_num_gpus,
        decode_num_gpus=gpus if args.decode_num_gpus is None else args.decode_num_gpus,
        prefill_resources=parse_resources(args.prefill_resources, "prefill_resources"),
        decode_resources=parse_resources(args.decode_resources, "decode_resources"),
        ray_address=args.ray_address,
        object_store_bytes=args.object_store_mb * 1024**2,
    )


def _run_on_ray(args: argparse.Namespace, specs: list) -> tuple[list[Completion], float]:
    from baton.core.requests_io import Batch
    from cluster.ray_cluster import Cluster

    cfg = cluster_config(args)
    with Cluster(cfg).start() as cluster:
        batch = Batch(specs, cluster.tokenizer, cluster.limits)
        t0 = time.time()
        results = batch.merge(cluster.run_trace(batch.trace))
        wall = time.time() - t0
        st = cluster.decode_stats()
        blocked = max((s["stats"]["max_blocked_ms"] for s in st), default=0.0)
        steps = sum(s["stats"]["steps"] for s in st)
        log.info(
            "decode workers: %d steps, longest time a step waited on anything but its own work: %.3f ms",
            steps,
            blocked,
        )
    return results, wall


def cmd_run(args: argparse.Namespace) -> int:
    from baton.core.models import load_serving_model
    from baton.engine import run_specs

    cfg = EngineConfig(**serving_fields(args), policy=args.policy, threads=args.threads)
    specs = _read_specs(args.requests)
    t0 = time.time()
    if cfg.policy == "baton" and not args.local:
        results, wall = _run_on_ray(args, specs)  # wall: the requests' run, without cluster start-up
        stats_line = ""
        # Errors that name no field are the cluster's (a worker lost), not the request's.
        failure = next((c.error for c in results if c.error and c.error_field is None), None)
    else:
        lm = load_serving_model(cfg)
        log.info(
            "loaded %s in %.1f s (runtime %s, %s); %d requests, policy %s (in-process)",
            cfg.model,
            time.time() - t0,
            lm.runtime.name,
            lm.dtype_name,
            len(specs),
            cfg.policy,
        )
        t0 = time.time()
        results, stats = run_specs(lm, cfg, specs)
        wall = time.time() - t0
        stats_line = (
            f"; {stats.steps} decode steps, stall {stats.stall_ms:.0f} ms, "
            f"padding share {stats.to_dict()['padding_share']:.2%}"
        )
        failure = stats.failure
    out = sys.stdout if args.out == "-" else open(args.out, "w")  # noqa: SIM115
    try:
        for c in results:
            out.write(json.dumps(c.to_json(), ensure_ascii=False) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    ok = [c for c in results if c.error is None]
    toks = sum(len(c.token_ids) for c in ok)
    print(
        f"[baton] {len(ok)} completed, {len(results) - len(ok)} rejected; {toks} tokens in {wall:.2f} s "
        f"({toks / wall if wall else 0:.1f} tok/s){stats_line}",
        file=sys.stderr,
    )
    if args.show:
        for c in results:
            if c.error:
                print(f"--- {c.request_id}: ERROR {c.error}")
            else:
                print(
                    f"--- {c.request_id} [{c.finish_reason}, {len(c.token_ids)} tokens, "
                    f"ttft {c.timings['ttft']:.0f} ms]\n{c.text.strip()}"
                )
    if failure:
        print(f"baton: error: {failure}; every completed result was written", file=sys.stderr)
        return 1
    return 0


def _read_token(args: argparse.Namespace) -> str | None:
    import os

    if getattr(args, "auth_token_file", None):
        return Path(args.auth_token_file).read_text().strip() or None
    return args.auth_token or os.environ.get("BATON_AUTH_TOKEN") or None


def cmd_serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    from cluster.grpc_server import GrpcServer
    from cluster.http_server import HttpServer
    from cluster.ray_cluster import Cluster

    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("tls_cert: --tls-cert and --tls-key go together")
    for name in ("http_port", "metrics_port"):
        port = getattr(args, name)
        if port is not None and not 0 <= port < 65536:
            raise ValueError(f"{name}: must be a TCP port in [0, 65535], got {port}")
    token = _read_token(args)
    cert = Path(args.tls_cert).read_bytes() if args.tls_cert else None
    key = Path(args.tls_key).read_bytes() if args.tls_key else None
    stop = threading.Event()
    cluster = Cluster(cluster_config(args)).start()
    # After ray.init, which installs handlers of its own: ours drain instead of dying mid-request.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:

        async def make() -> list:
            servers: list = [
                GrpcServer(cluster, args.model, args.host, args.port, token, cert, key, args.max_prompt_bytes)
            ]
            if args.http_port is not None:
                servers.append(
                    HttpServer(cluster, args.model, args.host, args.http_port, token, args.max_prompt_bytes)
                )
            if args.metrics_port is not None:
                servers.append(
                    HttpServer(cluster, args.model, args.host, args.metrics_port, metrics_only=True)
                )
            for server in servers:
                await server.start()
            return servers

        servers = cluster.call(make())
        extra = "".join(
            f"; {'metrics' if s.metrics_only else 'OpenAI HTTP'} on {args.host}:{s.port}" for s in servers[1:]
        )
        log.info(
            "serving %s on %s:%d (gRPC%s%s)%s; health SERVING",
            args.model,
            args.host,
            servers[0].port,
            ", TLS" if cert else "",
            ", auth" if token else "",
            extra,
        )
        code = 0
        while not stop.wait(1.0):
            if (
                not cluster.router.healthy
            ):  # workers lost (node gone, Ray down): let the supervisor restart us
                log.error("no live prefill or decode worker left; exiting")
                code = 1
                break
        log.info("draining (up to %.0f s for in-flight calls)", args.drain_grace)

        async def drain() -> None:
            await asyncio.gather(*(s.drain(args.drain_grace) for s in servers))

        cluster.call(drain())
    finally:
        cluster.shutdown()
    log.info("stopped")
    return code


def cmd_generate(args: argparse.Namespace) -> int:
    import grpc

    from baton.client import BatonClient

    ca = Path(args.tls_ca).read_bytes() if args.tls_ca else None
    if args.token_ids:
        prompt = [int(t) for t in args.prompt.split(",")]
    elif args.raw:
        prompt = args.prompt
    else:  # chat: the server renders the model's chat template (raw text if the model has none)
        prompt = [{"role": "user", "content": args.prompt}]
    kw = dict(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        stop=args.stop or (),
        ignore_eos=args.ignore_eos,
    )
    with BatonClient(
        args.server, auth_token=_read_token(args), tls=args.tls, ca=ca, server_name=args.tls_server_name
    ) as client:
        try:
            try:
                last = _generate(client, prompt, args, kw)
            except grpc.RpcError as e:
                if not (isinstance(prompt, list) and NO_TEMPLATE in (e.details() or "")):
                    raise
                log.debug("the model has no chat template: sending the prompt as raw text")
                last = _generate(client, args.prompt, args, kw)
        except grpc.RpcError as e:
            print(f"baton: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    from baton.v1 import generation_pb2 as pb

    print(
        f"[{pb.FinishReason.Name(last.finish_reason).lower()}; {last.usage.completion_tokens} tokens; "
        f"ttft {last.timing.ttft_ms:.0f} ms; total {last.timing.total_ms:.0f} ms]",
        file=sys.stderr,
    )
    return 0


def _generate(client, prompt, args: argparse.Namespace, kw: dict):
    """One Generate call, its text printed (streamed or whole); returns the Complete."""
    if not args.stream:
        last = client.complete(prompt, timeout=args.timeout, **kw)
        print(last.text)
        return last
    last = None
    for r in client.generate(prompt, timeout=args.timeout, stream=True, **kw):
        if r.WhichOneof("kind") == "chunk":
            sys.stdout.write(r.chunk.text)
            sys.stdout.flush()
        last = r.complete
    sys.stdout.write("\n")
    return last


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="baton", description="BATON disaggregated LLM serving")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="offline: run a JSONL file of requests, write JSONL results")
    _add_engine_args(run)
    run.add_argument("--requests", required=True, help="input JSONL ('-' for stdin)")
    run.add_argument("--out", default="-", help="output JSONL ('-' for stdout)")
    run.add_argument("--show", action="store_true", help="print each answer's text")
    _add_cluster_args(run)
    _add_log_args(run)
    run.set_defaults(func=cmd_run)

    serve = sub.add_parser("serve", help="serve the gRPC API on a Ray cluster until SIGINT/SIGTERM")
    _add_engine_args(serve)
    _add_cluster_args(serve)
    serve.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 in a container)")
    serve.add_argument("--port", type=int, default=50051)
    serve.add_argument(
        "--auth-token",
        default=None,
        help="require 'authorization: Bearer TOKEN' (default: $BATON_AUTH_TOKEN; off when empty)",
    )
    serve.add_argument("--auth-token-file", default=None, help="read the token from a file")
    serve.add_argument("--tls-cert", default=None, help="PEM certificate: serve TLS")
    serve.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    serve.add_argument(
        "--drain-grace", type=float, default=30.0, help="seconds in-flight calls get on SIGTERM"
    )
    serve.add_argument(
        "--max-prompt-bytes",
        type=int,
        default=1024 * 1024,
        help="largest prompt accepted (text bytes, or 4 bytes per token id), checked before tokenising",
    )
    serve.add_argument(
        "--http-port",
        type=int,
        default=None,
        help="also serve the OpenAI-compatible HTTP API (and /metrics, /health) on this port (default off)",
    )
    serve.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus /metrics (and /health) alone on this port, e.g. for gRPC-only deployments",
    )
    _add_log_args(serve)
    serve.set_defaults(func=cmd_serve)

    gen = sub.add_parser("generate", help="call a baton server")
    gen.add_argument("prompt", help="prompt text (or comma-separated token ids with --token-ids)")
    gen.add_argument("--server", default="127.0.0.1:50051")
    gen.add_argument("--token-ids", action="store_true")
    gen.add_argument(
        "--raw",
        action="store_true",
        help="send the prompt as raw text (default: as a chat turn, when the model has a chat template)",
    )
    gen.add_argument("--max-tokens", type=int, default=None)
    gen.add_argument("--temperature", type=float, default=None)
    gen.add_argument("--top-p", type=float, default=None)
    gen.add_argument("--top-k", type=int, default=None)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--stop", action="append", help="stop string (repeatable)")
    gen.add_argument("--ignore-eos", action="store_true")
    gen.add_argument("--stream", action="store_true", help="print tokens as they come")
    gen.add_argument("--timeout", type=float, default=None, help="deadline in seconds")
    gen.add_argument("--auth-token", default=None, help="default: $BATON_AUTH_TOKEN")
    gen.add_argument("--auth-token-file", default=None)
    gen.add_argument("--tls", action="store_true", help="use TLS (system roots unless --tls-ca)")
    gen.add_argument("--tls-ca", default=None, help="PEM CA certificate to trust")
    gen.add_argument("--tls-server-name", default=None, help="expected server name in its certificate")
    gen.set_defaults(func=cmd_generate)

    from baton.bench.suite import add_parser as add_bench_parser  # light: heavy imports happen when it runs

    add_bench_parser(sub)
    return parser


def _add_log_args(p: argparse.ArgumentParser) -> None:
    from baton.core.logs import FORMATS, LEVELS

    p.add_argument("--log-level", default="info", choices=LEVELS, help="level of progress and request logs")
    p.add_argument(
        "--log-format", default="text", choices=FORMATS, help="text lines, or one JSON object per line"
    )


def main(argv: list[str] | None = None) -> int:
    from baton.core.logs import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging(getattr(args, "log_level", "info"), getattr(args, "log_format", "text"))
    try:
        return args.func(args)
    except (BatonError, ValueError) as e:
        print(f"baton: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
