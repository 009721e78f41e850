"""Python client of baton's gRPC API, sync (BatonClient) and asyncio (AsyncBatonClient)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence

import grpc

from baton.v1 import generation_pb2 as pb
from baton.v1 import generation_pb2_grpc as pb_grpc

TOKEN_ENV = "BATON_AUTH_TOKEN"


def build_request(
    prompt: str | Sequence[int] | Sequence[Mapping[str, str]],
    *,
    max_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    seed: int | None = None,
    stop: Sequence[str] = (),
    stop_token_ids: Sequence[int] = (),
    ignore_eos: bool = False,
    stream: bool = True,
    request_id: str = "",
) -> pb.GenerateRequest:
    s = pb.SamplingParams(stop=list(stop), stop_token_ids=list(stop_token_ids), ignore_eos=ignore_eos)
    for name, v in (
        ("max_tokens", max_tokens),
        ("temperature", temperature),
        ("top_p", top_p),
        ("top_k", top_k),
        ("seed", seed),
    ):
        if v is not None:
            setattr(s, name, v)
    req = pb.GenerateRequest(request_id=request_id, sampling=s, stream=stream)
    if isinstance(prompt, str):
        req.text = prompt
    elif prompt and isinstance(prompt[0], Mapping):  # chat: rendered with the model's chat template
        req.messages.messages.extend(pb.ChatMessage(role=m["role"], content=m["content"]) for m in prompt)
    else:
        req.token_ids.ids.extend(prompt)
    return req


def _credentials(tls: bool, ca: bytes | None):
    return grpc.ssl_channel_credentials(root_certificates=ca) if (tls or ca) else None


def _options(server_name: str | None) -> list:
    opts = [("grpc.max_receive_message_length", 16 * 1024 * 1024)]
    if server_name:
        opts.append(("grpc.ssl_target_name_override", server_name))
    return opts


class _Base:
    def __init__(self, auth_token: str | None):
        token = auth_token if auth_token is not None else os.environ.get(TOKEN_ENV)
        self.metadata = [("authorization", f"Bearer {token}")] if token else []


class BatonClient(_Base):
    def __init__(
        self,
        target: str,
        auth_token: str | None = None,
        tls: bool = False,
        ca: bytes | None = None,
        server_name: str | None = None,
    ):
        super().__init__(auth_token)
        creds = _credentials(tls, ca)
        opts = _options(server_name)
        self.channel = (
            grpc.secure_channel(target, creds, options=opts)
            if creds
            else grpc.insecure_channel(target, options=opts)
        )
        self.stub = pb_grpc.GenerationStub(self.channel)

    def generate(self, prompt, timeout: float | None = None, **kw) -> Iterator[pb.GenerateResponse]:
        """Stream responses (Chunk..., Complete). ``kw`` as build_request."""
        return self.stub.Generate(build_request(prompt, **kw), timeout=timeout, metadata=self.metadata)

    def complete(self, prompt, timeout: float | None = None, **kw) -> pb.Complete:
        """One non-streaming call: the Complete with every token and the text."""
        kw["stream"] = False
        return list(self.generate(prompt, timeout=timeout, **kw))[-1].complete

    def abort(self, request_id: str) -> bool:
        return self.stub.Abort(pb.AbortRequest(request_id=request_id), metadata=self.metadata).aborted

    def model_info(self) -> pb.ModelInfo:
        return self.stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=self.metadata)

    def server_info(self) -> pb.ServerInfo:
        return self.stub.GetServerInfo(pb.GetServerInfoRequest(), metadata=self.metadata)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> BatonClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncBatonClient(_Base):
    def __init__(
        self,
        target: str,
        auth_token: str | None = None,
        tls: bool = False,
        ca: bytes | None = None,
        server_name: str | None = None,
    ):
        super().__init__(auth_token)
        creds = _credentials(tls, ca)
        opts = _options(server_name)
        self.channel = (
            grpc.aio.secure_channel(target, creds, options=opts)
            if creds
            else grpc.aio.insecure_channel(target, options=opts)
        )
        self.stub = pb_grpc.GenerationStub(self.channel)

    def generate(self, prompt, timeout: float | None = None, **kw) -> AsyncIterator[pb.GenerateResponse]:
        return self.stub.Generate(build_request(prompt, **kw), timeout=timeout, metadata=self.metadata)

    async def complete(self, prompt, timeout: float | None = None, **kw) -> pb.Complete:
        kw["stream"] = False
        last = None
        async for r in self.generate(prompt, timeout=timeout, **kw):
            last = r
        return last.complete

    async def abort(self, request_id: str) -> bool:
        return (await self.stub.Abort(pb.AbortRequest(request_id=request_id), metadata=self.metadata)).aborted

    async def server_info(self) -> pb.ServerInfo:
        return await self.stub.GetServerInfo(pb.GetServerInfoRequest(), metadata=self.metadata)

    async def model_info(self) -> pb.ModelInfo:
        return await self.stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=self.metadata)

    async def close(self) -> None:
        await self.channel.close()
