"""Pure admission policy: how many waiting queries (a FIFO prefix) join before the next step."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from baton.core.policy import (
    BatchState,
    Candidate,
    CoreShare,
    Queued,
    admit,
    core_shares,
    plan_prefill,
    prefill_budget,
    prefill_take,
    queue_order,
)


def state(live=0, free=4, window=0, capacity=100, max_remaining=0) -> BatchState:
    return BatchState(
        live_rows=live, free_rows=free, window=window, capacity=capacity, max_remaining=max_remaining
    )


def cands(*pairs) -> list[Candidate]:
    return [Candidate(prompt_len=p, max_tokens=m) for p, m in pairs]


def test_module_is_pure():
    # The policy module documents itself as pure: importing it must not drag torch or Ray in.
    code = "import sys, baton.core.policy; print('torch' in sys.modules, 'ray' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.stdout.split() == ["False", "False"]


# --------------------------------------------------------------------------- static
def test_static_admits_nothing_while_rows_live():
    assert admit("static", state(live=1, free=3), cands((5, 5), (5, 5))) == 0
    assert admit("static", state(live=3, free=1, window=10), cands((1, 1))) == 0


def test_static_fills_an_empty_batch_up_to_free_rows():
    assert admit("static", state(live=0, free=3), cands(*[(5, 5)] * 5)) == 3
    assert admit("static", state(live=0, free=8), cands((5, 5), (6, 6))) == 2
    assert admit("static", state(live=0, free=0), cands((5, 5))) == 0


def test_static_empty_batch_respects_capacity_fifo():
    # The second does not fit: admission stops there even though the third would fit (FIFO).
    assert admit("static", state(live=0, free=4, capacity=20), cands((5, 5), (15, 6), (1, 1))) == 1


# --------------------------------------------------------------------------- baton / colocated
@pytest.mark.parametrize("policy", ["baton", "colocated"])
def test_insertion_policies_admit_while_rows_live(policy):
    assert (
        admit(policy, state(live=3, free=2, window=50, max_remaining=40), cands((5, 5), (5, 5), (5, 5))) == 2
    )


@pytest.mark.parametrize("policy", ["baton", "colocated"])
def test_insertion_policies_bounded_by_free_rows(policy):
    assert admit(policy, state(free=0), cands((1, 1))) == 0
    assert admit(policy, state(free=1), cands((1, 1), (1, 1))) == 1
    assert admit(policy, state(free=10), cands((1, 1), (1, 1))) == 2
    assert admit(policy, state(free=10), []) == 0


@pytest.mark.parametrize("policy", ["baton", "colocated"])
def test_insertion_policies_capacity_is_per_row(policy):
    # prompt + max_tokens must fit the capacity; exactly equal fits.
    assert admit(policy, state(capacity=20), cands((10, 10))) == 1
    assert admit(policy, state(capacity=20), cands((10, 11))) == 0
    assert admit(policy, state(capacity=20), cands((21, 1))) == 0
    # The live window does not matter for insertion (rows are right-aligned; trim reclaims padding).
    assert admit(policy, state(live=2, free=2, window=19, capacity=20, max_remaining=1), cands((10, 10))) == 1


@pytest.mark.parametrize("policy", ["baton", "colocated"])
def test_insertion_policies_stop_at_first_misfit(policy):
    assert admit(policy, state(free=5, capacity=20), cands((5, 5), (5, 5), (30, 1), (1, 1))) == 2
    assert admit(policy, state(free=5, capacity=20), cands((30, 1), (1, 1))) == 0


# --------------------------------------------------------------------------- orca
def test_orca_admits_into_running_batch_when_window_allows():
    # window 10 + widest prompt 5 + longest remaining 20 = 35 <= 40
    assert (
        admit("orca", state(live=2, free=2, window=10, capacity=40, max_remaining=20), cands((5, 3), (4, 3)))
        == 2
    )


def test_orca_window_bound():
    # 30 + 5 + 6 = 41 > 40: nothing joins even though prompt+max_tokens alone would fit.
    assert admit("orca", state(live=1, free=3, window=30, capacity=40, max_remaining=6), cands((5, 5))) == 0
    # Exactly at the capacity is allowed.
    assert admit("orca", state(live=1, free=3, window=30, capacity=41, max_remaining=6), cands((5, 5))) == 1


def test_orca_width_is_the_widest_prompt_so_far():
    # First: 10 + 8 + 10 = 28 <= 30. Second widens to 12: 10 + 12 + 10 = 32 > 30 -> stop.
    b = state(live=1, free=5, window=10, capacity=30, max_remaining=10)
    assert admit("orca", b, cands((8, 2), (12, 2), (1, 1))) == 1
    # A narrower second prompt does not widen: 10 + 8 + 10 = 28.
    assert admit("orca", b, cands((8, 2), (3, 2))) == 2


def test_orca_remaining_is_the_longest_so_far():
    b = state(live=1, free=5, window=10, capacity=30, max_remaining=5)
    # First: 10 + 4 + max(5, 15) = 29. Second raises remaining to 17: 10 + 4 + 17 = 31 > 30.
    assert admit("orca", b, cands((4, 15), (4, 17))) == 1
    # max_tokens below the batch's remaining count does not change the bound.
    assert admit("orca", b, cands((4, 15), (4, 2), (4, 16))) == 3


def test_orca_bounded_by_free_rows_and_fifo():
    b = state(live=0, free=2, window=0, capacity=100, max_remaining=0)
    assert admit("orca", b, cands((1, 1), (1, 1), (1, 1))) == 2
    b = state(live=0, free=5, window=0, capacity=20, max_remaining=0)
    assert admit("orca", b, cands((5, 5), (30, 1), (1, 1))) == 1


def test_orca_empty_batch():
    assert admit("orca", state(free=3, capacity=20), cands((10, 10))) == 1
    assert admit("orca", state(free=3, capacity=20), cands((10, 11))) == 0


# --------------------------------------------------------------------------- prefill_budget
@pytest.mark.parametrize(
    ("ready", "in_flight", "free_rows", "ahead", "want"),
    [
        (0, 0, 4, 0, 4),
        (0, 0, 4, 2, 6),
        (1, 2, 4, 0, 1),
        (2, 2, 4, 0, 0),
        (5, 3, 4, 1, 0),  # over-committed: never negative
        (0, 0, 0, 0, 0),
        (0, 3, 0, 4, 1),
    ],
)
def test_prefill_budget(ready, in_flight, free_rows, ahead, want):
    assert prefill_budget(ready, in_flight, free_rows, ahead) == want


# --------------------------------------------------------------------------- prefill packing
def test_prefill_take_padded_counts_longest_times_rows():
    # 3 x 50 = 150 fits 160; a fourth row would make 4 x 50 = 200.
    assert prefill_take([10, 50, 20, 30], 160, 10) == 3
    assert prefill_take([10, 50, 20, 30], 150, 10) == 3
    assert prefill_take([10, 50, 20, 30], 149, 10) == 2


def test_prefill_take_packed_counts_real_tokens():
    assert prefill_take([10, 50, 20, 30], 80, 10, padded=False) == 3
    assert prefill_take([10, 50, 20, 30], 79, 10, padded=False) == 2


def test_prefill_take_first_prompt_always_goes_and_count_is_capped():
    assert prefill_take([500, 1], 100, 10) == 1
    assert prefill_take([1, 1, 1], 100, 2) == 2
    assert prefill_take([], 100, 5) == 0
    assert prefill_take([5], 100, 0) == 0


def test_plan_prefill_splits_in_order():
    assert plan_prefill([10, 50, 20, 30, 500, 5], 150) == [3, 1, 1, 1]
    assert plan_prefill([10, 50, 20, 30, 500, 5], 150, padded=False) == [4, 1, 1]
    assert sum(plan_prefill(list(range(1, 40)), 64)) == 39


# --------------------------------------------------------------------------- shared cores
def test_core_share_lends_only_to_an_idle_partner():
    s = CoreShare("p", "d", prefill_cpus=1, decode_cpus=1)
    assert s.prefill_threads(decode_idle=True, prefill_busy=False) == 2  # nothing to decode: both cores
    assert s.prefill_threads(decode_idle=False, prefill_busy=False) == 1
    # A call queued behind another would run when rows may already be decoding: its own cores only.
    assert s.prefill_threads(decode_idle=True, prefill_busy=True) == 1
    assert s.decode_threads(prefill_busy=False) == 2
    assert s.decode_threads(prefill_busy=True) == 1
    assert CoreShare("p", "d", 2, 3).decode_threads(prefill_busy=False) == 5


def test_core_shares_pair_one_prefill_with_one_decode_per_node():
    workers = [
        ("prefill-0", "prefill", "n1", 1),
        ("decode-0", "decode", "n1", 1),
        ("prefill-1", "prefill", "n2", 2),  # n2: two decode workers, no obvious pairing
        ("decode-1", "decode", "n2", 1),
        ("decode-2", "decode", "n2", 1),
        ("decode-3", "decode", "n3", 4),  # n3: no prefill worker
        ("prefill-2", "prefill", "n4", 0),  # cpus at least 1
        ("decode-4", "decode", "n4", 1),
    ]
    assert core_shares(workers) == [
        CoreShare("prefill-0", "decode-0", 1, 1),
        CoreShare("prefill-2", "decode-4", 1, 1),
    ]
    assert core_shares([]) == []


def test_core_shares_make_extra_prefill_workers_spill_only_on_an_oversubscribed_node():
    workers = [
        ("prefill-0", "prefill", "n1", 1),
        ("prefill-1", "prefill", "n1", 1),
        ("decode-0", "decode", "n1", 1),
        ("prefill-2", "prefill", "n2", 2),  # n2 has cores enough for all: no sharing
        ("prefill-3", "prefill", "n2", 2),
        ("decode-1", "decode", "n2", 4),
    ]
    assert core_shares(workers, {"n1": 2, "n2": 8}) == [
        CoreShare("prefill-0", "decode-0", 1, 1, ("prefill-1",))
    ]
    # Without the nodes' cores known, several prefill workers on one node never share.
    assert core_shares(workers) == []


def test_spill_workers_wait_for_a_backlog_and_never_run_beside_a_lent_call():
    assert CoreShare.spill_allowed(waiting_tokens=2000, threshold=1024, partner_lent=False)
    assert not CoreShare.spill_allowed(waiting_tokens=1000, threshold=1024, partner_lent=False)
    # The partner is on the decode worker's cores already: a spill call would make three pools on two.
    assert not CoreShare.spill_allowed(waiting_tokens=2000, threshold=1024, partner_lent=True)
    assert CoreShare.spill_allowed(waiting_tokens=0, threshold=0, partner_lent=False)


def test_spill_flags_reach_the_cluster_config_and_bad_values_name_the_field():
    from baton.cli import build_parser, cluster_config
    from baton.core.config import ClusterConfig

    args = build_parser().parse_args(
        [
            "serve",
            "--model",
            "m",
            "--prefill-workers",
            "2",
            "--spill-prefill-tokens",
            "1024",
            "--spill-nice",
            "3",
        ]
    )
    cfg = cluster_config(args)
    assert (cfg.prefill_workers, cfg.spill_prefill_tokens, cfg.spill_nice) == (2, 1024, 3)
    assert ClusterConfig(model="m").spill_prefill_tokens == 0  # off unless asked for
    for kw, field in (
        ({"spill_nice": 20}, "spill_nice"),
        ({"spill_prefill_tokens": -1}, "spill_prefill_tokens"),
    ):
        with pytest.raises(ValueError, match=field):
            ClusterConfig(model="m", **kw)


# --------------------------------------------------------------------------- queue order
def queued(*rows) -> list[Queued]:
    """(arrival, remaining[, resumed]) per waiting query, in queue order."""
    return [Queued(*r) for r in rows]


def test_fcfs_keeps_the_queue_as_it_is():
    q = queued((0.0, 5), (1.0, 50), (2.0, 20))
    assert queue_order(q, "fcfs", now=100.0, max_wait_s=1.0) == [0, 1, 2]


def test_lof_puts_the_most_remaining_tokens_first_ties_as_queued():
    q = queued((0.0, 5), (0.1, 50), (0.2, 20), (0.3, 50), (0.4, 1))
    assert queue_order(q, "lof", now=1.0, max_wait_s=60.0) == [1, 3, 2, 0, 4]


def test_lof_lets_waited_and_resumed_queries_go_first_in_queue_order():
    # 0 waited 61 s (>= 60): it goes first although it is the shortest; 3 is a resumed (migrated)
    # query, which already waited its turn once; the others follow longest first.
    q = queued((0.0, 2), (50.0, 10), (55.0, 90), (58.0, 1, True), (59.0, 40))
    assert queue_order(q, "lof", now=61.0, max_wait_s=60.0) == [0, 3, 2, 4, 1]
    # Before the bound nobody is aged: only the resumed one jumps the queue.
    assert queue_order(q, "lof", now=30.0, max_wait_s=60.0) == [3, 2, 4, 1, 0]


def test_queue_order_refuses_an_unknown_order_naming_the_field():
    with pytest.raises(ValueError, match="queue_order"):
        queue_order(queued((0.0, 1)), "sjf", now=0.0, max_wait_s=1.0)


@pytest.mark.parametrize(
    "cmd", [["serve"], ["run", "--requests", "x.jsonl"], ["run", "--local", "--requests", "x"]]
)
def test_queue_flags_reach_every_config_and_bad_values_name_the_field(cmd):
    from baton.cli import build_parser, cluster_config, serving_fields
    from baton.core.config import ClusterConfig, EngineConfig

    args = build_parser().parse_args(
        [*cmd, "--model", "m", "--queue-order", "lof", "--queue-max-wait-s", "5"]
    )
    for cfg in (cluster_config(args), EngineConfig(**serving_fields(args))):
        assert (cfg.queue_order, cfg.queue_max_wait_s) == ("lof", 5.0)
    assert ClusterConfig(model="m").queue_order == "fcfs"  # as they came, unless asked
    for kw, field in (({"queue_order": "sjf"}, "queue_order"), ({"queue_max_wait_s": 0}, "queue_max_wait_s")):
        with pytest.raises(ValueError, match=field):
            EngineConfig(model="m", **kw)
