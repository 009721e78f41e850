"""Prefill engine: prompts in, one KV handoff per query out. No Ray here (the actor wraps it).

Waiting prompts are split into forwards by the policy's packing rule (``plan_prefill``) and run
through the model runtime, which returns each prompt's KV (its real tokens only, one contiguous
``[layers, 2, kv_heads, prompt_len, head_dim]`` array) and the logits of its last token. Each
query's first token is sampled here with its own parameters: it is final, so TTFT never waits
for the decode side.
"""

from __future__ import annotations

import itertools
import time

import torch

from baton.core.handoff import HandoffHeader, KVHandoff, kv_to_numpy
from baton.core.models import LoadedModel
from baton.core.policy import plan_prefill
from baton.core.request import Request
from baton.core.sampling import runtime_argmax, sample_rows
from baton.core.stopping import OutputTracker


class PrefillEngine:
    def __init__(self, lm: LoadedModel, max_batch_tokens: int = 4096):
        self.lm = lm
        self.max_batch_tokens = max_batch_tokens

    @property
    def padded(self) -> bool:
        """Whether a forward pays for padding (rows x longest) or only real tokens."""
        return getattr(self.lm.runtime, "padded_prefill", True)

    def plan_batches(self, requests: list[Request]) -> list[list[Request]]:
        """Consecutive groups of ``requests``, one forward each, within ``max_batch_tokens``."""
        sizes = plan_prefill([r.prefill_len for r in requests], self.max_batch_tokens, self.padded)
        starts = [0, *itertools.accumulate(sizes)][: len(sizes)]
        return [requests[s : s + n] for s, n in zip(starts, sizes, strict=True)]

    def forward(self, requests: list[Request]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """One forward. Returns per-request KV tensors and last-token logits ``[n, vocab]``."""
        return self.lm.runtime.prefill([r.prefill_ids for r in requests])

    def prefill(self, requests: list[Request]) -> list[KVHandoff]:
        """Prefill ``requests`` (in as many forwards as the token budget needs), one handoff each."""
        handoffs: list[KVHandoff] = []
        for batch in self.plan_batches(requests):
            t0 = time.time()
            kvs, logits = self.forward(batch)
            # A resumed request's next token is output index len(resume): its draw is the one it
            # would have had on the decode worker that died.
            firsts = sample_rows(
                logits.float(),
                [r.params for r in batch],
                [r.seed for r in batch],
                [len(r.resume) for r in batch],
                runtime_argmax(self.lm.runtime),
            )
            t1 = time.time()
            handoffs += [
                self._handoff(r, kv, tok, t0, t1, len(batch))
                for r, kv, tok in zip(batch, kvs, firsts, strict=True)
            ]
        return handoffs

    def _handoff(
        self, r: Request, kv: torch.Tensor, token: int, t0: float, t1: float, size: int
    ) -> KVHandoff:
        tracker = OutputTracker(
            r.params, self.lm.limits.eos_token_ids, self.lm.tokenizer, list(r.prompt_token_ids)
        )
        tracker.replay(r.resume)
        finish = tracker.push(token)
        header = HandoffHeader(
            request_id=r.request_id,
            prompt_token_ids=list(r.prefill_ids),
            first_token=token,
            params=r.params.to_dict(),
            seed=r.seed,
            model_fingerprint=self.lm.fingerprint,
            dtype=self.lm.dtype_name,
            shape=tuple(kv.shape),
            finish_reason=finish,
            first_text=tracker.take_text_delta(),
            timings={"arrival": r.arrival, "prefill_start": t0, "prefill_end": t1, "prefill_batch": size},
            resumed=len(r.resume),
        )
        return KVHandoff(header.to_bytes(), None if finish else kv_to_numpy(kv))
