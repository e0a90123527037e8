"""Token-level causal LM loss, normalised by the *global* number of answer tokens in an optimizer step.

Why not ``model(labels=...)``: its mean is per micro batch, so a step's loss would depend on how the
global batch is split over devices and accumulation steps (a micro batch with 10 answer tokens would
weigh as much as one with 1,000). Summing token losses and dividing by the step's total answer
tokens (all-reduced over processes) gives the same gradient for 1 process x 4 rows as for
2 processes x 2 rows, which the 2-process test checks. The per-token losses also give the
per-task loss the progress bar shows, at no extra forward.
"""

from __future__ import annotations

from typing import Any

__all__ = ["token_losses", "per_task_sums"]


def token_losses(logits: Any, labels: Any) -> tuple[Any, Any]:
    """(loss (B, T) float32, mask (B, T) bool): loss of predicting labels[:, t] from logits[:, t-1];
    position 0 and ignored labels (-100) have loss 0 and mask False."""
    import torch
    import torch.nn.functional as F

    B, T, V = logits.shape
    shift_logits = logits[:, :-1, :].float()  # (B, T-1, V)
    target = labels[:, 1:]  # (B, T-1)
    mask = target != -100
    loss = F.cross_entropy(
        shift_logits.reshape(-1, V), target.clamp(min=0).reshape(-1), reduction="none"
    ).view(B, T - 1)
    loss = loss * mask
    zero = torch.zeros((B, 1), dtype=loss.dtype, device=loss.device)
    return torch.cat([zero, loss], dim=1), torch.cat([torch.zeros_like(zero, dtype=torch.bool), mask], dim=1)


def per_task_sums(loss: Any, mask: Any, task_ids: Any, n_tasks: int) -> tuple[list[float], list[int]]:
    """(summed loss, answer tokens) per task id 0..n_tasks-1, from detached per-token losses."""
    import torch

    ids = task_ids.to(loss.device)
    sums = torch.zeros(n_tasks, dtype=torch.float64)
    counts = torch.zeros(n_tasks, dtype=torch.long)
    valid = mask & (ids >= 0)
    if n_tasks and valid.any():
        t = ids[valid].cpu()
        sums.index_add_(0, t, loss.detach()[valid].double().cpu())
        counts.index_add_(0, t, torch.ones_like(t))
    return sums.tolist(), counts.tolist()
