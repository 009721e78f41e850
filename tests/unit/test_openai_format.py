"""The OpenAI wire format without a server: request bodies -> specs (errors name the field), responses."""

from __future__ import annotations

import json

import pytest

from baton.core.errors import ValidationError
from baton.core.request import Completion
from cluster.openai_api import Responder, error_body, parse_request, sse

CHAT = [{"role": "user", "content": "hi"}]


def chat(**kw):
    return parse_request({"model": "m", "messages": CHAT, **kw}, chat=True, request_id="r1", model_name="m")


def test_defaults_follow_openai_and_fields_map_to_sampling():
    api = chat()
    assert api.spec.params.temperature == 1.0 and api.spec.messages == tuple(CHAT) and not api.stream
    api = chat(max_completion_tokens=7, max_tokens=3, temperature=0, top_p=0.5, seed=9, stop="x", top_k=4)
    p = api.spec.params
    assert (p.max_tokens, p.temperature, p.top_p, p.seed, p.stop, p.top_k) == (7, 0, 0.5, 9, ("x",), 4)
    assert api.max_tokens_field == "max_completion_tokens"
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    assert chat(messages=[{"role": "user", "content": parts}]).spec.messages == (
        {"role": "user", "content": "ab"},
    )
    api = parse_request({"prompt": [5, 6]}, chat=False, request_id="r", model_name="m")
    assert api.spec.prompt_token_ids == (5, 6) and api.spec.prompt is None
    assert parse_request({"prompt": ["x"]}, chat=False, request_id="r", model_name="m").spec.prompt == "x"
    api = chat(stream=True, stream_options={"include_usage": True})
    assert api.stream and api.include_usage


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"n": 3}, "n"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"seed": 1.5}, "seed"),
        ({"stop": [""]}, "stop"),
        ({"messages": "hi"}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages"),
        ({"logprobs": True}, "logprobs"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"tools": [{"type": "function"}]}, "tools"),
        ({"stream": 1}, "stream"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),  # without stream
        ({"model": "other"}, "model"),
    ],
)
def test_bad_fields_name_the_field(fields, field):
    with pytest.raises(ValidationError) as e:
        chat(**fields)
    assert e.value.field == field


def test_bad_prompts_and_bodies():
    for prompt in ([], ["a", "b"], [1.5], None, 3):
        with pytest.raises(ValidationError) as e:
            parse_request({"prompt": prompt}, chat=False, request_id="r", model_name="m")
        assert e.value.field == "prompt"
    with pytest.raises(ValidationError) as e:
        parse_request([1], chat=True, request_id="r", model_name="m")
    assert e.value.field == "body"


def test_responses_have_openai_shapes():
    c = Completion("r1", [1, 2, 3], "abc", "eos", 5)
    body = Responder(chat(), "m").complete(c)
    assert body["id"] == "chatcmpl-r1" and body["object"] == "chat.completion" and body["model"] == "m"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "abc"}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    out = Responder(chat(stream=True, stream_options={"include_usage": True}), "m")
    first, delta = out.first()[0], out.delta("ab")
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""} and first["usage"] is None
    assert delta["choices"][0]["delta"] == {"content": "ab"} and delta["object"] == "chat.completion.chunk"
    fin, usage = out.last(Completion("r1", [1] * 4, "", "length", 2))
    assert fin["choices"][0]["finish_reason"] == "length" and fin["choices"][0]["delta"] == {}
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == 6
    comp = Responder(parse_request({"prompt": "x"}, chat=False, request_id="r", model_name="m"), "m")
    assert comp.complete(c)["choices"][0]["text"] == "abc" and comp.first() == []
    assert sse("[DONE]") == b"data: [DONE]\n\n"
    assert json.loads(sse(delta).decode()[6:]) == delta
    assert error_body(429, "full") == {
        "error": {"message": "full", "type": "rate_limit_error", "param": None, "code": 429}
    }
