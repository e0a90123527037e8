"""What a user watches during training: a progress bar, JSONL logs, optional TensorBoard, a summary.

Design choices:
- One record per logged optimizer step goes to ``<out>/train_log.jsonl`` (step, epoch, loss, loss per
  task, lr, grad norm, aux loss, tokens/s, routing load per task); the bar shows a compact view of the
  same record, so what scrolls by and what is kept never disagree. On resume the log is cut back to
  the checkpoint's step, so the file always describes one consistent run.
- TensorBoard is optional: used only when ``log.tensorboard`` is on and it is installed (a warning
  otherwise), never a hard dependency.
- Only the main process writes or prints.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

from neko.io import atomic_write_text

__all__ = ["LOG_FILE", "Monitor", "read_log", "routing_summary"]

LOG_FILE = "train_log.jsonl"


def read_log(output_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(output_dir) / LOG_FILE
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            break  # a line cut by a kill: everything after it is not trustworthy
    return out


def routing_summary(load: dict[str, list[float]] | None) -> str:
    """'asr e0 61%' per task: the expert that gets most of a task's assignments and its share."""
    if not load:
        return ""
    parts = []
    for task, shares in load.items():
        if not shares:
            continue
        e = max(range(len(shares)), key=lambda i: shares[i])
        parts.append(f"{task} e{e} {100 * shares[e]:.0f}%")
    return " ".join(parts)


class Monitor:
    def __init__(
        self,
        output_dir: str | Path,
        *,
        enabled: bool,
        total_steps: int,
        start_step: int,
        progress: bool = True,
        tensorboard: bool = False,
    ):
        self.enabled = enabled
        self.path = Path(output_dir) / LOG_FILE
        self.bar = None
        self.tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # keep only the records the resumed state has seen
        kept = [r for r in read_log(output_dir) if r.get("step", 0) <= start_step] if start_step else []
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._fh = open(self.path, "a", encoding="utf-8")
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total_steps,
                initial=start_step,
                desc="train",
                unit="step",
                dynamic_ncols=True,
                file=sys.stderr,
            )
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(output_dir) / "tensorboard"))
            except ImportError:
                warnings.warn(
                    "log.tensorboard is on but tensorboard is not installed (pip install tensorboard); "
                    "logging to train_log.jsonl only",
                    stacklevel=2,
                )

    def record(self, rec: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._fh.write(json.dumps(rec) + "\n")
        self._fh.flush()
        if self.tb is not None:
            step = rec.get("step", 0)
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(f"{rec.get('kind', 'train')}/{k}", v, step)
                elif isinstance(v, dict):
                    for kk, vv in v.items():
                        if isinstance(vv, (int, float)):
                            self.tb.add_scalar(f"{k}/{kk}", vv, step)

    def update(self, steps: int, rec: dict[str, Any] | None = None) -> None:
        if self.bar is None:
            return
        self.bar.update(steps)
        if rec is not None:
            post = {
                "loss": f"{rec['loss']:.4f}",
                "lr": f"{rec['lr']:.2e}",
                "tok/s": f"{rec['tokens_per_s']:.0f}",
            }
            for t, v in (rec.get("loss_per_task") or {}).items():
                post[t] = f"{v:.3f}"
            route = routing_summary(rec.get("routing_load"))
            if route:
                post["route"] = route
            self.bar.set_postfix(post, refresh=False)

    def set_total(self, total: int) -> None:
        """Re-size the bar when a time budget, not the epoch count, decides where the run ends."""
        if self.bar is not None and self.bar.total != total:
            self.bar.total = total
            self.bar.refresh()

    def write(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        self._fh.close()

    @staticmethod
    def summary_table(result: Any) -> None:
        """A rich table of the final numbers (per task loss, dev scores, throughput)."""
        from rich.console import Console
        from rich.table import Table

        t = Table(title=f"neko train: {result.stop_reason} after {result.steps} steps")
        t.add_column("task")
        t.add_column("train loss", justify="right")
        t.add_column("dev loss", justify="right")
        t.add_column("dev score", justify="right")
        dev = (result.eval or {}).get("per_task", {})
        tasks = list(dict.fromkeys(list(result.loss_per_task) + list(dev)))
        for task in tasks:
            d = dev.get(task, {})
            score = d.get("score")
            t.add_row(
                task,
                f"{result.loss_per_task[task]:.4f}" if task in result.loss_per_task else "-",
                f"{d['loss']:.4f}" if d.get("loss") is not None else "-",
                f"{d['metric']} {score:.3f}" if score is not None else "-",
            )
        loss = f"{result.final_loss:.4f}" if result.final_loss is not None else "-"
        t.add_row("all", loss, "", "")
        c = Console(stderr=True)
        c.print(t)
        c.print(
            f"{result.tokens} tokens in {result.elapsed_s:.1f}s ({result.tokens_per_s:.0f} tok/s); "
            f"model saved to {result.model_dir}"
        )
