"""The soak benchmark end to end on a tiny model and few requests: its JSON accounts for every request,
nothing is left in flight, and its own Ray cluster is gone after."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import session_of_driver, wait_gone

from baton.bench import soak


def test_plan_is_seeded_and_follows_the_fractions():
    args = soak.parse_args(["--requests", "400", "--seed", "3"])
    a, b = soak.plan_requests(args, 400), soak.plan_requests(args, 400)
    assert a == b and len(a) == 400
    fates = {f: sum(p.fate == f for p in a) for f in soak.FATES}
    assert 90 <= fates["cancel"] <= 150 and 20 <= fates["deadline"] <= 60 and 20 <= fates["abort"] <= 60
    for p in a:
        assert 8 <= len(p.prompt) <= 96 and 2 <= p.max_tokens <= 64
        assert (0 < p.cut_after < p.max_tokens) == (p.fate in ("cancel", "abort"))
        assert (p.timeout_s is not None) == (p.fate == "deadline")
    with pytest.raises(SystemExit):
        soak.parse_args(["--cancel-frac", "0.8", "--abort-frac", "0.5"])
    with pytest.raises(SystemExit):
        soak.parse_args(["--prompt-len", "600:700"])


def test_rss_figures_flat_and_growing():
    flat = [{"t_s": t, "done": 10 * t, "rss_mb": 500.0 + (30 if t == 0 else 0)} for t in range(10)]
    f = soak.rss_figures(flat, warm_done=20)
    assert f["rss_after_warmup_mb"] == 500 and f["rss_growth_after_warmup_mb"] == 0
    assert f["rss_slope_mb_per_min"] == 0 and f["warmup_t_s"] == 2
    growing = [{"t_s": t, "done": 10 * t, "rss_mb": 500.0 + 2 * t} for t in range(10)]
    g = soak.rss_figures(growing, warm_done=0)
    assert g["rss_slope_mb_per_min"] == pytest.approx(120) and g[
        "rss_slope_mb_per_100_requests"
    ] == pytest.approx(20)


@pytest.mark.slow
def test_soak_smoke_accounts_for_every_request(model_dir, tmp_path):
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "baton.bench.soak", "--model", str(model_dir("llama")), "--requests", "40"]
    proc = subprocess.Popen(
        [*cmd, "--out-dir", str(tmp_path), "--sample-s", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert "[40/40," in out  # progress was shown
    data = json.loads((tmp_path / "raw" / "soak.json").read_text())
    s = data["summary"]
    assert s["ok"] and all(s["checks"].values()), s
    assert sum(s["outcomes"].values()) == 40 == len(data["requests"]) and s["outcomes"]["error"] == 0
    assert s["outcomes"]["cancelled"] > 0 and s["outcomes"]["completed"] > 0
    assert sum(s["planned"].values()) == 40 and not s["off_plan"]
    for r in data["requests"]:
        assert r["outcome"] in soak.ALLOWED[r["fate"]], r
    assert not any(s["final_load"].values()) and s["router_states_left"] == 0
    assert s["rss_end_mb"] > 0 and len(data["samples"]) >= 2
    assert "soak" in json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "soak.png").exists()
    left = wait_gone(session_of_driver(proc.pid))
    assert not left, left
