"""Load-balancing aux loss: standard == transformers' Switch loss, free ignores the forced expert, padding never counts."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

from neko.model.balance import load_balancing_loss
from neko.model.routing import enable_task_guided_routing, task_routing
from neko.model.tiny import tiny_mixtral

B, T, E = 2, 6, 5


def _layers(seed=0, n_layers=3):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B * T, E, generator=g) for _ in range(n_layers))


MASK = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
TASKS = torch.tensor([[0, 0, 1, 1, -1, 2], [2, 2, 0, -1, -1, -1]])
EXPERT_OF_TASK = [3, 0, 4]


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_standard_equals_transformers_switch_loss(top_k):
    layers = _layers()
    ours = load_balancing_loss(layers, MASK, top_k, mode="standard")
    theirs = load_balancing_loss_func(layers, E, top_k, MASK)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(
        load_balancing_loss(layers, None, top_k), load_balancing_loss_func(layers, E, top_k)
    )


def test_free_without_task_ids_equals_standard():
    layers = _layers(1)
    torch.testing.assert_close(
        load_balancing_loss(layers, MASK, 2, mode="free"),
        load_balancing_loss(layers, MASK, 2, mode="standard"),
    )


def _slow_free(layers, mask, top_k, task_ids, expert_of_task):
    counts, probs, total = [0.0] * E, [0.0] * E, 0.0
    flat_mask, flat_tasks = mask.reshape(-1).tolist(), task_ids.reshape(-1).tolist()
    for logits in layers:
        for n, row in enumerate(logits.tolist()):
            if not flat_mask[n]:
                continue
            f = expert_of_task[flat_tasks[n]] if flat_tasks[n] >= 0 else None
            free = [e for e in range(E) if e != f]
            z = sum(math.exp(row[e]) for e in free)
            p = {e: math.exp(row[e]) / z for e in free}
            k = top_k - 1 if f is not None else top_k
            for e in sorted(free, key=lambda e: -p[e])[:k]:
                counts[e] += 1
            for e in free:
                probs[e] += p[e]
            total += 1
    return E * sum((c / total) * (q / total) for c, q in zip(counts, probs, strict=True))


@pytest.mark.parametrize("top_k", [2, 3])
def test_free_matches_slow_reference(top_k):
    layers = _layers(2)
    got = load_balancing_loss(layers, MASK, top_k, mode="free", task_ids=TASKS, expert_of_task=EXPERT_OF_TASK)
    assert got.item() == pytest.approx(_slow_free(layers, MASK, top_k, TASKS, EXPERT_OF_TASK), rel=1e-5)


def test_padding_never_counts_and_forced_logit_gets_no_gradient():
    layers = [x.clone().requires_grad_(True) for x in _layers(3)]
    kw = dict(task_ids=TASKS, expert_of_task=EXPERT_OF_TASK)
    for mode in ("standard", "free"):
        base = load_balancing_loss(layers, MASK, 2, mode=mode, **kw)
        poked = [x.detach().clone() for x in layers]
        for x in poked:
            x[MASK.reshape(-1) == 0] = torch.randn(2, E) * 10  # garbage at padded positions
        assert load_balancing_loss(poked, MASK, 2, mode=mode, **kw).item() == pytest.approx(base.item())
    loss = load_balancing_loss(layers, MASK, 2, mode="free", **kw)
    loss.backward()
    grad = layers[0].grad
    flat_tasks = TASKS.reshape(-1)
    for n, t in enumerate(flat_tasks.tolist()):
        if t >= 0:
            assert grad[n, EXPERT_OF_TASK[t]] == 0
    assert grad.abs().sum() > 0
    assert (grad[MASK.reshape(-1) == 0] == 0).all()


def test_off_and_errors():
    layers = _layers()
    assert load_balancing_loss(layers, MASK, 2, mode="off").item() == 0.0
    with pytest.raises(ValueError, match="mode"):
        load_balancing_loss(layers, MASK, 2, mode="switch")
    with pytest.raises(ValueError, match="expert_of_task"):
        load_balancing_loss(layers, MASK, 2, mode="free", task_ids=TASKS)
    with pytest.raises(ValueError, match="token_mask has 3"):
        load_balancing_loss(layers, torch.ones(3), 2)
    with pytest.raises(ValueError, match="no router logits"):
        load_balancing_loss([], MASK, 2)


def test_loss_from_task_routing_context_reaches_router():
    model = tiny_mixtral()
    enable_task_guided_routing(model, tasks=["a", "b", "c"])
    ids = torch.randint(5, 500, (B, T))
    with task_routing(model, TASKS) as ctx:
        out = model(input_ids=ids, attention_mask=MASK)
        aux = ctx.balance_loss(MASK, mode="free")
        aux.backward()
    assert len(ctx.router_logits) == 2
    assert out.aux_loss is None  # transformers added nothing of its own
    assert model.model.layers[0].mlp.gate.weight.grad.abs().sum() > 0
    expected = load_balancing_loss(
        [x.detach() for x in ctx.router_logits], MASK, 2, "free", TASKS, ctx.expert_of_task
    )
    assert aux.item() == pytest.approx(expected.item())
