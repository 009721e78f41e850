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
    # A migrated request (its decode worker died): the output tokens already streamed. The prefill
    # runs over prompt + resume and samples token index len(resume) next: no gap, no duplicate.
    resume: tuple[int, ...] = ()

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def prefill_ids(self) -> tuple[int, ...]:
        """What a prefill computes: the prompt, then any output tokens already streamed."""
        return self.prompt_token_ids + self.resume

    @property
    def prefill_len(self) -> int:
        return len(self.prompt_token_ids) + len(self.resume)


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
