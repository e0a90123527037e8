"""The chunked fp32 cross-entropy equals one fp32 cross-entropy over the whole batch, bit for bit,
in loss and in the gradient reaching the logits; per-task sums equal a per-token loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from neko.train.loss import per_task_sums, token_losses


def whole_batch_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss before chunking: the whole shifted batch upcast to fp32 at once."""
    B, T, V = logits.shape
    target = labels[:, 1:]
    mask = target != -100
    loss = F.cross_entropy(
        logits[:, :-1, :].float().reshape(-1, V), target.clamp(min=0).reshape(-1), reduction="none"
    ).view(B, T - 1)
    loss = loss * mask
    zero = torch.zeros((B, 1), dtype=loss.dtype)
    return torch.cat([zero, loss], dim=1), torch.cat([torch.zeros_like(zero, dtype=torch.bool), mask], dim=1)


def _batch(dtype: torch.dtype, B: int = 3, T: int = 37, V: int = 301):
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(B, T, V, generator=gen) * 4).to(dtype)
    labels = torch.randint(0, V, (B, T), generator=gen)
    labels[0, :5] = -100  # a prompt
    labels[2, 30:] = -100  # padding
    return logits, labels


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk", [1, 16, 50, 111, 10_000])
def test_chunked_loss_and_gradient_equal_the_whole_batch(dtype, chunk):
    logits, labels = _batch(dtype)
    ref_in = logits.clone().requires_grad_(True)
    ref, ref_mask = whole_batch_losses(ref_in, labels)
    got_in = logits.clone().requires_grad_(True)
    got, got_mask = token_losses(got_in, labels, chunk_tokens=chunk)
    assert got.dtype == torch.float32 and got.shape == labels.shape
    assert torch.equal(got_mask, ref_mask) and torch.equal(got, ref)
    weights = torch.rand(labels.shape, generator=torch.Generator().manual_seed(1))
    (ref * weights).sum().backward()
    (got * weights).sum().backward()
    assert got_in.grad.dtype == dtype and torch.equal(got_in.grad, ref_in.grad)
    assert got_in.grad[:, -1].abs().sum() == 0  # the last position predicts nothing


def test_without_grad_no_graph_is_kept():
    logits, labels = _batch(torch.float32)
    with torch.no_grad():
        loss, _ = token_losses(logits.requires_grad_(True), labels, chunk_tokens=16)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, whole_batch_losses(logits.detach(), labels)[0], rtol=0, atol=0)


def test_per_task_sums_equal_a_loop_over_tokens():
    logits, labels = _batch(torch.float32)
    loss, mask = token_losses(logits, labels)
    task_ids = torch.tensor([[0] * 20 + [2] * 17, [1] * 37, [2] * 30 + [-1] * 7])
    sums, counts = per_task_sums(loss, mask, task_ids, 4)
    want_sums, want_counts = [0.0] * 4, [0] * 4
    for b, t in zip(*torch.nonzero(mask & (task_ids >= 0), as_tuple=True), strict=True):
        want_sums[task_ids[b, t]] += float(loss[b, t])
        want_counts[task_ids[b, t]] += 1
    assert counts.tolist() == want_counts and counts[3] == 0
    assert sums.dtype == torch.float64
    assert sums.tolist() == pytest.approx(want_sums, rel=1e-12)
