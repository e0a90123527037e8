"""Tiny real models and a real tokenizer, built offline in about a second, for tests and benchmarks.

No download: the tokenizer is a byte-level BPE trained on a built-in English text (the task prompts
plus common words), with a ChatML chat template like SmolLM2's, so code paths that use
``apply_chat_template``, padding and EOS are exercised exactly as with the real base.
The models are real transformers classes with random weights (``from_config``).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    GemmaConfig,
    LlamaConfig,
    MistralConfig,
    MixtralConfig,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from neko.tasks import BUILTIN_TASKS

__all__ = [
    "tiny_tokenizer",
    "tiny_llama_config",
    "tiny_mixtral_config",
    "tiny_dense_config",
    "tiny_llama",
    "tiny_mixtral",
    "tiny_dense",
    "TINY_DENSE_FAMILIES",
]

# Dense families up-cycling supports; tiny_dense_config builds each with the same small dims.
TINY_DENSE_FAMILIES = ("llama", "mistral", "qwen2", "gemma")

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]


def _corpus() -> list[str]:
    words = (
        "the of and to a in is you that it he was for on are as with his they I at be this have from or "
        "one had by word but not what all were we when your can said there use an each which she do how "
        "their if will up other about out many then them these so some her would make like him into time "
        "has look two more write go see number no way could people my than first water been call who oil "
        "its now find long down day did get come made may part hello world speech text error correct "
        "recognition translation sentence grammar coherence spelling English Spanish French German"
    ).split()
    lines = [t.template for t in BUILTIN_TASKS]
    lines += [" ".join(words[i : i + 12]) for i in range(0, len(words), 7)]
    lines += ["0123456789 .,;:!?'\"()[]{}-_/"]
    return lines * 3


@functools.lru_cache(maxsize=4)
def _trained_tokenizer_json(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return tok.to_str()


def tiny_tokenizer(vocab_size: int = 512, save_dir: str | Path | None = None) -> PreTrainedTokenizerFast:
    """A real fast tokenizer (byte-level BPE, ChatML template, pad/eos set). Deterministic."""
    from tokenizers import Tokenizer

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_trained_tokenizer_json(vocab_size)),
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<pad>",
        unk_token=None,
    )
    tok.chat_template = CHATML_TEMPLATE
    if save_dir is not None:
        tok.save_pretrained(str(save_dir))
    return tok


def _tiny_kwargs(vocab_size: int, overrides: dict[str, Any]) -> dict[str, Any]:
    """The shared tiny shape (ids match tiny_tokenizer's specials: eos 2, pad 3)."""
    kw: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=2,
        pad_token_id=3,
    )
    kw.update(overrides)
    return kw


def tiny_llama_config(vocab_size: int = 512, **overrides: Any) -> LlamaConfig:
    return LlamaConfig(**_tiny_kwargs(vocab_size, overrides))


def tiny_mixtral_config(
    vocab_size: int = 512, num_local_experts: int = 8, num_experts_per_tok: int = 2, **overrides: Any
) -> MixtralConfig:
    overrides = {
        "num_local_experts": num_local_experts,
        "num_experts_per_tok": num_experts_per_tok,
        **overrides,
    }
    return MixtralConfig(**_tiny_kwargs(vocab_size, overrides))


def tiny_llama(seed: int = 0, **overrides: Any) -> PreTrainedModel:
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_llama_config(**overrides))


def tiny_mixtral(seed: int = 0, **overrides: Any) -> PreTrainedModel:
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_mixtral_config(**overrides))


def tiny_dense_config(family: str = "llama", vocab_size: int = 512, **overrides: Any) -> PreTrainedConfig:
    """A tiny dense config of ``family`` ("llama", "mistral", "qwen2", "gemma") with tiny_llama's dimensions.

    Mistral gets a sliding window of 8, Qwen2 its q/k/v biases and Gemma a head_dim of 24 (not
    hidden / heads = 16) with its GELU-tanh FFN, so tests exercise what differs between the families.
    """
    if family == "llama":
        return tiny_llama_config(vocab_size, **overrides)
    base = tiny_llama_config(vocab_size).to_dict()
    kw: dict[str, Any] = {
        k: base[k] for k in _tiny_kwargs(vocab_size, {})
    }  # the tiny shape, as Llama holds it
    if family == "mistral":
        kw["sliding_window"] = 8
        kw.update(overrides)
        return MistralConfig(**kw)
    if family == "qwen2":
        kw.update(overrides)
        return Qwen2Config(**kw)
    if family == "gemma":
        kw["head_dim"] = 24
        kw.update(overrides)
        return GemmaConfig(**kw)
    raise ValueError(f"unknown tiny family {family!r}; choose one of {TINY_DENSE_FAMILIES}")


def tiny_dense(family: str = "llama", seed: int = 0, **overrides: Any) -> PreTrainedModel:
    """A tiny random dense causal LM of ``family``; biases (Qwen2 q/k/v) are random too, not zero, and
    so are Gemma's RMSNorm weights (it initialises them to 0, i.e. a scale of 1 + 0)."""

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_dense_config(family, **overrides))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias") or (family == "gemma" and name.endswith("norm.weight")):
                p.normal_(0.0, 0.05)
    return model
