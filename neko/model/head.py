"""Logits at chosen positions only: the output head of a causal LM fed a subset of its hidden states.

A causal LM's last step projects every position onto the vocabulary (576 x 49,152 multiply-adds per
token for SmolLM2, about a fifth of its forward), yet a loss needs only the positions that predict
an answer token and a candidate score only those that predict a candidate token (not the prompt, not
padding). :func:`logits_at` puts a forward pre-hook on the model's output head
(``get_output_embeddings()``, which a PEFT wrapper forwards to its base) that hands it
``hidden[select]``: the model then returns (N, V) logits, one row per selected position in
row-major order, with every other part of the forward (routing hooks, router logits, caches,
Accelerate's autocast and gradient sync) unchanged.

The hook applies once, to the first call whose input is (B, T, H) with (B, T) = ``select``'s shape;
a model whose head is not found or is called otherwise returns its full logits, and
:attr:`HeadView.applied` says which happened, so callers keep a full-logit path for unknown layouts.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

__all__ = ["HeadView", "logits_at", "output_head"]


class HeadView:
    """One forward's head hook: which (B, T) positions it keeps and whether it applied."""

    def __init__(self, select: torch.Tensor) -> None:
        self.select = select
        # found where select lives (the CPU, as batches are built): a GPU never waits to count them
        self.index = select.reshape(-1).nonzero().squeeze(1)
        self.applied = False

    def _feed(self, module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        hidden = args[0] if args else None
        if self.applied or not torch.is_tensor(hidden) or hidden.dim() != 3:
            return None
        if tuple(hidden.shape[:2]) != tuple(self.select.shape):
            return None
        self.applied = True
        index = self.index.to(hidden.device, non_blocking=True)
        return (hidden.reshape(-1, hidden.shape[-1]).index_select(0, index), *args[1:])


def output_head(model: torch.nn.Module) -> torch.nn.Module | None:
    """The model's output head (through a PEFT wrapper too), or None when it has no findable one."""
    get = getattr(model, "get_output_embeddings", None)
    try:
        head = get() if callable(get) else None
    except (AttributeError, NotImplementedError):
        return None
    return head if isinstance(head, torch.nn.Module) else None


@contextmanager
def logits_at(model: torch.nn.Module, select: torch.Tensor, enabled: bool = True) -> Iterator[HeadView]:
    """Within the block, ``model``'s forward returns logits at the (B, T) bool ``select`` positions
    only, (N, V) in row-major order, when the hook applies (:attr:`HeadView.applied`). ``model`` is
    the transformers or PEFT model itself, not a DDP wrapper; ``enabled=False`` leaves it alone."""
    view = HeadView(select)
    module = output_head(model) if enabled else None
    handle = module.register_forward_pre_hook(view._feed) if module is not None else None
    try:
        yield view
    finally:
        if handle is not None:
            handle.remove()
