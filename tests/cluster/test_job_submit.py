"""`ray job submit` against a real `ray start --head` on 127.0.0.1, then a clean shutdown."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import free_port, wait_gone

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.mark.slow
def test_ray_job_submit_baton_run(model_dir, tmp_path):
    folder = model_dir("llama")
    temp_dir = Path("/tmp") / f"rayjob{os.getpid()}"  # short: Ray's socket paths have a length limit
    env = dict(
        os.environ,
        RAY_AUTH_MODE="disabled",
        PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
        RAY_USAGE_STATS_ENABLED="0",
    )
    env.pop("RAY_ADDRESS", None)
    gcs, dash = free_port(), free_port()
    start = [
        str(BIN / "ray"),
        "start",
        "--head",
        f"--port={gcs}",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        "--include-dashboard=true",
        "--num-cpus=4",
        "--object-store-memory=300000000",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    subprocess.run(start, env=env, check=True, timeout=180, capture_output=True)
    try:
        req = tmp_path / "in.jsonl"
        out = tmp_path / "out.jsonl"
        req.write_text(
            "\n".join(
                json.dumps(x)
                for x in [
                    {"id": "a", "prompt": "The quick brown fox", "max_tokens": 12},
                    {"id": "b", "prompt_token_ids": list(range(5, 60)), "max_tokens": 20, "arrival_s": 0.05},
                    {"id": "c", "prompt": "x", "top_k": -3},
                ]
            )
            + "\n"
        )
        submit = [
            str(BIN / "ray"),
            "job",
            "submit",
            "--address",
            f"http://127.0.0.1:{dash}",
            "--working-dir",
            str(REPO),
            "--",
            "baton",
            "run",
            "--model",
            str(folder),
            "--requests",
            str(req),
            "--out",
            str(out),
            "--max-seq-len",
            "300",
            "--prefill-num-cpus",
            "1",
            "--decode-num-cpus",
            "1",
        ]
        proc = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "succeeded" in proc.stdout.lower(), proc.stdout[-2000:]
        rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
        assert rows["a"]["token_ids"] and rows["a"]["timings"]["prefill_worker"] == "prefill-0"
        assert len(rows["b"]["token_ids"]) <= 20 and rows["b"]["timings"]["decode_worker"] in ("decode-0", "")
        assert rows["c"]["field"] == "top_k"
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, timeout=120, capture_output=True)
    left = wait_gone(str(temp_dir))
    assert not left, left
