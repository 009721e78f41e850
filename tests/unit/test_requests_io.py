"""parse_spec: one JSON request line -> RequestSpec; bad lines name the offending field."""

from __future__ import annotations

import random

import pytest

from baton.bench.tiny_models import CORPUS
from baton.core.errors import ValidationError
from baton.core.params import SamplingParams
from baton.core.requests_io import encode_chat, encode_prompt, parse_spec


def test_minimal_prompt_defaults():
    s = parse_spec({"prompt": "hello"}, "r0")
    assert s.request_id == "r0"
    assert s.arrival_s == 0.0
    assert s.prompt == "hello"
    assert s.prompt_token_ids is None and s.messages is None
    assert s.params == SamplingParams()


def test_all_fields():
    s = parse_spec(
        {
            "id": 42,
            "arrival_s": 1,
            "prompt_token_ids": [3, 4, 5],
            "max_tokens": 7,
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": 3,
            "seed": 11,
            "stop": "X",
            "stop_token_ids": [9],
            "ignore_eos": True,
        },
        "dflt",
    )
    assert s.request_id == "42"  # ints are accepted and stringified
    assert s.arrival_s == 1.0 and isinstance(s.arrival_s, float)
    assert s.prompt_token_ids == (3, 4, 5)
    assert s.params == SamplingParams(
        max_tokens=7,
        temperature=0.5,
        top_p=0.9,
        top_k=3,
        seed=11,
        stop=("X",),
        stop_token_ids=(9,),
        ignore_eos=True,
    )


def test_messages():
    msgs = [{"role": "user", "content": "hi"}]
    s = parse_spec({"messages": msgs}, "m")
    assert s.messages == tuple(msgs)


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ("just a string", "request"),
        ([1, 2], "request"),
        ({"prompt": "x", "colour": "red"}, "colour"),
        ({"prompt": "x", "b_extra": 1, "a_extra": 2}, "a_extra"),
        ({"prompt": "x", "id": ""}, "id"),
        ({"prompt": "x", "id": True}, "id"),
        ({"prompt": "x", "id": None}, "id"),
        ({"prompt": "x", "id": 1.5}, "id"),
        ({"prompt": "x", "arrival_s": -1}, "arrival_s"),
        ({"prompt": "x", "arrival_s": float("nan")}, "arrival_s"),
        ({"prompt": "x", "arrival_s": float("inf")}, "arrival_s"),
        ({"prompt": "x", "arrival_s": "0"}, "arrival_s"),
        ({"prompt": "x", "arrival_s": False}, "arrival_s"),
        ({}, "prompt"),
        ({"prompt": "x", "prompt_token_ids": [1]}, "prompt"),
        ({"prompt": "x", "messages": [{"role": "user", "content": "y"}]}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"prompt_token_ids": "1 2"}, "prompt_token_ids"),
        ({"prompt_token_ids": [1, "2"]}, "prompt_token_ids"),
        ({"prompt_token_ids": [1, True]}, "prompt_token_ids"),
        ({"prompt_token_ids": [1.0]}, "prompt_token_ids"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "user"}]}, "messages"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages"),
        ({"messages": ["hi"]}, "messages"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "temperature": -1}, "temperature"),
        ({"prompt": "x", "top_p": 0}, "top_p"),
        ({"prompt": "x", "stop": [""]}, "stop"),
    ],
)
def test_bad_lines_name_field(obj, field):
    with pytest.raises(ValidationError) as ei:
        parse_spec(obj, "r")
    assert ei.value.field == field


# --------------------------------------------------------------------------- bounded tokenising
class Counting:
    """A real tokenizer that records how many characters each encode call was given."""

    def __init__(self, tok):
        self.tok, self.sizes = tok, []

    def encode(self, text, add_special_tokens=True):
        self.sizes.append(len(text))
        return self.tok.encode(text, add_special_tokens=add_special_tokens)

    def apply_chat_template(self, *args, **kwargs):
        return self.tok.apply_chat_template(*args, **kwargs)


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir("llama"))


def corpus_text(n: int, start: int = 0) -> str:
    return (CORPUS * (n // len(CORPUS) + 2))[start : start + n]


def texts(rng):
    for n in (10, 300, 1900, 2100, 4100, 9000, 20_000, 70_000):
        yield corpus_text(n, rng.randrange(len(CORPUS)))
    yield "z" * 50_000  # no whitespace to cut at
    yield " " * 50_000 + "end"
    yield ("ab " * 20_000)[:50_000]


@pytest.mark.parametrize("context", [64, 500, 2048])
def test_encode_prompt_refuses_only_what_the_whole_text_would(tokenizer, context):
    for text in texts(random.Random(context)):
        whole = tokenizer.encode(text, add_special_tokens=True)
        try:
            got = encode_prompt(tokenizer, text, context)
        except ValidationError as e:
            assert e.field == "prompt" and len(whole) >= context, (len(text), len(whole), str(e))
            continue
        assert got == whole


def test_encode_prompt_refuses_a_megabyte_prompt_from_a_small_head(tokenizer):
    text = corpus_text(2**20)
    counting = Counting(tokenizer)
    with pytest.raises(ValidationError, match=r"^prompt: at least \d+ tokens in its first \d+ of 1048576"):
        encode_prompt(counting, text, 500)
    assert sum(counting.sizes) < 20_000, counting.sizes  # of 1 MiB: the heads only
    counting.sizes.clear()
    short = text[:1500]
    assert encode_prompt(counting, short, 500) == tokenizer.encode(short)
    assert counting.sizes == [1500]  # a text that may fit is tokenised once, whole


@pytest.fixture(scope="module")
def chat_tokenizer(chat_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(chat_model_dir("llama"))


@pytest.mark.parametrize("context", [64, 500, 2048])
def test_encode_chat_is_the_templates_own_tokenising_bounded(chat_tokenizer, context):
    rng = random.Random(context)
    for text in texts(rng):
        messages = [
            {"role": "system", "content": corpus_text(200, rng.randrange(len(CORPUS)))},
            {"role": "user", "content": text},
        ]
        whole = chat_tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        try:
            got = encode_chat(chat_tokenizer, messages, context)
        except ValidationError as e:
            assert e.field == "messages" and len(whole) >= context, (len(text), len(whole), str(e))
            continue
        assert got == list(whole)


def test_encode_chat_refuses_a_megabyte_message_from_a_small_head(chat_tokenizer):
    counting = Counting(chat_tokenizer)
    messages = [{"role": "user", "content": corpus_text(2**20)}]
    with pytest.raises(ValidationError, match=r"^messages: at least \d+ tokens in its first \d+ of 10"):
        encode_chat(counting, messages, 500)
    assert sum(counting.sizes) < 20_000, counting.sizes
    with pytest.raises(ValidationError, match=r"^messages: the model's chat template refused them"):
        encode_chat(chat_tokenizer, [{"role": "user", "content": "hi"}, 7], 500)
