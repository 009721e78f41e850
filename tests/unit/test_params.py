"""SamplingParams / from_dict / validate_request: every rule names its field; valid input passes."""

from __future__ import annotations

import pytest

from baton.core.errors import ValidationError
from baton.core.params import DEFAULT_MAX_TOKENS, ModelLimits, SamplingParams, validate_request

LIMITS = ModelLimits(context_length=100, vocab_size=50, eos_token_ids=(1,))


def _field_of(fn, *args, **kwargs) -> str:
    with pytest.raises(ValidationError) as ei:
        fn(*args, **kwargs)
    err = ei.value
    assert isinstance(err, ValueError)  # callers may catch ValueError
    assert str(err).startswith(f"{err.field}:")
    return err.field


# --------------------------------------------------------------------------- SamplingParams(...)
BAD_PARAMS = [
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": -3}, "max_tokens"),
    ({"max_tokens": 2.0}, "max_tokens"),
    ({"max_tokens": "8"}, "max_tokens"),
    ({"max_tokens": True}, "max_tokens"),
    ({"max_tokens": None}, "max_tokens"),
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": -1e-12}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"temperature": float("inf")}, "temperature"),
    ({"temperature": float("-inf")}, "temperature"),
    ({"temperature": True}, "temperature"),
    ({"temperature": False}, "temperature"),
    ({"temperature": "0.5"}, "temperature"),
    ({"temperature": None}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": -0.5}, "top_p"),
    ({"top_p": 1.0000001}, "top_p"),
    ({"top_p": 2}, "top_p"),
    ({"top_p": float("nan")}, "top_p"),
    ({"top_p": float("inf")}, "top_p"),
    ({"top_p": True}, "top_p"),
    ({"top_p": "0.9"}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"top_k": 1.5}, "top_k"),
    ({"top_k": True}, "top_k"),
    ({"top_k": "5"}, "top_k"),
    ({"seed": -1}, "seed"),
    ({"seed": 2**63}, "seed"),
    ({"seed": 2**64}, "seed"),
    ({"seed": 1.0}, "seed"),
    ({"seed": "7"}, "seed"),
    ({"seed": True}, "seed"),
    ({"stop": [""]}, "stop"),
    ({"stop": ["ok", ""]}, "stop"),
    ({"stop": [3]}, "stop"),
    ({"stop": [None]}, "stop"),
    ({"stop_token_ids": [-1]}, "stop_token_ids"),
    ({"stop_token_ids": [4, -7]}, "stop_token_ids"),
    ({"ignore_eos": 1}, "ignore_eos"),
    ({"ignore_eos": "yes"}, "ignore_eos"),
    ({"ignore_eos": None}, "ignore_eos"),
]


@pytest.mark.parametrize(("kw", "field"), BAD_PARAMS, ids=[f"{f}={kw[f]!r}" for kw, f in BAD_PARAMS])
def test_constructor_rejects_naming_field(kw, field):
    assert _field_of(SamplingParams, **kw) == field


@pytest.mark.parametrize(("kw", "field"), BAD_PARAMS, ids=[f"{f}={kw[f]!r}" for kw, f in BAD_PARAMS])
def test_from_dict_rejects_naming_field(kw, field):
    assert _field_of(SamplingParams.from_dict, kw) == field


GOOD_PARAMS = [
    {},
    {"max_tokens": 1},
    {"temperature": 0},
    {"temperature": 0.0},
    {"temperature": 1},
    {"temperature": 100.0},
    {"top_p": 1},
    {"top_p": 1.0},
    {"top_p": 1e-9},
    {"top_k": 0},
    {"top_k": 1},
    {"seed": 0},
    {"seed": 2**63 - 1},
    {"seed": None},
    {"stop": ["a", "\n\n"]},
    {"stop_token_ids": [0, 49]},
    {"ignore_eos": True},
]


@pytest.mark.parametrize("kw", GOOD_PARAMS, ids=[repr(kw) for kw in GOOD_PARAMS])
def test_valid_params_accepted(kw):
    p = SamplingParams(**kw)
    q = SamplingParams.from_dict(kw)
    assert p == q
    for k, v in kw.items():
        got = getattr(p, k)
        assert (list(got) if isinstance(got, tuple) else got) == v


def test_defaults():
    p = SamplingParams()
    assert p.max_tokens == DEFAULT_MAX_TOKENS
    assert p.greedy
    assert (p.top_p, p.top_k, p.seed, p.stop, p.stop_token_ids, p.ignore_eos) == (1.0, 0, None, (), (), False)
    assert not SamplingParams(temperature=0.7).greedy


def test_sequences_normalised_to_tuples_and_hashable():
    p = SamplingParams(stop=["x", "y"], stop_token_ids=[3, 4])
    assert p.stop == ("x", "y")
    assert p.stop_token_ids == (3, 4)
    assert hash(p) == hash(SamplingParams(stop=("x", "y"), stop_token_ids=(3, 4)))


def test_frozen():
    p = SamplingParams()
    with pytest.raises(AttributeError):
        p.max_tokens = 5  # type: ignore[misc]


# --------------------------------------------------------------------------- from_dict specifics
def test_from_dict_unknown_key_named():
    assert _field_of(SamplingParams.from_dict, {"max_tokens": 3, "colour": "red"}) == "colour"
    # Several unknown keys: the first in sorted order is named (deterministic).
    assert _field_of(SamplingParams.from_dict, {"zeta": 1, "alpha": 2}) == "alpha"
    assert _field_of(SamplingParams.from_dict, {"max_new_tokens": 3}) == "max_new_tokens"


def test_from_dict_single_stop_string_becomes_list():
    p = SamplingParams.from_dict({"stop": "END"})
    assert p.stop == ("END",)


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"stop": 5}, "stop"),
        ({"stop": {"a": 1}}, "stop"),
        ({"stop_token_ids": 5}, "stop_token_ids"),
        ({"stop_token_ids": "5"}, "stop_token_ids"),  # a string is wrapped, then not an int
        ({"stop_token_ids": [1.0]}, "stop_token_ids"),
        ({"stop_token_ids": ["3"]}, "stop_token_ids"),
        ({"stop_token_ids": [True]}, "stop_token_ids"),
    ],
)
def test_from_dict_sequence_types(kw, field):
    assert _field_of(SamplingParams.from_dict, kw) == field


def test_round_trip_to_dict_from_dict():
    p = SamplingParams(
        max_tokens=17,
        temperature=0.8,
        top_p=0.9,
        top_k=40,
        seed=2**62 + 5,
        stop=["\n", "END"],
        stop_token_ids=[2, 7],
        ignore_eos=True,
    )
    d = p.to_dict()
    assert d == {
        "max_tokens": 17,
        "temperature": 0.8,
        "top_p": 0.9,
        "top_k": 40,
        "seed": 2**62 + 5,
        "stop": ["\n", "END"],
        "stop_token_ids": [2, 7],
        "ignore_eos": True,
    }
    assert isinstance(d["stop"], list) and isinstance(d["stop_token_ids"], list)
    assert SamplingParams.from_dict(d) == p
    assert SamplingParams.from_dict(SamplingParams().to_dict()) == SamplingParams()


def test_to_dict_is_msgpack_friendly():
    msgpack = pytest.importorskip("msgpack")
    p = SamplingParams(stop=["a"], stop_token_ids=[3], seed=9)
    back = msgpack.unpackb(msgpack.packb(p.to_dict(), use_bin_type=True), raw=False)
    assert SamplingParams.from_dict(back) == p


# --------------------------------------------------------------------------- validate_request
def test_valid_request_passes():
    validate_request([1, 2, 3], SamplingParams(max_tokens=10), LIMITS)
    validate_request([0, 49], SamplingParams(max_tokens=1, stop_token_ids=[49]), LIMITS)
    # Exactly filling the context is allowed.
    validate_request([5] * 90, SamplingParams(max_tokens=10), LIMITS)
    validate_request([5] * 99, SamplingParams(max_tokens=1), LIMITS)


@pytest.mark.parametrize(
    ("prompt", "params", "field"),
    [
        ([], SamplingParams(max_tokens=1), "prompt"),
        ([5] * 100, SamplingParams(max_tokens=1), "prompt"),  # prompt alone fills the context
        ([5] * 150, SamplingParams(max_tokens=1), "prompt"),
        ([5] * 90, SamplingParams(max_tokens=11), "max_tokens"),
        ([5] * 99, SamplingParams(max_tokens=2), "max_tokens"),
        ([5], SamplingParams(max_tokens=100), "max_tokens"),
        ([1, 50], SamplingParams(max_tokens=1), "prompt_token_ids"),
        ([1, -1], SamplingParams(max_tokens=1), "prompt_token_ids"),
        ([10**9], SamplingParams(max_tokens=1), "prompt_token_ids"),
        ([1, 2], SamplingParams(max_tokens=1, stop_token_ids=[50]), "stop_token_ids"),
        ([1, 2], SamplingParams(max_tokens=1, stop_token_ids=[3, 1000]), "stop_token_ids"),
    ],
)
def test_invalid_request_names_field(prompt, params, field):
    assert _field_of(validate_request, prompt, params, LIMITS) == field


def test_out_of_vocab_message_names_the_token():
    with pytest.raises(ValidationError) as ei:
        validate_request([1, 2, 77, 88], SamplingParams(max_tokens=1), LIMITS)
    assert "77" in ei.value.message


def test_constructor_stop_string_and_token_id_types():
    assert SamplingParams(stop="END").stop == ("END",)
    with pytest.raises(ValidationError) as e:
        SamplingParams(stop_token_ids=[1.9])
    assert e.value.field == "stop_token_ids"
