"""`baton serve` as a real process: health after load, a stream survives SIGTERM (graceful drain),
the process exits 0 and leaves no Ray processes behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import grpc
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import free_port, ray_processes, session_of_driver, wait_gone

from baton.client import BatonClient
from baton.v1 import generation_pb2 as pb


@pytest.mark.slow
def test_serve_drains_on_sigterm(model_dir, tmp_path):
    port, http_port = free_port(), free_port()
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    env.pop("BATON_AUTH_TOKEN", None)
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "baton.cli",
            "serve",
            "--model",
            str(model_dir("gpt2")),
            "--port",
            str(port),
            "--max-seq-len",
            "300",
            "--prefill-num-cpus",
            "1",
            "--decode-num-cpus",
            "1",
            "--object-store-mb",
            "300",
            "--drain-grace",
            "60",
            "--http-port",
            str(http_port),
            "--log-format",
            "json",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        deadline = time.time() + 180
        status = None
        while time.time() < deadline and proc.poll() is None:
            try:
                status = health.Check(
                    health_pb2.HealthCheckRequest(service="baton.v1.Generation"), timeout=1
                ).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.RpcError:
                time.sleep(0.5)
        assert status == health_pb2.HealthCheckResponse.SERVING, (tmp_path / "serve.log").read_text()[-3000:]
        assert "all 2 workers ready" in (tmp_path / "serve.log").read_text()
        assert ray_processes(session_of_driver(proc.pid))  # the check at the end can see its Ray

        # The OpenAI-compatible HTTP API of the same process: a completion, then its JSON access line.
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{http_port}/v1", api_key="none", max_retries=0)
        r = client.completions.create(model=str(model_dir("gpt2")), prompt=list(range(5, 20)), max_tokens=4)
        assert r.usage.completion_tokens >= 1
        access = [
            json.loads(line)
            for line in (tmp_path / "serve.log").read_text().splitlines()
            if line.startswith("{") and '"baton.access"' in line
        ]
        assert access and access[-1]["request_id"] == r.id.removeprefix("cmpl-"), access
        assert access[-1]["prompt_tokens"] == 15 and access[-1]["output_tokens"] == r.usage.completion_tokens

        with BatonClient(f"127.0.0.1:{port}") as c:
            call = c.generate(list(range(5, 40)), max_tokens=200, ignore_eos=True, stream=True)
            first = next(call)
            result: dict = {}
            reader = threading.Thread(target=lambda: result.update(rest=list(call)))
            reader.start()
            proc.send_signal(signal.SIGTERM)
            reader.join(120)
            rest = result["rest"]
            toks = list(first.chunk.token_ids) + [t for r in rest[:-1] for t in r.chunk.token_ids]
            assert len(toks) == 200 and pb.FinishReason.Name(rest[-1].complete.finish_reason) == "LENGTH"
        assert proc.wait(120) == 0, (tmp_path / "serve.log").read_text()[-3000:]
        assert "draining" in (tmp_path / "serve.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    left = wait_gone(session_of_driver(proc.pid))  # its own Ray only: others may run beside it
    assert not left, left
