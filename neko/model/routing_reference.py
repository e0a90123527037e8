"""The paper's Eq. 3, one token at a time: the slow, readable statement of task-guided routing.

:func:`neko.model.routing.task_guided_topk` and the router hook compute the same thing for a whole
batch; tests/model/test_model_routing.py checks that a sparse block under :func:`task_routing`
equals :func:`moe_block_eq3` in outputs and router gradients. Read this first (docs/method.md).

For a token with hidden state h, router logits z = W_r h over E experts, and task T with expert f(T):

    chosen = [f(T)] + the top-(K-1) experts by z among the others      (f(T) is never picked twice)
    w      = softmax(z[chosen])                       ("pair_softmax": Mixtral renormalises top-K)
           | softmax(z)[chosen]                       ("full_softmax": Qwen2-MoE, norm_topk_prob=False)
    y      = sum_i w_i * expert_{chosen_i}(h)         (+ Qwen2-MoE's gated shared expert)

A token without a task (id -1: padding, unknown task) gets plain top-K: the K most probable
experts, weights renormalised when the router renormalises.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["expert_ffn", "moe_block_eq3"]


def expert_ffn(experts: torch.nn.Module, e: int, h: torch.Tensor) -> torch.Tensor:
    """Expert ``e`` of a transformers 5 fused experts module: down(act(gate(h)) * up(h))."""
    gate, up = F.linear(h, experts.gate_up_proj[e]).chunk(2, dim=-1)
    return F.linear(experts.act_fn(gate) * up, experts.down_proj[e])


def moe_block_eq3(
    block: torch.nn.Module,
    hidden: torch.Tensor,
    forced: Sequence[int],
    top_k: int,
    weighting: str,
    renorm: bool,
) -> tuple[torch.Tensor, list[list[int]]]:
    """A sparse block's output under Eq. 3, token by token, and the experts each token chose.

    hidden: (B, T, H). forced: f(T) per token of ``hidden`` flattened row-major, -1 = plain top-K.
    weighting: "pair_softmax" or "full_softmax" (for forced tokens). renorm: whether plain top-K
    renormalises its weights (the router's ``norm_topk_prob``). Returns ((B, T, H), chosen experts).
    """
    flat = hidden.reshape(-1, hidden.shape[-1])  # (B*T, H)
    outs, chosen = [], []
    for n in range(flat.shape[0]):
        h = flat[n]
        logits = F.linear(h, block.gate.weight).float()  # (E,)
        probs = torch.softmax(logits, -1)
        f = forced[n]
        if f < 0:
            sel = sorted(range(len(logits)), key=lambda e: -probs[e].item())[:top_k]
            w = probs[sel]
            w = w / w.sum() if renorm else w
        else:
            others = sorted((e for e in range(len(logits)) if e != f), key=lambda e: -logits[e].item())
            sel = [f] + others[: top_k - 1]
            w = torch.softmax(logits[sel], -1) if weighting == "pair_softmax" else probs[sel]
        y = sum(w[i].to(h.dtype) * expert_ffn(block.experts, e, h) for i, e in enumerate(sel))
        if hasattr(block, "shared_expert"):
            y = y + torch.sigmoid(block.shared_expert_gate(h)) * block.shared_expert(h)
        outs.append(y)
        chosen.append(sel)
    return torch.stack(outs).reshape(hidden.shape), chosen
