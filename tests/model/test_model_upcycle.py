"""Up-cycling preserves the dense function (logits and gradients), saves as a plain checkpoint, refuses what it cannot map."""

from __future__ import annotations

import json

import pytest
import torch

from neko.model.tiny import tiny_dense, tiny_mixtral, tiny_tokenizer
from neko.model.upcycle import parse_layer_spec, upcycle_checkpoint, upcycle_config, upcycle_model

# (family, dense-config overrides, moe_layers, expected class)
CASES = [
    ("llama", {}, None, "MixtralForCausalLM"),
    (
        "llama",
        {
            "rope_parameters": {
                "rope_type": "llama3",
                "rope_theta": 5e5,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            }
        },
        None,
        "MixtralForCausalLM",
    ),
    ("mistral", {}, None, "MixtralForCausalLM"),
    ("llama", {"num_hidden_layers": 3}, "1-2", "Qwen2MoeForCausalLM"),
    ("mistral", {"num_hidden_layers": 3}, [0], "Qwen2MoeForCausalLM"),
    ("qwen2", {}, None, "Qwen2MoeForCausalLM"),
    (
        "qwen2",
        {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1},
        "-1:",
        "Qwen2MoeForCausalLM",
    ),
    ("gemma", {}, None, "MixtralForCausalLM"),
    ("gemma", {"num_hidden_layers": 3}, "1-2", "Qwen2MoeForCausalLM"),
]
IDS = [
    "llama",
    "llama3-rope",
    "mistral-window8",
    "llama-partial",
    "mistral-partial",
    "qwen2-bias",
    "qwen2-window-partial",
    "gemma",
    "gemma-partial",
]


def _batch(seed: int = 0, vocab: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (3, 21), generator=g)  # 21 > sliding window 8
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding
    mask[2, 15:] = 0  # right padding
    return ids, mask


@torch.no_grad()
def _logits(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, attention_mask=mask).logits * mask.unsqueeze(-1)


@pytest.mark.parametrize("family,over,layers,cls", CASES, ids=IDS)
def test_upcycled_reproduces_dense_logits(family, over, layers, cls):
    dense = tiny_dense(family, **over).eval()
    moe = upcycle_model(dense, num_experts=4, num_experts_per_tok=2, moe_layers=layers, seed=1)
    assert type(moe).__name__ == cls
    assert not any(t.is_meta for t in list(moe.parameters()) + list(moe.buffers()))
    ids, mask = _batch()
    ref = _logits(dense, ids, mask)
    for impl in ("eager", "grouped_mm"):
        moe.set_experts_implementation(impl)
        torch.testing.assert_close(_logits(moe, ids, mask), ref, atol=2e-5, rtol=1e-4)
    # The router is live: tokens really spread over several experts.
    gate = next(m for n, m in moe.named_modules() if n.endswith("mlp.gate"))
    captured = {}

    def grab(module, args, out):  # returns None, so the router output is left alone
        captured["idx"] = out[2]

    h = gate.register_forward_hook(grab)
    _logits(moe, ids, mask)
    h.remove()
    assert captured["idx"].unique().numel() >= 3


@pytest.mark.parametrize(
    "family,layers",
    [("llama", None), ("llama", "1"), ("gemma", None)],
    ids=["mixtral", "qwen2moe-partial", "gemma"],
)
def test_greedy_generation_matches_dense(family, layers):
    """With the KV cache (what inference uses), the up-cycled model generates what the dense one does."""
    dense = tiny_dense(family).eval()
    moe = upcycle_model(dense, num_experts=4, moe_layers=layers)
    ids, mask = _batch(5)
    kw = dict(attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=3)
    torch.testing.assert_close(moe.generate(ids, **kw), dense.generate(ids, **kw), atol=0, rtol=0)


def test_sparse_layers_follow_moe_layers():
    dense = tiny_dense("llama", num_hidden_layers=4)
    moe = upcycle_model(dense, num_experts=2, moe_layers="2-3")
    assert moe.config.mlp_only_layers == [0, 1]
    kinds = [type(layer.mlp).__name__ for layer in moe.model.layers]
    assert kinds == ["Qwen2MoeMLP", "Qwen2MoeMLP", "Qwen2MoeSparseMoeBlock", "Qwen2MoeSparseMoeBlock"]
    torch.testing.assert_close(
        moe.model.layers[0].mlp.up_proj.weight, dense.model.layers[0].mlp.up_proj.weight
    )
    assert moe.model.layers[3].mlp.shared_expert.down_proj.weight.numel() == 0
    assert not moe.config.qkv_bias and moe.config.norm_topk_prob


def test_experts_are_copies_and_config_fields_map():
    dense = tiny_dense("mistral")
    moe = upcycle_model(dense, num_experts=3, num_experts_per_tok=1)
    cfg = moe.config
    assert (cfg.num_local_experts, cfg.num_experts_per_tok, cfg.sliding_window) == (3, 1, 8)
    for f in ("hidden_size", "intermediate_size", "num_key_value_heads", "rms_norm_eps", "vocab_size"):
        assert getattr(cfg, f) == getattr(dense.config, f), f
    assert cfg.rope_parameters == dense.config.rope_parameters
    d, m = dense.model.layers[1].mlp, moe.model.layers[1].mlp.experts
    for e in range(3):
        torch.testing.assert_close(m.gate_up_proj[e], torch.cat([d.gate_proj.weight, d.up_proj.weight]))
        torch.testing.assert_close(m.down_proj[e], d.down_proj.weight)
    assert cfg.neko_upcycle["source_model_type"] == "mistral"


def _loss_and_grads(model, ids, mask):
    model.zero_grad()
    labels = ids.masked_fill(mask == 0, -100)
    model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("num_experts,top_k", [(1, 1), (4, 2)])
def test_gradients_match_dense_ffn(num_experts, top_k):
    """megablocks' forward-vs-dense idea, on gradients: summed over the (equal) experts, the expert
    gradients are the dense FFN gradients; everything outside the FFN gets identical gradients."""
    dense = tiny_dense("llama").train()
    moe = upcycle_model(dense, num_experts=num_experts, num_experts_per_tok=top_k).train()
    moe.set_experts_implementation("eager")
    ids, mask = _batch(3)
    gd, gm = _loss_and_grads(dense, ids, mask), _loss_and_grads(moe, ids, mask)
    for name in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "model.norm.weight"):
        torch.testing.assert_close(gm[name], gd[name], atol=1e-6, rtol=1e-4)
    for i in range(2):
        pre = f"model.layers.{i}.mlp."
        dense_gu = torch.cat([gd[pre + "gate_proj.weight"], gd[pre + "up_proj.weight"]])
        torch.testing.assert_close(gm[pre + "experts.gate_up_proj"].sum(0), dense_gu, atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(
            gm[pre + "experts.down_proj"].sum(0), gd[pre + "down_proj.weight"], atol=1e-6, rtol=1e-4
        )
        # Equal experts + weights summing to one: the LM loss cannot move the router yet.
        assert gm[pre + "gate.weight"].abs().max() < 1e-6
        if num_experts > 1:  # tokens split over experts: each expert gets a different share
            per_expert = gm[pre + "experts.down_proj"].flatten(1).norm(dim=1)
            assert per_expert.min() < per_expert.max() * 0.99


def test_noise_breaks_symmetry_reproducibly():
    dense = tiny_dense("llama").eval()
    a = upcycle_model(dense, num_experts=4, noise_std=0.05, seed=7)
    b = upcycle_model(dense, num_experts=4, noise_std=0.05, seed=7)
    c = upcycle_model(dense, num_experts=4, noise_std=0.05, seed=8)
    ea, eb, ec = (m.model.layers[0].mlp.experts.gate_up_proj for m in (a, b, c))
    torch.testing.assert_close(ea, eb)
    assert not torch.equal(ea, ec)
    assert not torch.allclose(ea[0], ea[1])
    base = torch.cat([dense.model.layers[0].mlp.gate_proj.weight, dense.model.layers[0].mlp.up_proj.weight])
    rel = (ea[0] - base).std() / base.std()
    assert 0.03 < rel.item() < 0.07  # noise_std is relative to the weight's std
    ids, mask = _batch()
    assert not torch.allclose(_logits(a, ids, mask), _logits(dense, ids, mask), atol=1e-4)


def test_router_inits():
    dense = tiny_dense("llama")
    moe = upcycle_model(dense, num_experts=8, router_init="orthogonal", router_std=0.02, seed=3)
    w = moe.model.layers[0].mlp.gate.weight.detach()
    scale = 0.02 * 64**0.5
    torch.testing.assert_close(w @ w.T, torch.eye(8) * scale**2, atol=1e-5, rtol=1e-4)
    n = upcycle_model(dense, num_experts=8, router_std=0.5, seed=3).model.layers[0].mlp.gate.weight
    assert 0.4 < n.std().item() < 0.6
    n2 = upcycle_model(dense, num_experts=8, router_std=0.5, seed=3).model.layers[0].mlp.gate.weight
    torch.testing.assert_close(n, n2)
    assert not torch.equal(n, moe.model.layers[1].mlp.gate.weight)


@pytest.mark.parametrize("layers", [None, "1"], ids=["mixtral", "qwen2moe-partial"])
def test_checkpoint_round_trip_with_plain_transformers(tmp_path, layers):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = tmp_path / "dense"
    dense = tiny_dense("llama").eval()
    dense.save_pretrained(src)
    tiny_tokenizer(save_dir=src)
    (src / "neko_prompts.json").write_text("{}\n")
    out = upcycle_checkpoint(src, tmp_path / "moe", num_experts=4, moe_layers=layers, seed=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dense", "moe"]  # no temp dir left behind
    assert (out / "neko_prompts.json").is_file()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["neko_upcycle"]["seed"] == 2
    moe = AutoModelForCausalLM.from_pretrained(out).eval()
    ids, mask = _batch()
    torch.testing.assert_close(_logits(moe, ids, mask), _logits(dense, ids, mask), atol=2e-5, rtol=1e-4)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
    with pytest.raises(ValueError, match="not empty"):
        upcycle_checkpoint(src, out)


def test_routing_hooks_work_on_partial_layout():
    """Task-guided routing (C1) runs on the partial layout: only the sparse layers have routers."""
    from neko.model.routing import enable_task_guided_routing, find_routers, task_routing

    moe = upcycle_model(tiny_dense("llama", num_hidden_layers=3), num_experts=4, moe_layers="1-2").eval()
    enable_task_guided_routing(moe, tasks=["asr", "mt"])
    assert len(find_routers(moe)) == 2
    ids, mask = _batch()
    with task_routing(moe, torch.zeros_like(ids)):
        out = moe(input_ids=ids, attention_mask=mask).logits
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "spec,n,expected",
    [
        (None, 4, None),
        ("22-29", 30, list(range(22, 30))),
        ("-8:", 30, list(range(22, 30))),
        ("0,4, 8-9", 10, [0, 4, 8, 9]),
        ([3, 1, 3], 4, [1, 3]),
        ("2:", 4, [2, 3]),
    ],
)
def test_parse_layer_spec(spec, n, expected):
    assert parse_layer_spec(spec, n) == expected


@pytest.mark.parametrize(
    "spec,msg",
    [("5", "do not exist"), ("a-b", "cannot read"), ("3-1", "empty"), ([], "no layer"), ("-9:", "outside")],
)
def test_parse_layer_spec_errors(spec, msg):
    with pytest.raises(ValueError, match=msg):
        parse_layer_spec(spec, 4)


def test_gemma_folds_norms_embedding_scale_and_head_exactly():
    """What Gemma computes differently lands in the weights: (1 + w) norms, the sqrt(hidden) scale in
    the embedding matrix, the head a separate copy of the unscaled matrix; GELU-tanh and head_dim kept."""
    dense = tiny_dense("gemma").eval()
    moe = upcycle_model(dense, num_experts=2)
    cfg, d = moe.config, dense.state_dict()
    assert (cfg.hidden_act, cfg.head_dim, cfg.tie_word_embeddings) == ("gelu_pytorch_tanh", 24, False)
    m = moe.state_dict()
    torch.testing.assert_close(
        m["model.layers.0.input_layernorm.weight"], 1 + d["model.layers.0.input_layernorm.weight"]
    )
    torch.testing.assert_close(m["model.norm.weight"], 1 + d["model.norm.weight"])
    torch.testing.assert_close(
        m["model.embed_tokens.weight"], d["model.embed_tokens.weight"] * 8.0
    )  # sqrt(64)
    torch.testing.assert_close(m["lm_head.weight"], d["model.embed_tokens.weight"])
    assert moe.lm_head.weight.data_ptr() != moe.model.embed_tokens.weight.data_ptr()
    assert len(cfg.neko_upcycle["folded"]) == 2


def test_gemma_checkpoint_round_trip(tmp_path):
    from transformers import AutoModelForCausalLM

    src = tmp_path / "gemma"
    dense = tiny_dense("gemma").eval()
    dense.save_pretrained(src)
    tiny_tokenizer(save_dir=src)
    out = upcycle_checkpoint(src, tmp_path / "moe", num_experts=4, seed=2)
    moe = AutoModelForCausalLM.from_pretrained(out).eval()
    ids, mask = _batch()
    torch.testing.assert_close(_logits(moe, ids, mask), _logits(dense, ids, mask), atol=2e-5, rtol=1e-4)


def _gemma():
    from transformers import AutoModelForCausalLM, Gemma2Config

    cfg = Gemma2Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
    )
    return AutoModelForCausalLM.from_config(cfg)


def _bert():
    from transformers import BertConfig, BertForMaskedLM

    return BertForMaskedLM(
        BertConfig(
            vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
        )
    )


def _llama_base_model():
    from transformers import LlamaModel

    return LlamaModel(tiny_dense("llama").config)


@pytest.mark.parametrize(
    "make,kw,msg",
    [
        (_gemma, {}, "Gemma 2/3-family.*soft-capping.*Gemma \\(1st generation"),
        (lambda: tiny_dense("gemma", attention_bias=True), {}, "gemma checkpoint has attention_bias"),
        (lambda: tiny_mixtral(), {}, "already a Mixture-of-Experts"),
        (_bert, {}, "'bert' cannot be up-cycled"),
        (_llama_base_model, {}, "not a causal LM head model"),
        (lambda: tiny_dense("llama", attention_bias=True), {}, "o_proj bias"),
        (lambda: tiny_dense("llama", mlp_bias=True), {}, "mlp_bias"),
        (lambda: tiny_dense("qwen2"), {"layout": "mixtral"}, "q/k/v biases"),
        (lambda: tiny_dense("llama"), {"layout": "mixtral", "moe_layers": "1"}, "cannot mix dense and MoE"),
        (lambda: tiny_dense("llama"), {"num_experts_per_tok": 9, "num_experts": 8}, "num_experts_per_tok"),
        (lambda: tiny_dense("llama"), {"router_init": "xavier"}, "router_init 'xavier'"),
        (lambda: tiny_dense("llama"), {"noise_std": -1.0}, "noise_std"),
    ],
    ids=[
        "gemma2",
        "gemma-attn-bias",
        "moe",
        "encoder",
        "no-lm-head",
        "attn-bias",
        "mlp-bias",
        "qwen2-mixtral",
        "partial-mixtral",
        "topk",
        "init",
        "noise",
    ],
)
def test_clear_errors(make, kw, msg):
    with pytest.raises(ValueError, match=msg):
        upcycle_model(make(), **kw)


def test_checkpoint_errors_leave_nothing(tmp_path):
    src = tmp_path / "moe"
    tiny_mixtral().save_pretrained(src)
    with pytest.raises(ValueError, match="already a Mixture-of-Experts"):
        upcycle_checkpoint(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="no config.json"):
        upcycle_checkpoint(tmp_path / "nothing", tmp_path / "out")


def test_config_only():
    cfg = upcycle_config(tiny_dense("qwen2").config, num_experts=6, num_experts_per_tok=3)
    assert (
        cfg.model_type == "qwen2_moe" and cfg.qkv_bias and cfg.num_experts == 6 and cfg.mlp_only_layers == []
    )
