"""Routing statistics of an MoE model under plain top-K (inference) routing, per layer and per task.

What is measured, for every sparse layer and every task (and all tasks together):
- ``load``: share of the task's top-K assignments that go to each expert (sums to 1);
- ``entropy``: mean entropy (nats) of the router's full softmax, and ``normalized_entropy`` =
  entropy / ln(E) (1 = uniform router, 0 = one-hot);
- ``dead_experts``: experts that received no assignment at all;
- ``forced_in_topk``: share of the task's tokens whose plain top-K still contains f(T), the task's
  expert from ``config.neko_task_to_expert`` (``forced_is_top1``: f(T) ranked first). This is the
  question task-guided training raises: at inference nobody forces f(T), does the router pick it?

Design choices:
- Statistics come from the model's own plain forward (``output_router_logits=True``), with no neko
  hooks active, so they describe exactly what a stock transformers checkpoint does at inference.
- Every real token of a row counts for the row's task: prompt and answer, as in training (the
  answer and EOS are appended when the row has an ``output``). Padding never counts.
- :class:`RoutingStats` accumulates from router logits, so training code can log the same numbers
  from ``task_routing(...).router_logits`` without a second forward.
- The heatmap shows load averaged over layers (task x expert, %) with f(T) outlined and the
  ``forced_in_topk`` share in the row label; the JSON keeps every layer.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from neko.io import atomic_write_bytes, atomic_write_json
from neko.model.routing import NO_EXPERT, find_routers, task_index, task_map
from neko.model.safeload import weights_only_errors
from neko.schema import Example, example_from_dict, read_jsonl
from neko.tasks import TaskRegistry, build_prompt, load_prompt_config

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "RoutingStats",
    "routing_report",
    "routing_report_from_dir",
    "write_routing_report",
    "plot_heatmap",
    "spread_over_tasks",
]


class RoutingStats:
    """Accumulates routing statistics batch by batch.

    tasks: names; task id i in :meth:`update` = tasks[i]. task_to_expert: f (may miss tasks, e.g.
    zero-shot ones; their forced_* stats are None). layer_names: one per sparse layer.
    """

    def __init__(
        self,
        tasks: Sequence[str],
        num_experts: int,
        top_k: int,
        task_to_expert: dict[str, int] | None = None,
        layer_names: Sequence[str] | None = None,
    ) -> None:

        self.tasks = list(tasks)
        self.num_experts = int(num_experts)
        self.top_k = int(top_k)
        self.task_to_expert = dict(task_to_expert or {})
        self.layer_names = list(layer_names) if layer_names is not None else None
        self._forced = torch.tensor([self.task_to_expert.get(t, -1) for t in self.tasks], dtype=torch.long)
        self._acc: list[dict[str, Any]] | None = None

    def _init(self, n_layers: int) -> None:

        m, e = len(self.tasks), self.num_experts
        if self.layer_names is None:
            self.layer_names = [f"layer {i}" for i in range(n_layers)]
        if len(self.layer_names) != n_layers:
            raise ValueError(f"{len(self.layer_names)} layer names for {n_layers} layers of router logits")
        self._acc = [
            {
                "tokens": torch.zeros(m, dtype=torch.float64),
                "counts": torch.zeros(m, e, dtype=torch.float64),
                "entropy": torch.zeros(m, dtype=torch.float64),
                "in_topk": torch.zeros(m, dtype=torch.float64),
                "top1": torch.zeros(m, dtype=torch.float64),
            }
            for _ in range(n_layers)
        ]

    def update(self, router_logits_per_layer: Sequence[Any], task_ids: Any, token_mask: Any = None) -> None:
        """router_logits_per_layer: (B*T, E) per sparse layer. task_ids: (B, T) indices into ``tasks``
        (:data:`~neko.model.routing.NO_EXPERT` = not counted). token_mask: (B, T), 0 = padding (not counted)."""

        layers = list(router_logits_per_layer)
        if self._acc is None:
            self._init(len(layers))
        assert self._acc is not None
        if len(layers) != len(self._acc):
            raise ValueError(f"expected router logits for {len(self._acc)} layers, got {len(layers)}")
        ids = torch.as_tensor(task_ids).reshape(-1).long().cpu()
        if token_mask is not None:
            ids = torch.where(
                torch.as_tensor(token_mask).reshape(-1).cpu() > 0, ids, torch.full_like(ids, NO_EXPERT)
            )
        if ids.numel() and int(ids.max()) >= len(self.tasks):
            raise ValueError(f"task id {int(ids.max())} but only {len(self.tasks)} tasks: {self.tasks}")
        keep = ids >= 0
        ids = ids[keep]
        forced = self._forced[ids]  # (n,)
        for acc, logits in zip(self._acc, layers, strict=True):
            logits = logits.detach().float().cpu()
            if logits.shape[0] != keep.shape[0]:
                raise ValueError(
                    f"router logits have {logits.shape[0]} rows, task_ids {keep.shape[0]} tokens"
                )
            probs = torch.softmax(logits[keep], dim=-1).double()  # (n, E)
            sel = torch.topk(probs, self.top_k, dim=-1).indices  # (n, K)
            ent = -(probs * probs.clamp_min(1e-30).log()).sum(-1)  # (n,)
            acc["tokens"].index_add_(0, ids, torch.ones_like(ent))
            acc["entropy"].index_add_(0, ids, ent)
            one_hot = torch.zeros_like(probs).scatter_(1, sel, 1.0)
            acc["counts"].index_add_(0, ids, one_hot)
            hit = (sel == forced.unsqueeze(-1)).any(-1).double()
            acc["in_topk"].index_add_(0, ids, hit)
            acc["top1"].index_add_(0, ids, (sel[:, 0] == forced).double())

    def _block(
        self, tokens: float, counts: Any, entropy: float, in_topk: float | None, top1: float | None, f
    ):
        n_assign = float(counts.sum())
        return {
            "tokens": int(tokens),
            "load": [round(float(c) / n_assign, 6) if n_assign else 0.0 for c in counts],
            "entropy": round(entropy / tokens, 6) if tokens else None,
            "normalized_entropy": round(entropy / tokens / math.log(self.num_experts), 6)
            if tokens and self.num_experts > 1
            else None,
            "dead_experts": [i for i, c in enumerate(counts) if c == 0] if tokens else [],
            "forced_expert": f,
            "forced_in_topk": round(in_topk / tokens, 6) if f is not None and tokens else None,
            "forced_is_top1": round(top1 / tokens, 6) if f is not None and tokens else None,
        }

    def report(self) -> dict[str, Any]:
        """A JSON-able dict (see the module docstring for the fields)."""
        if self._acc is None:
            raise ValueError("no statistics yet: call update() with at least one batch")
        assert self.layer_names is not None
        layers = []
        for name, acc in zip(self.layer_names, self._acc, strict=True):
            per_task = {}
            for i, t in enumerate(self.tasks):
                per_task[t] = self._block(
                    float(acc["tokens"][i]),
                    acc["counts"][i],
                    float(acc["entropy"][i]),
                    float(acc["in_topk"][i]),
                    float(acc["top1"][i]),
                    self.task_to_expert.get(t),
                )
            everything = self._block(
                float(acc["tokens"].sum()),
                acc["counts"].sum(0),
                float(acc["entropy"].sum()),
                None,
                None,
                None,
            )
            layers.append({"layer": name, "all": everything, "per_task": per_task})
        summary = {}
        for t in self.tasks:
            blocks = [lay["per_task"][t] for lay in layers]
            hits = [b["forced_in_topk"] for b in blocks if b["forced_in_topk"] is not None]
            summary[t] = {
                "tokens": blocks[0]["tokens"],
                "mean_load": [
                    round(sum(b["load"][e] for b in blocks) / len(blocks), 6) for e in range(self.num_experts)
                ],
                "forced_expert": self.task_to_expert.get(t),
                "mean_forced_in_topk": round(sum(hits) / len(hits), 6) if hits else None,
                "mean_normalized_entropy": _mean([b["normalized_entropy"] for b in blocks]),
            }
        dead_everywhere = [
            e for e in range(self.num_experts) if all(e in lay["all"]["dead_experts"] for lay in layers)
        ]
        return {
            "num_experts": self.num_experts,
            "top_k": self.top_k,
            "tasks": self.tasks,
            "task_to_expert": self.task_to_expert,
            "layers": layers,
            "summary": {"per_task": summary, "dead_in_every_layer": dead_everywhere},
        }


def _mean(xs: Iterable[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return round(sum(vals) / len(vals), 6) if vals else None


def routing_report(
    model: PreTrainedModel,
    examples: Sequence[Example | dict[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    *,
    registry: TaskRegistry | None = None,
    use_chat_template: bool = True,
    batch_size: int = 8,
    max_length: int = 512,
    max_rows: int | None = None,
    include_answer: bool = True,
) -> dict[str, Any]:
    """Run the model (plain routing, no grad) over examples and return :meth:`RoutingStats.report`.

    examples: :class:`neko.schema.Example` objects or row dicts. Prompts are built with
    :func:`neko.tasks.build_prompt` (pass the registry / chat-template flag saved with the model).
    """
    rows = [e if isinstance(e, Example) else example_from_dict(e) for e in examples]
    if max_rows is not None:
        rows = spread_over_tasks(rows, max_rows)
    if not rows:
        raise ValueError("no examples to route: the data is empty (or --max-rows is 0)")
    if batch_size < 1 or max_length < 2:
        raise ValueError("batch_size must be >= 1 and max_length >= 2")
    routers = find_routers(model)
    fmap = task_map(model)
    ids = task_index(model, sorted({r.task for r in rows} - set(fmap)))
    tasks = list(ids)
    stats = RoutingStats(
        tasks, int(routers[0][1].num_experts), int(routers[0][1].top_k), fmap, [n for n, _ in routers]
    )
    texts = []
    for r in rows:
        text = build_prompt(r, tokenizer=tokenizer, registry=registry, use_chat_template=use_chat_template)
        if include_answer and r.output is not None:
            text += r.output + (tokenizer.eos_token or "")
        texts.append(text)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(rows), batch_size):
            enc = tokenizer(
                texts[start : start + batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_length,
                add_special_tokens=False,
            )
            mask = enc["attention_mask"]
            tid = torch.tensor([ids[r.task] for r in rows[start : start + batch_size]])
            task_ids = tid.unsqueeze(1).expand_as(mask)  # (B, T)
            with torch.no_grad():
                out = model(
                    input_ids=enc["input_ids"].to(device),
                    attention_mask=mask.to(device),
                    output_router_logits=True,
                    use_cache=False,
                )
            stats.update(out.router_logits, task_ids, mask)
    finally:
        model.train(was_training)
    rep = stats.report()
    rep["rows"] = len(rows)
    rep["model"] = str(getattr(model.config, "_name_or_path", "") or type(model).__name__)
    return rep


def plot_heatmap(report: dict[str, Any]) -> bytes:
    """PNG bytes: task x expert mean load over layers, f(T) outlined, forced_in_topk in the labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    summary = report["summary"]["per_task"]
    tasks = list(report["tasks"])
    e = report["num_experts"]
    data = [[100.0 * x for x in summary[t]["mean_load"]] for t in tasks]
    fig, ax = plt.subplots(figsize=(1.6 + 0.75 * e, 1.6 + 0.6 * len(tasks)), dpi=120)
    im = ax.imshow(
        data, cmap="viridis", vmin=0, vmax=max(100.0 / e * 2, max(max(r) for r in data)), aspect="auto"
    )
    vmax = im.get_clim()[1]
    for i, row in enumerate(data):
        for j, v in enumerate(row):
            ax.text(
                j,
                i,
                f"{v:.0f}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if v < 0.6 * vmax else "black",
            )
        f = summary[tasks[i]]["forced_expert"]
        if f is not None:
            ax.add_patch(Rectangle((f - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    labels = []
    for t in tasks:
        s = summary[t]
        hit = s["mean_forced_in_topk"]
        extra = (
            f"f={s['forced_expert']}, in top-{report['top_k']} {100 * hit:.0f}%"
            if hit is not None
            else "no f(T)"
        )
        labels.append(f"{t}\n({s['tokens']} tok, {extra})")
    ax.set_xticks(range(e), [str(j) for j in range(e)])
    ax.set_yticks(range(len(tasks)), labels, fontsize=8)
    ax.set_xlabel("expert")
    ax.set_ylabel("task")
    n_layers = len(report["layers"])
    ax.set_title(
        f"Expert load per task, plain top-{report['top_k']} routing\n"
        f"mean over {n_layers} MoE layer{'s' if n_layers != 1 else ''}; red box = task's expert f(T)",
        fontsize=10,
    )
    cbar = fig.colorbar(im, ax=ax)
    cbar.set_label(f"% of the task's top-{report['top_k']} assignments")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_routing_report(report: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``routing_report.json`` and ``routing_heatmap.png`` (atomically) into out_dir."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a directory; pass a directory for --out")
    js = atomic_write_json(out / "routing_report.json", report)
    png = atomic_write_bytes(out / "routing_heatmap.png", plot_heatmap(report))
    return js, png


def spread_over_tasks(rows: Sequence[Any], max_rows: int) -> list[Any]:
    """At most ``max_rows`` rows taken round-robin over the tasks (file order within a task).

    Benchmark files are grouped by task, so the first N rows would all be one task and the
    task x expert picture would show only that task."""
    by_task: dict[str, list[Any]] = {}
    for r in rows:
        by_task.setdefault(r.task, []).append(r)
    out: list[Any] = []
    queues = [iter(v) for v in by_task.values()]
    while queues and len(out) < max_rows:
        alive = []
        for q in queues:
            if len(out) >= max_rows:
                break
            r = next(q, None)
            if r is not None:
                out.append(r)
                alive.append(q)
        queues = alive if len(out) < max_rows else []
    return out


def routing_report_from_dir(
    model_dir: str | Path,
    data: str | Path,
    out_dir: str | Path,
    *,
    max_rows: int | None = None,
    batch_size: int = 8,
    max_length: int = 512,
) -> tuple[Path, Path, dict[str, Any]]:
    """What ``neko routing-report`` does: load a saved model + its prompt config, route a JSONL file."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ValueError(
            f"{model_dir}: no config.json; pass a directory written by save_pretrained / neko train"
        )
    registry, use_chat = load_prompt_config(model_dir)
    rows = read_jsonl(data, known_tasks=registry.names())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with weights_only_errors(model_dir):
        model = AutoModelForCausalLM.from_pretrained(model_dir)
    rep = routing_report(
        model,
        rows,
        tokenizer,
        registry=registry,
        use_chat_template=use_chat,
        batch_size=batch_size,
        max_length=max_length,
        max_rows=max_rows,
    )
    rep["model"] = str(model_dir)
    rep["data"] = str(data)
    js, png = write_routing_report(rep, out_dir)
    return js, png, rep
