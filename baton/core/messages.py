"""What crosses a boundary: prefill results, the decode worker's per-step events, and timings.

Frozen dataclasses of plain fields (str, int, float, tuples of them): Ray pickles them cheaply
and ``dataclasses.asdict`` turns any of them into a msgpack-ready dict. A request's wall-clock
stage times travel as ``Stamps``; ``Timings.of`` is the one place they become durations.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

FINISH_REASONS = ("eos", "stop", "length", "abort")


def ms_between(a: float | None, b: float | None) -> float:
    """Milliseconds from stamp ``a`` to stamp ``b`` (0 when either is missing)."""
    return round((b - a) * 1e3, 3) if a is not None and b is not None else 0.0


# ---------------------------------------------------------------------- prefill -> router
@dataclass(frozen=True)
class PrefillResult:
    """One query's prefill, as a prefill worker returns it: the header and a reference to its KV.

    ``kv_refs`` is ``[ObjectRef]`` (a list, so Ray hands the reference on unresolved) or None when
    the first token already finished the request. The router never holds the KV bytes.
    """

    header_bytes: bytes
    kv_refs: list | None
    kv_bytes: int


# ---------------------------------------------------------------------- decode -> router
@dataclass(frozen=True)
class TokenOut:
    """A row's token from one decode step, with the text it adds (held back near stop strings)."""

    request_id: str
    token: int
    text: str


@dataclass(frozen=True)
class Finished:
    """A request left the decode batch. ``num_tokens`` counts every output token, the first included."""

    request_id: str
    reason: str  # one of FINISH_REASONS
    num_tokens: int
    text: str


@dataclass(frozen=True)
class Inserted:
    """A handoff was embedded into the running batch at wall-clock time ``at``."""

    request_id: str
    at: float


@dataclass(frozen=True)
class RowError:
    """A handoff the batch refused (mismatched model, no room): its request fails, others go on."""

    request_id: str
    message: str


@dataclass(frozen=True)
class StepEvents:
    """Everything one decode-loop iteration did, for all rows at once."""

    step: int
    at: float = field(default_factory=time.time)
    tokens: tuple[TokenOut, ...] = ()
    finished: tuple[Finished, ...] = ()
    inserted: tuple[Inserted, ...] = ()
    errors: tuple[RowError, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.tokens or self.finished or self.inserted or self.errors)


@dataclass(frozen=True)
class WorkerLoad:
    """A decode worker's occupancy, reported with every event batch."""

    rows: int
    max_rows: int
    waiting: int  # handoffs fetched and waiting for a row
    window: int  # live KV columns
    capacity: int  # KV columns per row
    kv_bytes: int
    stats: dict[str, Any] = field(default_factory=dict)  # LoopStats as a dict
    threads: int = 0  # torch threads of the step loop's last step (0: none yet)

    @property
    def free_rows(self) -> int:
        return self.max_rows - self.rows


@dataclass(frozen=True)
class EventBatch:
    """What one long poll of a decode worker returns. ``fatal`` is set when its step loop died."""

    worker_id: str
    events: tuple[StepEvents, ...]
    load: WorkerLoad
    fatal: str | None = None


# ---------------------------------------------------------------------- timings
@dataclass
class Stamps:
    """Wall-clock times (s since the epoch) of one request's stages; comparable across processes."""

    arrival: float
    prefill_start: float | None = None
    prefill_end: float | None = None
    first_token: float | None = None
    inserted: float | None = None
    kv_bytes: int = 0

    @classmethod
    def from_header(cls, timings: dict[str, float], kv_bytes: int = 0) -> Stamps:
        """The stamps a prefill worker wrote into a handoff header (its first token is final)."""
        return cls(
            arrival=timings["arrival"],
            prefill_start=timings["prefill_start"],
            prefill_end=timings["prefill_end"],
            first_token=timings["prefill_end"],
            kv_bytes=kv_bytes,
        )


@dataclass(frozen=True)
class Timings:
    """A finished request's durations in ms, as every API reports them."""

    queue: float
    prefill: float
    kv_transfer: float
    ttft: float
    decode: float
    total: float
    kv_bytes: int = 0
    prefill_worker: str = ""
    decode_worker: str = ""

    @classmethod
    def of(cls, s: Stamps, now: float, prefill_worker: str = "", decode_worker: str = "") -> Timings:
        return cls(
            queue=ms_between(s.arrival, s.prefill_start),
            prefill=ms_between(s.prefill_start, s.prefill_end),
            kv_transfer=ms_between(s.prefill_end, s.inserted),
            ttft=ms_between(s.arrival, s.first_token),
            decode=ms_between(s.inserted, now),
            total=ms_between(s.arrival, now),
            kv_bytes=s.kv_bytes,
            prefill_worker=prefill_worker,
            decode_worker=decode_worker,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
