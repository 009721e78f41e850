"""`baton run` on Ray with a worker process SIGKILLed mid-run: it never hangs, writes every result,
and its exit code says whether any request was lost."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from helpers import session_of_driver, wait_gone
from oracle import assert_exact

from baton.core.params import SamplingParams
from baton.core.request import Request

pytestmark = pytest.mark.slow


def _worker_pids(driver_pid: int, cls: str) -> list[int]:
    """PIDs of the ``cls`` actor processes of the Ray cluster that ``driver_pid`` started."""
    rows = []
    out = subprocess.run(["ps", "-ww", "-eo", "pid,ppid,args"], capture_output=True, text=True).stdout
    for line in out.splitlines()[1:]:
        pid, ppid, args = line.strip().split(None, 2)
        rows.append((int(pid), int(ppid), args))
    session = session_of_driver(driver_pid)
    raylets = {pid for pid, _, args in rows if "raylet" in args and session.search(args)}
    return sorted(pid for pid, ppid, args in rows if ppid in raylets and args.startswith(f"ray::{cls}"))


def _baton_run(folder, tmp_path, lines: list[dict], extra: list[str], kill_after_s: float):
    """Run `baton run` on Ray; SIGKILL decode-worker process 0 ``kill_after_s`` after the run starts."""
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text("".join(json.dumps(x) + "\n" for x in lines))
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_ENABLE_ZERO_COPY_TORCH_TENSORS="1")
    env.pop("RAY_ADDRESS", None)
    argv = [sys.executable, "-m", "baton.cli", "run", "--model", str(folder), "--requests", str(inp)]
    argv += ["--out", str(out), "--max-seq-len", "300", "--dtype", "float32", "--object-store-mb", "300"]
    argv += ["--prefill-num-cpus", "0.5", "--decode-num-cpus", "0.5", *extra]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    err: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            err.append(line)
            if "workers ready" in line:
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert ready.wait(240), "".join(err)
        time.sleep(kill_after_s)
        pids = _worker_pids(proc.pid, "DecodeWorker")
        assert pids, "no decode worker process found"
        os.kill(pids[0], signal.SIGKILL)
        proc.wait(timeout=300)  # never hangs
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
    reader.join(10)
    left = wait_gone(session_of_driver(proc.pid))
    assert not left, f"Ray processes left behind: {left}"
    rows = [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []
    return proc.returncode, rows, "".join(err)


def test_decode_worker_killed_mid_run_all_results_exact(model_dir, tiny_lm, tmp_path):
    lm = tiny_lm("llama")
    lines = [
        {
            "id": f"r{i}",
            "prompt_token_ids": [5 + (3 * i + j) % 80 for j in range(6 + 2 * i)],
            "max_tokens": 200,
            "ignore_eos": True,
            "arrival_s": 0.1 * i,
        }
        for i in range(16)
    ]
    code, rows, err = _baton_run(
        model_dir("llama"), tmp_path, lines, ["--decode-workers", "2", "--max-batch-size", "8"], 0.8
    )
    assert code == 0, err
    assert re.search(r"decode worker decode-\d: live -> restarting", err), err  # the kill landed mid-run
    assert [r["id"] for r in rows] == [x["id"] for x in lines]
    reqs = [
        Request(x["id"], tuple(x["prompt_token_ids"]), SamplingParams(max_tokens=200, ignore_eos=True), 0)
        for x in lines
    ]
    assert_exact(lm, reqs, [r["token_ids"] for r in rows])


def test_only_decode_worker_killed_run_exits_nonzero_with_completed_results(model_dir, tmp_path):
    short = [
        {"id": f"s{i}", "prompt_token_ids": [5, 6, 7 + i], "max_tokens": 3, "ignore_eos": True}
        for i in range(3)
    ]
    long = [
        {
            "id": f"l{i}",
            "prompt_token_ids": [9, 8, 7 + i],
            "max_tokens": 250,
            "ignore_eos": True,
            "arrival_s": 0.3,
        }
        for i in range(30)  # one row: ~7500 decode steps, so the kill lands mid-run on a fast machine too
    ]
    code, rows, err = _baton_run(
        model_dir("llama"), tmp_path, short + long, ["--max-restarts", "0", "--max-batch-size", "1"], 1.5
    )
    assert code == 1, err
    assert "baton: error:" in err and "decode worker" in err.split("baton: error:")[1]
    assert [r["id"] for r in rows] == [x["id"] for x in short + long]
    assert all(len(r.get("token_ids", ())) == 3 for r in rows[:3]), rows[:3]  # done before the kill: written
    failed = [r for r in rows if "error" in r]
    assert failed and all("decode worker" in r["error"] and len(r["error"]) < 120 for r in failed)
