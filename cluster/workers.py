"""The router's view of one worker: load counters, its state, and what a failed Ray call means.

A worker is ``starting`` until it has its model, then ``live``. When a call finds its actor gone it
becomes ``restarting`` (Ray restarts the actor, which loads the model again) while restarts are
left, else ``dead``; a restarted actor that answers again is ``live``, one that does not within the
bound is ``dead``. Each transition is logged once, in one line (logger "baton.router"); Ray's own
multi-line report of the failure goes to the same logger at DEBUG.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from baton.core.messages import WorkerLoad

log = logging.getLogger("baton.router")

STARTING, LIVE, RESTARTING, DEAD = "starting", "live", "restarting", "dead"
WORKER_STATES = (STARTING, LIVE, RESTARTING, DEAD)


@dataclass
class Worker:
    handle: Any
    worker_id: str
    role: str  # "prefill" | "decode"
    max_rows: int = 0
    assigned: int = 0  # rows in use or promised (handoffs sent, not finished)
    outstanding_tokens: int = 0  # prefill: prompt tokens in calls not yet returned
    calls: int = 0
    dispatched: int = 0  # calls ever sent: equally loaded workers take turns
    load: WorkerLoad | None = None
    state: str = STARTING
    restarts: int = 0  # restarts this router has seen begin
    epoch: int = 0  # bumped when the worker is lost: answers from before that are stale
    threads: int = 0  # decode: the torch threads last asked of it (cores lent by a prefill worker)
    lent: int = 0  # prefill: calls in flight that run on a decode worker's cores too

    @property
    def live(self) -> bool:
        return self.state == LIVE

    @property
    def available(self) -> bool:
        """Live, or coming back: work for its role may still wait for it."""
        return self.state in (STARTING, LIVE, RESTARTING)

    def set_state(self, state: str, why: str = "") -> bool:
        """Move to ``state``; False (and no log line) when already there."""
        if state not in WORKER_STATES:
            raise ValueError(f"state: must be one of {', '.join(WORKER_STATES)}, got {state!r}")
        if state == self.state:
            return False
        level = logging.INFO if state == LIVE else logging.WARNING
        log.log(
            level,
            "%s worker %s: %s -> %s%s",
            self.role,
            self.worker_id,
            self.state,
            state,
            f" ({why})" if why else "",
        )
        self.state = state
        return True

    def lost(self) -> None:
        """Forget what the lost actor held: its rows, its load, calls' answers still to come."""
        self.epoch += 1
        self.assigned = 0
        self.load = None
        self.threads = 0  # a restarted actor starts with its own threads

    def row(self) -> dict:
        """This worker's line in ``server_info``: a worker that is not live reports no rows."""
        d: dict[str, Any] = {"worker_id": self.worker_id, "state": self.state, "restarts": self.restarts}
        if self.role == "prefill":
            return {**d, "outstanding_tokens": self.outstanding_tokens, "calls": self.calls}
        load = self.load.__dict__ if self.load is not None and self.live else {}
        return {**d, "assigned": self.assigned, **load, "max_rows": self.max_rows}


def ray_error(e: BaseException, *names: str) -> bool:
    """Whether ``e`` is (or, raised inside a task, was caused by) one of Ray's exceptions ``names``."""
    try:
        import ray.exceptions as rx
    except ImportError:  # pragma: no cover
        return False
    kinds = tuple(getattr(rx, n) for n in names)
    return isinstance(e, kinds) or isinstance(getattr(e, "cause", None), kinds)


def actor_gone(e: BaseException) -> bool:
    """The actor died or is restarting (the call may or may not have run)."""
    return ray_error(e, "ActorDiedError", "RayActorError", "ActorUnavailableError")


def object_lost(e: BaseException) -> bool:
    """A KV object was lost with its owner (the prefill worker that put it died)."""
    return ray_error(e, "ObjectLostError", "OwnerDiedError", "ObjectReconstructionFailedError")


def unavailable(e: BaseException) -> bool:
    """The actor is (still) restarting: ask again later."""
    return ray_error(e, "ActorUnavailableError")
