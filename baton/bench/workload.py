"""Seeded benchmark workloads: Poisson arrivals, prompt and output lengths from distributions.

A trace is a list of ``(Request, arrival_offset_s)``, offsets from the first arrival (which is at 0).
Every request is greedy with ``SamplingParams(max_tokens=L_out, ignore_eos=True)``, so every system
produces exactly the same number of tokens for it.

Reproducibility: one seed fixes everything. Arrivals, lengths and prompt contents come from
independent streams of that seed, and arrival gaps are drawn once as standard exponentials then
divided by the rate: the same seed at another rate gives the *same* requests, arriving on a
time axis scaled by the rate ratio. That makes points of a rate sweep directly comparable.

Length distributions (``LengthDist``), written ``KIND:MEAN[:CV[:MIN:MAX]]`` on the command line:

- ``fixed:48``: always 48.
- ``uniform:48:0.5``: uniform with mean 48 and coefficient of variation (std / mean) 0.5, i.e.
  on ``[mean - sqrt(3) cv mean, mean + sqrt(3) cv mean]``.
- ``lognormal:48:0.5:8:128``: log-normal with mean 48 and CV 0.5 before clipping, then clipped to
  ``[8, 128]`` (clipping moves the mean slightly when the tails are cut).

Every value is rounded to an integer and clipped to ``[MIN, MAX]`` (default ``[1, inf)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from baton.core.params import SamplingParams
from baton.core.request import Request

KINDS = ("fixed", "uniform", "lognormal")


@dataclass(frozen=True)
class LengthDist:
    kind: str = "fixed"
    mean: float = 32.0
    cv: float = 0.0  # spread: standard deviation / mean (before clipping)
    lo: int = 1
    hi: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(
                f"length distribution: kind must be one of {', '.join(KINDS)}, got {self.kind!r}"
            )
        if not self.mean >= 1:
            raise ValueError(f"length distribution: mean must be >= 1, got {self.mean}")
        if not self.cv >= 0:
            raise ValueError(f"length distribution: cv must be >= 0, got {self.cv}")
        if self.lo < 1 or (self.hi is not None and self.hi < self.lo):
            raise ValueError(f"length distribution: need 1 <= min <= max, got [{self.lo}, {self.hi}]")
        if self.kind == "uniform" and self.cv * math.sqrt(3) > 1:
            raise ValueError(
                f"length distribution: uniform cv must be <= 1/sqrt(3) ~ 0.577 (lengths stay "
                f"positive), got {self.cv}"
            )

    @classmethod
    def parse(cls, text: str) -> LengthDist:
        """``KIND:MEAN[:CV[:MIN:MAX]]``, e.g. ``fixed:32``, ``uniform:48:0.3``, ``lognormal:128:0.5:32:256``."""
        parts = text.split(":")
        if not 2 <= len(parts) <= 5 or len(parts) == 4:
            raise ValueError(f"length distribution {text!r}: expected KIND:MEAN[:CV[:MIN:MAX]]")
        try:
            mean = float(parts[1])
            cv = float(parts[2]) if len(parts) > 2 else 0.0
            lo = int(parts[3]) if len(parts) > 3 else 1
            hi = int(parts[4]) if len(parts) > 4 else None
        except ValueError as e:
            raise ValueError(f"length distribution {text!r}: {e}") from e
        return cls(parts[0], mean, cv, lo, hi)

    def with_cv(self, cv: float) -> LengthDist:
        return replace(self, cv=cv, kind="fixed" if cv == 0 else self.kind)

    def __str__(self) -> str:
        s = f"{self.kind}:{self.mean:g}"
        if self.kind != "fixed" or self.cv:
            s += f":{self.cv:g}"
        if self.lo != 1 or self.hi is not None:
            s += f":{self.lo}:{self.hi if self.hi is not None else ''}"
        return s

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` integer lengths."""
        if self.kind == "fixed" or self.cv == 0:
            x = np.full(n, self.mean, dtype=float)
        elif self.kind == "uniform":
            half = math.sqrt(3) * self.cv * self.mean
            x = rng.uniform(self.mean - half, self.mean + half, size=n)
        else:  # lognormal with the given mean and CV
            sigma2 = math.log1p(self.cv**2)
            x = rng.lognormal(math.log(self.mean) - sigma2 / 2, math.sqrt(sigma2), size=n)
        x = np.rint(x)
        return np.clip(x, self.lo, self.hi if self.hi is not None else np.inf).astype(np.int64)


def poisson_offsets(gaps: np.ndarray, rate: float) -> np.ndarray:
    """Arrival offsets (s) from standard-exponential gaps at ``rate`` req/s; the first arrival is at 0.

    ``rate`` of ``inf`` (or <= 0) means a burst: everything arrives at 0.
    """
    if not math.isfinite(rate) or rate <= 0 or len(gaps) == 0:
        return np.zeros(len(gaps))
    off = np.cumsum(gaps) / rate
    return off - off[0]


@dataclass(frozen=True)
class WorkloadSpec:
    requests: int = 24
    rate: float = 1.0  # req/s (Poisson); inf = all at once
    prompt: LengthDist = LengthDist("lognormal", 128, 0.5, 32, 256)
    output: LengthDist = LengthDist("lognormal", 40, 0.5, 4, 128)
    seed: int = 0
    source: str = "text"  # "text": cut from the built-in English corpus; "random": random token ids

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "rate": self.rate,
            "prompt": str(self.prompt),
            "output": str(self.output),
            "seed": self.seed,
            "source": self.source,
        }


def _streams(seed: int) -> list[np.random.Generator]:
    """Independent generators for arrivals, prompt lengths, output lengths and prompt contents."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)]


class PromptMaker:
    """Prompts of an exact token length: text from the built-in corpus, or random token ids."""

    def __init__(
        self, tokenizer: Any | None, vocab_size: int, source: str = "text", avoid: tuple[int, ...] = ()
    ):
        if source not in ("text", "random"):
            raise ValueError(f"prompt source must be 'text' or 'random', got {source!r}")
        if source == "text" and tokenizer is None:
            raise ValueError("prompt source 'text' needs the model's tokenizer (use 'random')")
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.source = source
        self.avoid = set(avoid)  # e.g. EOS ids: harmless with ignore_eos, but keeps prompts plain
        self._ids: list[list[int]] = []
        if source == "text":
            from baton.bench.corpus import sentences

            self._ids = [tokenizer.encode(" " + s, add_special_tokens=False) for s in sentences()]

    def make(self, length: int, rng: np.random.Generator) -> tuple[int, ...]:
        if self.source == "random":
            lo = min(2, self.vocab_size - 1)
            out: list[int] = []
            while len(out) < length:
                out += [
                    int(t)
                    for t in rng.integers(lo, self.vocab_size, size=length - len(out) + 4)
                    if int(t) not in self.avoid
                ]
            return tuple(out[:length])
        # Consecutive sentences from a random starting sentence (wrapping around), cut to length.
        i = int(rng.integers(len(self._ids)))
        out = []
        while len(out) < length:
            out += self._ids[i % len(self._ids)]
            i += 1
        return tuple(out[:length])


def generate(
    spec: WorkloadSpec, tokenizer: Any | None, vocab_size: int, eos_ids: tuple[int, ...] = ()
) -> list[tuple[Request, float]]:
    """The trace for ``spec``: ``(Request, arrival offset s)`` in arrival order."""
    if spec.requests < 1:
        raise ValueError(f"requests: must be >= 1, got {spec.requests}")
    r_arr, r_plen, r_olen, r_text = _streams(spec.seed)
    offsets = poisson_offsets(r_arr.standard_exponential(spec.requests), spec.rate)
    plens = spec.prompt.sample(r_plen, spec.requests)
    olens = spec.output.sample(r_olen, spec.requests)
    maker = PromptMaker(tokenizer, vocab_size, spec.source, eos_ids)
    trace = []
    for i in range(spec.requests):
        params = SamplingParams(max_tokens=int(olens[i]), ignore_eos=True)  # greedy (temperature 0)
        req = Request(f"q{i:04d}", maker.make(int(plens[i]), r_text), params, seed=i)
        trace.append((req, float(offsets[i])))
    return trace


def trace_summary(trace: list[tuple[Request, float]]) -> dict[str, float]:
    """Mean lengths, total output tokens, arrival span: for logs and the JSON."""
    plens = [r.prompt_len for r, _ in trace]
    olens = [r.params.max_tokens for r, _ in trace]
    return {
        "requests": len(trace),
        "prompt_mean": float(np.mean(plens)),
        "output_mean": float(np.mean(olens)),
        "output_std": float(np.std(olens)),
        "output_tokens": int(sum(olens)),
        "prompt_max": int(max(plens)),
        "output_max": int(max(olens)),
        "arrival_span_s": float(max(off for _, off in trace)),
    }


# The saturated burst's shape (saturate, timeline): SmolLM2-sized prompts and outputs, batch 32.
BURST_PROMPT = "uniform:208:0.533:16:400"
BURST_OUTPUT = "uniform:102:0.554:4:200"


def add_burst_arguments(p: Any) -> None:
    """The burst's workload flags (an ``argparse`` parser): requests, length distributions, batch
    shape, seed."""
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--prompt-len", default=BURST_PROMPT, help="KIND:MEAN[:CV[:MIN:MAX]]")
    p.add_argument("--output-len", default=BURST_OUTPUT, help="KIND:MEAN[:CV[:MIN:MAX]]")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-seq-len", type=int, default=640)
    p.add_argument("--seed", type=int, default=0)


def burst_spec(args: Any, rate: float = math.inf) -> WorkloadSpec:
    """The ``WorkloadSpec`` of ``add_burst_arguments``' flags, arriving at ``rate`` (inf: at once)."""
    return WorkloadSpec(
        requests=args.requests,
        rate=rate,
        prompt=LengthDist.parse(args.prompt_len),
        output=LengthDist.parse(args.output_len),
        seed=args.seed,
    )
