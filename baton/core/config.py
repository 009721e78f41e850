"""Frozen configuration of an engine run."""

from __future__ import annotations

import os
from dataclasses import dataclass

POLICIES = ("baton", "colocated", "orca", "static")


def default_prefill_tokens(device: str) -> int:
    """Padded prompt tokens per prefill forward when not set (0).

    On the CPU a padded batch of prompts costs no less than the prompts one by one, and every first
    token waits for the whole call: with 4096, 8 req/s on SmolLM2 gave 50.3 tok/s and TTFT p50 5.2 s,
    with 256 62.0 tok/s and 2.7 s (bench.suite, BENCHMARKS.md). On GPUs batching prompts pays.
    """
    return 4096 if device.startswith("cuda") else 256


@dataclass(frozen=True)
class EngineConfig:
    model: str = "smollm2-135m"
    policy: str = "baton"
    max_batch_size: int = 32
    max_seq_len: int = 2048  # KV columns per decode row: caps prompt + max_tokens
    max_prefill_tokens: int = 0  # padded tokens per prefill forward; 0: default_prefill_tokens(device)
    prefill_ahead: int = 8  # handoffs the prefill side may keep ready beyond the free rows
    device: str = "cpu"
    dtype: str = "auto"
    threads: int = 0  # total torch threads; 0 = all cores

    def __post_init__(self) -> None:
        if self.max_prefill_tokens == 0:
            object.__setattr__(self, "max_prefill_tokens", default_prefill_tokens(self.device))
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
