"""Incremental detokenisation (never a broken character) and the stop rules of OutputTracker."""

from __future__ import annotations

import pytest

from baton.core.params import SamplingParams
from baton.core.stopping import REPLACEMENT, IncrementalDetokenizer, OutputTracker

TEXTS = [
    "café 東京 🙂",
    "The quick brown fox jumps over the lazy dog.",
    "naïve 日本語 ß Ω ✓ 🙂🙂 café, emoji 🙂 and 0123456789.",
    "🙂",
]
SENTENCE = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def tok(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir("gpt2"))


@pytest.fixture(scope="module")
def eos(tok) -> int:
    return tok.eos_token_id


def _decode(tok, ids) -> str:
    return tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def _track(tok, ids, eos_ids=(), prompt=(), **params) -> tuple[OutputTracker, list[str]]:
    """Push ``ids`` until the tracker finishes; returns the tracker and the streamed deltas."""
    t = OutputTracker(SamplingParams(**params), tuple(eos_ids), tok, list(prompt))
    deltas = []
    for i in ids:
        reason = t.push(i)
        deltas.append(t.take_text_delta())
        if reason is not None:
            break
    return t, deltas


# --------------------------------------------------------------------------- IncrementalDetokenizer
def test_test_texts_really_split_characters(tok):
    # Guard: the tiny byte-level tokenizer must cut some multi-byte characters across tokens,
    # otherwise the detokenizer tests below would prove nothing.
    ids = tok.encode(TEXTS[0])
    assert any(_decode(tok, [i]).endswith(REPLACEMENT) for i in ids)


@pytest.mark.parametrize("text", TEXTS)
def test_detokenizer_deltas_never_split_a_character(tok, text):
    ids = tok.encode(text)
    d = IncrementalDetokenizer(tok)
    out = ""
    for i in ids:
        delta = d.push(i)
        assert REPLACEMENT not in delta, (text, ids, delta)
        out += delta
        assert text.startswith(out)
    out += d.flush()
    assert out == _decode(tok, ids) == text
    assert d.flush() == ""


@pytest.mark.parametrize("text", TEXTS[:3])
def test_detokenizer_with_prompt_context(tok, text):
    prompt = tok.encode("Unicode: café, naïve,")
    ids = tok.encode(text)
    d = IncrementalDetokenizer(tok, prompt)
    out = "".join(d.push(i) for i in ids) + d.flush()
    assert out == text  # the prompt's own text is never emitted


def test_detokenizer_flush_releases_incomplete_tail(tok):
    ids = tok.encode("東京")
    cut = ids[:-1]  # the last character is incomplete
    assert _decode(tok, cut).endswith(REPLACEMENT)
    d = IncrementalDetokenizer(tok)
    streamed = "".join(d.push(i) for i in cut)
    assert REPLACEMENT not in streamed
    assert streamed + d.flush() == _decode(tok, cut)


def test_detokenizer_skips_special_tokens(tok, eos):
    ids = tok.encode("dog")
    d = IncrementalDetokenizer(tok)
    out = "".join(d.push(i) for i in [*ids, eos]) + d.flush()
    assert out == "dog"


# --------------------------------------------------------------------------- finish reasons
def test_eos(tok, eos):
    ids = tok.encode("fox")
    t, _ = _track(tok, [*ids, eos, *ids], eos_ids=(eos,), max_tokens=50)
    assert t.finish_reason == "eos"
    assert t.token_ids == [*ids, eos]
    assert t.text == "fox"


def test_ignore_eos_runs_to_length(tok, eos):
    ids = tok.encode("fox")
    seq = [*ids, eos, *ids]
    t, _ = _track(tok, seq, eos_ids=(eos,), max_tokens=len(seq), ignore_eos=True)
    assert t.finish_reason == "length"
    assert t.token_ids == seq
    assert t.text == "foxfox"


def test_any_of_several_eos_ids(tok):
    ids = tok.encode(SENTENCE)
    t, _ = _track(tok, ids, eos_ids=(9999, ids[3]), max_tokens=50)
    assert t.finish_reason == "eos"
    assert t.token_ids == ids[:4]


def test_stop_token_id(tok):
    ids = tok.encode(SENTENCE)
    t, _ = _track(tok, ids, stop_token_ids=[ids[5]], max_tokens=50)
    assert t.finish_reason == "stop"
    assert t.token_ids == ids[:6]


def test_length(tok):
    ids = tok.encode(SENTENCE)
    for k in (1, 4, len(ids)):
        t, deltas = _track(tok, ids, max_tokens=k)
        assert t.finish_reason == "length"
        assert t.token_ids == ids[:k]
        assert t.text == _decode(tok, ids[:k]) == "".join(deltas)


def test_length_flushes_incomplete_character(tok):
    ids = tok.encode("東京")
    t, _ = _track(tok, ids, max_tokens=len(ids) - 1)
    assert t.finish_reason == "length"
    assert t.text == _decode(tok, ids[:-1])


def test_unfinished_is_none_and_push_after_finish_raises(tok):
    ids = tok.encode(SENTENCE)
    t = OutputTracker(SamplingParams(max_tokens=2), (), tok)
    assert t.push(ids[0]) is None
    assert t.finish_reason is None
    assert t.push(ids[1]) == "length"
    with pytest.raises(RuntimeError):
        t.push(ids[2])


def test_without_tokenizer_token_rules_still_apply():
    t = OutputTracker(SamplingParams(max_tokens=10, stop=["x"], stop_token_ids=[7]), (2,))
    assert [t.push(i) for i in (5, 6)] == [None, None]
    assert t.push(7) == "stop"
    assert t.text == ""
    t = OutputTracker(SamplingParams(max_tokens=10), (2,))
    assert t.push(5) is None and t.push(2) == "eos"


# --------------------------------------------------------------------------- stop strings
def test_stop_string_spanning_tokens(tok):
    ids = tok.encode(SENTENCE)
    pieces = [_decode(tok, [i]) for i in ids]
    # A stop string made of the tail of one token and the head of the next.
    k = next(i for i in range(1, len(ids) - 1) if len(pieces[i]) >= 2 and len(pieces[i + 1]) >= 2)
    stop = pieces[k][-2:] + pieces[k + 1][:2]
    prefix = "".join(pieces[:k]) + pieces[k][:-2]
    assert SENTENCE.find(stop) == len(prefix)  # guard: first occurrence is the spanning one
    t, deltas = _track(tok, ids, stop=[stop], max_tokens=50)
    assert t.finish_reason == "stop"
    assert t.token_ids == ids[: k + 2]  # stops at the token that completes it
    assert t.text == prefix
    assert "".join(deltas) == prefix


def test_stop_string_inside_one_token(tok):
    ids = tok.encode(SENTENCE)  # ..., 'ick', ...
    t, _ = _track(tok, ids, stop=["c"], max_tokens=50)
    assert t.finish_reason == "stop"
    assert t.text == "The qui"
    assert t.token_ids == ids[:3]


def test_earliest_stop_string_wins(tok):
    ids = tok.encode(SENTENCE)
    t, deltas = _track(tok, ids, stop=["lazy", "brown fox", "jumps"], max_tokens=50)
    assert t.finish_reason == "stop"
    assert t.text == "The quick "
    assert "".join(deltas) == "The quick "


def test_stop_string_in_prompt_does_not_stop(tok):
    prompt = tok.encode("the lazy fox")
    ids = tok.encode(" jumps over")
    t, deltas = _track(tok, ids, prompt=prompt, stop=["fox"], max_tokens=len(ids))
    assert t.finish_reason == "length"
    assert t.text == " jumps over" == "".join(deltas)


def test_stop_string_with_multibyte_chars(tok):
    text = "café 東京 🙂 naïve"
    ids = tok.encode(text)
    t, deltas = _track(tok, ids, stop=["京 🙂"], max_tokens=50)
    assert t.finish_reason == "stop"
    assert t.text == "café 東"
    assert "".join(deltas) == "café 東"


def test_stop_string_wins_over_length(tok):
    ids = tok.encode(SENTENCE)
    t, _ = _track(tok, ids, stop=["quick"], max_tokens=3)  # 'The', ' qu', 'ick'
    assert t.finish_reason == "stop"
    assert t.text == "The "


def test_take_text_delta_holds_back_possible_stop_prefix(tok):
    ids = tok.encode(SENTENCE)
    stops = ["lazy dog", "ox"]
    hold = max(len(s) for s in stops) - 1
    t = OutputTracker(SamplingParams(max_tokens=50, stop=stops), (), tok)
    streamed = ""
    for i in ids:
        reason = t.push(i)
        streamed += t.take_text_delta()
        if reason:
            break
        # Everything but the last ``hold`` characters is out; nothing beyond the text.
        assert streamed == t.text[: max(0, len(t.text) - hold)]
        assert t.take_text_delta() == ""  # nothing new without a push
    assert t.finish_reason == "stop"
    assert streamed == t.text == "The quick brown f"


def test_take_text_delta_releases_held_text_at_finish(tok):
    ids = tok.encode(SENTENCE)
    # "lazy cat" keeps a 7-character tail held back the whole time, and never matches.
    t, deltas = _track(tok, ids, stop=["lazy cat"], max_tokens=len(ids))
    assert t.finish_reason == "length"
    assert deltas[-1].endswith("dog.") and len(deltas[-1]) > 7  # the held tail comes out at the end
    assert "".join(deltas) == t.text == SENTENCE


def test_streamed_text_never_contains_stop_text(tok):
    text = "Padding on the left aligns rows so that each writes its next token at the same column."
    ids = tok.encode(text)
    for stop in ["left", "aligns rows", "s", "same col", "ing on", "t a"]:
        t, deltas = _track(tok, ids, stop=[stop], max_tokens=len(ids))
        streamed = "".join(deltas)
        assert t.finish_reason == "stop", stop
        assert streamed == t.text == text[: text.find(stop)], stop


def test_unmatched_stop_string_does_not_change_text(tok, eos):
    ids = tok.encode("café 東京 🙂 naïve")
    for k in range(1, len(ids) + 1):
        plain, _ = _track(tok, ids, max_tokens=k)
        with_stop, _ = _track(tok, ids, stop=["zzz"], max_tokens=k)
        assert with_stop.finish_reason == plain.finish_reason == "length"
        assert with_stop.text == plain.text, k
        # Same with an EOS right after an incomplete character.
        plain, _ = _track(tok, [*ids[:k], eos], eos_ids=(eos,), max_tokens=50)
        with_stop, _ = _track(tok, [*ids[:k], eos], eos_ids=(eos,), stop=["zzz"], max_tokens=50)
        assert with_stop.text == plain.text, k
