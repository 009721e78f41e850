"""A kernel build killed mid-way leaves torch's lock file behind; the next load must not wait on it forever."""

from __future__ import annotations

import os
import time

from baton.runtime import kernels


def test_stale_build_lock_is_removed_and_a_fresh_one_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    name = "baton_lock_probe"
    assert not kernels.clear_stale_lock(name)  # no lock: nothing to do
    lock = tmp_path / name / "lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.touch()
    assert not kernels.clear_stale_lock(name, max_age_s=60)  # a build may be running: keep it
    assert lock.exists()
    old = time.time() - 3600
    os.utime(lock, (old, old))
    assert kernels.clear_stale_lock(name, max_age_s=60)
    assert not lock.exists()
