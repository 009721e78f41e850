"""The transformers runtime: any decoder-only model class transformers has, unmodified.

Prefill runs several prompts in one left-padded forward with each row's true position ids.
Decode hands the model the decode batch's ``BatonKVCache`` (a transformers ``Cache``), so the
model writes the new column in place and attends over views of the live window.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache

from baton.runtime.base import StepInput


class HFRuntime:
    name = "hf"
    padded_prefill = True  # a prefill forward computes rows x longest prompt tokens

    def __init__(self, model: Any, device: torch.device, pad_id: int = 0):
        self.model = model
        self.device = device
        self.pad_id = pad_id

    @torch.inference_mode()
    def prefill(self, prompts: Sequence[Sequence[int]]) -> tuple[list[torch.Tensor], torch.Tensor]:
        width = max(len(p) for p in prompts)
        n = len(prompts)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
            mask[i, width - len(p) :] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        # With no padding the mask is dropped so the model takes the same path as a lone query.
        padded = bool((mask == 0).any())
        dev = self.device
        out = self.model(
            input_ids=ids.to(dev),
            attention_mask=mask.to(dev) if padded else None,
            position_ids=pos.to(dev),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        kvs = []
        for i, p in enumerate(prompts):
            lo = width - len(p)
            layers = [torch.stack((layer.keys[i, :, lo:], layer.values[i, :, lo:])) for layer in cache.layers]
            kvs.append(torch.stack(layers))  # [layers, 2, kv_heads, p, head_dim], contiguous
        return kvs, out.logits[:, -1, :]

    @torch.inference_mode()
    def decode(self, step: StepInput, cache) -> torch.Tensor:
        dev = self.device
        out = self.model(
            input_ids=step.input_ids.to(dev),
            attention_mask=step.attention_mask,
            position_ids=step.position_ids.to(dev),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1, :]
