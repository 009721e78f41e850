"""Request and completion types shared by every part of baton."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from baton.core.params import SamplingParams


@dataclass(frozen=True)
class Request:
    """A tokenised, validated request. ``seed`` is fixed at admission (drawn when the user gave none)."""

    request_id: str
    prompt_token_ids: tuple[int, ...]
    params: SamplingParams
    seed: int
    arrival: float = field(default_factory=time.time)  # wall clock, comparable across processes

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_token_ids)


@dataclass
class Completion:
    """The final result of one request (or its error)."""

    request_id: str
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    timings: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    error_field: str | None = None

    def to_json(self) -> dict[str, Any]:
        if self.error is not None:
            return {"id": self.request_id, "error": self.error, "field": self.error_field}
        return {
            "id": self.request_id,
            "token_ids": self.token_ids,
            "text": self.text,
            "finish_reason": self.finish_reason,
            "prompt_tokens": self.prompt_tokens,
            "timings": self.timings,
        }
