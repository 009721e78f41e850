"""Parsing request lines (JSON objects) into validated, tokenised requests."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from baton.core.errors import BatonError, ValidationError
from baton.core.params import ModelLimits, SamplingParams, validate_request
from baton.core.request import Completion, Request
from baton.core.sampling import new_seed

PARAM_FIELDS = ("max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "stop_token_ids", "ignore_eos")
INPUT_FIELDS = ("prompt", "prompt_token_ids", "messages")
KNOWN = {"id", "arrival_s", *PARAM_FIELDS, *INPUT_FIELDS}


@dataclass(frozen=True)
class RequestSpec:
    request_id: str
    arrival_s: float
    prompt: str | None
    prompt_token_ids: tuple[int, ...] | None
    messages: tuple[dict, ...] | None
    params: SamplingParams


def check_messages(messages: Any) -> tuple[dict, ...]:
    """A chat as every API takes it: a non-empty list of {role, content} strings (ValidationError naming
    ``messages`` otherwise)."""
    if not isinstance(messages, (list, tuple)) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in messages
    ):
        raise ValidationError("messages", "must be a list of {role, content} string objects")
    if not messages:
        raise ValidationError("messages", "must not be empty")
    if any(not m["role"] for m in messages):
        raise ValidationError("messages", "every message needs a non-empty role")
    return tuple({"role": m["role"], "content": m["content"]} for m in messages)


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def parse_spec(obj: Any, default_id: str) -> RequestSpec:
    if not isinstance(obj, dict):
        raise ValidationError("request", "each line must be a JSON object")
    unknown = sorted(set(obj) - KNOWN)
    if unknown:
        raise ValidationError(unknown[0], "unknown field")
    rid = obj.get("id", default_id)
    if not isinstance(rid, (str, int)) or isinstance(rid, bool) or str(rid) == "":
        raise ValidationError("id", f"must be a non-empty string, got {rid!r}")
    arrival = obj.get("arrival_s", 0.0)
    if (
        isinstance(arrival, bool)
        or not isinstance(arrival, (int, float))
        or not math.isfinite(arrival)
        or arrival < 0
    ):
        raise ValidationError("arrival_s", f"must be a number >= 0, got {arrival!r}")
    given = [f for f in INPUT_FIELDS if f in obj]
    if len(given) != 1:
        raise ValidationError("prompt", "give exactly one of prompt, prompt_token_ids, messages")
    prompt = obj.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise ValidationError("prompt", "must be a string")
    ids = obj.get("prompt_token_ids")
    if ids is not None:
        if not isinstance(ids, list) or any(isinstance(t, bool) or not isinstance(t, int) for t in ids):
            raise ValidationError("prompt_token_ids", "must be a list of integers")
        ids = tuple(ids)
    messages = obj.get("messages")
    if messages is not None:
        messages = check_messages(messages)
    params = SamplingParams.from_dict({k: obj[k] for k in PARAM_FIELDS if k in obj})
    return RequestSpec(str(rid), float(arrival), prompt, ids, messages, params)


# A text far longer than the context is refused after tokenising only a head that proves it does not fit:
# a 1 MB prompt costs about a CPU-second to tokenise whole, taken from the cores that decode (measured:
# eight of them at once stalled every stream ~4 s on 2 cores). Heads grow 4x from 4 characters per
# context token; each ends at a space where it can, so only its last few tokens could differ from the whole
# text's, and HEAD_SLACK tokens more than the context are asked for before refusing.
HEAD_CHARS_PER_TOKEN = 4
HEAD_GROWTH = 4
HEAD_SLACK = 16


def head_cut(text: str, n: int) -> int:
    """An end for the head of ``text`` near ``n`` characters: its last space in [n/2, n), else n."""
    cut = text.rfind(" ", n // 2, n)
    return n if cut < 0 else cut


def encode_prompt(
    tokenizer: Any, text: str, context_length: int, *, field: str = "prompt", special: bool = True
) -> list[int]:
    """``text``'s token ids (``special``: with the tokenizer's BOS/EOS added); a ValidationError naming
    ``field`` as soon as a head of it (at most half the text) already has more tokens than the context
    holds."""
    n = HEAD_CHARS_PER_TOKEN * context_length
    while 2 * n < len(text):
        cut = head_cut(text, n)
        head = len(tokenizer.encode(text[:cut], add_special_tokens=special))
        if head >= context_length + HEAD_SLACK:
            raise ValidationError(
                field,
                f"at least {head - HEAD_SLACK} tokens in its first {cut} of {len(text)} characters "
                f"does not fit the model's context of {context_length}",
            )
        n *= HEAD_GROWTH
    return tokenizer.encode(text, add_special_tokens=special)


def encode_chat(tokenizer: Any, messages: list, context_length: int) -> list[int]:
    """The ids of ``messages`` through the model's chat template: the template renders text (cheap), which
    is tokenised like a prompt, bounded by a head, and without added BOS/EOS, the way transformers'
    ``apply_chat_template(tokenize=True)`` tokenises its rendering (the template writes its own)."""
    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except Exception as e:  # the model's own Jinja template may raise anything on odd input
        raise ValidationError("messages", f"the model's chat template refused them ({e})"[:300]) from e
    return encode_prompt(tokenizer, text, context_length, field="messages", special=False)


def tokenize(spec: RequestSpec, tokenizer: Any, limits: ModelLimits) -> Request:
    """Turn a spec into a validated Request for a model with ``limits``."""
    if spec.prompt_token_ids is not None:
        ids = list(spec.prompt_token_ids)
    else:
        if tokenizer is None:
            raise ValidationError("prompt", "this model has no tokenizer: send prompt_token_ids")
        if spec.messages is not None:
            if not has_chat_template(tokenizer):
                raise ValidationError("messages", "this model has no chat template: send prompt")
            ids = encode_chat(tokenizer, list(spec.messages), limits.context_length)
        else:
            if spec.prompt == "":
                raise ValidationError("prompt", "must not be empty")
            ids = encode_prompt(tokenizer, spec.prompt, limits.context_length)
    validate_request(ids, spec.params, limits)
    seed = spec.params.seed if spec.params.seed is not None else new_seed()
    return Request(spec.request_id, tuple(ids), spec.params, seed)


class Batch:
    """A file of request specs split into a trace to run and the errors already known.

    ``merge`` puts the run's completions back in input order beside the errors.
    """

    def __init__(self, specs: list[RequestSpec | Completion], tokenizer: Any, limits: ModelLimits):
        self.size = len(specs)
        self.results: dict[int, Completion] = {}
        self.trace: list[tuple[Request, float]] = []
        self._index: dict[str, int] = {}
        for i, spec in enumerate(specs):
            if isinstance(spec, Completion):
                self.results[i] = spec
                continue
            try:
                req = tokenize(spec, tokenizer, limits)
            except BatonError as e:
                self.results[i] = Completion(
                    spec.request_id, error=str(e), error_field=getattr(e, "field", None)
                )
                continue
            if req.request_id in self._index:
                self.results[i] = Completion(
                    spec.request_id, error=f"id: duplicate request id {req.request_id!r}", error_field="id"
                )
                continue
            self._index[req.request_id] = i
            self.trace.append((req, spec.arrival_s))

    def merge(self, completions: list[Completion]) -> list[Completion]:
        for c in completions:
            self.results[self._index[c.request_id]] = c
        return [self.results[i] for i in range(self.size)]
