"""Finding Ray processes left behind by a test cluster."""

from __future__ import annotations

import subprocess
import time


def ray_processes(marker: str) -> list[str]:
    """Ray system processes (raylet, GCS, dashboard, workers) whose command line contains ``marker``."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    keys = ("raylet", "gcs_server", "dashboard", "default_worker", "ray::")
    return [line for line in out.splitlines() if marker in line and any(k in line for k in keys)]


def wait_gone(marker: str, timeout: float = 30.0) -> list[str]:
    deadline = time.time() + timeout
    while (left := ray_processes(marker)) and time.time() < deadline:
        time.sleep(0.5)
    return left
