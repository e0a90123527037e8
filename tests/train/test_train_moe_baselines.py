"""The paper's MoE baselines as neko trains them: LoRA on the plain-routing MoE with adapters on the
attention, FFN and expert weights; and stock MoE bases trained and served with their own top-K and
routing weights (Qwen1.5-MoE: top-4, un-normalised softmax)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from neko.train.config import ConfigError, config_from_dict
from neko.train.loop import train

LORA = {
    "r": 4,
    "alpha": 8,
    "dropout": 0.0,
    "base_mode": "moe",
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "target_parameters": ["experts.gate_up_proj", "experts.down_proj"],
    "modules_to_save": ["mlp.gate"],
}


def _cfg(out, train_file, **kw):
    d = {
        "mode": "lora",
        "model": {"base": "tiny:llama"},
        "upcycle": {"num_experts": 4, "moe_layers": "1"},
        "lora": dict(LORA),
        "data": {"train": [{"path": str(train_file)}], "max_seq_len": 256},
        "batch": {"micro_batch_size": 2},
        "optim": {"lr": 1e-2, "warmup_ratio": 0.0},
        "max_steps": 3,
        "log": {"progress": False},
        "output_dir": str(out),
    }
    for k, v in kw.items():
        if isinstance(v, dict):
            d.setdefault(k, {}).update(v)
        else:
            d[k] = v
    return config_from_dict(d)


def test_lora_on_the_plain_moe_adapts_attention_ffn_experts_and_router(tmp_path, train_file):
    from transformers import AutoModelForCausalLM

    from neko.model.tiny import tiny_llama
    from neko.model.upcycle import upcycle_model

    out = tmp_path / "lora"
    train(_cfg(out, train_file))
    merged = AutoModelForCausalLM.from_pretrained(out)
    start = upcycle_model(tiny_llama(seed=0), num_experts=4, moe_layers="1", seed=0)
    now, before = merged.state_dict(), start.state_dict()

    def changed(key: str) -> bool:
        return not torch.equal(now[key], before[key])

    # plain routing underneath: no task map, and the up-cycled Qwen2-MoE layout (layer 0 dense)
    assert not getattr(merged.config, "neko_task_to_expert", None)
    assert changed("model.layers.0.self_attn.q_proj.weight") and changed(
        "model.layers.1.self_attn.o_proj.weight"
    )
    assert changed("model.layers.0.mlp.down_proj.weight")  # the dense layer's FFN
    assert changed("model.layers.1.mlp.gate.weight")  # the router trains in full (it starts random)
    for name in ("gate_up_proj", "down_proj"):
        w = now[f"model.layers.1.mlp.experts.{name}"]
        assert changed(f"model.layers.1.mlp.experts.{name}")
        # one adapter per expert: the up-cycled copies have become different experts
        assert all(not torch.equal(w[a], w[b]) for a in range(4) for b in range(a + 1, 4))
    assert not changed("model.embed_tokens.weight") and not changed("model.norm.weight")  # frozen
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert sorted(adapter["target_parameters"]) == ["experts.down_proj", "experts.gate_up_proj"]
    assert adapter["modules_to_save"] == ["mlp.gate"]
    # the zero-width shared expert got no adapter
    assert all("shared_expert" in m for m in adapter["exclude_modules"])


def test_parameter_adapters_need_zero_dropout(tmp_path, train_file):
    with pytest.raises(ConfigError, match="lora.dropout: must be 0 with lora.target_parameters"):
        _cfg(tmp_path, train_file, lora={"dropout": 0.05})
    with pytest.raises(ConfigError, match="routing.top_k: must be >= 1"):
        _cfg(tmp_path, train_file, mode="neko", routing={"top_k": 0})


def _qwen15_like(path, **over):
    """A tiny random Qwen2-MoE routed like Qwen1.5-MoE-A2.7B: top-4 of 8, un-normalised softmax
    weights, a shared expert; saved with the tiny tokenizer."""
    from transformers import AutoModelForCausalLM, Qwen2MoeConfig

    from neko.model.tiny import tiny_tokenizer

    kw = dict(
        vocab_size=512,
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=16,
        shared_expert_intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_experts=8,
        num_experts_per_tok=4,
        norm_topk_prob=False,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=2,
        pad_token_id=3,
    )
    kw.update(over)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(Qwen2MoeConfig(**kw)).save_pretrained(path)
    tiny_tokenizer(save_dir=path)
    return path


@pytest.mark.parametrize(
    "routing,k,weighting",
    [({}, 4, "full_softmax"), ({"top_k": 2, "weighting": "pair_softmax"}, 2, "pair_softmax")],
    ids=["model-own", "overridden"],
)
def test_stock_moe_trains_with_its_own_top_k_and_weights_unless_overridden(
    tmp_path, train_file, routing, k, weighting
):
    from neko.model.routing import _state
    from neko.train.modeling import build_model

    base = _qwen15_like(tmp_path / "qwen15")
    cfg = _cfg(
        tmp_path / "run", train_file, mode="neko", model={"base": str(base)}, routing=routing, max_steps=2
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, tasks = build_model(cfg, str(base), ["asr", "ocr"])
    # its own weights: no warning; the override is what the user asked for, and is told it differs
    differ = [w for w in caught if "training and inference weights will differ" in str(w.message)]
    assert len(differ) == (1 if routing else 0)
    state = _state(model)
    assert (state.top_k, state.weighting) == (k, weighting) and tasks == ["asr", "ocr"]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "weighting=")  # the override's warning, checked above
        train(cfg)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["num_experts_per_tok"] == k and saved["neko_routing_weighting"] == weighting
    assert saved["norm_topk_prob"] is False


def test_inference_keeps_the_models_own_top_k_unless_told(tmp_path):
    from neko.infer.correct import Corrector
    from neko.infer.options import CorrectionOptions
    from neko.model.routing import find_routers

    base = _qwen15_like(tmp_path / "qwen15")
    own = Corrector.from_pretrained(base, CorrectionOptions(max_new_tokens=2, device="cpu"))
    assert {r.top_k for _, r in find_routers(own.model)} == {4}
    forced = Corrector.from_pretrained(
        base, CorrectionOptions(top_k_experts=2, max_new_tokens=2, device="cpu")
    )
    assert {r.top_k for _, r in find_routers(forced.model)} == {2}
    out = own.correct(["the cat sat on the mat", "the cat sat on a mat"], task="asr")
    assert out.ok
