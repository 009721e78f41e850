"""The KV handoff: msgpack header, bit-exact KV through numpy, out-of-band pickling, compatibility."""

from __future__ import annotations

import pickle

import msgpack
import numpy as np
import pytest
import torch

from baton.core.errors import HandoffMismatch
from baton.core.handoff import (
    HEADER_VERSION,
    HandoffHeader,
    KVHandoff,
    check_compatible,
    kv_from_numpy,
    kv_to_numpy,
)
from baton.core.models import KVLayout
from baton.core.params import SamplingParams

LAYOUT = KVLayout(num_layers=2, kv_heads=3, head_dim=4)
PROMPT = [5, 9, 2, 7, 7]
SHAPE = (2, 2, 3, len(PROMPT), 4)


def header(**kw) -> HandoffHeader:
    base = dict(
        request_id="req-1",
        prompt_token_ids=list(PROMPT),
        first_token=42,
        params=SamplingParams(
            max_tokens=9, temperature=0.7, top_p=0.9, top_k=5, seed=3, stop=["\n"], stop_token_ids=[4]
        ).to_dict(),
        seed=2**63 - 1,
        model_fingerprint="abcdef0123456789",
        dtype="float32",
        shape=SHAPE,
        timings={"queue_ms": 1.5, "prefill_ms": 20.25},
    )
    base.update(kw)
    return HandoffHeader(**base)


def kv_tensor(dtype=torch.float32, shape=SHAPE, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * 10).to(dtype)


# --------------------------------------------------------------------------- header
def test_header_round_trip():
    h = header()
    data = h.to_bytes()
    assert isinstance(data, bytes)
    back = HandoffHeader.from_bytes(data)
    assert back == h
    assert back.shape == SHAPE and isinstance(back.shape, tuple)
    assert back.prompt_len == len(PROMPT)
    assert back.sampling == SamplingParams.from_dict(h.params)
    assert back.sampling.stop == ("\n",)
    assert back.version == HEADER_VERSION


def test_header_round_trip_finished_and_unicode():
    h = header(request_id="ré-東京-🙂", finish_reason="stop", timings={})
    assert HandoffHeader.from_bytes(h.to_bytes()) == h


def test_header_is_plain_msgpack():
    d = msgpack.unpackb(header().to_bytes(), raw=False)
    assert d["request_id"] == "req-1"
    assert d["shape"] == list(SHAPE)
    assert d["version"] == HEADER_VERSION


@pytest.mark.parametrize("version", [HEADER_VERSION + 1, 0, None])
def test_header_version_mismatch_refused(version):
    d = msgpack.unpackb(header().to_bytes(), raw=False)
    d["version"] = version
    with pytest.raises(HandoffMismatch, match="version"):
        HandoffHeader.from_bytes(msgpack.packb(d, use_bin_type=True))


def test_header_without_version_refused():
    d = msgpack.unpackb(header().to_bytes(), raw=False)
    del d["version"]
    with pytest.raises(HandoffMismatch, match="version"):
        HandoffHeader.from_bytes(msgpack.packb(d, use_bin_type=True))


def test_handoff_header_property_and_nbytes():
    kv = kv_to_numpy(kv_tensor())
    h = KVHandoff(header().to_bytes(), kv)
    assert h.header == header()
    assert h.nbytes == kv.nbytes == np.prod(SHAPE) * 4
    assert KVHandoff(header(finish_reason="eos").to_bytes(), None).nbytes == 0


# --------------------------------------------------------------------------- KV bits
@pytest.mark.parametrize(
    ("dtype", "name", "carrier"),
    [
        (torch.float32, "float32", np.float32),
        (torch.bfloat16, "bfloat16", np.uint16),
        (torch.float16, "float16", np.float16),
    ],
)
def test_kv_round_trip_bit_exact(dtype, name, carrier):
    t = kv_tensor(dtype)
    # Special values must survive too.
    t[0, 0, 0, 0, :4] = torch.tensor([float("inf"), float("-inf"), -0.0, 1e-3], dtype=dtype)
    arr = kv_to_numpy(t)
    assert isinstance(arr, np.ndarray)
    assert arr.dtype == carrier and arr.dtype != object
    assert arr.shape == SHAPE and arr.flags.c_contiguous
    back = kv_from_numpy(arr, name)
    assert back.dtype == dtype and back.shape == t.shape
    bits = torch.int16 if dtype != torch.float32 else torch.int32
    assert torch.equal(back.view(bits), t.view(bits))


def test_kv_to_numpy_makes_non_contiguous_contiguous():
    t = kv_tensor(shape=(2, 2, len(PROMPT), 3, 4)).transpose(2, 3)  # a strided view
    assert not t.is_contiguous()
    arr = kv_to_numpy(t)
    assert arr.flags.c_contiguous
    assert torch.equal(torch.from_numpy(arr), t)


def test_kv_from_numpy_zero_copy_on_cpu():
    arr = kv_to_numpy(kv_tensor())
    t = kv_from_numpy(arr, "float32")
    arr[0, 0, 0, 0, 0] = 123.0
    assert float(t[0, 0, 0, 0, 0]) == 123.0


def test_kv_from_numpy_read_only_array():
    arr = kv_to_numpy(kv_tensor(torch.bfloat16))
    ref = kv_from_numpy(arr.copy(), "bfloat16").clone()
    arr.flags.writeable = False  # as the object store hands it out
    t = kv_from_numpy(arr, "bfloat16")
    assert torch.equal(t.view(torch.int16), ref.view(torch.int16))


@pytest.mark.parametrize(
    ("arr_dtype", "name"),
    [(np.float32, "bfloat16"), (np.uint16, "float32"), (np.float16, "float32"), (np.float32, "float16")],
)
def test_kv_from_numpy_dtype_mismatch(arr_dtype, name):
    with pytest.raises(HandoffMismatch, match=r"^dtype"):
        kv_from_numpy(np.zeros(SHAPE, dtype=arr_dtype), name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kv_pickles_out_of_band(dtype):
    shape = (2, 2, 3, 256, 4)
    kv = kv_to_numpy(kv_tensor(dtype, shape=shape))
    h = KVHandoff(header(dtype=str(dtype).removeprefix("torch."), shape=shape).to_bytes(), kv)
    buffers: list[pickle.PickleBuffer] = []
    payload = pickle.dumps(h, protocol=5, buffer_callback=buffers.append)
    assert sum(memoryview(b).nbytes for b in buffers) == kv.nbytes
    assert len(payload) < len(h.header_bytes) + 1024 < kv.nbytes  # the KV bytes are not in-band
    assert b"torch" not in payload  # no tensor anywhere in the pickle
    back = pickle.loads(payload, buffers=buffers)
    assert back.header == h.header
    assert np.array_equal(back.kv, kv)


# --------------------------------------------------------------------------- compatibility
def _arr(shape=SHAPE):
    return np.zeros(shape, dtype=np.float32)


def test_compatible_passes():
    check_compatible(header(), _arr(), "abcdef0123456789", "float32", LAYOUT)
    check_compatible(header(finish_reason="eos"), None, "abcdef0123456789", "float32", LAYOUT)


def test_fingerprint_mismatch():
    with pytest.raises(HandoffMismatch, match=r"^model_fingerprint"):
        check_compatible(header(), _arr(), "0000000000000000", "float32", LAYOUT)


def test_dtype_mismatch():
    with pytest.raises(HandoffMismatch, match=r"^dtype"):
        check_compatible(header(), _arr(), "abcdef0123456789", "bfloat16", LAYOUT)


@pytest.mark.parametrize(
    "layout",
    [KVLayout(3, 3, 4), KVLayout(2, 2, 4), KVLayout(2, 3, 8)],
    ids=["layers", "kv_heads", "head_dim"],
)
def test_layout_shape_mismatch(layout):
    with pytest.raises(HandoffMismatch, match=r"^shape"):
        check_compatible(header(), _arr(), "abcdef0123456789", "float32", layout)


def test_header_shape_disagrees_with_prompt_length():
    bad = (2, 2, 3, len(PROMPT) + 1, 4)
    with pytest.raises(HandoffMismatch, match=r"^shape"):
        check_compatible(header(shape=bad), _arr(bad), "abcdef0123456789", "float32", LAYOUT)


def test_array_shape_disagrees_with_header():
    with pytest.raises(HandoffMismatch, match=r"^shape"):
        check_compatible(header(), _arr((2, 2, 3, len(PROMPT) - 1, 4)), "abcdef0123456789", "float32", LAYOUT)
