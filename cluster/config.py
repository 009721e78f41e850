"""Frozen configuration of an engine run."""

from __future__ import annotations

import os
from dataclasses import dataclass

POLICIES = ("baton", "colocated", "orca", "static")


@dataclass(frozen=True)
class EngineConfig:
    model: str = "smollm2-135m"
    policy: str = "baton"
    max_batch_size: int = 32
    max_seq_len: int = 2048  # KV columns per decode row: caps prompt + max_tokens
    max_prefill_tokens: int = 4096  # padded tokens per prefill forward
    prefill_ahead: int = 8  # handoffs the prefill side may keep ready beyond the free rows
    device: str = "cpu"
    dtype: str = "auto"
    threads: int = 0  # total torch threads; 0 = all cores

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"policy: must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        for name in ("max_batch_size", "max_seq_len", "max_prefill_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.prefill_ahead < 0:
            raise ValueError(f"prefill_ahead: must be >= 0, got {self.prefill_ahead}")

    @property
    def total_threads(self) -> int:
        return self.threads or os.cpu_count() or 1
