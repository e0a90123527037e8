"""Periodic dev-set evaluation during training: dev loss per task and greedy decodes scored per task.

Design choices:
- The model is evaluated the way it will be served: plain top-K routing (no task_routing), the prompt
  from ``neko.tasks.build_prompt``, greedy decoding, scored with ``neko.metrics`` (WER for WER tasks,
  BLEU for BLEU tasks, the task registry decides). A handful of rows per task keeps it cheap enough
  to run every few hundred steps; ``neko eval`` is the full evaluation.
- Every process runs it (identical work), so it also works when parameters are sharded (ZeRO-3,
  FSDP), where a main-process-only ``generate`` would hang.
- ``progress=True`` (the main process, for the evaluation after the last step) shows a bar over the
  loss batches and the decodes: with a CPU MoE that evaluation takes minutes, which looked like a hang.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from neko.metrics.bleu import corpus_bleu
from neko.metrics.wer import corpus_wer
from neko.model.routing import task_index
from neko.schema import Example
from neko.tasks import TaskRegistry, build_prompt, get_task
from neko.train.config import TrainConfig
from neko.train.loss import answer_head
from neko.train.mixture import TokenizedExample
from neko.train.packing import collate_packed, pack_rows

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["dev_loss", "decode_and_score", "decode_rows", "describe_dev_eval", "evaluate_dev", "eval_line"]


def _bar(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar on stderr, or None."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=desc, unit="batch" if "loss" in desc else "row", file=sys.stderr, leave=False
    )


def dev_loss(
    model: torch.nn.Module,
    examples: Sequence[TokenizedExample],
    pad_id: int,
    max_seq_len: int,
    batch_rows: int = 4,
    progress: bool = False,
) -> dict[str, float]:
    """Mean answer-token loss per task over ``examples`` (packed, no grad)."""
    tasks = list(dict.fromkeys(e.task for e in examples))
    index = task_index(tasks)
    sums = [0.0] * len(tasks)
    counts = [0] * len(tasks)
    rows = pack_rows(examples, max_seq_len, seed=0)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    bar = _bar((len(rows) + batch_rows - 1) // batch_rows, "dev loss", progress)
    with torch.no_grad():
        for i in range(0, len(rows), batch_rows):
            chunk = [[examples[j] for j in r] for r in rows[i : i + batch_rows]]
            b = collate_packed(chunk, pad_id, index)
            inputs = {
                k: (v.to(device) if v is not None and hasattr(v, "to") else v)
                for k, v in b.model_inputs().items()
            }
            with answer_head(model, b.labels) as head:
                loss, mask = head.losses(model(**inputs).logits)
            for t in range(len(tasks)):
                m = mask & (b.task_ids.to(device) == t)
                sums[t] += float(loss[m].sum())
                counts[t] += int(m.sum())
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    model.train(was_training)
    return {t: sums[i] / max(1, counts[i]) for i, t in enumerate(tasks)}


def decode_and_score(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[Example],
    *,
    registry: TaskRegistry | None = None,
    use_chat_template: bool = True,
    max_new_tokens: int = 64,
    progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """Greedy-decode ``rows`` (neko Examples with outputs) and score per task -> {task: {metric, score, n,
    samples}}. The score is WER (fraction, lower is better) or BLEU (higher is better)."""
    device = next(model.parameters()).device
    by_task: dict[str, tuple[list[str], list[str]]] = {}
    samples: dict[str, list[dict[str, str]]] = {}
    was_training = model.training
    model.eval()
    bar = _bar(len(rows), "dev decode", progress)
    with torch.no_grad():
        for ex in rows:
            prompt = build_prompt(
                ex, tokenizer=tokenizer, registry=registry, use_chat_template=use_chat_template
            )
            ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]], device=device)
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                use_cache=True,
            )
            hyp = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
            refs, hyps = by_task.setdefault(ex.task, ([], []))
            refs.append(ex.output or "")
            hyps.append(hyp)
            if len(samples.setdefault(ex.task, [])) < 2:
                samples[ex.task].append({"id": ex.id, "ref": ex.output or "", "hyp": hyp})
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    model.train(was_training)
    result: dict[str, dict[str, Any]] = {}
    for task, (refs, hyps) in by_task.items():
        metric = get_task(task, registry).metric
        if metric == "wer":
            score = float(corpus_wer(refs, hyps).wer)
        else:
            score = float(corpus_bleu(refs, hyps).score)
        result[task] = {"metric": metric, "score": score, "n": len(refs), "samples": samples[task]}
    return result


def decode_rows(rows: list[Example], per_task: int) -> list[Example]:
    """The first ``per_task`` dev rows of each task: the rows that get greedy decodes."""
    picked: dict[str, list[Example]] = {}
    for ex in rows:
        if len(picked.setdefault(ex.task, [])) < per_task:
            picked[ex.task].append(ex)
    return [e for v in picked.values() for e in v]


def describe_dev_eval(rows: list[Example], toks: list[TokenizedExample], cfg: TrainConfig) -> str:
    """What :func:`evaluate_dev` is about to do, for the console ("dev loss on 150 rows, 12 decodes")."""
    n_dec = len(decode_rows(rows, cfg.eval.decode_rows)) if cfg.eval.decode_rows > 0 else 0
    return (
        f"dev loss on {min(len(toks), cfg.eval.max_rows)} rows, {n_dec} greedy decodes of <= "
        f"{cfg.eval.max_new_tokens} tokens"
    )


def evaluate_dev(
    model: torch.nn.Module,
    tok: PreTrainedTokenizerBase,
    rows: list[Example],
    toks: list[TokenizedExample],
    cfg: TrainConfig,
    registry: TaskRegistry | None,
    progress: bool = False,
) -> dict:
    losses = dev_loss(
        model, toks[: cfg.eval.max_rows], tok.pad_token_id, cfg.data.max_seq_len, progress=progress
    )
    scores = {}
    if cfg.eval.decode_rows > 0:
        scores = decode_and_score(
            model,
            tok,
            decode_rows(rows, cfg.eval.decode_rows),
            registry=registry,
            use_chat_template=cfg.data.use_chat_template,
            max_new_tokens=cfg.eval.max_new_tokens,
            progress=progress,
        )
    per_task = {}
    for t in dict.fromkeys(list(losses) + list(scores)):
        per_task[t] = {"loss": losses.get(t), **scores.get(t, {})}
    return {"per_task": per_task}


def eval_line(ev: dict) -> str:
    parts = []
    for t, d in ev["per_task"].items():
        s = f"{t} loss {d['loss']:.3f}" if d.get("loss") is not None else t
        if d.get("score") is not None:
            s += f" {d['metric']} {d['score']:.3f}"
        parts.append(s)
    return "; ".join(parts)
