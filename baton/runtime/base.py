"""What a model runtime does for the two workers, and the inputs of a decode forward."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class StepInput:
    """One forward over a decode batch (built by ``DecodeBatch``, run by a runtime).

    ``input_ids`` and ``position_ids`` are ``[rows, width]`` (width 1 for a decode step, the prompt
    width for an ``orca`` step). ``attention_mask`` is ``[rows, window + width]`` over the cache's
    live window plus the columns being written (True = attend), or None when no cell is padding.
    Position ids are each row's true positions (its count of real tokens), never column indices.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor | None


class ModelRuntime(Protocol):
    """A model's forward passes as the workers need them. One caller thread at a time."""

    name: str  # "hf", "fast"

    def prefill(self, prompts: Sequence[Sequence[int]]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Run ``prompts`` (token ids) through the model together.

        Returns each prompt's KV, a contiguous ``[layers, 2, kv_heads, len, head_dim]`` tensor of
        its real tokens only, and the logits of each prompt's last token ``[n, vocab]``.
        """
        ...

    def decode(self, step: StepInput, cache) -> torch.Tensor:
        """One forward over a ``BatonKVCache`` whose ``begin_forward(width)`` was called.

        Writes the new columns' KV in place through the cache and returns the logits of each
        row's last column ``[rows, vocab]``. The caller commits the cache afterwards.
        """
        ...

    def argmax(self, logits: torch.Tensor) -> torch.Tensor:
        """Each row's first maximum of float32 ``logits [rows, vocab]``, as ``torch.argmax(logits, -1)``
        (optional: where a runtime has none, the workers use ``torch.argmax``)."""
        ...
