"""The KV handoff: what a prefill produces and a decode batch embeds.

A handoff is a msgpack-serialisable header plus one contiguous numpy array holding the query's
whole KV, ``[layers, 2, kv_heads, prompt_len, head_dim]``. Ray puts numpy arrays in the object
store without pickling their bytes (the reader maps them zero-copy), so the KV crosses process
and node boundaries as raw memory. bfloat16, which numpy lacks, travels as its uint16 bit pattern.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import msgpack
import numpy as np

from baton.core.errors import HandoffMismatch
from baton.core.params import SamplingParams

HEADER_VERSION = 1
# The numpy dtype that carries each torch dtype's bits (numpy has no bfloat16): the one such map.
CARRIER = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}


@dataclass(frozen=True)
class HandoffHeader:
    request_id: str
    prompt_token_ids: list[int]
    first_token: int
    params: dict[str, Any]  # SamplingParams.to_dict()
    seed: int  # the seed sampling used (drawn at admission when the request gave none)
    model_fingerprint: str
    dtype: str  # "float32" | "float16" | "bfloat16"
    shape: tuple[int, int, int, int, int]  # [layers, 2, kv_heads, prompt_len, head_dim]
    finish_reason: str | None = None  # set when the first token already ended the request
    first_text: str = ""  # text delta of the first token, already streamed by the prefill side
    timings: dict[str, float] = field(default_factory=dict)  # ms: queue, prefill; wall-clock stamps
    # A migrated request: the last ``resumed`` of ``prompt_token_ids`` are output tokens it already
    # streamed (its KV covers them); ``first_token`` is output token index ``resumed``.
    resumed: int = 0
    version: int = HEADER_VERSION

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def prompt_only(self) -> list[int]:
        """The request's own prompt (without the resumed output tokens)."""
        return self.prompt_token_ids[: self.prompt_len - self.resumed]

    @property
    def resumed_ids(self) -> list[int]:
        return self.prompt_token_ids[self.prompt_len - self.resumed :]

    @property
    def sampling(self) -> SamplingParams:
        return SamplingParams.from_dict(self.params)

    def to_bytes(self) -> bytes:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return msgpack.packb(d, use_bin_type=True)

    @classmethod
    def from_bytes(cls, data: bytes) -> HandoffHeader:
        d = msgpack.unpackb(data, raw=False)
        if d.get("version") != HEADER_VERSION:
            raise HandoffMismatch(f"handoff header version {d.get('version')} != {HEADER_VERSION}")
        d["shape"] = tuple(d["shape"])
        return cls(**d)


@dataclass(frozen=True)
class KVHandoff:
    """Header bytes + the KV array. Both are plain data: Ray never pickles a tensor for it."""

    header_bytes: bytes
    kv: np.ndarray | None  # None when the request finished at its first token

    @property
    def header(self) -> HandoffHeader:
        return HandoffHeader.from_bytes(self.header_bytes)

    @property
    def nbytes(self) -> int:
        return 0 if self.kv is None else int(self.kv.nbytes)


def kv_to_numpy(kv) -> np.ndarray:
    """A contiguous torch KV tensor -> numpy array of its bits (on the host)."""
    import torch

    t = kv.detach()
    if t.device.type != "cpu":
        t = t.to("cpu")  # GPU clusters: KV goes through host memory to the object store
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.uint16).numpy()
    return t.numpy()


def kv_from_numpy(arr: np.ndarray, dtype_name: str, device="cpu"):
    """Inverse of kv_to_numpy; zero-copy on the CPU (the array may be read-only object-store memory)."""
    import torch

    if arr.dtype != CARRIER[dtype_name]:
        raise HandoffMismatch(f"dtype: handoff array is {arr.dtype}, header says {dtype_name}")
    with warnings.catch_warnings():
        # Object-store memory is read-only and torch warns about that; the batch only reads it
        # (copying it into its own buffers), so a view is safe and avoids a copy.
        warnings.simplefilter("ignore", UserWarning)
        t = torch.from_numpy(arr)
    if dtype_name == "bfloat16":
        t = t.view(torch.bfloat16)
    return t.to(device) if str(device) != "cpu" else t


def check_compatible(
    header: HandoffHeader, kv: np.ndarray | None, fingerprint: str, dtype_name: str, layout
) -> None:
    """Refuse a handoff the receiving batch cannot embed, naming what differs."""
    if header.model_fingerprint != fingerprint:
        raise HandoffMismatch(
            f"model_fingerprint: handoff from model {header.model_fingerprint}, batch serves {fingerprint}"
        )
    if header.dtype != dtype_name:
        raise HandoffMismatch(f"dtype: handoff is {header.dtype}, batch is {dtype_name}")
    want = (layout.num_layers, 2, layout.kv_heads, header.prompt_len, layout.head_dim)
    if tuple(header.shape) != want:
        raise HandoffMismatch(f"shape: handoff KV is {tuple(header.shape)}, batch needs {want}")
    if kv is not None and tuple(kv.shape) != want:
        raise HandoffMismatch(f"shape: KV array is {tuple(kv.shape)}, header says {want}")
