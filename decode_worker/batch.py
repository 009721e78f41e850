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
from dataclasses import dataclass, field

import torch

from baton.core.errors import CapacityError, HandoffMismatch
from baton.core.handoff import KVHandoff, check_compatible, kv_from_numpy
from baton.core.models import LoadedModel
from baton.core.params import SamplingParams
from baton.core.request import Request
from baton.core.sampling import sample_rows
from baton.core.stopping import OutputTracker
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
    info: dict = field(default_factory=dict)  # caller's bookkeeping (timings), returned on finish


@dataclass(frozen=True)
class Finished:
    request_id: str
    token_ids: list[int]
    text: str
    finish_reason: str
    prompt_len: int
    info: dict


@dataclass
class StepResult:
    emitted: list[tuple[str, int, str]]  # (request_id, token, text delta) for every live row
    finished: list[Finished]
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
        self.max_rows = max_rows
        self.capacity = capacity
        self.cache = BatonKVCache(lm.layout, max_rows, capacity, lm.dtype, lm.device)
        self.rows: list[Row] = []
        self.pad_id = 0
        self.steps = 0
        self.last_logits: torch.Tensor | None = None

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

    def insert(self, handoff: KVHandoff, info: dict | None = None) -> Finished | None:
        """Embed a prefilled query between two steps. Returns Finished if its first token ended it."""
        h = handoff.header
        check_compatible(h, handoff.kv, self.lm.fingerprint, self.lm.dtype_name, self.lm.layout)
        params = h.sampling
        tracker = self._tracker(params, h.prompt_token_ids)
        finish = tracker.push(h.first_token)
        tracker.take_text_delta()  # the first token's text was streamed by the prefill side
        info = dict(info or {})
        if finish is not None:
            return Finished(h.request_id, tracker.token_ids, tracker.text, finish, h.prompt_len, info)
        if handoff.kv is None:
            raise HandoffMismatch("kv: handoff of an unfinished request carries no KV")
        if not self.fits(h.prompt_len, params.max_tokens):
            raise CapacityError(f"no room for request {h.request_id} ({h.prompt_len} prompt tokens)")
        kv = kv_from_numpy(handoff.kv, h.dtype, self.lm.device)
        self.cache.grow_left(h.prompt_len)
        self.cache.add_row(kv)
        self.rows.append(
            Row(
                h.request_id,
                h.prompt_len,
                params,
                h.seed,
                tracker,
                pos=h.prompt_len,
                next_token=h.first_token,
                info=info,
            )
        )
        return None

    # ------------------------------------------------------------------ the step
    @torch.inference_mode()
    def step(self, prompts: list[Request] | None = None, infos: list[dict] | None = None) -> StepResult:
        """One forward: a token for every live row (and, orca-style, a first token per prompt)."""
        prompts = prompts or []
        if not self.rows and not prompts:
            raise RuntimeError("step on an empty batch")
        if len(prompts) > self.free_rows:
            raise CapacityError(f"{len(prompts)} prompts do not fit in {self.free_rows} free rows")
        cache = self.cache
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
        for j, req in enumerate(prompts):
            i = n_old + j
            p = req.prompt_len
            ids[i, width - p :] = torch.tensor(req.prompt_token_ids, dtype=torch.long)
            pos[i, width - p :] = torch.arange(p)
            new_mask[i, width - p :] = True

        cache.add_empty_rows(len(prompts))
        try:
            cache.begin_forward(width)
        except CapacityError:
            for _ in prompts:
                cache.remove_row(cache.rows - 1)
            raise
        cache.mask[:n, cache.end : cache.end + width] = new_mask
        attn = cache.live_mask(width)
        padded = not bool(attn.all())
        dev = self.lm.device
        t0 = time.perf_counter()
        out = self.lm.model(
            input_ids=ids.to(dev),
            # No padding at all: drop the mask so the model takes the same path as a lone query.
            attention_mask=attn if padded else None,
            position_ids=pos.to(dev),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        forward_ms = (time.perf_counter() - t0) * 1e3
        cache.commit()
        padding_cells = int(attn.numel() - attn.sum()) if padded else 0
        attended = attn.shape[1]

        for j, req in enumerate(prompts):
            info = dict(infos[j]) if infos else {}
            self.rows.append(
                Row(
                    req.request_id,
                    req.prompt_len,
                    req.params,
                    req.seed,
                    self._tracker(req.params, list(req.prompt_token_ids)),
                    pos=req.prompt_len,
                    next_token=-1,
                    info=info,
                )
            )
        for i in range(n_old):
            self.rows[i].pos += 1

        logits = out.logits[:, -1, :].float()
        self.last_logits = logits  # kept for inspection (tests, debugging); no copy
        indices = [len(r.tracker.token_ids) for r in self.rows]
        tokens = sample_rows(logits, [r.params for r in self.rows], [r.seed for r in self.rows], indices)
        emitted: list[tuple[str, int, str]] = []
        done: list[int] = []
        for i, (row, tok) in enumerate(zip(self.rows, tokens, strict=True)):
            finish = row.tracker.push(tok)
            row.next_token = tok
            emitted.append((row.request_id, tok, row.tracker.take_text_delta()))
            if finish is not None:
                done.append(i)
        finished = [self._evict(i) for i in sorted(done, reverse=True)]
        trimmed = cache.trim() if done else 0
        self.steps += 1
        return StepResult(emitted, finished[::-1], n, attended, width, padding_cells, forward_ms, trimmed)

    def _evict(self, i: int) -> Finished:
        row = self.rows[i]
        moved = self.cache.remove_row(i)
        if moved is not None:
            self.rows[i] = self.rows[moved]
        self.rows.pop()
        t = row.tracker
        return Finished(
            row.request_id, t.token_ids, t.text, t.finish_reason or "length", row.prompt_len, row.info
        )

    def abort(self, request_id: str) -> Finished | None:
        """Remove a request's row now (cancelled by its client). Returns None if it is not here."""
        for i, row in enumerate(self.rows):
            if row.request_id == request_id:
                row.tracker.finish_reason = "abort"
                fin = self._evict(i)
                self.cache.trim()
                return fin
        return None
