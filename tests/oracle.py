"""The correctness oracle: transformers' own ``generate`` on each query alone, and the tie rule."""

from __future__ import annotations

import torch

TIE = 1e-4


@torch.inference_mode()
def reference(lm, prompt: list[int], max_tokens: int, ignore_eos: bool = False):
    """Greedy tokens of ``generate`` on this query alone, and its raw logits per step."""
    eos = None if ignore_eos else list(lm.limits.eos_token_ids)
    out = lm.model.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones((1, len(prompt)), dtype=torch.long),
        max_new_tokens=max_tokens,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=0,
        output_logits=True,
        return_dict_in_generate=True,
    )
    return out.sequences[0, len(prompt) :].tolist(), [lg[0] for lg in out.logits]


def compare(lm, prompt: list[int], got: list[int], max_tokens: int, ignore_eos: bool = False) -> str:
    """'equal', 'tie' (first difference is a near-tie in the reference) or a failure message."""
    ref, logits = reference(lm, prompt, max_tokens, ignore_eos)
    if got == ref:
        return "equal"
    k = next((i for i, (a, b) in enumerate(zip(ref, got, strict=False)) if a != b), min(len(ref), len(got)))
    if k < len(ref) and k < len(got):
        top = torch.topk(logits[k].float(), 2).values
        gap = float(top[0] - top[1])
        if gap <= TIE:
            return "tie"
        return f"differs at token {k}: got {got[k]}, generate {ref[k]} (top-2 gap {gap:.3g})\n got {got}\n ref {ref}"
    return f"length differs: got {len(got)} tokens, generate {len(ref)}\n got {got}\n ref {ref}"
