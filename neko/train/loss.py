"""Token-level causal LM loss, normalised by the *global* number of answer tokens in an optimizer step.

Why not ``model(labels=...)``: its mean is per micro batch, so a step's loss would depend on how the
global batch is split over devices and accumulation steps (a micro batch with 10 answer tokens would
weigh as much as one with 1,000). Summing token losses and dividing by the step's total answer
tokens (all-reduced over processes) gives the same gradient for 1 process x 4 rows as for
2 processes x 2 rows, which the 2-process test checks. The per-token losses also give the
per-task loss the progress bar shows, at no extra forward.

Memory: cross-entropy is taken in fp32 (bf16 log-softmax over a 49k vocabulary loses digits), but
never over the whole batch at once. The logits are cut into chunks of ``CHUNK_TOKENS`` positions;
each chunk is upcast, its loss taken, and (when training) the chunk is recomputed in backward
instead of keeping its fp32 log-softmax. At 64 x 512 tokens and a 49,152 vocabulary the fp32 copy
of the whole batch is ~6.4 GB, a chunk ~0.2 GB; the price is one more log-softmax per chunk in
backward. Each position's loss is computed by the same kernel on the same row as before chunking,
so losses and gradients are bitwise those of one fp32 cross-entropy over the batch (tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

__all__ = ["CHUNK_TOKENS", "token_losses", "per_task_sums"]

CHUNK_TOKENS = 1024  # positions per fp32 cross-entropy chunk


def _fp32_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), target, reduction="none")  # (N,) float32


def token_losses(
    logits: torch.Tensor, labels: torch.Tensor, chunk_tokens: int = CHUNK_TOKENS
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss (B, T) float32, mask (B, T) bool): loss of predicting labels[:, t] from logits[:, t-1];
    position 0 and ignored labels (-100) have loss 0 and mask False."""
    B, T, V = logits.shape
    # Position t predicts labels[:, t + 1]; the last position predicts nothing (its loss is dropped).
    # Keeping all T positions lets the chunks be views of the contiguous logits, not a sliced copy.
    target = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], dim=1)  # (B, T)
    flat_target = target.clamp(min=0).reshape(-1)  # (B*T,)
    chunks = zip(logits.reshape(B * T, V).split(chunk_tokens), flat_target.split(chunk_tokens), strict=True)
    if torch.is_grad_enabled() and logits.requires_grad:
        parts = [
            checkpoint(_fp32_cross_entropy, x, t, use_reentrant=False, preserve_rng_state=False)
            for x, t in chunks
        ]
    else:
        parts = [_fp32_cross_entropy(x, t) for x, t in chunks]
    mask = (target != -100)[:, :-1]  # (B, T-1)
    loss = torch.cat(parts).view(B, T)[:, :-1] * mask
    zero = torch.zeros((B, 1), dtype=loss.dtype, device=loss.device)
    return torch.cat([zero, loss], dim=1), torch.cat([torch.zeros_like(zero, dtype=torch.bool), mask], dim=1)


def per_task_sums(
    loss: torch.Tensor, mask: torch.Tensor, task_ids: torch.Tensor, n_tasks: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed loss float64 (n_tasks,), answer tokens int64 (n_tasks,)) per task id, on ``loss``'s
    device (no host sync: the training loop adds these up and reads them at the log interval)."""
    ids = task_ids.to(loss.device)
    valid = mask & (ids >= 0)  # (B, T)
    task = ids.clamp(min=0).reshape(-1)
    sums = torch.zeros(n_tasks, dtype=torch.float64, device=loss.device)
    counts = torch.zeros(n_tasks, dtype=torch.long, device=loss.device)
    if n_tasks:
        sums.index_add_(0, task, torch.where(valid, loss.detach(), 0.0).double().reshape(-1))
        counts.index_add_(0, task, valid.long().reshape(-1))
    return sums, counts
