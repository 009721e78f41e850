"""Prefill engine: prompts in, one KV handoff per query out. No Ray here (the actor wraps it).

Several prompts of different lengths run in one forward pass, left-padded, with each row's true
position ids; only the last column's logits are computed. Each query's KV (its real columns only)
is packed into one contiguous ``[layers, 2, kv_heads, prompt_len, head_dim]`` array and its first
token is sampled with its own parameters.
"""

from __future__ import annotations

import time

import torch
from transformers import DynamicCache

from baton.core.handoff import HandoffHeader, KVHandoff, kv_to_numpy
from baton.core.models import LoadedModel
from baton.core.request import Request
from baton.core.sampling import sample_rows
from baton.core.stopping import OutputTracker


class PrefillEngine:
    def __init__(self, lm: LoadedModel, max_batch_tokens: int = 4096):
        self.lm = lm
        self.max_batch_tokens = max_batch_tokens
        self.pad_id = 0

    def plan_batches(self, requests: list[Request]) -> list[list[Request]]:
        """Group requests (in order) so each padded forward stays under ``max_batch_tokens``."""
        batches: list[list[Request]] = []
        cur: list[Request] = []
        longest = 0
        for r in requests:
            longest_if = max(longest, r.prompt_len)
            if cur and longest_if * (len(cur) + 1) > self.max_batch_tokens:
                batches.append(cur)
                cur, longest_if = [], r.prompt_len
            cur.append(r)
            longest = longest_if
        if cur:
            batches.append(cur)
        return batches

    @torch.inference_mode()
    def forward(self, requests: list[Request]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """One padded forward. Returns per-request KV tensors and last-token logits ``[n, vocab]``."""
        lm = self.lm
        width = max(r.prompt_len for r in requests)
        n = len(requests)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, r in enumerate(requests):
            ids[i, width - r.prompt_len :] = torch.tensor(r.prompt_token_ids, dtype=torch.long)
            mask[i, width - r.prompt_len :] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        dev = lm.device
        cache = DynamicCache(config=lm.model.config)
        # With no padding the mask is dropped so the model takes the same path as a lone query.
        padded = bool((mask == 0).any())
        out = lm.model(
            input_ids=ids.to(dev),
            attention_mask=mask.to(dev) if padded else None,
            position_ids=pos.to(dev),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits = out.logits[:, -1, :]
        kvs = []
        for i, r in enumerate(requests):
            lo = width - r.prompt_len
            kv = torch.stack(
                [torch.stack((layer.keys[i, :, lo:], layer.values[i, :, lo:])) for layer in cache.layers]
            )
            kvs.append(kv)  # [layers, 2, kv_heads, p, head_dim], contiguous
        return kvs, logits

    def prefill(self, requests: list[Request]) -> list[KVHandoff]:
        """Prefill ``requests`` (in as many forwards as the token budget needs), one handoff each."""
        handoffs: list[KVHandoff] = []
        for batch in self.plan_batches(requests):
            t0 = time.time()
            kvs, logits = self.forward(batch)
            firsts = sample_rows(
                logits.float(), [r.params for r in batch], [r.seed for r in batch], [0] * len(batch)
            )
            t1 = time.time()
            for r, kv, tok in zip(batch, kvs, firsts, strict=True):
                tracker = OutputTracker(
                    r.params, self.lm.limits.eos_token_ids, self.lm.tokenizer, list(r.prompt_token_ids)
                )
                finish = tracker.push(tok)
                header = HandoffHeader(
                    request_id=r.request_id,
                    prompt_token_ids=list(r.prompt_token_ids),
                    first_token=tok,
                    params=r.params.to_dict(),
                    seed=r.seed,
                    model_fingerprint=self.lm.fingerprint,
                    dtype=self.lm.dtype_name,
                    shape=tuple(kv.shape),
                    finish_reason=finish,
                    first_text=tracker.take_text_delta(),
                    timings={
                        "arrival": r.arrival,
                        "prefill_start": t0,
                        "prefill_end": t1,
                        "prefill_batch": len(batch),
                    },
                )
                handoffs.append(KVHandoff(header.to_bytes(), None if finish else kv_to_numpy(kv)))
        return handoffs
