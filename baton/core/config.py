"""Frozen configuration: what every deployment shares once, then the in-process and Ray specifics.

``ServingConfig`` holds the model, its placement and the decode batch's shape. ``EngineConfig``
adds what an in-process run needs (policy, threads); ``ClusterConfig`` adds the Ray deployment
(worker counts, resources, admission queue, the router's knobs). Every check raises ValueError
naming the field.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from baton.core.policy import QUEUE_ORDERS

POLICIES = ("baton", "colocated", "orca", "static")
RUNTIMES = ("auto", "fast", "hf")  # fast: baton's own Llama-family forward; hf: transformers
DTYPES = ("auto", "float32", "bfloat16", "float16")
COMPILE = ("auto", "on", "off")
DEFAULT_MODEL = "smollm2-135m"


def default_prefill_tokens(device: str) -> int:
    """Padded prompt tokens per prefill forward when not set (0).

    On the CPU a padded batch of prompts costs no less than the prompts one by one, and every first
    token waits for the whole call: with 4096, 8 req/s on SmolLM2 gave 50.3 tok/s and TTFT p50 5.2 s,
    with 256 62.0 tok/s and 2.7 s (baton bench, BENCHMARKS.md). On GPUs batching prompts pays.
    """
    return 4096 if device.startswith("cuda") else 256


def _at_least(cfg: object, names: tuple[str, ...], low: float) -> None:
    for name in names:
        if getattr(cfg, name) < low:
            raise ValueError(f"{name}: must be >= {low}, got {getattr(cfg, name)}")


@dataclass(frozen=True)
class ServingConfig:
    model: str = DEFAULT_MODEL
    device: str = "cpu"
    dtype: str = "auto"  # auto: bfloat16 on CUDA and (fast runtime) CPUs with bf16 units, else float32
    runtime: str = "auto"  # auto: fast where the architecture is supported, else hf
    compile: str = "auto"  # compiled decode steps (fast runtime), done at worker start-up
    max_batch_size: int = 32  # rows per decode batch
    max_seq_len: int = 2048  # KV columns per decode row: caps prompt + max_tokens
    max_prefill_tokens: int = 0  # tokens per prefill forward; 0: default_prefill_tokens(device)
    prefill_ahead: int = 8  # handoffs the prefill side may keep ready beyond the free rows
    # Which waiting query goes next (baton.core.policy.queue_order): fcfs, or lof (longest output
    # first: most max_tokens first, for bursts and batch jobs), where one that waited
    # queue_max_wait_s goes first anyway.
    queue_order: str = "fcfs"
    queue_max_wait_s: float = 60.0

    def __post_init__(self) -> None:
        for name, allowed in (
            ("runtime", RUNTIMES),
            ("dtype", DTYPES),
            ("compile", COMPILE),
            ("queue_order", QUEUE_ORDERS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.max_prefill_tokens == 0:
            object.__setattr__(self, "max_prefill_tokens", default_prefill_tokens(self.device))
        _at_least(self, ("max_batch_size", "max_seq_len", "max_prefill_tokens"), 1)
        _at_least(self, ("prefill_ahead",), 0)
        if not self.queue_max_wait_s > 0:
            raise ValueError(f"queue_max_wait_s: must be > 0, got {self.queue_max_wait_s}")


@dataclass(frozen=True)
class EngineConfig(ServingConfig):
    """An in-process run (``baton run --local`` and the baseline policies)."""

    policy: str = "baton"
    threads: int = 0  # total torch threads; 0 = all cores

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.policy not in POLICIES:
            raise ValueError(f"policy: must be one of {', '.join(POLICIES)}, got {self.policy!r}")

    @property
    def total_threads(self) -> int:
        return self.threads or os.cpu_count() or 1


@dataclass(frozen=True)
class ClusterConfig(ServingConfig):
    """A Ray deployment: workers as actors, the router in the driver."""

    prefill_workers: int = 1
    decode_workers: int = 1
    max_queue: int = 1024  # waiting requests before QueueFull
    prefill_calls_per_worker: int = 2  # outstanding prefill calls per worker
    poll_timeout_s: float = 0.5  # decode workers' event long poll
    prefill_num_cpus: float = 1.0
    decode_num_cpus: float = 1.0
    prefill_num_gpus: float = 0.0
    decode_num_gpus: float = 0.0
    prefill_resources: dict = field(default_factory=dict)
    decode_resources: dict = field(default_factory=dict)
    ray_address: str | None = None
    object_store_bytes: int = 2 * 1024**3
    ray_num_cpus: int | None = None  # local Ray only: logical CPUs (default: enough for the workers)
    # Faults (docs/architecture.md, "Faults"): a dead worker is restarted by Ray up to max_restarts
    # times (0: never); the router waits restart_timeout_s for it to load its model and rejoin. A
    # request whose worker died is re-prefilled (migrated) at most max_request_retries times.
    max_restarts: int = 3
    restart_timeout_s: float = 120.0
    max_request_retries: int = 3
    ping_interval_s: float = 1.0  # idle prefill workers are pinged this often (their death is noticed)
    # A prefill and a decode worker alone on one CPU node borrow each other's cores while the other
    # is idle (baton.core.policy.CoreShare); off: fixed threads.
    share_cores: bool = True
    # > 0: prefill workers beyond the first on a node whose workers ask for more CPUs than it has
    # run on the decode worker's cores, time-shared: they take a call only while this many prompt
    # tokens wait undispatched (a burst), and idle otherwise (CoreShare.spill_allowed). 0: off, every
    # prefill worker takes calls alike.
    spill_prefill_tokens: int = 0
    spill_nice: int = 4  # nice levels they run below the other workers (capped at nice 19)

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least(self, ("prefill_workers", "decode_workers", "max_queue", "prefill_calls_per_worker"), 1)
        _at_least(self, ("max_restarts", "max_request_retries", "spill_prefill_tokens", "spill_nice"), 0)
        if self.spill_nice > 19:
            raise ValueError(f"spill_nice: must be 0..19, got {self.spill_nice}")
        for name in ("restart_timeout_s", "ping_interval_s", "poll_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)}")
        if self.device.startswith("cuda") and (self.prefill_num_gpus <= 0 or self.decode_num_gpus <= 0):
            raise ValueError("device: cuda workers need --prefill-num-gpus and --decode-num-gpus > 0")

    @property
    def threads(self) -> tuple[int, int]:
        """Torch threads of a prefill and of a decode worker (from their CPU allocations)."""
        return max(1, int(self.prefill_num_cpus)), max(1, int(self.decode_num_cpus))


def parse_resources(text: str | None, name: str) -> dict:
    """``--prefill-resources '{"baton_prefill": 1}'`` -> dict, with errors naming the flag."""
    if not text:
        return {}
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{name}: not JSON ({e.msg}); expected e.g. '{{\"baton_prefill\": 1}}'") from e
    if not isinstance(d, dict) or not all(isinstance(v, (int, float)) for v in d.values()):
        raise ValueError(f"{name}: must be a JSON object of resource name -> amount")
    return d
