"""The HTTP front end (aiohttp), on the router's event loop beside grpc.aio.

Routes: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (OpenAI's format, streaming as
server-sent events ending with ``data: [DONE]``), ``GET /v1/models``, ``GET /health`` and
``GET /metrics`` (Prometheus). ``HttpServer(..., metrics_only=True)`` serves /metrics and /health
alone (``--metrics-port`` of a gRPC-only deployment).

Tokenising and chat templates run in a thread pool, never on the loop. A client that goes away
(the connection closes) cancels its handler, which aborts the request: its decode row is freed within
one step. Auth, when on, needs ``Authorization: Bearer <token>`` on /v1/ (health and metrics stay open
for probes and scrapers). Errors are OpenAI's error JSON: 400 bad field (``param`` names it), 401
auth, 404 unknown model or route, 429 queue full, 503 no workers or draining.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from baton.core.errors import BatonError, ValidationError
from baton.core.request import Completion
from baton.core.requests_io import tokenize
from cluster import openai_api as oa
from cluster.grpc_server import DEFAULT_MAX_PROMPT_BYTES, MAX_MESSAGE_BYTES, check_size
from cluster.metrics import CONTENT_TYPE
from cluster.router import NoWorkers, QueueFull

log = logging.getLogger("baton.http")
_OPEN_PATHS = ("/health", "/metrics")
_CODES = {400: "invalid_argument", 401: "unauthenticated", 429: "queue_full", 503: "unavailable"}


class _Refused(Exception):
    """A request answered with an error status before (or instead of) generating."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.param = param


def _error(status: int, message: str, param: str | None = None) -> web.Response:
    return web.json_response(oa.error_body(status, message, param), status=status)


class HttpServer:
    """Owns the aiohttp runner; create and call its methods on the router's event loop."""

    def __init__(
        self,
        cluster,
        model_name: str,
        host: str = "127.0.0.1",
        port: int = 8000,
        auth_token: str | None = None,
        max_prompt_bytes: int = DEFAULT_MAX_PROMPT_BYTES,
        metrics_only: bool = False,
    ):
        self.cluster = cluster
        self.router = cluster.router
        self.metrics = cluster.metrics
        self.model_name = model_name
        self.host, self.port = host, port
        self.max_prompt_bytes = max_prompt_bytes
        self.metrics_only = metrics_only
        self.serving = True
        self.created = int(time.time())
        self._expected = f"Bearer {auth_token}".encode() if auth_token else None
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="baton-http-tokenize")
        app = web.Application(middlewares=[self._auth], client_max_size=MAX_MESSAGE_BYTES)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.scrape)
        if not metrics_only:
            app.router.add_post("/v1/chat/completions", self.chat)
            app.router.add_post("/v1/completions", self.completions)
            app.router.add_get("/v1/models", self.models)
        # handler_cancellation: a client that disconnects cancels its handler (and so its request).
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def drain(self, grace: float) -> None:
        """Refuse new requests (503), give in-flight ones up to ``grace`` s, then stop."""
        self.serving = False
        deadline = time.time() + grace
        while self.router.states and time.time() < deadline:
            await asyncio.sleep(0.1)
        await self._runner.cleanup()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ plumbing
    @web.middleware
    async def _auth(self, request: web.Request, handler):
        if self._expected is None or request.path in _OPEN_PATHS:
            return await handler(request)
        got = request.headers.get("Authorization", "").encode()
        if hmac.compare_digest(got, self._expected):
            return await handler(request)
        self.metrics.rejected("unauthenticated")
        return _error(401, "authorization: missing or wrong bearer token")

    async def health(self, _request: web.Request) -> web.Response:
        ok = self.serving and self.router.healthy
        return web.json_response({"status": "ok" if ok else "unavailable"}, status=200 if ok else 503)

    async def scrape(self, _request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

    async def models(self, _request: web.Request) -> web.Response:
        return web.json_response(
            oa.models_list(self.model_name, self.cluster.limits.context_length, self.created)
        )

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    # ------------------------------------------------------------------ generation
    def _parse(self, body, chat: bool, rid: str):
        """Validate and tokenise (in the pool thread): (ApiRequest, Request)."""
        api = oa.parse_request(body, chat, rid, self.model_name)
        check_size("messages" if chat else "prompt", oa.prompt_bytes(api.spec), self.max_prompt_bytes)
        try:
            return api, tokenize(api.spec, self.cluster.tokenizer, self.cluster.limits)
        except ValidationError as e:
            field = api.max_tokens_field if e.field == "max_tokens" else e.field
            raise ValidationError(field, e.message) from e

    async def _admit(self, request: web.Request, chat: bool):
        if not self.serving:
            raise _Refused(503, "server is draining")
        try:
            body = await request.json(loads=json.loads)
        except (ValueError, UnicodeDecodeError) as e:
            raise _Refused(400, f"body: not valid JSON ({e})", "body") from e
        rid = self.router.new_request_id()
        loop = asyncio.get_running_loop()
        try:
            api, req = await loop.run_in_executor(self._pool, self._parse, body, chat, rid)
        except ValidationError as e:
            raise _Refused(404 if e.field == "model" else 400, str(e), e.field) from e
        try:
            return api, self.router.submit(req)
        except QueueFull as e:
            raise _Refused(429, str(e)) from e
        except NoWorkers as e:
            raise _Refused(503, str(e)) from e
        except BatonError as e:
            raise _Refused(400, str(e)) from e

    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        try:
            api, st = await self._admit(request, chat)
        except _Refused as e:
            self.metrics.rejected(_CODES.get(e.status, "invalid_argument"))
            return _error(e.status, str(e), e.param)
        rid = st.req.request_id
        log.debug(
            "admitted (%s, %d prompt tokens)", request.path, st.req.prompt_len, extra={"request_id": rid}
        )
        out = oa.Responder(api, self.model_name)
        finished = False
        try:
            if api.stream:
                resp = await self._stream(request, st, out)
            else:
                c = await self._wait(st)
                resp = _error(503, c.error) if c.error is not None else web.json_response(out.complete(c))
            finished = True
            return resp
        finally:
            if not finished:  # the client went away (handler cancelled) or a write failed: free the row
                self.router.spawn(self.router.abort(rid))

    @staticmethod
    async def _wait(st) -> Completion:
        while True:
            item = await st.out.get()
            if isinstance(item, Completion):
                return item

    async def _stream(self, request: web.Request, st, out: oa.Responder) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Request-Id": out.id}
        )
        await resp.prepare(request)
        for obj in out.first():
            await resp.write(oa.sse(obj))
        while True:
            item = await st.out.get()
            if isinstance(item, Completion):
                break
            if item.text:
                await resp.write(oa.sse(out.delta(item.text)))
        if item.error is not None:
            await resp.write(oa.sse(oa.error_body(503, item.error)))
        else:
            for obj in out.last(item):
                await resp.write(oa.sse(obj))
        await resp.write(oa.sse("[DONE]"))
        await resp.write_eof()
        return resp
