"""Torch thread count from a worker's CPU allocation."""

from __future__ import annotations

import os


def configure_threads(threads: int | float | None) -> int:
    """Set torch's intra-op threads (at least 1) and the OpenMP/MKL env for child libraries."""
    import torch

    n = max(1, int(threads or 1))
    os.environ["OMP_NUM_THREADS"] = str(n)
    os.environ["MKL_NUM_THREADS"] = str(n)
    torch.set_num_threads(n)
    return n


def set_thread_count(threads: int) -> int:
    """Torch intra-op threads of the calling thread (OpenMP's count is per thread); returns the old."""
    import torch

    old = torch.get_num_threads()
    n = max(1, int(threads))
    if n != old:
        torch.set_num_threads(n)
    return old
