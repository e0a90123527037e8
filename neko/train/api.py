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

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neko.train.config import TrainConfig, config_to_dict

__all__ = ["TrainResult", "TrainingDiverged", "train"]

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


class _Horizon:
    """The schedule's length, re-estimated during a time-budgeted run.

    With ``time_budget_s`` the run stops long before ``total`` steps on a slow machine, and a schedule
    laid out for ``total`` would leave it in warm-up (the quick start on 2 CPU cores reaches about 5%
    of one epoch). So after every step the horizon becomes the steps that fit the budget at the speed
    measured so far (never more than ``total``), and warm-up/decay follow it. Without a budget it is
    fixed and the schedule is exactly the configured one (and resume is exact)."""

    def __init__(self, total: int, warmup_ratio: float):
        self.cap, self.ratio = total, warmup_ratio
        self.total, self.warmup = total, math.ceil(warmup_ratio * total)

    def update(self, steps_done: int, loop_elapsed: float, loop_budget: float) -> None:
        if steps_done < 1 or loop_elapsed <= 0 or loop_budget <= 0:
            return
        fit = int(steps_done * loop_budget / loop_elapsed)
        self.total = max(steps_done + 1, min(self.cap, fit))
        self.warmup = math.ceil(self.ratio * self.total)


def _lr_lambda(horizon: _Horizon, kind: str, min_ratio: float):
    def f(step: int) -> float:
        total, warmup = horizon.total, horizon.warmup
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


def train(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False) -> TrainResult:
    """Train per ``cfg``; with ``resume`` continue from the newest complete checkpoint in output_dir.

    An output_dir that already holds a finished model is refused unless ``resume`` or ``overwrite``:
    a new run would otherwise rewrite its config and log at once and leave a directory whose files
    describe two different runs if it then failed."""
    import torch
    from accelerate import Accelerator, PartialState
    from accelerate.utils import parse_flag_from_env, set_seed

    from neko.train.config import ConfigError
    from neko.train.export import SUMMARY_FILE

    problems = cfg.validate()
    if problems:
        raise ConfigError(problems)
    if not (resume or overwrite) and (Path(cfg.output_dir) / SUMMARY_FILE).is_file():
        raise ConfigError(
            [
                f"{cfg.output_dir} already holds a trained model ({SUMMARY_FILE}): --resume continues "
                "its run, --overwrite trains afresh in its place, or choose a new --output-dir"
            ]
        )

    from neko.train.checkpoint import (
        latest_checkpoint,
        load_checkpoint,
        read_state,
        restore_scheduler,
        save_checkpoint,
    )
    from neko.train.evaluate import describe_dev_eval, eval_line, evaluate_dev
    from neko.train.export import save_final
    from neko.train.loss import per_task_sums, token_losses
    from neko.train.mixture import build_mixture
    from neko.train.modeling import build_model, load_tokenizer, resolve_base
    from neko.train.monitor import Monitor
    from neko.train.plan import DataPlan
    from neko.train.stepstats import StepWindow, routing_load

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
    say = _stderr if acc.is_main_process and cfg.log.progress else None  # loading/up-cycling take a while
    model, routed = build_model(cfg, base_dir, data_tasks, say=say)
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

    dev_rows, dev_tok = [], []
    if cfg.data.dev:
        from neko.schema import read_jsonl
        from neko.train.mixture import tokenize_example

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
    horizon = _Horizon(total_steps, cfg.optim.warmup_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(horizon, cfg.optim.scheduler, cfg.optim.min_lr_ratio)
    )
    if acc.state.deepspeed_plugin is not None:
        _configure_deepspeed(acc, model, cfg)
    model, optimizer = acc.prepare(model, optimizer)
    # The scheduler is stepped by us once per optimizer step (Accelerate's wrapper would step it once
    # per process). Its state goes into trainer_state.json: register_for_checkpointing would pickle it,
    # and loading a pickle can run code (see neko.train.checkpoint).
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
            saved = read_state(ckpt)
            diff = _resume_diff(saved.get("fingerprint", {}), fingerprint)
            if diff:
                raise ConfigError(
                    [f"cannot resume {ckpt} with a different setting: {d}" for d in diff]
                    + ["resume with the original config, or train into a new --output-dir"]
                )
            state = load_checkpoint(acc, ckpt)
            restore_scheduler(scheduler, state)
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
        if dev_tok and cfg.eval.every <= 0:
            monitor.write("data.dev is set but eval.every is 0: no dev evaluation (eval.every=N evaluates)")

    n_tasks = len(task_names)
    window = StepWindow(n_tasks)
    run_total = run_real = 0
    last_loss, last_task_loss = None, {}
    stop_reason = "completed" if cfg.max_steps <= 0 else "max_steps"
    eval_result = None
    last_ckpt = resumed_from
    t_loop = time.time()
    elapsed_before = float(state["elapsed_s"]) if resumed_from else 0.0
    model.train()

    try:
        while step < total_steps:
            epoch, k = plan.locate(step, spe)
            micro = plan.micro_batches(epoch, k, acc.process_index)
            local = torch.tensor([sum(plan.label_tokens(b) for b in micro)], device=acc.device)
            n_global = max(1, int(acc.reduce(local, reduction="sum").item()))
            scale = acc.num_processes * ga / n_global
            for mi, b in enumerate(micro):
                with acc.accumulate(model):
                    inputs = {
                        kk: (v.to(acc.device) if hasattr(v, "to") else v)
                        for kk, v in b.model_inputs().items()
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
                        load = routing_load(ctx.router_logits, b.task_ids, ctx.forced_experts, top_k, n_tasks)
                    else:
                        moe = mode == "moe"
                        outputs = model(**inputs, output_router_logits=True) if moe else model(**inputs)
                        loss_tok, mask = token_losses(outputs.logits, labels)
                        if moe and outputs.router_logits:
                            rl = list(outputs.router_logits)
                            if cfg.routing.aux_loss != "off":
                                from neko.model.balance import load_balancing_loss

                                aux = load_balancing_loss(rl, real, top_k, mode="standard")
                            load = routing_load(rl, b.task_ids, None, top_k, n_tasks)
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
            if cfg.time_budget_s > 0:
                horizon.update(step + 1, time.time() - t_loop, cfg.time_budget_s - (t_loop - t_start))
                monitor.set_total(horizon.total)
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
                ev = evaluate_dev(unwrapped, tok, dev_rows, dev_tok, cfg, registry, progress=bool(say))
                monitor.record({"kind": "eval", "step": step, **ev})
                monitor.write(f"step {step} dev: " + eval_line(ev))
            # per invocation (setup included): "--resume" with the same config gets a fresh budget
            over_budget = cfg.time_budget_s > 0 and (time.time() - t_start) >= cfg.time_budget_s
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
                    "scheduler": scheduler.state_dict(),
                }
                last_ckpt = str(save_checkpoint(acc, out, step, state, keep=cfg.keep_checkpoints))
            if stop_now:
                stop_reason = "time_budget"
                monitor.write(
                    f"time budget of {cfg.time_budget_s:.0f}s reached at step {step}/{total_steps}: "
                    f"checkpoint saved, `neko train ... --resume` continues"
                )
                break
    except TrainingDiverged as e:
        monitor.record({"kind": "error", "step": step + 1, "error": str(e)})
        monitor.write(f"error: {e}")
        monitor.close()
        raise
    monitor.update(0)

    if dev_tok and cfg.eval.every > 0:  # eval.every = 0: no dev evaluation, not even this one
        monitor.write(f"final dev evaluation: {describe_dev_eval(dev_rows, dev_tok, cfg)}")
        eval_result = evaluate_dev(unwrapped, tok, dev_rows, dev_tok, cfg, registry, progress=bool(say))
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
    save_final(acc, model, tok, cfg, registry, result)
    monitor.close()
    if acc.is_main_process and cfg.log.progress:
        Monitor.summary_table(result)
    acc.end_training()
    return result


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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
