"""Per-request output tracking: incremental detokenisation and stop rules.

Finish reasons: ``eos`` (a model EOS token, unless ``ignore_eos``), ``stop`` (a stop token id or a
stop string; the stop string is excluded from the text), ``length`` (``max_tokens`` reached).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from baton.core.params import SamplingParams

REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Decodes a growing token list into text deltas that never split a UTF-8 character."""

    def __init__(self, tokenizer: Any, prompt_ids: list[int] | None = None):
        self.tok = tokenizer
        # Decoding starts a few prompt tokens back so leading-space rules of the tokenizer apply.
        ctx = list(prompt_ids[-4:]) if prompt_ids else []
        self.ids: list[int] = ctx
        self.prefix = 0
        self.read = len(ctx)

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token: int) -> str:
        self.ids.append(token)
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        if len(after) > len(before) and not after.endswith(REPLACEMENT):
            delta = after[len(before) :]
            self.prefix, self.read = self.read, len(self.ids)
            return delta
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end)."""
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return after[len(before) :]


@dataclass
class OutputTracker:
    """Tokens and text of one request so far; ``push`` applies the stop rules after each token."""

    params: SamplingParams
    eos_token_ids: tuple[int, ...]
    tokenizer: Any | None = None
    prompt_ids: list[int] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    _detok: IncrementalDetokenizer | None = None
    _emitted_text: int = 0  # text length already searched for stop strings
    _streamed: int = 0  # text length already handed out by take_text_delta

    def __post_init__(self) -> None:
        if self.tokenizer is not None:
            self._detok = IncrementalDetokenizer(self.tokenizer, self.prompt_ids)

    def replay(self, tokens) -> None:
        """Resume a migrated request: push the output tokens it already streamed (their text too).

        The detokenizer, the stop-string search and the streamed text end in exactly the state
        they had when those tokens were first produced, so what follows has no gap and no duplicate.
        """
        for token in tokens:
            if self.push(token) is not None:
                raise ValueError("resume: the streamed tokens already finished the request")
        self.take_text_delta()

    def push(self, token: int) -> str | None:
        """Record one sampled token; returns the finish reason if this token ends the request."""
        if self.finish_reason is not None:
            raise RuntimeError("push after the request finished")
        self.token_ids.append(token)
        p = self.params
        if self._detok is not None:
            self.text += self._detok.push(token)
        if not p.ignore_eos and token in self.eos_token_ids:
            self.finish_reason = "eos"
        elif token in p.stop_token_ids or (p.stop and self._hit_stop_string()):
            self.finish_reason = "stop"
        elif len(self.token_ids) >= p.max_tokens:
            self.finish_reason = "length"
        if self.finish_reason in ("length", "eos") and self._detok is not None:
            # Release text held back for an incomplete character; it may complete a stop string.
            self.text += self._detok.flush()
            if p.stop and self._hit_stop_string():
                self.finish_reason = "stop"
        return self.finish_reason

    def _hit_stop_string(self) -> bool:
        longest = max(len(s) for s in self.params.stop)
        # Only the tail can contain a stop string that was not there before.
        lo = max(0, self._emitted_text - longest)
        hits = [i for s in self.params.stop if (i := self.text.find(s, lo)) >= 0]
        self._emitted_text = len(self.text)
        if hits:
            self.text = self.text[: min(hits)]
            return True
        return False

    def take_text_delta(self) -> str:
        """Text safe to stream now: held back while it might still grow into a stop string."""
        hold = 0 if self.finish_reason else max((len(s) - 1 for s in self.params.stop), default=0)
        upto = max(len(self.text) - hold, self._streamed)
        delta = self.text[self._streamed : upto]
        self._streamed = upto
        return delta
