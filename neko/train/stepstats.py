"""Per-step training statistics: loss sums per task, tokens, aux loss and routing load, reduced over processes.

Each process sums what it saw between two log records; :meth:`StepWindow.flush` all-reduces the sums
once per record (one collective), so logging costs nothing per micro batch beyond a few additions.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["StepWindow", "routing_load"]


def routing_load(logits_per_layer: list[Any], task_ids: Any, forced: Any, top_k: int, n_tasks: int) -> Any:
    """(n_tasks, E) expert assignments per task summed over layers (what the router actually chose)."""
    import torch

    from neko.model.routing import task_guided_topk

    E = logits_per_layer[0].shape[-1]
    out = torch.zeros(n_tasks, E, dtype=torch.float64)
    ids = task_ids.reshape(-1).cpu()
    valid = ids >= 0
    if not valid.any() or n_tasks == 0:
        return out
    for logits in logits_per_layer:
        lg = logits.detach().float().cpu()  # (N, E)
        idx = torch.topk(lg, top_k, dim=-1).indices
        if forced is not None:
            f = forced.reshape(-1).cpu()
            has = f >= 0
            if has.any():
                _, g = task_guided_topk(lg[has], f[has], top_k)
                idx[has] = g
        one = torch.zeros(lg.shape[0], E, dtype=torch.float64).scatter_(1, idx, 1.0)
        out.index_add_(0, ids[valid], one[valid])
    return out


class StepWindow:
    """Sums between two log records (per process); reduced over processes at flush."""

    def __init__(self, n_tasks: int):
        self.n = n_tasks
        self.reset()

    def reset(self) -> None:
        self.loss = 0.0
        self.tok = 0
        self.task_loss = [0.0] * self.n
        self.task_tok = [0] * self.n
        self.aux: list[float] = []
        self.load = None
        self.real = 0
        self.total = 0
        self.t0 = time.time()

    def add(self, loss, tok, sums, counts, aux, load, real, total) -> None:
        self.loss += loss
        self.tok += tok
        self.task_loss = [a + b for a, b in zip(self.task_loss, sums, strict=True)]
        self.task_tok = [a + b for a, b in zip(self.task_tok, counts, strict=True)]
        if aux is not None:
            self.aux.append(aux)
        if load is not None:
            self.load = load if self.load is None else self.load + load
        self.real += real
        self.total += total

    def flush(self, acc: Any, tasks: list[str]) -> dict[str, Any]:
        import torch

        vec = torch.tensor(
            [
                self.loss,
                self.tok,
                self.real,
                self.total,
                sum(self.aux),
                len(self.aux),
                *self.task_loss,
                *self.task_tok,
            ],
            dtype=torch.float64,
            device=acc.device,
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
            load = acc.reduce(self.load.to(acc.device), reduction="sum").cpu()
            rec["routing_load"] = {
                t: [round(float(x), 4) for x in (load[i] / load[i].sum()).tolist()]
                for i, t in enumerate(tasks)
                if float(load[i].sum()) > 0
            }
        self.reset()
        return rec
