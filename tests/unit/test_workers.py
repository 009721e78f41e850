"""The router's worker states, without Ray: one log line per transition, no stale rows when not live."""

from __future__ import annotations

import logging

import pytest

from baton.core.messages import WorkerLoad
from cluster.workers import Worker


def test_each_transition_is_logged_once_in_one_line(caplog):
    w = Worker(None, "decode-0", "decode", max_rows=4)
    with caplog.at_level(logging.INFO, logger="baton.router"):
        for state in ("live", "live", "restarting", "restarting", "live", "dead"):
            w.set_state(state, "why")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "decode worker decode-0: starting -> live (why)",
        "decode worker decode-0: live -> restarting (why)",
        "decode worker decode-0: restarting -> live (why)",
        "decode worker decode-0: live -> dead (why)",
    ]
    with pytest.raises(ValueError, match="state"):
        w.set_state("zombie")


def test_a_lost_worker_reports_no_rows():
    w = Worker(None, "decode-0", "decode", max_rows=4, state="live", assigned=3)
    w.load = WorkerLoad(rows=3, max_rows=4, waiting=1, window=40, capacity=301, kv_bytes=10)
    assert w.row()["rows"] == 3 and w.row()["state"] == "live"
    w.lost()
    w.set_state("restarting")
    row = w.row()
    assert row["state"] == "restarting" and row["assigned"] == 0 and "rows" not in row
    assert w.epoch == 1 and not w.live and w.available
    w.set_state("dead")
    assert not w.available
