"""Task-guided routing against a slow per-token reference of the paper's Eq. 3, on tiny real HF MoE models."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch

from neko.model.routing import (
    NO_EXPERT,
    disable_task_guided_routing,
    enable_task_guided_routing,
    find_routers,
    task_guided_topk,
    task_index,
    task_routing,
    without_expert,
)
from neko.model.routing_reference import moe_block_eq3
from neko.model.tiny import tiny_llama, tiny_mixtral

TASKS = ["asr", "mt", "ocr"]


def tiny_qwen2_moe(seed: int = 0, **overrides):
    from transformers import AutoModelForCausalLM, Qwen2MoeConfig

    kw = dict(
        vocab_size=512,
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=48,
        shared_expert_intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_experts=6,
        num_experts_per_tok=2,
        mlp_only_layers=[0],  # a dense layer, as up-cycling only some layers produces
        norm_topk_prob=False,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=2,
        pad_token_id=3,
    )
    kw.update(overrides)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(Qwen2MoeConfig(**kw))


def _forced(task_ids: torch.Tensor, mapping: dict[str, int]) -> list[int]:
    experts = list(mapping.values())
    return [experts[t] if t >= 0 else -1 for t in task_ids.reshape(-1).tolist()]


# a packed batch: row 0 mixes three tasks and padding, row 1 is one task then padding
TASK_IDS = torch.tensor([[0, 0, 0, 1, 1, 2, 2, -1], [2, 2, 2, 2, 2, 2, -1, -1]])


@pytest.mark.parametrize(
    "family,top_k,weighting",
    [
        ("mixtral", 2, "pair_softmax"),
        ("mixtral", 3, "pair_softmax"),
        ("mixtral", 2, "full_softmax"),
        ("mixtral_e3", 3, "pair_softmax"),  # as many tasks as experts, K = E
        ("qwen2_moe", 2, "full_softmax"),
        ("qwen2_moe", 3, "pair_softmax"),
    ],
)
def test_block_matches_slow_eq3_reference_and_gradients(family, top_k, weighting):
    if family.startswith("mixtral"):
        model = tiny_mixtral(num_experts_per_tok=top_k, num_local_experts=3 if family == "mixtral_e3" else 8)
        block = model.model.layers[1].mlp
        renorm = True
    else:
        model = tiny_qwen2_moe(num_experts_per_tok=top_k)
        block = model.model.layers[1].mlp
        renorm = False
    with pytest.warns(UserWarning) if (weighting == "pair_softmax") != renorm else contextlib.nullcontext():
        mapping = enable_task_guided_routing(model, tasks=TASKS, seed=3, weighting=weighting)
    torch.manual_seed(1)
    hidden = torch.randn(2, 8, model.config.hidden_size)
    forced = _forced(TASK_IDS, mapping)

    with task_routing(model, TASK_IDS):
        out = block(hidden)
    ref, chosen = moe_block_eq3(block, hidden, forced, top_k, weighting, renorm)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)

    # gradients reach the router and equal the reference's
    g = torch.randn_like(out)
    with task_routing(model, TASK_IDS):
        (block(hidden) * g).sum().backward()
    got = block.gate.weight.grad.clone()
    block.gate.weight.grad = None
    (moe_block_eq3(block, hidden, forced, top_k, weighting, renorm)[0] * g).sum().backward()
    assert got.abs().sum() > 0
    torch.testing.assert_close(got, block.gate.weight.grad, rtol=1e-4, atol=1e-6)

    for f, sel in zip(forced, chosen, strict=True):
        assert len(set(sel)) == top_k
        if f >= 0:
            assert sel[0] == f


def _capture_selection(model):
    """Record what each router hands the experts (after neko's hook)."""
    seen = []
    handles = [r.register_forward_hook(lambda m, a, o: seen.append(o)) for _, r in find_routers(model)]
    return seen, handles


def test_full_model_selection_forced_first_never_duplicated_and_plain_for_minus_one():
    model = tiny_mixtral(num_local_experts=8)
    mapping = enable_task_guided_routing(model, tasks=TASKS)
    assert mapping == {"asr": 0, "mt": 1, "ocr": 2}
    seen, handles = _capture_selection(model)
    ids = torch.randint(5, 500, TASK_IDS.shape)
    with task_routing(model, TASK_IDS) as ctx:
        model(input_ids=ids)
    for h in handles:
        h.remove()
    forced = torch.tensor(_forced(TASK_IDS, mapping))
    assert torch.equal(ctx.forced_experts, forced)
    assert len(seen) == model.config.num_hidden_layers == len(ctx.router_logits)
    for logits, weights, idx in seen:
        assert idx.shape == (16, 2)
        task_tok = forced >= 0
        assert torch.equal(idx[task_tok, 0], forced[task_tok])
        assert (idx[:, 0] != idx[:, 1]).all()
        masked = logits.float().clone()
        masked[task_tok, forced[task_tok]] = float("-inf")
        assert torch.equal(idx[task_tok, 1], masked[task_tok].argmax(-1))
        plain = torch.topk(torch.softmax(logits.float(), -1), 2).indices
        assert torch.equal(idx[~task_tok], plain[~task_tok])
        torch.testing.assert_close(weights.sum(-1), torch.ones(16))


def test_outside_context_is_plain_topk_and_hooks_are_inert():
    model = tiny_mixtral()
    ids = torch.randint(5, 500, (2, 8))
    before = model(input_ids=ids).logits
    enable_task_guided_routing(model, tasks=TASKS)
    assert torch.equal(model(input_ids=ids).logits, before)
    with task_routing(model, TASK_IDS):
        during = model(input_ids=ids).logits
    assert not torch.allclose(during, before)
    assert torch.equal(model(input_ids=ids).logits, before)
    with task_routing(model, torch.full_like(TASK_IDS, -1)):
        assert torch.equal(model(input_ids=ids).logits, before)
    disable_task_guided_routing(model)
    with pytest.raises(ValueError, match="not enabled"):
        with task_routing(model, TASK_IDS):
            pass


@pytest.mark.parametrize("backend", ["eager", "batched_mm"])
def test_expert_backends_agree_with_grouped_mm(backend):
    model = tiny_mixtral(num_experts_per_tok=3)
    enable_task_guided_routing(model, tasks=TASKS, seed=0)
    ids = torch.randint(5, 500, TASK_IDS.shape)
    results = {}
    for impl in ("grouped_mm", backend):
        model.set_experts_implementation(impl)
        assert model.model.layers[0].mlp.experts.config._experts_implementation == impl
        model.zero_grad()
        with task_routing(model, TASK_IDS):
            out = model(input_ids=ids, labels=ids)
            out.loss.backward()
        results[impl] = (out.logits.detach(), model.model.layers[0].mlp.gate.weight.grad.clone())
    torch.testing.assert_close(results[backend][0], results["grouped_mm"][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results[backend][1], results["grouped_mm"][1], rtol=1e-4, atol=1e-6)


def test_gradcheck_router_on_double_layer():
    model = tiny_mixtral(hidden_size=8, intermediate_size=8, num_local_experts=4).double()
    model.set_experts_implementation("eager")
    enable_task_guided_routing(model, tasks=["a", "b"])
    block = model.model.layers[0].mlp
    torch.manual_seed(0)
    hidden = torch.randn(1, 4, 8, dtype=torch.double)
    task_ids = torch.tensor([[0, 1, -1, 1]])
    weight = block.gate.weight.detach().clone().requires_grad_(True)

    def f(w):
        return torch.func.functional_call(block, {"gate.weight": w}, (hidden,))

    with task_routing(model, task_ids):
        assert torch.autograd.gradcheck(f, (weight,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_inside_context_matches(reentrant):
    model = tiny_mixtral()
    enable_task_guided_routing(model, tasks=TASKS)
    model.train()
    ids = torch.randint(5, 500, TASK_IDS.shape)
    grads = []
    for ckpt in (False, True):
        if ckpt:
            model.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": reentrant}
            )
        model.zero_grad()
        with task_routing(model, TASK_IDS) as ctx:
            model(input_ids=ids, labels=ids).loss.backward()
        assert len(ctx.router_logits) == model.config.num_hidden_layers
        grads.append(model.model.layers[1].mlp.gate.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_saved_model_loads_with_plain_transformers_and_gives_identical_logits(tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_qwen2_moe(norm_topk_prob=True)
    tasks = ["ocr", "asr", "mt"]  # not sorted: config.json sorts keys, the id order must survive
    mapping = enable_task_guided_routing(model, tasks=tasks, seed=7)
    # a little task-guided training so the saved weights are not the init
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ids = torch.randint(5, 500, TASK_IDS.shape)
    with task_routing(model, TASK_IDS):
        model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["neko_task_to_expert"] == mapping
    assert saved["neko_task_order"] == tasks
    assert saved["neko_routing_weighting"] == "pair_softmax"

    plain = AutoModelForCausalLM.from_pretrained(tmp_path)
    model.eval()
    attn = torch.ones_like(ids)
    attn[1, -2:] = 0
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=attn).logits
        theirs = plain(input_ids=ids, attention_mask=attn).logits
    assert torch.equal(ours, theirs)
    # neko re-enables routing from the saved map, with the same task ids
    assert task_index(plain) == {"ocr": 0, "asr": 1, "mt": 2}
    again = enable_task_guided_routing(plain)
    assert again == mapping and list(again) == tasks and list(plain.config.neko_task_to_expert) == tasks


def test_default_and_seeded_maps():
    model = tiny_mixtral(num_local_experts=8)
    a = enable_task_guided_routing(model, tasks=["t1", "t2", "t3", "t4", "t5"], seed=0)
    b = enable_task_guided_routing(model, tasks=["t1", "t2", "t3", "t4", "t5"], seed=0)
    c = enable_task_guided_routing(model, tasks=["t1", "t2", "t3", "t4", "t5"], seed=1)
    assert a == b != c
    assert len(set(a.values())) == 5 and all(0 <= e < 8 for e in a.values())
    explicit = enable_task_guided_routing(model, task_to_expert={"x": 7, "y": 2})
    assert explicit == {"x": 7, "y": 2} and model.config.neko_task_to_expert == explicit
    assert task_index(model) == {"x": 0, "y": 1}


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(tasks=[f"t{i}" for i in range(9)]), "only 8 experts"),
        (dict(task_to_expert={"a": 8}), r"in \[0, 8\)"),
        (dict(task_to_expert={"a": -1}), r"in \[0, 8\)"),
        (dict(task_to_expert={"a": 1, "b": 1}), "one-to-one"),
        (dict(tasks=["a", "a"]), "more than once"),
        (dict(tasks=["a"], task_to_expert={"a": 0}), "not both"),
        (dict(), "no task map"),
        (dict(tasks=["a"], weighting="sparsemax"), "weighting"),
        (dict(task_to_expert={"a": 0}, seed=1), "seed"),
    ],
)
def test_bad_maps_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        enable_task_guided_routing(tiny_mixtral(), **kwargs)


def test_unsupported_family_and_all_dense_are_clear_errors():
    with pytest.raises(ValueError, match="supported MoE families: mixtral, olmoe, qwen2_moe, qwen3_moe"):
        enable_task_guided_routing(tiny_llama(), tasks=["a"])
    with pytest.raises(ValueError, match="every layer is dense"):
        enable_task_guided_routing(tiny_qwen2_moe(mlp_only_layers=[0, 1, 2]), tasks=["a"])
    # where no router is no error (inference's top-K override, expert counts): none found
    assert find_routers(tiny_llama(), required=False) == []
    assert find_routers(tiny_qwen2_moe(mlp_only_layers=[0, 1, 2]), required=False) == []


def test_task_ids_routed_tasks_first_then_the_others_which_route_plain():
    model = tiny_mixtral()
    enable_task_guided_routing(model, tasks=["mt", "asr"])
    index = task_index(model, ["ocr", "asr", "tec"])
    assert (
        index == task_index(["mt", "asr"], ["ocr", "asr", "tec"]) == {"mt": 0, "asr": 1, "ocr": 2, "tec": 3}
    )
    ids = torch.tensor([[0, 1, 2, 3, NO_EXPERT]])
    assert without_expert(ids, 2).tolist() == [[0, 1, NO_EXPERT, NO_EXPERT, NO_EXPERT]]
    assert ids.tolist() == [[0, 1, 2, 3, -1]]  # a copy: the batch keeps its ids for the statistics


def test_bad_task_ids_are_clear_errors():
    model = tiny_mixtral()
    enable_task_guided_routing(model, tasks=TASKS)
    ids = torch.randint(5, 500, (2, 8))
    with pytest.raises(ValueError, match="task id 3 outside the task map"):
        with task_routing(model, torch.full((2, 8), 3)):
            pass
    with pytest.raises(ValueError, match="task id -2"):
        with task_routing(model, torch.full((2, 8), -2)):
            pass
    with pytest.raises(ValueError, match="shape"):
        with task_routing(model, torch.zeros(16, dtype=torch.long)):
            pass
    with pytest.raises(ValueError, match="integer"):
        with task_routing(model, torch.zeros(2, 8)):
            pass
    with pytest.raises(ValueError, match="cover 8 tokens but"):
        with task_routing(model, torch.zeros(1, 8, dtype=torch.long)):
            model(input_ids=ids)


def test_qwen3_moe_and_olmoe_route_by_task():
    from transformers import AutoModelForCausalLM, OlmoeConfig, Qwen3MoeConfig

    common = dict(
        vocab_size=512,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_experts=4,
        num_experts_per_tok=2,
        pad_token_id=3,
    )
    for cfg in (Qwen3MoeConfig(moe_intermediate_size=32, **common), OlmoeConfig(**common)):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg)
        enable_task_guided_routing(model, tasks=["a", "b"], weighting="full_softmax")
        seen, handles = _capture_selection(model)
        task_ids = torch.tensor([[0, 1, -1, 1]])
        with task_routing(model, task_ids):
            model(input_ids=torch.tensor([[5, 6, 7, 8]]))
        for h in handles:
            h.remove()
        assert len(seen) == 2
        for _, _, idx in seen:
            assert idx[0, 0] == 0 and idx[1, 0] == 1 and idx[3, 0] == 1


def test_task_guided_topk_k1_and_bad_weighting():
    logits = torch.tensor([[3.0, 1.0, 2.0]])
    w, idx = task_guided_topk(logits, torch.tensor([1]), 1)
    assert idx.tolist() == [[1]] and w.tolist() == [[1.0]]
    with pytest.raises(ValueError, match="weighting"):
        task_guided_topk(logits, torch.tensor([1]), 2, "nope")
