"""Admission policy: which waiting queries join the batch, and how. Pure: no torch, no Ray.

- ``static``: run to completion; the batch takes new queries only when it is empty.
- ``orca``: new prompts run inside the batch's next forward (padded to the prompt's width).
- ``colocated``: BATON insertion, but the decode worker prefills them itself between steps.
- ``baton``: prefill happens elsewhere; ready handoffs are inserted between steps.
"""

from __future__ import annotations

from collections.abc import Sequence
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


def prefill_take(prompt_lens: Sequence[int], max_tokens: int, max_count: int, padded: bool = True) -> int:
    """How many of ``prompt_lens`` (a FIFO prefix) one prefill forward takes.

    The forward computes ``count x longest`` tokens when prompts are left-padded to one width
    (``padded``), or ``sum(lens)`` when they are packed without padding. It takes prompts in order
    while that stays within ``max_tokens`` and ``max_count``; the first prompt always goes (a
    prompt longer than the budget runs alone).
    """
    count = longest = total = 0
    for p in prompt_lens[: max(0, max_count)]:
        longest, total = max(longest, p), total + p
        cost = longest * (count + 1) if padded else total
        if count and cost > max_tokens:
            break
        count += 1
    return count


def plan_prefill(prompt_lens: Sequence[int], max_tokens: int, padded: bool = True) -> list[int]:
    """Split prompts (in order) into consecutive prefill forwards; returns each forward's size."""
    sizes: list[int] = []
    i = 0
    while i < len(prompt_lens):
        n = prefill_take(prompt_lens[i:], max_tokens, len(prompt_lens) - i, padded)
        sizes.append(n)
        i += n
    return sizes
