"""Control and observation of MoE routers at run time (Mixtral and Qwen2-MoE in transformers 5).

In transformers 5 each sparse MoE block owns a router module (``MixtralTopKRouter`` /
``Qwen2MoeTopKRouter``, attribute ``gate``) whose ``top_k`` attribute is read at every forward and
whose forward returns ``(router_logits, router_scores, router_indices)``. So:
- setting top-K at inference = setting ``router.top_k`` on every router (plus the block's and the
  config's copy, so a saved/inspected model agrees);
- "which experts fired" = a forward hook on each router that keeps ``router_indices`` (B*T, K).
Routers are :func:`neko.model.routing.find_routers`'s (the supported families); a model without
them (dense) gets no top-K change and no expert counts.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from neko.model.routing import find_routers

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["set_router_top_k", "ExpertRecorder", "expert_usage_by_task"]


def set_router_top_k(model: PreTrainedModel, k: int) -> int:
    """Route every token to ``k`` experts in every MoE layer; returns the number of routers changed
    (0 for a model without supported routers)."""
    routers = find_routers(model, required=False)
    for name, r in routers:
        if k > r.num_experts:
            raise ValueError(
                f"top-K {k} exceeds the {r.num_experts} experts of router {name}; pick K <= {r.num_experts}"
            )
        r.top_k = k
    for mod in model.modules():
        # The sparse block keeps its own copy of top_k in some versions; keep it in sync.
        if hasattr(mod, "experts") and hasattr(mod, "top_k") and isinstance(mod.top_k, int):
            mod.top_k = k
    if routers and hasattr(model.config, "num_experts_per_tok"):
        model.config.num_experts_per_tok = k
    return len(routers)


class ExpertRecorder:
    """Collects router top-K indices during one ``generate`` call and turns them into per-item counts.

    ``generate`` runs one prefill forward over the (left-padded) prompts, shape (B, T0), then one
    forward per new token, shape (B, 1). Each router call therefore yields (B*T, K) indices that we
    reshape by the known batch size; padding positions and positions after an item's EOS are not counted.
    """

    def __init__(self, model: PreTrainedModel) -> None:
        self.routers = find_routers(model, required=False)
        self.calls: list[list[Any]] = [[] for _ in self.routers]

    @property
    def active(self) -> bool:
        return bool(self.routers)

    @contextmanager
    def record(self) -> Iterator[ExpertRecorder]:
        handles = []
        for i, (_, mod) in enumerate(self.routers):

            def hook(_mod, _args, output, i=i):
                if isinstance(output, tuple) and len(output) >= 3:
                    self.calls[i].append(output[2].detach().to("cpu"))

            handles.append(mod.register_forward_hook(hook))
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def counts(self, attention_mask: Any, gen_lengths: list[int]) -> list[dict[str, Any]] | None:
        """Per item: {"layers": names, "prompt": [[count per expert] per layer], "generated": [...]}.

        ``attention_mask``: (B, T0) prompt mask; ``gen_lengths``: real generated tokens per item.
        None when the recorded shapes do not match the prefill/decode pattern (e.g. beam search).
        """
        B, T0 = attention_mask.shape
        mask = attention_mask.to("cpu").bool()
        names = [n for n, _ in self.routers]
        per_item = [{"layers": names, "prompt": [], "generated": []} for _ in range(B)]
        for (_, mod), calls in zip(self.routers, self.calls, strict=True):
            E = mod.num_experts
            if not calls or calls[0].shape[0] != B * T0 or any(c.shape[0] != B for c in calls[1:]):
                return None
            prefill = calls[0].view(B, T0, -1)
            decode = torch.stack([c.view(B, -1) for c in calls[1:]], dim=1) if len(calls) > 1 else None
            for b in range(B):
                idx = prefill[b][mask[b]].reshape(-1)
                per_item[b]["prompt"].append(torch.bincount(idx, minlength=E)[:E].tolist())
                if decode is not None:
                    # Decode call s (0-based) feeds generated token s; only real tokens count.
                    steps = decode[b, : max(0, gen_lengths[b])].reshape(-1)
                    per_item[b]["generated"].append(torch.bincount(steps, minlength=E)[:E].tolist())
                else:
                    per_item[b]["generated"].append([0] * E)
        return per_item


def expert_usage_by_task(items: Any) -> dict[str, dict[str, Any]]:
    """Sum per-item expert counts by task: {task: {"layers", "prompt", "generated", "items"}}.

    ``items``: CorrectionResults or prediction rows (dicts) carrying ``details.experts``; items
    without expert details (errors, dense models, beam search) are skipped.
    """
    out: dict[str, dict[str, Any]] = {}
    for it in items:
        task = it.get("task") if isinstance(it, dict) else it.task
        details = it.get("details") if isinstance(it, dict) else it.details
        ex = (details or {}).get("experts")
        if not ex:
            continue
        agg = out.setdefault(
            task,
            {
                "layers": ex["layers"],
                "prompt": [[0] * len(r) for r in ex["prompt"]],
                "generated": [[0] * len(r) for r in ex["generated"]],
                "items": 0,
            },
        )
        agg["items"] += 1
        for key in ("prompt", "generated"):
            for acc, row in zip(agg[key], ex[key], strict=True):
                for e, c in enumerate(row):
                    acc[e] += c
    return out
