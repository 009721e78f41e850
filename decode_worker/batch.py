"""The BATON decode batch: a live batch that takes new queries between steps.

``insert`` embeds a prefilled query (its handoff) between two steps: a shorter new row is padded
on the left, a longer one pads every running row on the left; the mask marks the padding and each
row keeps its true position ids. ``step`` runs one forward over all rows (one token each); rows
that finish leave at once and columns that became padding in every row are trimmed.

``step(prompts=...)`` is the ``orca`` baseline: new prompts ride inside the batch's own forward,
every running row padded to the prompt's width for that iteration (the idle computation BATON
removes). It is exact too, only slower.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from baton.core.errors import CapacityError, HandoffMismatch
from baton.core.handoff import KVHandoff, check_compatible, kv_from_numpy
from baton.core.messages import Stamps, TokenOut
from baton.core.models import LoadedModel
from baton.core.params import SamplingParams
from baton.core.request import Request
from baton.core.sampling import runtime_argmax, sample_rows
from baton.core.stopping import OutputTracker
from baton.runtime.base import StepInput
from decode_worker.kv_cache import BatonKVCache


@dataclass
class Row:
    request_id: str
    prompt_len: int
    params: SamplingParams
    seed: int
    tracker: OutputTracker
    pos: int  # true position of the next input token (= real tokens in the cache)
    next_token: int
    stamps: Stamps | None = None  # the caller's timing stamps, handed back when the row finishes


@dataclass(frozen=True)
class FinishedRow:
    """A request that left the batch, with everything it produced (the in-process result)."""

    request_id: str
    token_ids: list[int]
    text: str
    finish_reason: str
    prompt_len: int
    stamps: Stamps | None


@dataclass(frozen=True)
class StepResult:
    emitted: list[TokenOut]  # a token for every row that was live in the forward
    finished: list[FinishedRow]
    rows: int  # rows in the forward
    width: int  # cache columns attended (window + new)
    query_len: int  # columns computed per row (1, or the orca prompt width)
    padding_cells: int  # masked cells in the attended window (rows x columns)
    forward_ms: float
    trimmed: int


class DecodeBatch:
    """Owns one BatonKVCache and the rows in it. Single-threaded: one caller at a time."""

    def __init__(self, lm: LoadedModel, max_rows: int, capacity: int):
        self.lm = lm
        self.runtime = lm.runtime
        self.max_rows = max_rows
        self.capacity = capacity
        self.cache = BatonKVCache(lm.layout, max_rows, capacity, lm.dtype, lm.device)
        warmup = getattr(self.runtime, "warmup", None)
        if warmup is not None:  # compiles the runtime's decode step for up to max_rows (once, at start-up)
            warmup(max_rows)
        self.rows: list[Row] = []
        self.pad_id = 0
        self.steps = 0

    # ------------------------------------------------------------------ admission
    @property
    def free_rows(self) -> int:
        return self.max_rows - len(self.rows)

    def can_ever_fit(self, prompt_len: int, max_tokens: int) -> bool:
        # A row's cache peaks at prompt + max_tokens - 1 columns (its last token is never fed back).
        return prompt_len + max_tokens - 1 <= self.capacity - 1

    def fits(self, prompt_len: int, max_tokens: int) -> bool:
        return self.free_rows > 0 and self.can_ever_fit(prompt_len, max_tokens)

    def _tracker(self, params: SamplingParams, prompt: list[int]) -> OutputTracker:
        return OutputTracker(params, self.lm.limits.eos_token_ids, self.lm.tokenizer, prompt)

    def insert(self, handoff: KVHandoff, stamps: Stamps | None = None) -> FinishedRow | None:
        """Embed a prefilled query between two steps. Returns FinishedRow if its first token ended it."""
        h = handoff.header
        check_compatible(h, handoff.kv, self.lm.fingerprint, self.lm.dtype_name, self.lm.layout)
        params = h.sampling
        tracker = self._tracker(params, h.prompt_only)
        tracker.replay(h.resumed_ids)  # a migrated request: its streamed tokens count (index, length, text)
        finish = tracker.push(h.first_token)
        tracker.take_text_delta()  # the first token's text was streamed by the prefill side
        if finish is not None:
            return FinishedRow(h.request_id, tracker.token_ids, tracker.text, finish, h.prompt_len, stamps)
        if handoff.kv is None:
            raise HandoffMismatch("kv: handoff of an unfinished request carries no KV")
        if not self.fits(h.prompt_len, params.max_tokens - h.resumed):
            raise CapacityError(f"no room for request {h.request_id} ({h.prompt_len} prompt tokens)")
        kv = kv_from_numpy(handoff.kv, h.dtype, self.lm.device)
        self.cache.grow_left(h.prompt_len)
        self.cache.add_row(kv)
        row = Row(h.request_id, h.prompt_len, params, h.seed, tracker, h.prompt_len, h.first_token, stamps)
        self.rows.append(row)
        return None

    # ------------------------------------------------------------------ the step
    @torch.inference_mode()
    def step(self, prompts: list[Request] | None = None, stamps: list[Stamps] | None = None) -> StepResult:
        """One forward: a token for every live row (and, orca-style, a first token per prompt)."""
        prompts = prompts or []
        step_in, width = self._prepare(prompts)
        logits, forward_ms, padding_cells, attended = self._run(step_in, width)
        self._admit_prompts(prompts, stamps)
        emitted, finished, trimmed = self._postprocess(logits)
        self.steps += 1
        return StepResult(
            emitted=emitted,
            finished=finished,
            rows=step_in.input_ids.shape[0],
            width=attended,
            query_len=width,
            padding_cells=padding_cells,
            forward_ms=forward_ms,
            trimmed=trimmed,
        )

    def _prepare(self, prompts: list[Request]) -> tuple[StepInput, int]:
        """Inputs of the forward: each live row's last token at its true position; orca prompts
        left-padded to the widest; the new columns' mask written into the cache."""
        if not self.rows and not prompts:
            raise RuntimeError("step on an empty batch")
        if len(prompts) > self.free_rows:
            raise CapacityError(f"{len(prompts)} prompts do not fit in {self.free_rows} free rows")
        n_old = len(self.rows)
        width = max([1] + [r.prompt_len for r in prompts])
        n = n_old + len(prompts)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        pos = torch.zeros((n, width), dtype=torch.long)
        new_mask = torch.zeros((n, width), dtype=torch.bool)
        if n_old:
            ids[:n_old, -1] = torch.tensor([r.next_token for r in self.rows])
            pos[:n_old] = torch.tensor([r.pos for r in self.rows]).unsqueeze(1)
            new_mask[:n_old, -1] = True
        for i, req in enumerate(prompts, start=n_old):
            p = req.prompt_len
            ids[i, width - p :] = torch.tensor(req.prompt_token_ids, dtype=torch.long)
            pos[i, width - p :] = torch.arange(p)
            new_mask[i, width - p :] = True
        cache = self.cache
        cache.add_empty_rows(len(prompts))
        try:
            cache.begin_forward(width)
        except CapacityError:
            for _ in prompts:
                cache.remove_row(cache.rows - 1)
            raise
        cache.mask[:n, cache.end : cache.end + width] = new_mask
        attn = cache.live_mask(width)
        # No padding at all: no mask, so the model takes the same path as a lone query.
        return StepInput(ids, pos, None if bool(attn.all()) else attn), width

    def _run(self, step_in: StepInput, width: int) -> tuple[torch.Tensor, float, int, int]:
        """The forward through the runtime; its columns become part of the window, and every row
        that was live moves one position on."""
        attended = self.cache.length + width
        t0 = time.perf_counter()
        logits = self.runtime.decode(step_in, self.cache)
        forward_ms = (time.perf_counter() - t0) * 1e3
        self.cache.commit()
        mask = step_in.attention_mask
        padding_cells = int(mask.numel() - mask.sum()) if mask is not None else 0
        for row in self.rows:
            row.pos += 1
        return logits.float(), forward_ms, padding_cells, attended

    def _admit_prompts(self, prompts: list[Request], stamps: list[Stamps] | None) -> None:
        """orca: the prompts computed inside this forward become rows (their first token is next)."""
        for j, req in enumerate(prompts):
            tracker = self._tracker(req.params, list(req.prompt_token_ids))
            st = stamps[j] if stamps else None
            self.rows.append(
                Row(req.request_id, req.prompt_len, req.params, req.seed, tracker, req.prompt_len, -1, st)
            )

    def _postprocess(self, logits: torch.Tensor) -> tuple[list[TokenOut], list[FinishedRow], int]:
        """Sample a token per row, apply stop rules, evict finished rows, trim all-padding columns."""
        indices = [len(r.tracker.token_ids) for r in self.rows]
        tokens = sample_rows(
            logits,
            [r.params for r in self.rows],
            [r.seed for r in self.rows],
            indices,
            runtime_argmax(self.runtime),
        )
        emitted: list[TokenOut] = []
        done: list[int] = []
        for i, (row, tok) in enumerate(zip(self.rows, tokens, strict=True)):
            finish = row.tracker.push(tok)
            row.next_token = tok
            emitted.append(TokenOut(row.request_id, tok, row.tracker.take_text_delta()))
            if finish is not None:
                done.append(i)
        finished = [self._evict(i) for i in sorted(done, reverse=True)][::-1]
        trimmed = self.cache.trim() if done else 0
        return emitted, finished, trimmed

    def _evict(self, i: int) -> FinishedRow:
        row = self.rows[i]
        moved = self.cache.remove_row(i)
        if moved is not None:
            self.rows[i] = self.rows[moved]
        self.rows.pop()
        t = row.tracker
        return FinishedRow(
            row.request_id, t.token_ids, t.text, t.finish_reason or "length", row.prompt_len, row.stamps
        )

    def abort(self, request_id: str) -> FinishedRow | None:
        """Remove a request's row now (cancelled by its client). Returns None if it is not here."""
        for i, row in enumerate(self.rows):
            if row.request_id == request_id:
                row.tracker.finish_reason = "abort"
                fin = self._evict(i)
                self.cache.trim()
                return fin
        return None
