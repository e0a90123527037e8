"""The training loop, ``train(config) -> TrainResult``: multi-task fine-tuning on Accelerate (DDP, FSDP2, DeepSpeed ZeRO).

Design choices:
- **Accelerate does the distributed work** (process groups, gradient sync, mixed precision, sharded
  checkpoints); this loop only decides what each process feeds (:mod:`neko.train.plan`) and the loss.
  Launch it with ``accelerate launch --config_file configs/accelerate/<backend>.yaml``.
- **Loss** = sum of answer-token losses / answer tokens of the whole optimizer step (all processes,
  all accumulation steps; see :mod:`neko.train.loss`), plus ``routing.aux_coef`` x load-balancing loss
  for MoE modes. A step's gradient is therefore independent of how it is split over devices.
- **Precision**: ``precision: auto`` (the default) is bf16 autocast with fp32 master weights where
  the GPU or CPU computes bf16 natively, else fp32 (:mod:`neko.model.precision`); the header and
  ``neko_train.json`` name the path a run took.
- **Arithmetic per learned token**: the LM head and the cross-entropy run only at positions that
  predict an answer token (:func:`neko.train.loss.answer_head`), and AdamW is torch's fused kernel
  on a plain CPU or CUDA process (:func:`_fused_adamw`); bench/bench_train_speed.py measures both.
- **Modes**: neko = task-guided routing around each forward (``task_routing``), moe = the same MoE
  with plain top-K, dense = full fine-tune, lora = PEFT on top of ``lora.base_mode``.
- **Stops**: end of the schedule, ``max_steps``, ``time_budget_s`` (checkpoint + final model saved),
  or a NaN/inf loss (stop with the step and the batch's example ids; the last good checkpoint stays).
- **Host syncs only at the log interval.** Per micro batch nothing is copied to the CPU: loss sums,
  routing load and the NaN check accumulate on the device (:mod:`neko.train.stepstats`) and are
  read when a record is written or a checkpoint saved. A NaN/inf loss is therefore noticed at the
  next record or checkpoint, not at once; no checkpoint or final model is ever written after one.
- **Reading order**: :func:`train` (the loop, ~30 lines) -> :func:`optimizer_step` ->
  :func:`forward_backward` (one function for every mode) -> :func:`log` / :func:`evaluate` /
  :func:`save` / :func:`finish`; :func:`setup` builds the :class:`Run` they share.
- **The output directory is the model**: ``save_pretrained`` weights (LoRA merged; the adapter kept in
  ``adapter/``), tokenizer, ``neko_prompts.json`` and ``neko_train.json``, loadable by plain
  ``AutoModelForCausalLM``; checkpoints live under ``checkpoints/``, logs in ``train_log.jsonl``.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType, parse_flag_from_env, set_seed

from neko.io import atomic_write_text
from neko.model.balance import load_balancing_loss
from neko.model.precision import Precision, resolve_precision
from neko.model.routing import task_index, task_routing, without_expert
from neko.schema import Example, read_jsonl
from neko.tasks import TaskRegistry, load_task_config
from neko.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    read_state,
    restore_scheduler,
    save_checkpoint,
)
from neko.train.config import ConfigError, TrainConfig, config_to_dict
from neko.train.evaluate import describe_dev_eval, eval_line, evaluate_dev
from neko.train.export import SUMMARY_FILE, TrainResult, save_final
from neko.train.loss import answer_head, per_task_sums
from neko.train.mixture import MixtureReport, TaskMixture, TokenizedExample, build_mixture, tokenize_example
from neko.train.modeling import build_model, load_tokenizer, resolve_base
from neko.train.monitor import Monitor
from neko.train.packing import Batch
from neko.train.plan import DataPlan
from neko.train.stepstats import StepWindow, TrainingDiverged, routing_load

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["TrainResult", "TrainingDiverged", "train", "forward_backward"]

# Fields that must not change across --resume: they decide the data order and the schedule.
_RESUME_KEYS = ("mode", "model", "upcycle", "lora", "data", "optim", "batch", "routing", "seed", "max_steps")


@dataclass
class Run:
    """Everything :func:`setup` builds for the loop, and the loop's progress (the fields at the end)."""

    cfg: TrainConfig
    acc: Accelerator
    model: torch.nn.Module  # as prepared by Accelerate (DDP/FSDP/DeepSpeed wrapper, or the model)
    unwrapped: torch.nn.Module  # the transformers (or PEFT) model itself: routing hooks, evaluation, saving
    tokenizer: PreTrainedTokenizerBase
    registry: TaskRegistry | None  # user task registry (data.tasks_config) or None for the built-in tasks
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    horizon: _Horizon
    plan: DataPlan
    steps_per_epoch: list[int]
    total_steps: int
    grad_accum: int
    task_names: list[str]  # task id i = task_names[i]; the first routed_tasks have an expert
    routed_tasks: int
    top_k: int  # experts per token (MoE modes), 0 for dense
    mixture_report: MixtureReport
    dev_rows: list[Example]
    dev_examples: list[TokenizedExample]
    monitor: Monitor
    window: StepWindow
    fingerprint: dict[str, Any]
    say: Callable[[str], None] | None  # progress messages for slow phases, None when quiet
    t_start: float
    precision: Precision  # what cfg.precision resolved to on this machine, and why
    step: int = 0  # optimizer steps done
    epoch: int = 0
    step_in_epoch: int = 0
    grad_norm: Any = None
    resumed_from: str | None = None
    last_checkpoint: str | None = None
    elapsed_before: float = 0.0  # loop seconds of the runs this one resumes
    t_loop: float = 0.0
    real_tokens: int = 0
    total_tokens: int = 0
    last_loss: float | None = None
    last_task_loss: dict[str, float] = field(default_factory=dict)

    def loop_seconds(self) -> float:
        return self.elapsed_before + time.time() - self.t_loop


def train(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False) -> TrainResult:
    """Train per ``cfg``; with ``resume`` continue from the newest complete checkpoint in output_dir.

    An output_dir that already holds a finished model is refused unless ``resume`` or ``overwrite``:
    a new run would otherwise rewrite its config and log at once and leave a directory whose files
    describe two different runs if it then failed."""
    run = setup(cfg, resume=resume, overwrite=overwrite)
    stop_reason = "completed" if cfg.max_steps <= 0 else "max_steps"
    run.t_loop = time.time()
    run.model.train()
    try:
        while run.step < run.total_steps:
            optimizer_step(run)
            log(run)
            if (
                cfg.eval.every
                and run.step % cfg.eval.every == 0
                and run.step < run.total_steps
                and run.dev_examples
            ):
                run.monitor.write(f"step {run.step} dev: " + eval_line(evaluate(run)))
            stop_now = over_time_budget(run)
            if stop_now or (cfg.save_every and run.step % cfg.save_every == 0 and run.step < run.total_steps):
                save(run)
            if stop_now:
                stop_reason = "time_budget"
                run.monitor.write(
                    f"time budget of {cfg.time_budget_s:.0f}s reached at step {run.step}/{run.total_steps}: "
                    f"checkpoint saved, `neko train ... --resume` continues"
                )
                break
    except TrainingDiverged as e:
        run.monitor.record({"kind": "error", "step": e.step, "error": str(e)})
        run.monitor.write(f"error: {e}")
        run.monitor.close()
        raise
    run.monitor.update(0)
    return finish(run, stop_reason)


def optimizer_step(run: Run) -> None:
    """One optimizer step: this process's micro batches through :func:`forward_backward`, then the
    (clipped) update and the schedule."""
    cfg, acc = run.cfg, run.acc
    run.epoch, run.step_in_epoch = run.plan.locate(run.step, run.steps_per_epoch)
    micro_batches = run.plan.micro_batches(run.epoch, run.step_in_epoch, acc.process_index)
    # Answer tokens of the whole step, all processes: the loss is normalised by them (see loss.py).
    answer_tokens = sum(run.plan.label_tokens(b) for b in micro_batches)
    if acc.num_processes > 1:
        answer_tokens = int(
            acc.reduce(torch.tensor([answer_tokens], device=acc.device), reduction="sum").item()
        )
    scale = acc.num_processes * run.grad_accum / max(1, answer_tokens)
    for micro, batch in enumerate(micro_batches):
        with acc.accumulate(run.model):
            forward_backward(run, batch, scale, micro)
            run.grad_norm = None
            if acc.sync_gradients and cfg.optim.max_grad_norm > 0:
                run.grad_norm = acc.clip_grad_norm_(run.model.parameters(), cfg.optim.max_grad_norm)
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
    if cfg.time_budget_s > 0:
        run.horizon.update(
            run.step + 1, time.time() - run.t_loop, cfg.time_budget_s - (run.t_loop - run.t_start)
        )
        run.monitor.set_total(run.horizon.total)
    run.scheduler.step()
    run.step += 1


def forward_backward(run: Run, batch: Batch, scale: float, micro: int = 0) -> torch.Tensor:
    """Forward, loss and backward of one micro batch, the same for every mode; returns the loss
    that was backpropagated. The modes differ only in where router logits come from: the
    task-guided routing context (neko: the hook records them) or the model's output (moe)."""
    cfg, acc = run.cfg, run.acc
    mode = cfg.routed_mode
    inputs = {k: (v.to(acc.device) if hasattr(v, "to") else v) for k, v in batch.model_inputs().items()}
    real = (batch.seq_ids >= 0).to(acc.device)  # (B, T) tokens that are not padding
    if mode == "neko":
        routed_ids = without_expert(batch.task_ids, run.routed_tasks)
        routing = task_routing(run.unwrapped, routed_ids.to(acc.device))
    else:
        routing = nullcontext()
    # the head projects only positions that predict an answer token (neko.train.loss.answer_head)
    with routing as ctx, answer_head(run.unwrapped, batch.labels) as head:
        outputs = run.model(**inputs, output_router_logits=True) if mode == "moe" else run.model(**inputs)
        loss_tok, mask = head.losses(outputs.logits)  # (B, T) float32, (B, T) bool
        if mode == "neko":
            router_logits = ctx.router_logits  # (B*T, E) per sparse layer, recorded by the router hook
        else:
            router_logits = list(outputs.router_logits or []) if mode == "moe" else []
        aux = None
        if router_logits and cfg.routing.aux_loss != "off":
            aux = (
                ctx.balance_loss(real, cfg.routing.aux_loss)
                if ctx is not None
                else load_balancing_loss(router_logits, real, run.top_k, mode="standard")
            )
        loss = loss_tok.sum() * scale
        if aux is not None and cfg.routing.aux_coef > 0:
            loss = loss + cfg.routing.aux_coef * aux
        acc.backward(loss)  # inside the routing context: checkpointed layers recompute their routing
    load = None
    if router_logits:
        forced = ctx.forced_experts if ctx is not None else None
        load = routing_load(router_logits, batch.task_ids, forced, run.top_k, len(run.task_names))
    run.window.add(
        loss_tok,
        mask,
        per_task_sums(loss_tok, mask, batch.task_ids, len(run.task_names)),
        aux,
        load,
        batch.real_tokens,
        batch.total_tokens,
        where=(run.step, run.epoch, micro, [i for row in batch.example_ids for i in row]),
    )
    return loss


def log(run: Run) -> None:
    """At the log interval (and the last step): one record of the window since the last one. The
    window's flush is the loop's host sync, and where a NaN/inf loss is noticed."""
    every = run.cfg.log.every
    if run.step % every and run.step != run.total_steps:
        run.monitor.update(0)
        return
    rec = run.window.flush(run.acc, run.task_names)
    grad_norm = None if run.grad_norm is None else float(run.grad_norm)
    lr = run.scheduler.get_last_lr()[0]
    rec.update(step=run.step, epoch=run.epoch, lr=lr, grad_norm=grad_norm, elapsed_s=run.loop_seconds())
    run.total_tokens += rec.pop("_total_tokens")
    run.real_tokens += rec["real_tokens"]
    run.last_loss, run.last_task_loss = rec["loss"], rec["loss_per_task"]
    run.monitor.record(rec)
    run.monitor.update(every if run.step % every == 0 else run.step % every, rec)


def evaluate(run: Run) -> dict[str, Any]:
    """Dev loss per task and scored greedy decodes of the dev set (data.dev), logged."""
    ev = evaluate_dev(
        run.unwrapped,
        run.tokenizer,
        run.dev_rows,
        run.dev_examples,
        run.cfg,
        run.registry,
        progress=bool(run.say),
    )
    run.monitor.record({"kind": "eval", "step": run.step, **ev})
    return ev


def over_time_budget(run: Run) -> bool:
    """Whether any process has used up time_budget_s (per invocation, setup included: "--resume"
    with the same config gets a fresh budget)."""
    budget = run.cfg.time_budget_s
    if budget <= 0:
        return False
    over = float((time.time() - run.t_start) >= budget)
    flag = run.acc.reduce(torch.tensor([over], device=run.acc.device), reduction="sum")
    return bool(flag.item() > 0) and run.step < run.total_steps


def save(run: Run) -> None:
    """A resumable checkpoint of this step; never of a model whose loss went NaN/inf."""
    run.window.raise_if_diverged(run.acc)
    state = {
        "step": run.step,
        "epoch": run.epoch,
        "step_in_epoch": run.step_in_epoch + 1,
        "fingerprint": run.fingerprint,
        "elapsed_s": run.loop_seconds(),
        "total_steps": run.total_steps,
        "scheduler": run.scheduler.state_dict(),
    }
    out = Path(run.cfg.output_dir)
    run.last_checkpoint = str(save_checkpoint(run.acc, out, run.step, state, keep=run.cfg.keep_checkpoints))


def finish(run: Run, stop_reason: str) -> TrainResult:
    """The final dev evaluation (unless eval.every = 0), the summary and the model directory."""
    cfg = run.cfg
    eval_result = None
    if run.dev_examples and cfg.eval.every > 0:  # eval.every = 0: no dev evaluation, not even this one
        run.monitor.write(f"final dev evaluation: {describe_dev_eval(run.dev_rows, run.dev_examples, cfg)}")
        eval_result = evaluate(run)
    loop_s = max(1e-9, time.time() - run.t_loop)
    result = TrainResult(
        output_dir=str(Path(cfg.output_dir)),
        model_dir=str(Path(cfg.output_dir)),
        steps=run.step,
        total_steps=run.total_steps,
        stop_reason=stop_reason,
        final_loss=run.last_loss,
        loss_per_task=run.last_task_loss,
        tokens=run.real_tokens,
        tokens_per_s=run.real_tokens / loop_s,
        elapsed_s=time.time() - run.t_start,
        real_token_share=(run.real_tokens / run.total_tokens) if run.total_tokens else 0.0,
        mixture=run.mixture_report.to_dict(),
        eval=eval_result,
        checkpoint=run.last_checkpoint,
        resumed_from=run.resumed_from,
        precision=run.precision.name,
        precision_reason=run.precision.reason,
    )
    save_final(run.acc, run.model, run.tokenizer, cfg, run.registry, result)
    run.monitor.close()
    if run.acc.is_main_process and cfg.log.progress:
        Monitor.summary_table(result)
    run.acc.end_training()
    return result


def setup(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False) -> Run:
    """Check the config, then build in this order (the order fixes the random streams): Accelerator
    and seed, tokenizer and mixture, model, data plan, dev set, optimizer and schedule, Accelerate's
    wrapping, the resumed state, and the monitor with the run's header."""
    _check_config(cfg, resume=resume, overwrite=overwrite)
    t_start = time.time()
    acc, grad_accum, precision = _setup_accelerator(cfg)
    registry = load_task_config(cfg.data.tasks_config) if cfg.data.tasks_config else None
    base_dir = resolve_base(cfg.model.base)
    tokenizer = load_tokenizer(base_dir)
    mixture, report = _setup_mixture(cfg, tokenizer, registry)
    data_tasks = mixture.tasks()
    say = _stderr if acc.is_main_process and cfg.log.progress else None  # loading/up-cycling take a while
    model, routed = build_model(cfg, base_dir, data_tasks, say=say)
    index = task_index(routed, data_tasks)  # routed tasks first: task id i = index's i-th task
    plan = _setup_data(cfg, mixture, acc, grad_accum, tokenizer.pad_token_id, index)
    steps_per_epoch = plan.steps_per_epoch(cfg.optim.epochs)
    total_steps = cfg.max_steps if cfg.max_steps > 0 else sum(steps_per_epoch)
    dev_rows, dev_examples = _dev_set(cfg, tokenizer, registry, data_tasks)
    moe = cfg.routed_mode in ("neko", "moe")
    top_k = int(getattr(model.config, "num_experts_per_tok", 0) or 0) if moe else 0
    optimizer, scheduler, horizon = _setup_optimizer(model, cfg, total_steps, fused=_fused_adamw(acc))
    model, optimizer = _prepare(acc, model, optimizer, cfg)
    run = Run(
        cfg=cfg,
        acc=acc,
        model=model,
        unwrapped=acc.unwrap_model(model),
        tokenizer=tokenizer,
        registry=registry,
        optimizer=optimizer,
        scheduler=scheduler,
        horizon=horizon,
        plan=plan,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        grad_accum=grad_accum,
        task_names=list(index),
        routed_tasks=len(routed),
        top_k=top_k,
        mixture_report=report,
        dev_rows=dev_rows,
        dev_examples=dev_examples,
        monitor=None,  # type: ignore[arg-type]  # opened below, once the start step is known
        window=StepWindow(len(index), acc.device),
        fingerprint=_fingerprint(cfg),
        say=say,
        t_start=t_start,
        precision=precision,
    )
    if resume:
        _restore(run)
    _open_monitor(run)
    return run


def _check_config(cfg: TrainConfig, *, resume: bool, overwrite: bool) -> None:
    """The config's own problems, and an output_dir holding a finished model that is not to be reused."""
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


def _setup_accelerator(cfg: TrainConfig) -> tuple[Accelerator, int, Precision]:
    """(the Accelerator, gradient accumulation steps, the resolved precision), with every random
    generator seeded."""
    # The process count decides grad_accum (batch_tokens), which Accelerator() needs at construction;
    # PartialState is the shared state Accelerator() then reuses (so honour ACCELERATE_USE_CPU here).
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    grad_accum = cfg.grad_accum_for(state.num_processes)
    precision = resolve_precision(cfg.precision, state.device.type)
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision.name]
    shared = AcceleratorState._shared_state
    if state.num_processes == 1 and shared.get("_mixed_precision", mixed) != mixed:
        # Accelerate keeps one precision per process and refuses another; a single process that
        # trained before (a benchmark, a notebook) may train again in another precision.
        AcceleratorState._reset_state()
    acc = Accelerator(mixed_precision=mixed, gradient_accumulation_steps=grad_accum)
    set_seed(cfg.seed)
    return acc, grad_accum, precision


def _setup_mixture(
    cfg: TrainConfig, tokenizer: PreTrainedTokenizerBase, registry: TaskRegistry | None
) -> tuple[TaskMixture, MixtureReport]:
    """The tokenized training rows of every task (data.train) and the report of what was kept."""
    return build_mixture(
        cfg.data.train,
        tokenizer,
        max_seq_len=cfg.data.max_seq_len,
        truncation=cfg.data.truncation,
        tasks=cfg.data.tasks,
        task_weights=cfg.data.task_weights,
        skip_invalid=cfg.data.skip_invalid,
        registry=registry,
        use_chat_template=cfg.data.use_chat_template,
        seed=cfg.seed,
    )


def _setup_data(
    cfg: TrainConfig,
    mixture: TaskMixture,
    acc: Accelerator,
    grad_accum: int,
    pad_id: int,
    index: dict[str, int],
) -> DataPlan:
    """Which rows each process feeds at each step."""
    return DataPlan(
        mixture,
        max_seq_len=cfg.data.max_seq_len,
        packing=cfg.data.packing,
        micro_batch_size=cfg.batch.micro_batch_size,
        processes=acc.num_processes,
        grad_accum=grad_accum,
        seed=cfg.seed,
        pad_id=pad_id,
        task_index=index,
    )


def _setup_optimizer(
    model: torch.nn.Module, cfg: TrainConfig, total_steps: int, fused: bool = False
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR, _Horizon]:
    """AdamW and its LR schedule over a horizon of ``total_steps`` (re-estimated under a time budget)."""
    optimizer = _optimizer(model, cfg, fused=fused)
    horizon = _Horizon(total_steps, cfg.optim.warmup_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(horizon, cfg.optim.scheduler, cfg.optim.min_lr_ratio)
    )
    return optimizer, scheduler, horizon


def _prepare(
    acc: Accelerator, model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig
) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """Accelerate's wrapping of model and optimizer for the backend (DDP, FSDP2, DeepSpeed).

    The scheduler stays out of it: we step it once per optimizer step (Accelerate's wrapper would
    step it once per process), and its state goes into trainer_state.json, where
    register_for_checkpointing would pickle it, and loading a pickle can run code (see
    neko.train.checkpoint)."""
    if acc.state.deepspeed_plugin is not None:
        _configure_deepspeed(acc, model, cfg)
    return acc.prepare(model, optimizer)


def _open_monitor(run: Run) -> None:
    """The monitor from the run's start step on; the main process writes the config and the header."""
    cfg, acc, out = run.cfg, run.acc, Path(run.cfg.output_dir)
    run.monitor = Monitor(
        out,
        enabled=acc.is_main_process,
        total_steps=run.total_steps,
        start_step=run.step,
        progress=cfg.log.progress,
        tensorboard=cfg.log.tensorboard,
    )
    if not acc.is_main_process:
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "train_config.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    run.monitor.write(f"data: {run.mixture_report.summary()}")
    run.monitor.write(
        f"mode {cfg.mode}, {run.total_steps} steps x {run.plan.rows_per_step} rows of <= "
        f"{cfg.data.max_seq_len} tokens, {acc.num_processes} process(es), grad_accum {run.grad_accum}"
    )
    run.monitor.write(run.precision.describe())
    if run.dev_examples and cfg.eval.every <= 0:
        run.monitor.write("data.dev is set but eval.every is 0: no dev evaluation (eval.every=N evaluates)")


def _dev_set(
    cfg: TrainConfig, tokenizer: PreTrainedTokenizerBase, registry: TaskRegistry | None, data_tasks: list[str]
) -> tuple[list[Example], list[TokenizedExample]]:
    """The dev rows (data.dev) of the tasks being trained, and their tokenized form."""
    rows, examples = [], []
    if not cfg.data.dev:
        return rows, examples
    for ex in read_jsonl(cfg.data.dev, skip_invalid=cfg.data.skip_invalid, errors=[]):
        if (
            ex.output is None
            or (cfg.data.tasks and ex.task not in cfg.data.tasks)
            or ex.task not in data_tasks
        ):
            continue
        tokenized, _ = tokenize_example(
            ex,
            tokenizer,
            max_seq_len=cfg.data.max_seq_len,
            truncation=cfg.data.truncation,
            registry=registry,
            use_chat_template=cfg.data.use_chat_template,
        )
        if tokenized is not None:
            rows.append(ex)
            examples.append(tokenized)
    return rows, examples


def _restore(run: Run) -> None:
    """Continue from the newest complete checkpoint, refusing one made with other settings."""
    out = Path(run.cfg.output_dir)
    ckpt = latest_checkpoint(out)
    if ckpt is None:
        if run.acc.is_main_process:
            print(f"--resume: no complete checkpoint in {out / 'checkpoints'}; starting from scratch")
        return
    diff = _resume_diff(read_state(ckpt).get("fingerprint", {}), run.fingerprint)
    if diff:
        raise ConfigError(
            [f"cannot resume {ckpt} with a different setting: {d}" for d in diff]
            + ["resume with the original config, or train into a new --output-dir"]
        )
    state = load_checkpoint(run.acc, ckpt)
    restore_scheduler(run.scheduler, state)
    run.step = int(state["step"])
    run.resumed_from = run.last_checkpoint = str(ckpt)
    run.elapsed_before = float(state["elapsed_s"])


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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


def _fused_adamw(acc: Accelerator) -> bool:
    """Whether AdamW runs as torch's fused kernel: one pass over each parameter's memory instead of a
    dozen elementwise ops (the CPU quick start's 246M-parameter step spent ~2 s in the for-loop AdamW,
    5x the fused one: bench/NOTES.md). Only on plain tensors of a CPU or CUDA process, single or DDP:
    FSDP2 swaps the parameters for DTensors and DeepSpeed runs its own optimizer step."""
    plain = (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)
    return acc.distributed_type in plain and acc.device.type in ("cpu", "cuda")


def _optimizer(model: torch.nn.Module, cfg: TrainConfig, fused: bool = False) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            # norms and biases are not decayed (the usual AdamW practice, as in HF Trainer)
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fused = fused and all(p.is_floating_point() for p in decay + no_decay)
    return torch.optim.AdamW(
        groups, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps, fused=fused or None
    )


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


def _configure_deepspeed(acc: Accelerator, model: torch.nn.Module, cfg: TrainConfig) -> None:
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
