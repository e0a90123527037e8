"""The data plan: which rows every process feeds at every micro step, as a pure function of the step.

Design choice: no stateful data loader to checkpoint. The rows of epoch e are
``pack_rows(mixture.epoch(e), seed=f(seed, e))``, a pure function of (seed, e); optimizer step k of
an epoch takes rows ``[k*G, (k+1)*G)`` with G = micro_batch_size x processes x grad_accum, and
micro step m of process r takes the slice ``(m*P + r)*mbs``. So the data position saved in a
checkpoint is one integer (the optimizer step) and ``--resume`` rebuilds exactly the batches the
uninterrupted run would have seen. A process whose slice is empty (last step of an epoch) gets one
all-padding row, so every process still runs forward/backward (DDP, ZeRO and FSDP collectives need
it) while adding nothing to the loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from neko.model.routing import NO_EXPERT
from neko.train.mixture import TaskMixture, TokenizedExample
from neko.train.packing import IGNORE_INDEX, Batch, collate_packed, collate_padded, pack_rows, padded_rows

__all__ = ["DataPlan"]


@dataclass
class _Epoch:
    examples: list[TokenizedExample]
    rows: list[list[int]]
    steps: int


class DataPlan:
    def __init__(
        self,
        mixture: TaskMixture,
        *,
        max_seq_len: int,
        packing: bool,
        micro_batch_size: int,
        processes: int,
        grad_accum: int,
        seed: int,
        pad_id: int,
        task_index: dict[str, int],
    ):
        self.mixture = mixture
        self.max_seq_len = max_seq_len
        self.packing = packing
        self.mbs = micro_batch_size
        self.procs = processes
        self.ga = grad_accum
        self.seed = seed
        self.pad_id = pad_id
        self.task_index = task_index
        self._cache: dict[int, _Epoch] = {}

    @property
    def rows_per_step(self) -> int:
        return self.mbs * self.procs * self.ga

    def epoch(self, e: int) -> _Epoch:
        ep = self._cache.get(e)
        if ep is None:
            exs = self.mixture.epoch(e)
            rows = (
                pack_rows(exs, self.max_seq_len, seed=self.seed * 7919 + e)
                if self.packing
                else padded_rows(exs)
            )
            ep = _Epoch(exs, rows, math.ceil(len(rows) / self.rows_per_step))
            self._cache = {e: ep}  # keep one epoch in memory
        return ep

    def steps_per_epoch(self, epochs: int) -> list[int]:
        out = []
        for e in range(epochs):
            out.append(self.epoch(e).steps)
        return out

    def locate(self, step: int, steps_per_epoch: list[int]) -> tuple[int, int]:
        """Global optimizer step (0-based) -> (epoch, step within epoch); cycles epochs past the list."""
        e = 0
        while True:
            n = steps_per_epoch[e] if e < len(steps_per_epoch) else self.epoch(e).steps
            if step < n:
                return e, step
            step -= n
            e += 1

    def micro_batches(self, epoch: int, k: int, rank: int) -> list[Batch]:
        """The grad_accum micro batches process ``rank`` runs for optimizer step k of ``epoch``."""
        ep = self.epoch(epoch)
        base = k * self.rows_per_step
        out = []
        for m in range(self.ga):
            start = base + (m * self.procs + rank) * self.mbs
            rows = ep.rows[start : min(start + self.mbs, (k + 1) * self.rows_per_step)]
            out.append(self._collate([[ep.examples[i] for i in r] for r in rows]))
        return out

    def _collate(self, rows: list[list[TokenizedExample]]) -> Batch:
        if not rows:
            empty = TokenizedExample("<pad>", "", [self.pad_id] * 2, [IGNORE_INDEX, IGNORE_INDEX], 2)
            b = collate_packed([[empty]], self.pad_id, self.task_index)
            b.seq_ids.fill_(-1)
            b.task_ids.fill_(NO_EXPERT)
            b.example_ids = [[]]
            return b
        if self.packing:
            return collate_packed(rows, self.pad_id, self.task_index)
        return collate_padded([r[0] for r in rows], self.pad_id, self.task_index)

    @staticmethod
    def label_tokens(batch: Batch) -> int:
        return int((batch.labels[:, 1:] != IGNORE_INDEX).sum())
