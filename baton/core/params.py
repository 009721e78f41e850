"""Per-request sampling parameters and their validation."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from baton.core.errors import ValidationError

DEFAULT_MAX_TOKENS = 64
# Bounds that keep one request from costing the server more than its own work (stop strings are
# searched after every token of the request).
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
MAX_STOP_TOKEN_IDS = 256


@dataclass(frozen=True)
class SamplingParams:
    """How one request samples and when it stops.

    ``temperature == 0`` is greedy. ``top_k == 0`` and ``top_p == 1`` disable those filters.
    ``seed`` makes sampling reproducible whatever else shares the batch; when None the engine
    draws one at admission.
    """

    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        # Normalise sequences so the object stays hashable and msgpack-friendly.
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        object.__setattr__(self, "stop", stop)
        ids = tuple(self.stop_token_ids)
        if any(isinstance(t, bool) or not isinstance(t, int) for t in ids):
            raise ValidationError("stop_token_ids", f"must be integers, got {list(ids)!r}")
        object.__setattr__(self, "stop_token_ids", ids)
        self._validate_types()

    def _validate_types(self) -> None:
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int):
            raise ValidationError("max_tokens", f"must be an integer, got {self.max_tokens!r}")
        if self.max_tokens < 1:
            raise ValidationError("max_tokens", f"must be >= 1, got {self.max_tokens}")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)):
            raise ValidationError("temperature", f"must be a number, got {self.temperature!r}")
        if math.isnan(self.temperature) or self.temperature < 0 or math.isinf(self.temperature):
            raise ValidationError("temperature", f"must be a finite number >= 0, got {self.temperature}")
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)):
            raise ValidationError("top_p", f"must be a number, got {self.top_p!r}")
        if math.isnan(self.top_p) or not 0.0 < self.top_p <= 1.0:
            raise ValidationError("top_p", f"must be in (0, 1], got {self.top_p}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int):
            raise ValidationError("top_k", f"must be an integer, got {self.top_k!r}")
        if self.top_k < 0:
            raise ValidationError("top_k", f"must be >= 0 (0 disables it), got {self.top_k}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValidationError("seed", f"must be an integer, got {self.seed!r}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise ValidationError("seed", f"must be in [0, 2**63), got {self.seed}")
        if len(self.stop) > MAX_STOP_STRINGS:
            raise ValidationError("stop", f"at most {MAX_STOP_STRINGS} stop strings, got {len(self.stop)}")
        if len(self.stop_token_ids) > MAX_STOP_TOKEN_IDS:
            raise ValidationError(
                "stop_token_ids", f"at most {MAX_STOP_TOKEN_IDS} ids, got {len(self.stop_token_ids)}"
            )
        for s in self.stop:
            if isinstance(s, str) and len(s) > MAX_STOP_CHARS:
                raise ValidationError("stop", f"each stop string must be at most {MAX_STOP_CHARS} characters")
            if not isinstance(s, str) or not s:
                raise ValidationError("stop", f"every stop string must be a non-empty string, got {s!r}")
        for t in self.stop_token_ids:
            if t < 0:
                raise ValidationError("stop_token_ids", f"token ids must be >= 0, got {t}")
        if not isinstance(self.ignore_eos, bool):
            raise ValidationError("ignore_eos", f"must be a boolean, got {self.ignore_eos!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stop"] = list(self.stop)
        d["stop_token_ids"] = list(self.stop_token_ids)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SamplingParams:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValidationError(sorted(unknown)[0], "unknown sampling parameter")
        kw = dict(d)
        for name in ("stop", "stop_token_ids"):
            if name in kw:
                v = kw[name]
                if isinstance(v, str):
                    v = [v]
                if not isinstance(v, (list, tuple)):
                    raise ValidationError(name, f"must be a list, got {v!r}")
                if name == "stop_token_ids" and any(isinstance(t, bool) or not isinstance(t, int) for t in v):
                    raise ValidationError(name, f"must be a list of integers, got {v!r}")
                kw[name] = tuple(v)
        return cls(**kw)


@dataclass(frozen=True)
class ModelLimits:
    """What a request is checked against: the served model's context and vocabulary."""

    context_length: int
    vocab_size: int
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)

    def capped(self, max_seq_len: int) -> ModelLimits:
        """These limits with the context narrowed to a server's per-row KV capacity."""
        return ModelLimits(min(self.context_length, max_seq_len), self.vocab_size, tuple(self.eos_token_ids))


def validate_request(prompt_token_ids: list[int], params: SamplingParams, limits: ModelLimits) -> None:
    """Check a tokenised request against the model. Raises ValidationError naming the field."""
    if len(prompt_token_ids) == 0:
        raise ValidationError("prompt", "must not be empty")
    bad = [t for t in prompt_token_ids if not 0 <= t < limits.vocab_size]
    if bad:
        raise ValidationError(
            "prompt_token_ids", f"token id {bad[0]} outside the vocabulary [0, {limits.vocab_size})"
        )
    if len(prompt_token_ids) >= limits.context_length:
        raise ValidationError(
            "prompt",
            f"{len(prompt_token_ids)} tokens does not fit the model's context of {limits.context_length}",
        )
    if len(prompt_token_ids) + params.max_tokens > limits.context_length:
        raise ValidationError(
            "max_tokens",
            f"prompt ({len(prompt_token_ids)}) + max_tokens ({params.max_tokens}) exceeds the model's "
            f"context of {limits.context_length}",
        )
    bad = [t for t in params.stop_token_ids if t >= limits.vocab_size]
    if bad:
        raise ValidationError("stop_token_ids", f"token id {bad[0]} outside the vocabulary")
