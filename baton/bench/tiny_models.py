"""Small random transformers models from fixed seeds, saved with save_pretrained, for tests and benches.

Each comes with a tiny byte-level BPE tokenizer trained here (no hub access needed).
Weights use a wide initialiser so logits are well spread: near-ties are rare and exactness
tests can fail for real.
"""

from __future__ import annotations

from pathlib import Path

CORPUS = (
    "The quick brown fox jumps over the lazy dog. Disaggregated serving splits prefill from decode. "
    "A batch that takes new queries between steps keeps every row busy. Padding on the left aligns "
    "rows so that each writes its next token at the same column. Finished queries leave at once. "
    "Unicode: café, naïve, 東京, emoji 🙂 and numbers 0123456789. "
) * 20

FAMILIES = ("llama", "qwen2", "qwen3", "gpt2")


def _tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([CORPUS], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def _soften_attention(model, family: str, hidden: int, scale: float = 0.15) -> None:
    """Shrink query/key weights so attention is spread over many columns, not one-hot.

    With a wide initialiser, scores are so large that softmax picks one column; a bug that lets a
    row attend to padding would then change nothing measurable. Spread attention makes every
    attended column count, so mask errors show up as wrong logits.
    """
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if family == "gpt2" and name.endswith("attn.c_attn.weight"):
                p[:, : 2 * hidden] *= scale  # fused [q | k | v] projection
            elif family == "gpt2" and name.endswith("attn.c_attn.bias"):
                p[: 2 * hidden] *= scale
            elif any(k in name for k in ("q_proj", "k_proj")):
                p *= scale


def build(
    family: str,
    folder: Path,
    seed: int = 0,
    layers: int = 2,
    hidden: int = 64,
    init: float = 0.5,
    context: int = 512,
) -> Path:
    """Create (once) a random ``family`` model in ``folder`` and return the folder."""
    import torch
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    folder = Path(folder)
    if (folder / "config.json").exists():
        return folder
    tok = _tokenizer(vocab_size=400)
    vocab = len(tok)
    eos = tok.convert_tokens_to_ids("<eos>")
    common = dict(
        vocab_size=vocab,
        eos_token_id=eos,
        bos_token_id=None,
        pad_token_id=0,
        initializer_range=init,
        tie_word_embeddings=False,
    )
    llama_like = dict(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        **common,
    )
    if family == "llama":
        cfg, cls = LlamaConfig(**llama_like), LlamaForCausalLM
    elif family == "qwen2":
        cfg, cls = Qwen2Config(use_sliding_window=False, **llama_like), Qwen2ForCausalLM
    elif family == "qwen3":  # q/k norms, and a head_dim (32) that is not hidden / heads
        cfg, cls = Qwen3Config(head_dim=32, use_sliding_window=False, **llama_like), Qwen3ForCausalLM
    elif family == "gpt2":
        cfg = GPT2Config(n_embd=hidden, n_layer=layers, n_head=4, n_positions=context, **common)
        cls = GPT2LMHeadModel
    else:
        raise ValueError(f"unknown family {family!r}")
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    _soften_attention(model, family, hidden)
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = 0
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
