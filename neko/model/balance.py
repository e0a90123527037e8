"""Auxiliary load-balancing loss for task-guided MoE training: off, standard (Switch/Mixtral), or free.

Design choices:
- **Where the router logits come from.** Training code reads them from the handle of
  :func:`neko.model.routing.task_routing` (``ctx.router_logits``: one (B*T, E) tensor per sparse
  layer, recorded by the routing hooks), and does *not* pass ``output_router_logits=True``: with
  that flag and ``labels``, transformers adds its own aux loss times ``config.router_aux_loss_coef``
  into ``outputs.loss``, which would double count and hide the coefficient. So::

      with task_routing(model, task_ids) as ctx:
          out = model(input_ids=..., attention_mask=..., labels=...)
          aux = load_balancing_loss(ctx.router_logits, token_mask, top_k, mode="free",
                                    task_ids=task_ids, expert_of_task=ctx.expert_of_task)
          (out.loss + cfg.coef * aux).backward()

  (``ctx.balance_loss(token_mask, mode)`` is the same call.) Log ``mode``, ``coef`` and ``aux``.
- **"standard"** is exactly transformers' Switch/Mixtral loss (``load_balancing_loss_func``):
  counts from the plain top-K of the logits, mean router probabilities, summed over layers then
  ``E * sum_e f_e * P_e``; perfectly balanced = K. Under task-guided routing it also pushes
  against the deliberate concentration of each task on f(T).
- **"free"** balances only the choice the router is free to make: for a token of task T the forced
  expert f(T) is removed (its logit masked before the softmax and the top-(K-1)), so neither the
  counts nor the probabilities see it; tokens with task id -1 use all K choices as in "standard".
  Perfectly balanced = K-1 for task tokens. With no task ids it equals "standard".
- **Padding never counts:** tokens where ``token_mask`` is 0 are dropped from counts,
  probabilities and the normaliser. ``token_mask=None`` means every token counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

__all__ = ["BALANCE_MODES", "load_balancing_loss"]

BalanceMode = Literal["off", "standard", "free"]
BALANCE_MODES = ("off", "standard", "free")


def load_balancing_loss(
    router_logits_per_layer: Sequence[torch.Tensor],
    token_mask: torch.Tensor | None = None,
    top_k: int = 2,
    mode: BalanceMode = "standard",
    task_ids: torch.Tensor | None = None,
    expert_of_task: Sequence[int] | None = None,
) -> torch.Tensor:
    """Scalar aux loss over all sparse layers.

    router_logits_per_layer: (B*T, E) per layer. token_mask: (B, T) 1 = real token (attention mask
    or label mask). task_ids: (B, T), -1 = plain, needed for ``mode="free"`` together with
    expert_of_task (expert of task id i; ``ctx.expert_of_task`` from task_routing).
    """
    if mode not in BALANCE_MODES:
        raise ValueError(f"load-balance mode must be one of {BALANCE_MODES}, got {mode!r}")
    layers = list(router_logits_per_layer or ())
    if mode == "off":
        device = layers[0].device if layers else None
        return torch.zeros((), device=device)
    if not layers:
        raise ValueError(
            "no router logits: compute the loss inside task_routing(...) from ctx.router_logits "
            "(a forward must have run)"
        )
    n, num_experts = layers[0].shape
    device = layers[0].device
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k must be in [1, {num_experts}], got {top_k}")
    mask = torch.ones(n, device=device) if token_mask is None else token_mask.reshape(-1).to(device).float()
    if mask.shape[0] != n:
        raise ValueError(f"token_mask has {mask.shape[0]} tokens but the router logits have {n}")

    forced = None
    if mode == "free" and task_ids is not None:
        if expert_of_task is None:
            raise ValueError("mode='free' with task_ids needs expert_of_task (ctx.expert_of_task)")
        ids = torch.as_tensor(task_ids).reshape(-1).to(device).long()
        if ids.shape[0] != n:
            raise ValueError(f"task_ids has {ids.shape[0]} tokens but the router logits have {n}")
        table = torch.as_tensor(list(expert_of_task), dtype=torch.long, device=device)
        if ids.numel() and (int(ids.min()) < -1 or int(ids.max()) >= len(table)):
            raise ValueError(f"task ids must be -1 or in [0, {len(table)})")
        forced = torch.where(ids >= 0, table[ids.clamp(min=0)], torch.full_like(ids, -1))  # (N,)
        if top_k == 1:  # no free choice left for task tokens
            mask = mask * (forced < 0).float()

    counts = torch.zeros(num_experts, device=device)
    prob_sum = torch.zeros(num_experts, device=device)
    total = torch.zeros((), device=device)
    for logits in layers:
        logits = logits.to(device).float()  # (N, E)
        if logits.shape != (n, num_experts):
            raise ValueError(
                f"router logits of every layer must be ({n}, {num_experts}), got {tuple(logits.shape)}"
            )
        if forced is None:
            probs = torch.softmax(logits, dim=-1)
            sel = torch.topk(probs, top_k, dim=-1).indices  # (N, K)
            sel_w = mask.unsqueeze(-1).expand_as(sel)
        else:
            has = forced >= 0
            masked = torch.where(
                has.unsqueeze(-1) & (torch.arange(num_experts, device=device) == forced.unsqueeze(-1)),
                torch.full_like(logits, float("-inf")),
                logits,
            )
            probs = torch.softmax(masked, dim=-1)
            sel = torch.topk(probs, top_k, dim=-1).indices  # (N, K); last column unused for task tokens
            keep = torch.ones_like(sel, dtype=torch.float)
            keep[:, -1] = torch.where(has, 0.0, 1.0)
            sel_w = keep * mask.unsqueeze(-1)
        counts = counts.scatter_add(0, sel.reshape(-1), sel_w.reshape(-1))
        prob_sum = prob_sum + (probs * mask.unsqueeze(-1)).sum(0)
        total = total + mask.sum()
    total = total.clamp(min=1.0)
    return num_experts * torch.sum((counts / total) * (prob_sum / total))
