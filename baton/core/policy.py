"""Admission policy: which waiting queries join the batch, and how. Pure: no torch, no Ray.

- ``static``: run to completion; the batch takes new queries only when it is empty.
- ``orca``: new prompts run inside the batch's next forward (padded to the prompt's width).
- ``colocated``: BATON insertion, but the decode worker prefills them itself between steps.
- ``baton``: prefill happens elsewhere; ready handoffs are inserted between steps.

Queue order (``queue_order``), for every policy: which waiting query goes next, to prefill (``baton``)
or into the batch (the others). ``fcfs``: as they came. ``lof``: longest output first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


QUEUE_ORDERS = ("fcfs", "lof")


@dataclass(frozen=True)
class Queued:
    """A waiting query as the queue order sees it."""

    arrival: float  # wall-clock seconds
    remaining: int  # output tokens it may still write (max_tokens less those already streamed)
    resumed: bool = False  # prefilled again after its worker died: it already waited its turn


def queue_order(queued: Sequence[Queued], order: str, now: float, max_wait_s: float) -> list[int]:
    """The order in which ``queued`` (indices, as queued) leave the queue.

    ``fcfs``: as queued. ``lof`` (longest output first, as SGLang's scheduling policy of that name):
    most ``remaining`` tokens first, ties as queued. On a backlog (a burst, an offline batch job) the
    queries that decode longest start first and those that start last finish soonest, so the batch
    drains together instead of ending in a tail of steps over a few long rows. A query that waited
    ``max_wait_s`` or longer, and a resumed one, go first (as queued among themselves): no query
    starves behind a stream of longer ones.
    """
    if order not in QUEUE_ORDERS:
        raise ValueError(f"queue_order: must be one of {', '.join(QUEUE_ORDERS)}, got {order!r}")
    if order == "fcfs":
        return list(range(len(queued)))

    def key(i: int) -> tuple[int, int, int]:
        q = queued[i]
        if q.resumed or now - q.arrival >= max_wait_s:
            return (0, 0, i)
        return (1, -q.remaining, i)

    return sorted(range(len(queued)), key=key)


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


# ---------------------------------------------------------------------------------------------- cores
@dataclass(frozen=True)
class CoreShare:
    """One prefill and one decode worker on the same CPU node: each may borrow the other's cores
    while the other has nothing to do, so no core idles while work waits (on a 2-core machine a
    1 + 1 split leaves a core idle whenever one side has no work: the decode side at the start of
    a burst, the prefill side in its tail and between arrivals).

    - A prefill call borrows the decode worker's cores when, at dispatch, the decode worker holds no
      row and nothing is on its way to it, and no other prefill call on the node is in flight (so
      nothing can reach the decode side while the call runs: its rows come from prefills).
    - The decode worker borrows the prefill workers' cores while none of them has a call in flight.
      When a call is dispatched the cores go back at the decode worker's next step (one step of
      overlap at most): a decode step never waits for a prefill.
    - Spill workers (``spill_ids``): further prefill workers on a node whose workers ask for more
      CPUs than it has, i.e. running on the decode worker's cores, time-shared with it. They take a
      call only while a backlog waits (``spill_allowed``): on a burst, the prompts' compute gets a
      share of the decode worker's cores too, so first tokens come sooner while decode steps run
      slower (they still never wait for a prefill); when the backlog is gone, they idle and the
      decode worker has its cores back.
    """

    prefill_id: str
    decode_id: str
    prefill_cpus: int
    decode_cpus: int
    spill_ids: tuple[str, ...] = ()

    def prefill_threads(self, decode_idle: bool, prefill_busy: bool) -> int:
        """Threads of a call to the partner; ``prefill_busy``: any prefill call on the node in flight."""
        return self.prefill_cpus + (self.decode_cpus if decode_idle and not prefill_busy else 0)

    def decode_threads(self, prefill_busy: bool) -> int:
        """``prefill_busy``: the partner or a spill worker has a call in flight."""
        return self.decode_cpus + (0 if prefill_busy else self.prefill_cpus)

    @staticmethod
    def spill_allowed(waiting_tokens: int, threshold: int, partner_lent: bool) -> bool:
        """May a spill worker take a call? Only while ``threshold`` prompt tokens wait undispatched,
        and never while the partner runs on the decode worker's cores (three pools on two)."""
        return not partner_lent and waiting_tokens >= threshold


def core_shares(
    workers: Sequence[tuple[str, str, str, int]], node_cpus: Mapping[str, int] | None = None
) -> list[CoreShare]:
    """Prefill/decode workers that share a node: ``workers`` are (worker_id, role, node_id, cpus),
    ``node_cpus`` each node's cores. A node with one decode worker and one prefill worker shares;
    with more prefill workers, only when their CPUs together exceed the node's cores (they are
    oversubscribed onto the decode worker's): the first is the partner, the others spill workers.
    Other nodes (several decode workers, or enough cores for all) keep fixed threads."""
    nodes: dict[str, dict[str, list[tuple[str, int]]]] = {}
    for wid, role, node, cpus in workers:
        nodes.setdefault(node, {"prefill": [], "decode": []})[role].append((wid, max(1, cpus)))
    shares = []
    for node, roles in nodes.items():
        pre, dec = roles["prefill"], roles["decode"]
        if len(dec) != 1 or not pre:
            continue
        cores = (node_cpus or {}).get(node, 0)
        if len(pre) > 1 and not (cores and sum(c for _, c in pre + dec) > cores):
            continue
        (p, pc), (d, dc) = pre[0], dec[0]
        shares.append(CoreShare(p, d, pc, dc, tuple(w for w, _ in pre[1:])))
    return shares
