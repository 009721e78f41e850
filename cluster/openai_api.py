"""The OpenAI wire format: request bodies -> ``RequestSpec``, completions -> response JSON and SSE chunks.

Pure (no aiohttp, no Ray): the HTTP server (cluster/http_server.py) calls it. Sampling parameters go
through ``SamplingParams.from_dict`` and prompts through ``requests_io`` (chat template, limits), so a
bad field reads the same as in gRPC and ``baton run``; errors are ``ValidationError`` naming the
OpenAI field. Defaults follow OpenAI's where they differ from baton's: ``temperature`` 1.0.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from baton.core.errors import ValidationError
from baton.core.params import SamplingParams
from baton.core.request import Completion
from baton.core.requests_io import RequestSpec, check_messages

DEFAULT_TEMPERATURE = 1.0  # OpenAI's default (baton's own APIs default to greedy)
# Fields OpenAI defines that baton does not implement: accepted only at their no-op value.
UNSUPPORTED = {
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "echo": (None, False),
    "best_of": (None, 1),
    "suffix": (None, ""),
    "logit_bias": (None, {}),
    "frequency_penalty": (None, 0, 0.0),
    "presence_penalty": (None, 0, 0.0),
    "tools": (None, []),
    "functions": (None, []),
    "tool_choice": (None, "none", "auto"),
    "parallel_tool_calls": (None, True, False),
}
# baton's own sampling fields, accepted as extensions (as vLLM does).
EXTRA_PARAMS = ("top_k", "stop_token_ids", "ignore_eos")
FINISH = {"eos": "stop", "stop": "stop", "length": "length", "abort": "abort"}
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable_error",
}


@dataclass(frozen=True)
class ApiRequest:
    """A parsed OpenAI request: the spec to tokenise and how to answer."""

    spec: RequestSpec
    chat: bool
    stream: bool
    include_usage: bool
    max_tokens_field: str  # the field the client used for the token limit (errors name it)


def error_body(status: int, message: str, param: str | None = None) -> dict:
    """OpenAI's error JSON."""
    kind = ERROR_TYPES.get(status, "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def _bool(body: dict, name: str, default: bool = False) -> bool:
    v = body.get(name, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise ValidationError(name, f"must be a boolean, got {v!r}")
    return v


def _content(m: Any, i: int) -> Any:
    """A message's content: a string, or OpenAI's list of text parts joined."""
    if not isinstance(m, dict):
        return m
    c = m.get("content")
    if isinstance(c, list):
        if not all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in c
        ):
            raise ValidationError("messages", f"message {i}: only text content parts are supported")
        c = "".join(p["text"] for p in c)
    elif c is None and m.get("role") == "assistant":
        c = ""
    return {"role": m.get("role"), "content": c}


def _prompt(body: dict) -> tuple[str | None, tuple[int, ...] | None]:
    p = body.get("prompt")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], (str, list)):
        p = p[0]  # a batch of one prompt
    if isinstance(p, str):
        return p, None
    if isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
        return None, tuple(p)
    if isinstance(p, list) and p and all(isinstance(t, (str, list)) for t in p):
        raise ValidationError("prompt", "one prompt per request (a batch of prompts is not supported)")
    raise ValidationError("prompt", "must be a string or a list of token ids")


def parse_request(body: Any, chat: bool, request_id: str, model_name: str) -> ApiRequest:
    """An OpenAI chat or completions body -> ApiRequest. Raises ValidationError naming the field."""
    if not isinstance(body, dict):
        raise ValidationError("body", "must be a JSON object")
    model = body.get("model")
    if model is not None and model != model_name:
        raise ValidationError("model", f"this server serves {model_name!r}, not {model!r}")
    n = body.get("n", 1)
    if n is not None and n != 1:
        raise ValidationError("n", f"only n=1 is supported, got {n!r}")
    for name, ok in UNSUPPORTED.items():
        if name in body and body[name] not in ok:
            raise ValidationError(name, "is not supported by this server")
    stream = _bool(body, "stream")
    opts = body.get("stream_options")
    if opts is not None and (not isinstance(opts, dict) or not stream):
        raise ValidationError("stream_options", "must be an object, and only with stream=true")
    include_usage = _bool(opts or {}, "include_usage")

    params: dict[str, Any] = {"temperature": DEFAULT_TEMPERATURE}
    limit_field = "max_tokens"
    for name in ("max_completion_tokens", "max_tokens") if chat else ("max_tokens",):
        if body.get(name) is not None:
            params["max_tokens"], limit_field = body[name], name
            break
    for name in ("temperature", "top_p", "seed", "stop", *EXTRA_PARAMS):
        if body.get(name) is not None:
            params[name] = body[name]
    try:
        sampling = SamplingParams.from_dict(params)
    except ValidationError as e:
        raise ValidationError(limit_field if e.field == "max_tokens" else e.field, e.message) from e

    prompt, ids, messages = None, None, None
    if chat:
        raw = body.get("messages")
        if not isinstance(raw, list):
            raise ValidationError("messages", "must be a list of {role, content} objects")
        messages = check_messages([_content(m, i) for i, m in enumerate(raw)])
    else:
        prompt, ids = _prompt(body)
    spec = RequestSpec(request_id, 0.0, prompt, ids, messages, sampling)
    return ApiRequest(spec, chat, stream, include_usage, limit_field)


def prompt_bytes(spec: RequestSpec) -> int:
    """A prompt's size before tokenising (token ids count 4 bytes), as the gRPC server measures it."""
    if spec.messages is not None:
        return sum(len(m["content"].encode()) + len(m["role"].encode()) for m in spec.messages)
    if spec.prompt_token_ids is not None:
        return 4 * len(spec.prompt_token_ids)
    return len((spec.prompt or "").encode())


# ---------------------------------------------------------------------- responses
def _usage(c: Completion) -> dict:
    out = len(c.token_ids)
    return {"prompt_tokens": c.prompt_tokens, "completion_tokens": out, "total_tokens": c.prompt_tokens + out}


class Responder:
    """Builds one request's response objects (same id and created time on every chunk)."""

    def __init__(self, api: ApiRequest, model_name: str):
        self.api = api
        self.model = model_name
        self.created = int(time.time())
        rid = api.spec.request_id
        self.id = f"chatcmpl-{rid}" if api.chat else f"cmpl-{rid}"
        self.object = "chat.completion" if api.chat else "text_completion"

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def complete(self, c: Completion) -> dict:
        """The non-streaming response."""
        choice: dict[str, Any] = {
            "index": 0,
            "finish_reason": FINISH.get(c.finish_reason or ""),
            "logprobs": None,
        }
        if self.api.chat:
            choice["message"] = {"role": "assistant", "content": c.text}
        else:
            choice["text"] = c.text
        return {**self._head(self.object), "choices": [choice], "usage": _usage(c)}

    def _chunk(self, delta_text: str | None, finish: str | None, role: bool = False) -> dict:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        if self.api.chat:
            delta: dict[str, Any] = {"role": "assistant"} if role else {}
            if delta_text is not None:
                delta["content"] = delta_text
            choice["delta"] = delta
            obj = "chat.completion.chunk"
        else:
            choice["text"] = delta_text or ""
            obj = "text_completion"
        out = {**self._head(obj), "choices": [choice]}
        if self.api.include_usage:
            out["usage"] = None
        return out

    def first(self) -> list[dict]:
        """What a stream opens with (chat: the assistant role)."""
        return [self._chunk("", None, role=True)] if self.api.chat else []

    def delta(self, text: str) -> dict:
        return self._chunk(text, None)

    def last(self, c: Completion) -> list[dict]:
        """The finish chunk, then (stream_options.include_usage) the usage chunk."""
        out = [self._chunk(None if self.api.chat else "", FINISH.get(c.finish_reason or ""))]
        if self.api.include_usage:
            head = "chat.completion.chunk" if self.api.chat else "text_completion"
            out.append({**self._head(head), "choices": [], "usage": _usage(c)})
        return out


def sse(obj: dict | str) -> bytes:
    """One server-sent event: ``data: <json>`` (or ``data: [DONE]``)."""
    data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


def models_list(model_name: str, context_length: int, created: int) -> dict:
    return {
        "object": "list",
        "data": [
            {
                "id": model_name,
                "object": "model",
                "created": created,
                "owned_by": "baton",
                "max_model_len": context_length,
            }
        ],
    }
