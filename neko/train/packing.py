"""Sample packing with per-example isolation, and the padded baseline it replaces.

Packing puts several tokenized examples into one row of ``max_seq_len`` tokens. Isolation comes from
the position ids: they restart at 0 for every example, and we pass ``attention_mask=None``. Then
transformers 5 (``masking_utils.find_packed_sequence_indices``, used by ``create_causal_mask`` for
sdpa, eager and flex attention; flash-attention-2 reads the same position ids as varlen
``cu_seqlens``) cuts the causal mask into one block per example. It only does this when the 2-D
attention mask is None and there is no KV cache, so the training forward passes
``use_cache=False``. ``tests/train/test_train_packing.py`` checks that a packed row gives every
example the same loss as running it alone, so a transformers change that drops the detection fails
a test instead of silently leaking attention across examples.

A row packing examples A (3 tokens), B (2) and C (2), plus 1 padding token::

    tokens        a0 a1 a2 b0 b1 c0 c1 <pad>
    position_ids   0  1  2  0  1  0  1  0      <- restart = a new example (pad is its own block)
    task_ids      tA tA tA tB tB tC tC -1
    labels        -100 -100 a2 -100 b1 -100 c1 -100   (prompt tokens and padding masked)

    attention (row = query, col = key; x = may attend)
          a0 a1 a2 b0 b1 c0 c1 pd
      a0   x
      a1   x  x
      a2   x  x  x
      b0            x
      b1            x  x
      c0                  x
      c1                  x  x
      pd                        x

The first token of every example is always a prompt token (label -100), so no loss is taken on
predicting example B's first token from the end of example A.

Rows are filled best-fit-decreasing (longest example first, into the fullest row it still fits),
then shuffled with the epoch's seed: over 95% of tokens are real at max_seq_len >= 4x the mean
example length (bench/bench_packing.py measures it).
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from neko.model.routing import NO_EXPERT
from neko.train.mixture import TokenizedExample

__all__ = ["Batch", "pack_rows", "padded_rows", "collate_packed", "collate_padded", "IGNORE_INDEX"]

IGNORE_INDEX = -100


@dataclass
class Batch:
    """Tensors for one micro batch. attention_mask is None for packed rows (isolation by positions).

    seq_ids: (B, T) example index inside its row, -1 on padding. example_ids: ids per row.
    """

    input_ids: torch.Tensor  # (B, T) long
    labels: torch.Tensor  # (B, T) long, -100 = no loss
    position_ids: torch.Tensor  # (B, T) long
    task_ids: torch.Tensor  # (B, T) long, NO_EXPERT (-1) = padding / unknown task
    seq_ids: torch.Tensor  # (B, T) long
    attention_mask: torch.Tensor | None  # (B, T) long for padded batches, None for packed
    example_ids: list[list[str]]

    @property
    def real_tokens(self) -> int:
        return int((self.seq_ids >= 0).sum())

    @property
    def total_tokens(self) -> int:
        return int(self.seq_ids.numel())

    def model_inputs(self) -> dict[str, Any]:
        return {
            "input_ids": self.input_ids,
            "position_ids": self.position_ids,
            "attention_mask": self.attention_mask,
            "use_cache": False,
        }


def pack_rows(examples: Sequence[TokenizedExample], max_seq_len: int, seed: int = 0) -> list[list[int]]:
    """Indices of ``examples`` grouped into rows of at most ``max_seq_len`` tokens (best-fit decreasing),
    rows in a seeded random order. Raises ValueError for an example longer than the row."""
    order = sorted(range(len(examples)), key=lambda i: (-len(examples[i]), i))
    caps: list[tuple[int, int]] = []  # sorted (remaining capacity, row index)
    rows: list[list[int]] = []
    for i in order:
        n = len(examples[i])
        if n > max_seq_len:
            raise ValueError(
                f"example {examples[i].id!r} has {n} tokens > max_seq_len {max_seq_len}; "
                "the mixture's truncation policy should have cut or dropped it"
            )
        k = bisect.bisect_left(caps, (n, -1))
        if k < len(caps):
            cap, r = caps.pop(k)
            rows[r].append(i)
            bisect.insort(caps, (cap - n, r))
        else:
            rows.append([i])
            bisect.insort(caps, (max_seq_len - n, len(rows) - 1))
    random.Random(seed).shuffle(rows)
    return rows


def padded_rows(examples: Sequence[TokenizedExample]) -> list[list[int]]:
    """One example per row, in the given order (the unpacked baseline)."""
    return [[i] for i in range(len(examples))]


def collate_packed(
    rows: Sequence[Sequence[TokenizedExample]],
    pad_id: int,
    task_index: dict[str, int],
    length: int | None = None,
) -> Batch:
    """Packed rows -> a Batch padded to ``length`` (default: the longest row). attention_mask None."""
    T = length or max(sum(len(e) for e in r) for r in rows)
    B = len(rows)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    task_ids = torch.full((B, T), NO_EXPERT, dtype=torch.long)
    seq_ids = torch.full((B, T), -1, dtype=torch.long)
    position_ids = torch.zeros((B, T), dtype=torch.long)
    ids: list[list[str]] = []
    for b, row in enumerate(rows):
        pos = 0
        ids.append([])
        for s, ex in enumerate(row):
            n = len(ex)
            if pos + n > T:
                raise ValueError(f"row {b} holds {pos + n} tokens > length {T}")
            input_ids[b, pos : pos + n] = torch.tensor(ex.input_ids)
            lab = torch.tensor(ex.labels)
            lab[0] = IGNORE_INDEX  # never learn an example's first token from the previous example
            labels[b, pos : pos + n] = lab
            position_ids[b, pos : pos + n] = torch.arange(n)
            task_ids[b, pos : pos + n] = task_index.get(ex.task, NO_EXPERT)
            seq_ids[b, pos : pos + n] = s
            ids[-1].append(ex.id)
            pos += n
        # padding continues as its own block (positions restart), so it never joins an example
        position_ids[b, pos:] = torch.arange(T - pos)
    return Batch(input_ids, labels, position_ids, task_ids, seq_ids, None, ids)


def collate_padded(examples: Sequence[TokenizedExample], pad_id: int, task_index: dict[str, int]) -> Batch:
    """One example per row, right-padded to the longest in the batch, with a 2-D attention mask."""
    T = max(len(e) for e in examples)
    B = len(examples)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    task_ids = torch.full((B, T), NO_EXPERT, dtype=torch.long)
    seq_ids = torch.full((B, T), -1, dtype=torch.long)
    attention = torch.zeros((B, T), dtype=torch.long)
    for b, ex in enumerate(examples):
        n = len(ex)
        input_ids[b, :n] = torch.tensor(ex.input_ids)
        labels[b, :n] = torch.tensor(ex.labels)
        task_ids[b, :n] = task_index.get(ex.task, NO_EXPERT)
        seq_ids[b, :n] = 0
        attention[b, :n] = 1
    position_ids = torch.arange(T).unsqueeze(0).expand(B, T).clone()
    return Batch(input_ids, labels, position_ids, task_ids, seq_ids, attention, [[e.id] for e in examples])
