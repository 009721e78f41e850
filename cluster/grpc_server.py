"""The gRPC front end (grpc.aio), running on the router's event loop.

Generate streams a request's chunks from the router; a call that ends early (client gone,
deadline passed, Abort) aborts its request so the decode row is freed within one step.
Health (grpc.health.v1) says SERVING only while each role has a live worker (every worker has its
model at start; a role whose workers are all restarting or dead is NOT_SERVING); reflection lists the
services. Auth, when on, needs ``authorization: Bearer <token>`` on every call but health and
reflection (Kubernetes probes cannot send headers).
"""

from __future__ import annotations

import asyncio
import hmac
import math
from concurrent.futures import ThreadPoolExecutor

import grpc
from google.protobuf import unknown_fields
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from baton.core.errors import BatonError, ValidationError
from baton.core.params import SamplingParams
from baton.core.request import Completion
from baton.core.requests_io import RequestSpec, check_messages, tokenize
from baton.v1 import generation_pb2 as pb
from baton.v1 import generation_pb2_grpc as pb_grpc
from cluster.metrics import NullObserver
from cluster.router import NoWorkers, QueueFull

SERVICE = pb.DESCRIPTOR.services_by_name["Generation"].full_name
FINISH = {"length": pb.LENGTH, "eos": pb.EOS, "stop": pb.STOP, "abort": pb.ABORT}
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
MAX_REQUEST_ID_BYTES = 256
DEFAULT_MAX_PROMPT_BYTES = 1024 * 1024  # text or token ids (4 bytes each), checked before any work
_OPEN_METHODS = ("/grpc.health.v1.Health/", "/grpc.reflection.")
_CODES = {  # gRPC status -> request_errors_total{code}
    grpc.StatusCode.INVALID_ARGUMENT: "invalid_argument",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "queue_full",
    grpc.StatusCode.UNAVAILABLE: "unavailable",
}


class _Undecodable:
    """What a handler gets instead of a message when the request bytes do not parse."""

    def __init__(self, what: str, field: str = "request"):
        self.what = what
        self.field = field

    @property
    def message(self) -> str:
        if self.field == "request":
            return f"request: not a valid {self.what} message"
        return f"{self.field}: sent with the wrong protobuf wire type"


def misencoded_field(msg: Message) -> str | None:
    """The name of a known field that arrived with the wrong wire type, else None.

    protobuf keeps such a field as an unknown field and leaves the real one unset: a temperature sent
    as a varint would silently become greedy. Field numbers this server does not know (a newer
    client's fields) stay accepted.
    """
    known = msg.DESCRIPTOR.fields_by_number
    for f in unknown_fields.UnknownFieldSet(msg):
        if f.field_number in known:
            return known[f.field_number].name
    for _fd, value in msg.ListFields():
        if isinstance(value, Message) and (name := misencoded_field(value)):
            return name
    return None


def _lenient(message_cls):
    """A request deserializer that turns garbage bytes into _Undecodable (INVALID_ARGUMENT), not UNKNOWN."""

    def parse(data: bytes):
        try:
            msg = message_cls.FromString(data)
        except (DecodeError, ValueError):
            return _Undecodable(message_cls.DESCRIPTOR.full_name)
        field = misencoded_field(msg)
        return msg if field is None else _Undecodable(message_cls.DESCRIPTOR.full_name, field)

    return parse


async def _reject_undecodable(request, context) -> None:
    if isinstance(request, _Undecodable):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)


def check_request_id(rid: str) -> None:
    if len(rid.encode()) > MAX_REQUEST_ID_BYTES:
        raise ValidationError("request_id", f"must be at most {MAX_REQUEST_ID_BYTES} bytes")


def check_prompt_size(request: pb.GenerateRequest, max_bytes: int) -> None:
    """Refuse an oversized prompt before tokenising it (tokenising 5 MB takes seconds)."""
    which = request.WhichOneof("input")
    if which == "messages":
        size = sum(len(m.content.encode()) + len(m.role.encode()) for m in request.messages.messages)
    else:
        size = len(request.text.encode()) if which == "text" else 4 * len(request.token_ids.ids)
    check_size(which, size, max_bytes)


def check_size(field: str, size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise ValidationError(field, f"prompt of {size} bytes is over the server's limit of {max_bytes}")


def sampling_from_proto(s: pb.SamplingParams) -> SamplingParams:
    kw: dict = {}
    for name in ("temperature", "top_p", "top_k", "max_tokens", "seed"):
        if s.HasField(name):
            kw[name] = getattr(s, name)
    for name in ("temperature", "top_p"):
        # float32 on the wire: keep validation's view of NaN and ranges, drop float32 noise.
        if name in kw and math.isfinite(kw[name]):
            kw[name] = float(f"{kw[name]:.7g}")
    return SamplingParams(
        stop=tuple(s.stop), stop_token_ids=tuple(s.stop_token_ids), ignore_eos=s.ignore_eos, **kw
    )


def complete_to_proto(c: Completion, with_output: bool, seed: int) -> pb.Complete:
    t = c.timings
    timing = pb.Timing(
        queue_ms=t.get("queue", 0.0),
        prefill_ms=t.get("prefill", 0.0),
        kv_transfer_ms=t.get("kv_transfer", 0.0),
        ttft_ms=t.get("ttft", 0.0),
        decode_ms=t.get("decode", 0.0),
        total_ms=t.get("total", 0.0),
        prefill_worker=t.get("prefill_worker", ""),
        decode_worker=t.get("decode_worker", ""),
        kv_bytes=int(t.get("kv_bytes", 0)),
    )
    return pb.Complete(
        finish_reason=FINISH.get(c.finish_reason or "", pb.FINISH_REASON_UNSPECIFIED),
        usage=pb.Usage(prompt_tokens=c.prompt_tokens, completion_tokens=len(c.token_ids)),
        timing=timing,
        token_ids=c.token_ids if with_output else [],
        text=c.text if with_output else "",
        seed=seed,
    )


class GenerationService(pb_grpc.GenerationServicer):
    def __init__(self, cluster, model_name: str, max_prompt_bytes: int = DEFAULT_MAX_PROMPT_BYTES):
        self.cluster = cluster
        self.router = cluster.router
        self.model_name = model_name
        self.max_prompt_bytes = max_prompt_bytes
        self.metrics = getattr(cluster, "metrics", None) or NullObserver()
        self.serving = True
        # Tokenising and chat templates run here, never on the event loop that streams every request.
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="baton-tokenize")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _parse(self, request: pb.GenerateRequest, rid: str):
        """Validate and tokenise (in the pool thread). Raises ValidationError naming the field."""
        check_request_id(rid)
        which = request.WhichOneof("input")
        if which is None:
            raise ValidationError("input", "give text, token_ids or messages")
        check_prompt_size(request, self.max_prompt_bytes)
        params = sampling_from_proto(request.sampling)
        messages = None
        if which == "messages":
            messages = check_messages(
                [{"role": m.role, "content": m.content} for m in request.messages.messages]
            )
        spec = RequestSpec(
            rid,
            0.0,
            request.text if which == "text" else None,
            tuple(request.token_ids.ids) if which == "token_ids" else None,
            messages,
            params,
        )
        return tokenize(spec, self.cluster.tokenizer, self.cluster.limits)

    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext):
        await _reject_undecodable(request, context)
        if not self.serving:
            await self._refuse(context, grpc.StatusCode.UNAVAILABLE, "server is draining")
        router = self.router
        rid = request.request_id or router.new_request_id()
        try:
            req = await asyncio.get_running_loop().run_in_executor(self._pool, self._parse, request, rid)
        except ValidationError as e:
            await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, str(e))
        try:
            st = router.submit(req)
        except QueueFull as e:
            await self._refuse(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
        except NoWorkers as e:
            await self._refuse(context, grpc.StatusCode.UNAVAILABLE, str(e))
        except BatonError as e:
            await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, str(e))
        finished = False
        try:
            while True:
                item = await st.out.get()
                if isinstance(item, Completion):
                    finished = True
                    if item.error is not None:
                        await context.abort(grpc.StatusCode.UNAVAILABLE, item.error)
                    yield pb.GenerateResponse(
                        request_id=rid,
                        complete=complete_to_proto(item, with_output=not request.stream, seed=req.seed),
                    )
                    return
                if request.stream:
                    yield pb.GenerateResponse(
                        request_id=rid, chunk=pb.Chunk(token_ids=item.token_ids, text=item.text)
                    )
        finally:
            if not finished:  # cancelled, deadline passed, or the client went away: free the row
                router.spawn(router.abort(rid))

    async def _refuse(self, context, code: grpc.StatusCode, message: str) -> None:
        """End a call before it reached the router, counted in request_errors_total."""
        self.metrics.rejected(_CODES.get(code, "invalid_argument"))
        await context.abort(code, message)

    async def Abort(self, request: pb.AbortRequest, context):
        await _reject_undecodable(request, context)
        try:
            check_request_id(request.request_id)
        except ValidationError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        if not await self.router.abort(request.request_id):
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"request_id: {request.request_id!r} is not in flight"
            )
        return pb.AbortResponse(aborted=True)

    async def GetModelInfo(self, request, context):
        await _reject_undecodable(request, context)
        lim = self.cluster.limits
        info = self.cluster.infos[0]
        return pb.ModelInfo(
            name=self.model_name,
            context_length=lim.context_length,
            vocab_size=lim.vocab_size,
            eos_token_ids=list(lim.eos_token_ids),
            dtype=info["dtype"],
            fingerprint=info["fingerprint"],
            runtime=info.get("runtime", ""),
            device=info.get("device", ""),
            compile_s=max(i.get("compile_s", 0.0) for i in self.cluster.infos),
        )

    async def GetServerInfo(self, request, context):
        await _reject_undecodable(request, context)
        s = self.router.server_info()
        static = self.router.infos  # refreshed when a worker restarts

        def about(worker_id: str) -> dict:
            i = static.get(worker_id, {})
            return {
                "runtime": i.get("runtime", ""),
                "dtype": i.get("dtype", ""),
                "threads": i.get("threads", 0),
                "startup_s": i.get("startup_s", 0.0),
            }

        workers = [
            pb.WorkerInfo(
                worker_id=w["worker_id"],
                role="prefill",
                state=w["state"],
                outstanding_prompt_tokens=w["outstanding_tokens"],
                **about(w["worker_id"]),
            )
            for w in s["prefill"]
        ]
        for w in s["decode"]:
            workers.append(
                pb.WorkerInfo(
                    **about(w["worker_id"]),
                    worker_id=w["worker_id"],
                    role="decode",
                    state=w["state"],
                    live_rows=w.get("rows", 0),
                    max_rows=w["max_rows"],
                    waiting=w.get("waiting", 0),
                    kv_bytes=w.get("kv_bytes", 0),
                    kv_window=w.get("window", 0),
                    kv_capacity=w.get("capacity", 0),
                    steps=w.get("stats", {}).get("steps", 0),
                )
            )
        return pb.ServerInfo(
            workers=workers,
            queue_depth=s["queue_depth"],
            queue_order=s["queue_order"],
            in_prefill=s["in_prefill"],
            pending_decode=s["pending_decode"],
            serving=self.serving and s["serving"],
        )


class _AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str, metrics):
        self._expected = f"Bearer {token}".encode()
        self._metrics = metrics

        async def deny(_request, context):
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, "authorization: missing or wrong bearer token"
            )

        self._deny = grpc.unary_unary_rpc_method_handler(deny)
        self._deny_stream = grpc.unary_stream_rpc_method_handler(deny)

    async def intercept_service(self, continuation, details):
        if details.method.startswith(_OPEN_METHODS):
            return await continuation(details)
        got = dict(details.invocation_metadata or ()).get("authorization", "")
        got = got.encode() if isinstance(got, str) else got
        if hmac.compare_digest(got, self._expected):
            return await continuation(details)
        self._metrics.rejected("unauthenticated")
        return self._deny_stream if details.method.endswith("/Generate") else self._deny


def _add_service(servicer: GenerationService, server) -> None:
    """Register baton.v1.Generation like the generated helper, with lenient request parsing."""
    handlers = {
        "Generate": grpc.unary_stream_rpc_method_handler(
            servicer.Generate, _lenient(pb.GenerateRequest), pb.GenerateResponse.SerializeToString
        ),
        "Abort": grpc.unary_unary_rpc_method_handler(
            servicer.Abort, _lenient(pb.AbortRequest), pb.AbortResponse.SerializeToString
        ),
        "GetModelInfo": grpc.unary_unary_rpc_method_handler(
            servicer.GetModelInfo, _lenient(pb.GetModelInfoRequest), pb.ModelInfo.SerializeToString
        ),
        "GetServerInfo": grpc.unary_unary_rpc_method_handler(
            servicer.GetServerInfo, _lenient(pb.GetServerInfoRequest), pb.ServerInfo.SerializeToString
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)


class GrpcServer:
    """Owns the grpc.aio server; create and call its methods on the router's event loop."""

    def __init__(
        self,
        cluster,
        model_name: str,
        host: str = "127.0.0.1",
        port: int = 50051,
        auth_token: str | None = None,
        tls_cert: bytes | None = None,
        tls_key: bytes | None = None,
        max_prompt_bytes: int = DEFAULT_MAX_PROMPT_BYTES,
    ):
        metrics = getattr(cluster, "metrics", None) or NullObserver()
        interceptors = [_AuthInterceptor(auth_token, metrics)] if auth_token else []
        self.server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self.service = GenerationService(cluster, model_name, max_prompt_bytes)
        _add_service(self.service, self.server)
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self.server,
        )
        addr = f"{host}:{port}"
        if tls_cert and tls_key:
            self.port = self.server.add_secure_port(addr, grpc.ssl_server_credentials([(tls_key, tls_cert)]))
        else:
            self.port = self.server.add_insecure_port(addr)
        if self.port == 0:
            raise OSError(f"cannot bind {addr}")

    async def _set(self, status) -> None:
        for name in ("", SERVICE):
            r = self.health.set(name, status)
            if asyncio.iscoroutine(r):
                await r

    async def start(self) -> None:
        await self._set(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        # The cluster was started (every worker has its model) before this server was created.
        # From now on health follows the workers: NOT_SERVING while a role has no live worker.
        self.service.router.listeners.append(self._workers_changed)
        await self._sync_health()

    async def _sync_health(self) -> None:
        up = self.service.serving and self.service.router.serving
        await self._set(
            health_pb2.HealthCheckResponse.SERVING if up else health_pb2.HealthCheckResponse.NOT_SERVING
        )

    def _workers_changed(self) -> None:
        self.service.router.spawn(self._sync_health())

    async def drain(self, grace: float) -> None:
        """Stop admitting, let in-flight calls finish for up to ``grace`` s, then stop."""
        self.service.serving = False
        self.service.close()
        if self._workers_changed in self.service.router.listeners:
            self.service.router.listeners.remove(self._workers_changed)
        await self._set(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.stop(grace)
