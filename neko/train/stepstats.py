"""Per-step training statistics: loss sums per task, tokens, aux loss, routing load and the NaN
check, kept on the device and reduced over processes at the log interval.

Each process adds what it saw between two log records into device tensors (no ``.item()``, no CPU
copy: on a GPU every one would be a host sync on the hot path); :meth:`StepWindow.flush` reads them
once per record with one all-reduce. Whether any loss was NaN/inf is recorded the same way and read
at the log interval and before every checkpoint, so a checkpoint never holds a diverged model.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from neko.model.routing import task_guided_topk

__all__ = ["StepWindow", "TrainingDiverged", "routing_load"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf. The last complete checkpoint (if any) is untouched.
    ``step``: the optimizer step (1-based) whose loss was not finite."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


def routing_load(
    logits_per_layer: list[torch.Tensor],
    task_ids: torch.Tensor,
    forced: torch.Tensor | None,
    top_k: int,
    n_tasks: int,
) -> torch.Tensor:
    """(n_tasks, E) float64 expert assignments per task summed over layers (what the router chose),
    on the logits' device. forced: (N,) expert per token under task-guided routing, -1 = plain."""
    E, device = logits_per_layer[0].shape[-1], logits_per_layer[0].device
    out = torch.zeros(n_tasks, E, dtype=torch.float64, device=device)
    if n_tasks == 0:
        return out
    ids = task_ids.reshape(-1).to(device)  # (N,)
    valid = (ids >= 0).unsqueeze(-1)  # (N, 1): padding counts for no task
    for logits in logits_per_layer:
        lg = logits.detach().float()  # (N, E)
        idx = torch.topk(lg, top_k, dim=-1).indices  # (N, K)
        if forced is not None:
            f = forced.reshape(-1).to(device)
            _, guided = task_guided_topk(lg, f.clamp(min=0), top_k)
            idx = torch.where((f >= 0).unsqueeze(-1), guided, idx)
        chosen = torch.zeros(lg.shape[0], E, dtype=torch.float64, device=device).scatter_(1, idx, 1.0)
        out.index_add_(0, ids.clamp(min=0), chosen * valid)
    return out


class StepWindow:
    """Sums between two log records (per process, on ``device``); reduced over processes at flush."""

    def __init__(self, n_tasks: int, device: Any):
        self.n, self.device = n_tasks, device
        self.reset()

    def _zeros(self, n: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.zeros(n, dtype=dtype, device=self.device)

    def reset(self) -> None:
        zeros = self._zeros
        self.loss = zeros(1, torch.float64)
        self.answer_tokens = zeros(1, torch.long)
        self.task_loss = zeros(self.n, torch.float64)
        self.task_tokens = zeros(self.n, torch.long)
        self.aux_sum, self.aux_count = zeros(1, torch.float64), 0
        self.load: torch.Tensor | None = None
        self.real = self.total = 0
        self.micro_batches: list[tuple[int, int, int, list[str]]] = []  # (step, epoch, micro, ids)
        self.first_bad = torch.full((1,), -1, dtype=torch.long, device=self.device)  # index or -1
        self.t0 = time.time()

    def add(
        self,
        loss: torch.Tensor,
        mask: torch.Tensor,
        task_sums: tuple[torch.Tensor, torch.Tensor],
        aux: torch.Tensor | None,
        load: torch.Tensor | None,
        real_tokens: int,
        total_tokens: int,
        where: tuple[int, int, int, list[str]],
    ) -> None:
        """One micro batch: loss (B, T) float32, its mask, per-task sums, aux loss, routing load,
        token counts, and where it was (step, epoch, micro batch, example ids) for a NaN report."""
        main = loss.detach().sum()
        self.loss += main.double()
        self.answer_tokens += mask.sum()
        self.task_loss += task_sums[0]
        self.task_tokens += task_sums[1]
        finite = torch.isfinite(main)
        if aux is not None:
            self.aux_sum += aux.detach().double()
            self.aux_count += 1
            finite = finite & torch.isfinite(aux.detach())
        if load is not None:
            self.load = load if self.load is None else self.load + load
        self.real += real_tokens
        self.total += total_tokens
        self.micro_batches.append(where)
        here = torch.full_like(self.first_bad, len(self.micro_batches) - 1)
        self.first_bad = torch.where((self.first_bad < 0) & ~finite, here, self.first_bad)

    def raise_if_diverged(self, acc: Any) -> None:
        """TrainingDiverged naming the first micro batch (over all processes) whose loss was not
        finite since the last flush. A host sync: called at the log interval and before saving."""
        firsts = acc.gather(self.first_bad).tolist()
        bad = [i for i in firsts if i >= 0]
        if not bad:
            return
        step, epoch, micro, ids = self.micro_batches[min(bad)]
        raise TrainingDiverged(
            f"loss is NaN/inf at optimizer step {step + 1} (epoch {epoch}, micro batch {micro}, process "
            f"{acc.process_index}); example ids in this process's batch: {ids[:20]}"
            f"{' ...' if len(ids) > 20 else ''}. Nothing was saved after the last good checkpoint; lower "
            "optim.lr, check these rows, or try precision=fp32",
            step + 1,
        )

    def flush(self, acc: Any, tasks: list[str]) -> dict[str, Any]:
        """The record of this window (all processes), then a fresh window. One all-reduce."""
        self.raise_if_diverged(acc)
        counts = torch.tensor(
            [self.real, self.total, self.aux_count], dtype=torch.float64, device=self.device
        )
        vec = torch.cat(
            [
                self.loss,
                self.answer_tokens.double(),
                counts[:2],
                self.aux_sum,
                counts[2:],
                self.task_loss,
                self.task_tokens.double(),
            ]
        )
        vec = acc.reduce(vec, reduction="sum").cpu().tolist()
        n = self.n
        loss, tok, real, total, aux_sum, aux_n = vec[:6]
        tl, tt = vec[6 : 6 + n], vec[6 + n : 6 + 2 * n]
        secs = max(1e-9, time.time() - self.t0)
        rec: dict[str, Any] = {
            "loss": loss / max(1, tok),
            "loss_per_task": {t: tl[i] / tt[i] for i, t in enumerate(tasks) if tt[i]},
            "answer_tokens": int(tok),
            "real_tokens": int(real),
            "_total_tokens": int(total),
            "real_token_share": real / max(1, total),
            "tokens_per_s": real / secs,
        }
        if aux_n:
            rec["aux_loss"] = aux_sum / aux_n
        if self.load is not None:
            load = acc.reduce(self.load, reduction="sum").cpu()
            rec["routing_load"] = {
                t: [round(float(x), 4) for x in (load[i] / load[i].sum()).tolist()]
                for i, t in enumerate(tasks)
                if float(load[i].sum()) > 0
            }
        self.reset()
        return rec
