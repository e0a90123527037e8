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

Logits only where there is an answer: under :func:`answer_head` the model's output head sees only
the hidden states of positions that predict an answer token (:mod:`neko.model.head`), so the
vocabulary projection, its backward and the cross-entropy run over those positions instead of every
position of a packed row, whose N-best prompts are long; :meth:`AnswerHead.losses` scatters the
losses back to (B, T). A model whose head is not found or not called that way keeps the full path.
Same losses and gradients as the full path to fp32 rounding (tested per mode; the row subset
changes the summation order of the head's weight gradient); bench/bench_train_speed.py measures it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from neko.model.head import HeadView, logits_at

__all__ = [
    "CHUNK_TOKENS",
    "AnswerHead",
    "answer_head",
    "answer_token_losses",
    "per_task_sums",
    "predicting_positions",
    "token_losses",
]

CHUNK_TOKENS = 1024  # positions per fp32 cross-entropy chunk


def _fp32_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), target, reduction="none")  # (N,) float32


def _chunked_cross_entropy(logits: torch.Tensor, target: torch.Tensor, chunk_tokens: int) -> torch.Tensor:
    """fp32 cross-entropy of (N, V) logits against (N,) targets, ``chunk_tokens`` rows at a time,
    each chunk recomputed in backward instead of keeping its fp32 log-softmax."""
    chunks = zip(logits.split(chunk_tokens), target.split(chunk_tokens), strict=True)
    if torch.is_grad_enabled() and logits.requires_grad:
        parts = [
            checkpoint(_fp32_cross_entropy, x, t, use_reentrant=False, preserve_rng_state=False)
            for x, t in chunks
        ]
    else:
        parts = [_fp32_cross_entropy(x, t) for x, t in chunks]
    return torch.cat(parts) if parts else logits.new_zeros(0, dtype=torch.float32)


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
    losses = _chunked_cross_entropy(logits.reshape(B * T, V), flat_target, chunk_tokens)
    mask = (target != -100)[:, :-1]  # (B, T-1)
    loss = losses.view(B, T)[:, :-1] * mask
    zero = torch.zeros((B, 1), dtype=loss.dtype, device=loss.device)
    return torch.cat([zero, loss], dim=1), torch.cat([torch.zeros_like(zero, dtype=torch.bool), mask], dim=1)


def predicting_positions(labels: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: the positions whose logits the loss needs, those followed by an answer token
    (position t predicts labels[:, t + 1]; the last position predicts nothing)."""
    select = torch.zeros_like(labels, dtype=torch.bool)
    select[:, :-1] = labels[:, 1:] != -100
    return select


def answer_token_losses(
    logits: torch.Tensor, labels: torch.Tensor, chunk_tokens: int = CHUNK_TOKENS
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`token_losses` from the logits of the :func:`predicting_positions` only: ``logits`` is
    (N, V), one row per such position in row-major order. Returns the same (B, T) loss and mask, on
    ``logits``' device. ``labels`` may stay on the CPU, where a batch is built: the answer positions
    are found there, so a CUDA step does not wait for the device to count them."""
    mask = labels != -100
    mask[:, 0] = False  # nothing predicts position 0
    where = mask.reshape(-1).nonzero().squeeze(1)  # (N,) flat answer positions, row-major
    target = labels.reshape(-1)[where]  # the order of the positions that predict them
    if target.shape[0] != logits.shape[0]:
        raise ValueError(f"{logits.shape[0]} logit rows for {target.shape[0]} answer tokens")
    device = logits.device
    losses = _chunked_cross_entropy(logits, target.to(device, non_blocking=True), chunk_tokens)
    flat = torch.zeros(mask.numel(), dtype=losses.dtype, device=device)
    loss = flat.scatter(0, where.to(device, non_blocking=True), losses).view(mask.shape)
    return loss, mask.to(device, non_blocking=True)


class AnswerHead:
    """The loss of one forward run under :func:`answer_head`: from the (N, V) logits of the
    :func:`predicting_positions` when the head hook applied, else from the full (B, T, V) logits (an
    unknown head layout, see :mod:`neko.model.head`)."""

    def __init__(self, labels: torch.Tensor, view: HeadView) -> None:
        self.labels = labels
        self.view = view

    @property
    def applied(self) -> bool:
        return self.view.applied

    def losses(
        self, logits: torch.Tensor, chunk_tokens: int = CHUNK_TOKENS
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss (B, T) float32, mask (B, T) bool), as :func:`token_losses` gives them."""
        if self.view.applied:
            return answer_token_losses(logits, self.labels, chunk_tokens)
        return token_losses(logits, self.labels.to(logits.device), chunk_tokens)


@contextmanager
def answer_head(model: torch.nn.Module, labels: torch.Tensor, enabled: bool = True) -> Iterator[AnswerHead]:
    """Within the block, ``model``'s forward computes logits at answer-predicting positions only;
    ``model`` is the transformers or PEFT model itself, not a DDP wrapper. Give the batch's labels
    as built, on the CPU: the positions are found there (no host sync on a GPU)."""
    with logits_at(model, predicting_positions(labels), enabled=enabled) as view:
        yield AnswerHead(labels, view)


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
