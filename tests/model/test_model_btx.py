"""Branch-Train-MiX: experts are the inputs' FFNs, everything else their mean, router fresh."""

from __future__ import annotations

import json

import pytest
import torch

from neko.model.btx import btx_merge
from neko.model.tiny import tiny_dense, tiny_tokenizer
from neko.model.upcycle import upcycle_model


def test_identical_inputs_equal_upcycling():
    dense = tiny_dense("llama")
    merged = btx_merge([dense, dense, dense], num_experts_per_tok=2, seed=4)
    up = upcycle_model(dense, num_experts=3, num_experts_per_tok=2, seed=4)
    a, b = merged.state_dict(), up.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0, msg=k)


def test_gemma_branches_merge_in_the_folded_convention():
    """Identical Gemma branches merge into the dense function (norms, embedding scale and the untied
    head averaged after folding, so the mean is taken in the convention the MoE computes in)."""
    dense = tiny_dense("gemma").eval()
    moe = btx_merge([dense, dense], seed=1).eval()
    ids = torch.randint(4, 500, (2, 13), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(
            moe(input_ids=ids).logits, dense(input_ids=ids).logits, atol=2e-5, rtol=1e-4
        )


@pytest.mark.parametrize("family,layers", [("llama", None), ("qwen2", None), ("llama", "1")])
def test_experts_are_inputs_and_rest_is_mean(family, layers):
    models = [tiny_dense(family, seed=s) for s in (1, 2, 3)]
    moe = btx_merge(models, moe_layers=layers, seed=0)
    sparse = [1] if layers == "1" else [0, 1]
    for i in sparse:
        ex = moe.model.layers[i].mlp.experts
        for e, m in enumerate(models):
            mlp = m.model.layers[i].mlp
            torch.testing.assert_close(
                ex.gate_up_proj[e], torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])
            )
            torch.testing.assert_close(ex.down_proj[e], mlp.down_proj.weight)
    names = ["model.layers.0.self_attn.q_proj.weight", "model.embed_tokens.weight", "model.norm.weight"]
    if family == "qwen2":
        names.append("model.layers.1.self_attn.k_proj.bias")
    if layers == "1":
        names.append("model.layers.0.mlp.down_proj.weight")  # a dense layer's FFN is averaged too
    sd, srcs = moe.state_dict(), [m.state_dict() for m in models]
    for n in names:
        torch.testing.assert_close(sd[n], torch.stack([s[n] for s in srcs]).mean(0), msg=n)
    assert moe.lm_head.weight.data_ptr() == moe.model.embed_tokens.weight.data_ptr()
    assert moe.config.num_experts_per_tok == 2 and len(moe.config.neko_btx["experts"]) == 3


def test_btx_from_directories_saves_plain_checkpoint(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dirs = []
    for s in (1, 2):
        d = tmp_path / f"branch{s}"
        tiny_dense("llama", seed=s).save_pretrained(d)
        tiny_tokenizer(save_dir=d)
        dirs.append(d)
    (dirs[0] / "neko_prompts.json").write_text("{}\n")
    moe = btx_merge(dirs, tmp_path / "btx", num_experts_per_tok=1, router_init="orthogonal")
    out = tmp_path / "btx"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["branch1", "branch2", "btx"]
    assert (out / "neko_prompts.json").is_file() and AutoTokenizer.from_pretrained(out).chat_template
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["neko_btx"]["experts"] == [str(d) for d in dirs] and cfg["num_local_experts"] == 2
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(4, 512, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, moe(ids).logits)
    with pytest.raises(ValueError, match="not empty"):
        btx_merge(dirs, out)


def test_btx_errors(tmp_path):
    a = tiny_dense("llama")
    with pytest.raises(ValueError, match="intermediate_size=128 but .* intermediate_size=96"):
        btx_merge([a, tiny_dense("llama", intermediate_size=96)])
    with pytest.raises(ValueError, match="model_type='llama' but .* model_type='mistral'"):
        btx_merge([a, tiny_dense("mistral")])
    with pytest.raises(ValueError, match="only 2 inputs"):
        btx_merge([a, a], num_experts_per_tok=3)
    with pytest.raises(ValueError, match="at least one"):
        btx_merge([])
    with pytest.raises(ValueError, match="no config.json"):
        btx_merge([tmp_path / "nope", tmp_path / "nope2"])


def test_more_experts_than_branches_are_filled_with_the_seed():
    """5 task branches + 3 seed experts = the 8 experts of the MoE it is compared with: branch FFNs
    first, then copies of the seed's FFN; the shared tensors stay the mean of the branches only."""
    seed = tiny_dense("llama", seed=0)
    branches = [tiny_dense("llama", seed=s) for s in (1, 2)]
    moe = btx_merge(branches, num_experts=4, seed_model=seed, seed=0)
    ex = moe.model.layers[0].mlp.experts
    for e, m in enumerate([*branches, seed, seed]):
        mlp = m.model.layers[0].mlp
        torch.testing.assert_close(ex.gate_up_proj[e], torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]))
        torch.testing.assert_close(ex.down_proj[e], mlp.down_proj.weight)
    q = "model.layers.1.self_attn.q_proj.weight"
    mean = (branches[0].state_dict()[q] + branches[1].state_dict()[q]) / 2
    torch.testing.assert_close(moe.state_dict()[q], mean)
    assert moe.config.num_local_experts == 4 and moe.config.neko_btx["experts"][2:] == ["seed: model #2"] * 2
    with pytest.raises(ValueError, match="pass seed_model"):
        btx_merge(branches, num_experts=4)
    with pytest.raises(ValueError, match="each branch is one expert"):
        btx_merge(branches, num_experts=1, seed_model=seed)
    with pytest.raises(ValueError, match="BTX inputs differ"):
        btx_merge(branches, num_experts=3, seed_model=tiny_dense("llama", intermediate_size=96))
