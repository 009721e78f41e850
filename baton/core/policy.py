"""Admission policy: which waiting queries join the batch, and how. Pure: no torch, no Ray.

- ``static``: run to completion; the batch takes new queries only when it is empty.
- ``orca``: new prompts run inside the batch's next forward (padded to the prompt's width).
- ``colocated``: BATON insertion, but the decode worker prefills them itself between steps.
- ``baton``: prefill happens elsewhere; ready handoffs are inserted between steps.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BatchState:
    live_rows: int
    free_rows: int
    window: int  # live KV columns
    capacity: int  # KV columns per row
    max_remaining: int  # most tokens any live row may still write


@dataclass(frozen=True)
class Candidate:
    prompt_len: int
    max_tokens: int


def admit(policy: str, batch: BatchState, waiting: list[Candidate]) -> int:
    """How many of ``waiting`` (a FIFO prefix) join the batch before its next step."""
    if policy == "static" and batch.live_rows > 0:
        return 0
    count = 0
    if policy == "orca":
        # The prompts widen every live row's window by their width, and the window keeps growing
        # until the rows drain: admit only what fits for the whole remaining run.
        width = 0
        rem = batch.max_remaining
        for c in waiting[: batch.free_rows]:
            w = max(width, c.prompt_len)
            r = max(rem, c.max_tokens)
            if batch.window + w + r > batch.capacity:
                break
            width, rem, count = w, r, count + 1
        return count
    for c in waiting[: batch.free_rows]:
        if c.prompt_len + c.max_tokens > batch.capacity:
            break
        count += 1
    return count


def prefill_budget(ready: int, in_flight: int, free_rows: int, ahead: int) -> int:
    """``baton``: how many more queries the prefill side may start (space is reserved first)."""
    return max(0, free_rows + ahead - ready - in_flight)
