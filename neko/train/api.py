"""``train(config) -> TrainResult``: multi-task fine-tuning on Accelerate (DDP, FSDP2, DeepSpeed ZeRO).

Design choices:
- **Accelerate does the distributed work** (process groups, gradient sync, mixed precision, sharded
  checkpoints); this loop only decides what each process feeds (:mod:`neko.train.plan`) and the loss.
  Launch it with ``accelerate launch --config_file configs/accelerate/<backend>.yaml``.
- **Loss** = sum of answer-token losses / answer tokens of the whole optimizer step (all processes,
  all accumulation steps; see :mod:`neko.train.loss`), plus ``routing.aux_coef`` x load-balancing loss
  for MoE modes. A step's gradient is therefore independent of how it is split over devices.
- **Modes**: neko = task-guided routing around each forward (``task_routing``), moe = the same MoE
  with plain top-K, dense = full fine-tune, lora = PEFT on top of ``lora.base_mode``.
- **Stops**: end of the schedule, ``max_steps``, ``time_budget_s`` (checkpoint + final model saved),
  or a NaN/inf loss (stop with the step and the batch's example ids; the last good checkpoint stays).
- **The output directory is the model**: ``save_pretrained`` weights (LoRA merged; the adapter kept in
  ``adapter/``), tokenizer, ``neko_prompts.json`` and ``neko_train.json``, loadable by plain
  ``AutoModelForCausalLM``; checkpoints live under ``checkpoints/``, logs in ``train_log.jsonl``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from neko.train.config import TrainConfig, config_to_dict

__all__ = ["TrainResult", "TrainingDiverged", "train"]

SUMMARY_FILE = "neko_train.json"
# Fields that must not change across --resume: they decide the data order and the schedule.
_RESUME_KEYS = ("mode", "model", "upcycle", "lora", "data", "optim", "batch", "routing", "seed", "max_steps")


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf. The last complete checkpoint (if any) is untouched."""


@dataclass
class TrainResult:
    output_dir: str
    model_dir: str
    steps: int
    total_steps: int
    stop_reason: str  # completed | max_steps | time_budget
    final_loss: float | None
    loss_per_task: dict[str, float]
    tokens: int
    tokens_per_s: float
    elapsed_s: float
    real_token_share: float
    mixture: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] | None = None
    checkpoint: str | None = None
    resumed_from: str | None = None


def _lr_lambda(total: int, warmup: int, kind: str, min_ratio: float):
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress
        return min_ratio + (1 - min_ratio) * decay

    return f


def _optimizer(model: Any, cfg: TrainConfig) -> Any:
    import torch

    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            # norms and biases are not decayed (the usual AdamW practice, as in HF Trainer)
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps)


def _fingerprint(cfg: TrainConfig) -> dict[str, Any]:
    d = config_to_dict(cfg)
    return {k: d[k] for k in _RESUME_KEYS}


def _resume_diff(saved: dict[str, Any], now: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(saved) | set(now)):
        a, b = saved.get(k), now.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _resume_diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: checkpoint {a!r}, now {b!r}")
    return out


def _routing_load(logits_per_layer: list[Any], task_ids: Any, forced: Any, top_k: int, n_tasks: int) -> Any:
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


def train(cfg: TrainConfig, *, resume: bool = False) -> TrainResult:
    """Train per ``cfg``; with ``resume`` continue from the newest complete checkpoint in output_dir."""
    import torch
    from accelerate import Accelerator, PartialState
    from accelerate.utils import parse_flag_from_env, set_seed

    problems = cfg.validate()
    if problems:
        from neko.train.config import ConfigError

        raise ConfigError(problems)

    from neko.data.mixture import build_mixture
    from neko.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
    from neko.train.loss import per_task_sums, token_losses
    from neko.train.modeling import build_model, load_tokenizer, resolve_base
    from neko.train.monitor import Monitor
    from neko.train.plan import DataPlan

    t_start = time.time()
    out = Path(cfg.output_dir)
    precision = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[cfg.precision]
    # The process count decides grad_accum (batch_tokens), which Accelerator() needs at construction;
    # PartialState is the shared state Accelerator() then reuses (so honour ACCELERATE_USE_CPU here).
    ga = cfg.grad_accum_for(PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU")).num_processes)
    acc = Accelerator(mixed_precision=precision, gradient_accumulation_steps=ga)
    set_seed(cfg.seed)

    registry = None
    if cfg.data.tasks_config:
        from neko.tasks import load_task_config

        registry = load_task_config(cfg.data.tasks_config)
    base_dir = resolve_base(cfg.model.base)
    tok = load_tokenizer(base_dir)
    mixture, report = build_mixture(
        cfg.data.train,
        tok,
        max_seq_len=cfg.data.max_seq_len,
        truncation=cfg.data.truncation,
        tasks=cfg.data.tasks,
        task_weights=cfg.data.task_weights,
        skip_invalid=cfg.data.skip_invalid,
        registry=registry,
        use_chat_template=cfg.data.use_chat_template,
        seed=cfg.seed,
    )
    data_tasks = mixture.tasks()
    model, routed = build_model(cfg, base_dir, data_tasks)
    task_names = routed + [t for t in data_tasks if t not in routed]
    task_index = {t: i for i, t in enumerate(task_names)}
    mode = cfg.routed_mode
    top_k = int(getattr(model.config, "num_experts_per_tok", 0) or 0) if mode in ("neko", "moe") else 0

    plan = DataPlan(
        mixture,
        max_seq_len=cfg.data.max_seq_len,
        packing=cfg.data.packing,
        micro_batch_size=cfg.batch.micro_batch_size,
        processes=acc.num_processes,
        grad_accum=ga,
        seed=cfg.seed,
        pad_id=tok.pad_token_id,
        task_index=task_index,
    )
    spe = plan.steps_per_epoch(cfg.optim.epochs)
    total_steps = cfg.max_steps if cfg.max_steps > 0 else sum(spe)
    warmup = math.ceil(cfg.optim.warmup_ratio * total_steps)

    dev_rows, dev_tok = [], []
    if cfg.data.dev:
        from neko.data.mixture import tokenize_example
        from neko.data.schema import read_jsonl

        for ex in read_jsonl(cfg.data.dev, skip_invalid=cfg.data.skip_invalid, errors=[]):
            if (
                ex.output is None
                or (cfg.data.tasks and ex.task not in cfg.data.tasks)
                or ex.task not in data_tasks
            ):
                continue
            te, _ = tokenize_example(
                ex,
                tok,
                max_seq_len=cfg.data.max_seq_len,
                truncation=cfg.data.truncation,
                registry=registry,
                use_chat_template=cfg.data.use_chat_template,
            )
            if te is not None:
                dev_rows.append(ex)
                dev_tok.append(te)

    optimizer = _optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(total_steps, warmup, cfg.optim.scheduler, cfg.optim.min_lr_ratio)
    )
    if acc.state.deepspeed_plugin is not None:
        _configure_deepspeed(acc, model, cfg)
    model, optimizer = acc.prepare(model, optimizer)
    # The scheduler is stepped by us once per optimizer step (Accelerate's wrapper would step it once
    # per process); it is checkpointed through register_for_checkpointing.
    acc.register_for_checkpointing(scheduler)
    unwrapped = acc.unwrap_model(model)

    step = 0
    resumed_from = None
    fingerprint = _fingerprint(cfg)
    if resume:
        ckpt = latest_checkpoint(out)
        if ckpt is None:
            if acc.is_main_process:
                print(f"--resume: no complete checkpoint in {out / 'checkpoints'}; starting from scratch")
        else:
            from neko.train.config import ConfigError

            saved = json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
            diff = _resume_diff(saved.get("fingerprint", {}), fingerprint)
            if diff:
                raise ConfigError(
                    [f"cannot resume {ckpt} with a different setting: {d}" for d in diff]
                    + ["resume with the original config, or train into a new --output-dir"]
                )
            state = load_checkpoint(acc, ckpt)
            step = int(state["step"])
            resumed_from = str(ckpt)

    monitor = Monitor(
        out,
        enabled=acc.is_main_process,
        total_steps=total_steps,
        start_step=step,
        progress=cfg.log.progress,
        tensorboard=cfg.log.tensorboard,
    )
    if acc.is_main_process:
        from neko.io import atomic_write_text

        out.mkdir(parents=True, exist_ok=True)
        import yaml

        atomic_write_text(out / "train_config.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        monitor.write(f"data: {report.summary()}")
        monitor.write(
            f"mode {cfg.mode}, {total_steps} steps x {plan.rows_per_step} rows of <= "
            f"{cfg.data.max_seq_len} tokens, {acc.num_processes} process(es), grad_accum {ga}"
        )

    n_tasks = len(task_names)
    window = _Window(n_tasks)
    run_total = run_real = 0
    last_loss, last_task_loss = None, {}
    stop_reason = "completed" if cfg.max_steps <= 0 else "max_steps"
    eval_result = None
    last_ckpt = resumed_from
    t_loop = time.time()
    elapsed_before = float(state["elapsed_s"]) if resumed_from else 0.0
    model.train()

    while step < total_steps:
        epoch, k = plan.locate(step, spe)
        micro = plan.micro_batches(epoch, k, acc.process_index)
        local = torch.tensor([sum(plan.label_tokens(b) for b in micro)], device=acc.device)
        n_global = max(1, int(acc.reduce(local, reduction="sum").item()))
        scale = acc.num_processes * ga / n_global
        for mi, b in enumerate(micro):
            with acc.accumulate(model):
                inputs = {
                    kk: (v.to(acc.device) if hasattr(v, "to") else v) for kk, v in b.model_inputs().items()
                }
                labels = b.labels.to(acc.device)
                real = (b.seq_ids >= 0).to(acc.device)
                aux = None
                load = None
                if mode == "neko":
                    from neko.model.routing import task_routing

                    rid = b.task_ids.clone()
                    rid[rid >= len(routed)] = -1
                    with task_routing(unwrapped, rid.to(acc.device)) as ctx:
                        logits = model(**inputs).logits
                        loss_tok, mask = token_losses(logits, labels)
                        if cfg.routing.aux_loss != "off":
                            aux = ctx.balance_loss(real, cfg.routing.aux_loss)
                        total = _check_and_total(acc, loss_tok, aux, scale, cfg, step, epoch, mi, b)
                        acc.backward(total)  # inside the block: checkpointed layers recompute routing
                    load = _routing_load(ctx.router_logits, b.task_ids, ctx.forced_experts, top_k, n_tasks)
                else:
                    moe = mode == "moe"
                    outputs = model(**inputs, output_router_logits=True) if moe else model(**inputs)
                    loss_tok, mask = token_losses(outputs.logits, labels)
                    if moe and outputs.router_logits:
                        rl = list(outputs.router_logits)
                        if cfg.routing.aux_loss != "off":
                            from neko.model.balance import load_balancing_loss

                            aux = load_balancing_loss(rl, real, top_k, mode="standard")
                        load = _routing_load(rl, b.task_ids, None, top_k, n_tasks)
                    total = _check_and_total(acc, loss_tok, aux, scale, cfg, step, epoch, mi, b)
                    acc.backward(total)
                grad_norm = None
                if acc.sync_gradients and cfg.optim.max_grad_norm > 0:
                    grad_norm = acc.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            sums, counts = per_task_sums(loss_tok, mask, b.task_ids, n_tasks)
            window.add(
                float(loss_tok.detach().sum()),
                int(mask.sum()),
                sums,
                counts,
                None if aux is None else float(aux.detach()),
                load,
                b.real_tokens,
                b.total_tokens,
            )
        scheduler.step()
        step += 1
        lr = scheduler.get_last_lr()[0]

        if step % cfg.log.every == 0 or step == total_steps:
            rec = window.flush(acc, task_names)
            rec.update(
                step=step,
                epoch=epoch,
                lr=lr,
                grad_norm=None if grad_norm is None else float(grad_norm),
                elapsed_s=elapsed_before + time.time() - t_loop,
            )
            run_total += rec.pop("_total_tokens")
            run_real += rec["real_tokens"]
            last_loss, last_task_loss = rec["loss"], rec["loss_per_task"]
            monitor.record(rec)
            monitor.update(cfg.log.every if step % cfg.log.every == 0 else step % cfg.log.every, rec)
        else:
            monitor.update(0)

        if cfg.eval.every and step % cfg.eval.every == 0 and step < total_steps and dev_tok:
            ev = _evaluate(unwrapped, tok, dev_rows, dev_tok, cfg, registry)
            monitor.record({"kind": "eval", "step": step, **ev})
            monitor.write(f"step {step} dev: " + _eval_line(ev))
        over_budget = cfg.time_budget_s > 0 and (elapsed_before + time.time() - t_loop) >= cfg.time_budget_s
        flag = acc.reduce(torch.tensor([float(over_budget)], device=acc.device), reduction="sum")
        stop_now = bool(flag.item() > 0) and step < total_steps
        if (cfg.save_every and step % cfg.save_every == 0 and step < total_steps) or stop_now:
            state = {
                "step": step,
                "epoch": epoch,
                "step_in_epoch": k + 1,
                "fingerprint": fingerprint,
                "elapsed_s": elapsed_before + time.time() - t_loop,
                "total_steps": total_steps,
            }
            last_ckpt = str(save_checkpoint(acc, out, step, state, keep=cfg.keep_checkpoints))
        if stop_now:
            stop_reason = "time_budget"
            monitor.write(
                f"time budget of {cfg.time_budget_s:.0f}s reached at step {step}/{total_steps}: "
                f"checkpoint saved, `neko train ... --resume` continues"
            )
            break
    monitor.update(0)

    if dev_tok:
        eval_result = _evaluate(unwrapped, tok, dev_rows, dev_tok, cfg, registry)
        monitor.record({"kind": "eval", "step": step, **eval_result})
    elapsed = time.time() - t_start
    loop_s = max(1e-9, time.time() - t_loop)
    result = TrainResult(
        output_dir=str(out),
        model_dir=str(out),
        steps=step,
        total_steps=total_steps,
        stop_reason=stop_reason,
        final_loss=last_loss,
        loss_per_task=last_task_loss,
        tokens=run_real,
        tokens_per_s=run_real / loop_s,
        elapsed_s=elapsed,
        real_token_share=(run_real / run_total) if run_total else 0.0,
        mixture=report.to_dict(),
        eval=eval_result,
        checkpoint=last_ckpt,
        resumed_from=resumed_from,
    )
    _save_final(acc, model, tok, cfg, registry, result)
    monitor.close()
    if acc.is_main_process and cfg.log.progress:
        Monitor.summary_table(result)
    acc.end_training()
    return result


def _check_and_total(
    acc: Any,
    loss_tok: Any,
    aux: Any,
    scale: float,
    cfg: TrainConfig,
    step: int,
    epoch: int,
    micro: int,
    batch: Any,
) -> Any:
    import torch

    main = loss_tok.sum() * scale
    bad = torch.tensor(
        [0.0 if bool(torch.isfinite(main)) and (aux is None or bool(torch.isfinite(aux))) else 1.0],
        device=main.device,
    )
    if acc.reduce(bad, reduction="sum").item() > 0:
        ids = [i for row in batch.example_ids for i in row]
        raise TrainingDiverged(
            f"loss is NaN/inf at optimizer step {step + 1} (epoch {epoch}, micro batch {micro}, process "
            f"{acc.process_index}); example ids in this process's batch: {ids[:20]}"
            f"{' ...' if len(ids) > 20 else ''}. Nothing was saved after the last good checkpoint; lower "
            "optim.lr, check these rows, or try precision=fp32"
        )
    if aux is not None and cfg.routing.aux_coef > 0:
        return main + cfg.routing.aux_coef * aux
    return main


class _Window:
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


def _evaluate(
    model: Any, tok: Any, rows: list[Any], toks: list[Any], cfg: TrainConfig, registry: Any
) -> dict:
    from neko.train.evaluate import decode_and_score, dev_loss

    losses = dev_loss(model, toks[: cfg.eval.max_rows], tok.pad_token_id, cfg.data.max_seq_len)
    picked: dict[str, list[Any]] = {}
    for ex in rows:
        if len(picked.setdefault(ex.task, [])) < cfg.eval.decode_rows:
            picked[ex.task].append(ex)
    scores = {}
    if cfg.eval.decode_rows > 0:
        scores = decode_and_score(
            model,
            tok,
            [e for v in picked.values() for e in v],
            registry=registry,
            use_chat_template=cfg.data.use_chat_template,
            max_new_tokens=cfg.eval.max_new_tokens,
        )
    per_task = {}
    for t in dict.fromkeys(list(losses) + list(scores)):
        per_task[t] = {"loss": losses.get(t), **scores.get(t, {})}
    return {"per_task": per_task}


def _eval_line(ev: dict) -> str:
    parts = []
    for t, d in ev["per_task"].items():
        s = f"{t} loss {d['loss']:.3f}" if d.get("loss") is not None else t
        if d.get("score") is not None:
            s += f" {d['metric']} {d['score']:.3f}"
        parts.append(s)
    return "; ".join(parts)


def _configure_deepspeed(acc: Any, model: Any, cfg: TrainConfig) -> None:
    """DeepSpeed needs the micro batch size up front (there is no prepared DataLoader to infer it
    from), and under ZeRO-3 each MoE block must be a leaf module: ZeRO-3 fetches parameters per
    submodule as hooks fire, and an expert that receives no tokens on one rank would never fire, so
    ranks would wait on different all-gathers and hang. As a leaf, the whole block is gathered at once."""
    ds = acc.state.deepspeed_plugin
    ds.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg.batch.micro_batch_size
    ds.deepspeed_config["gradient_accumulation_steps"] = acc.gradient_accumulation_steps
    # DeepSpeed clips inside its step (Accelerate's clip_grad_norm_ defers to it)
    ds.deepspeed_config["gradient_clipping"] = cfg.optim.max_grad_norm
    if ds.zero_stage == 3 and cfg.routed_mode in ("neko", "moe"):
        from deepspeed.utils import set_z3_leaf_modules

        block_types = {type(m) for m in model.modules() if type(m).__name__.endswith("SparseMoeBlock")}
        if block_types:
            set_z3_leaf_modules(model, list(block_types))


def _save_final(acc: Any, model: Any, tok: Any, cfg: TrainConfig, registry: Any, result: TrainResult) -> None:
    """Write the final model into output_dir (staged in a temp dir, files moved in, summary last)."""
    from neko.io import atomic_write_json
    from neko.tasks import save_prompt_config

    out = Path(cfg.output_dir)
    state_dict = acc.get_state_dict(model)
    acc.wait_for_everyone()
    if acc.is_main_process:
        stage = out / ".tmp-final"
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)
        net = acc.unwrap_model(model)
        if cfg.mode == "lora":
            net.save_pretrained(str(stage / "adapter"))
            net = net.merge_and_unload()
            state_dict = None  # the merged weights are in the module now
        net.config.use_cache = True
        net.save_pretrained(str(stage), state_dict=state_dict, safe_serialization=True)
        net.config.use_cache = False
        tok.save_pretrained(str(stage))
        save_prompt_config(stage, registry, use_chat_template=cfg.data.use_chat_template)
        (out / SUMMARY_FILE).unlink(missing_ok=True)  # absent while files change: the dir is incomplete
        for f in stage.iterdir():
            dest = out / f.name
            if dest.is_dir():
                shutil.rmtree(dest)
            os.replace(f, dest)
        shutil.rmtree(stage, ignore_errors=True)
        summary = {**asdict(result), "config": config_to_dict(cfg), "mode": cfg.mode}
        atomic_write_json(out / SUMMARY_FILE, summary)
    acc.wait_for_everyone()
