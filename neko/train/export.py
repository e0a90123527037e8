"""The final model export: output_dir becomes a plain ``AutoModelForCausalLM`` directory.

Staged in ``.tmp-final`` and moved in file by file; ``neko_train.json`` is removed first and written
last, so a directory with ``neko_train.json`` always holds a complete model. LoRA runs keep the
adapter in ``adapter/`` and save the merged weights. Every file gets the umask's mode
(:func:`neko.io.settle_file_modes`).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neko.io import OutputError, atomic_write_json, settle_file_modes
from neko.tasks import TaskRegistry, save_prompt_config
from neko.train.config import TrainConfig, config_to_dict

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator
    from transformers import PreTrainedTokenizerBase

__all__ = ["SUMMARY_FILE", "TrainResult", "save_final"]

SUMMARY_FILE = "neko_train.json"


@dataclass
class TrainResult:
    """What a run did: written into ``neko_train.json`` with the config, and returned by ``train``."""

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
    precision: str = "fp32"  # the path the run computed in (TrainConfig.precision resolved)
    precision_reason: str = ""


def save_final(
    acc: Accelerator,
    model: torch.nn.Module,
    tok: PreTrainedTokenizerBase,
    cfg: TrainConfig,
    registry: TaskRegistry | None,
    result: TrainResult,
) -> None:
    """Write the final model into output_dir (staged in a temp dir, files moved in, summary last)."""
    out = Path(cfg.output_dir)
    state_dict = acc.get_state_dict(model)
    acc.wait_for_everyone()
    if acc.is_main_process:
        try:
            _write_final(acc, model, tok, cfg, registry, result, state_dict, out)
        except Exception as e:  # a full disk surfaces as OSError, SafetensorError or torch's RuntimeError
            shutil.rmtree(out / ".tmp-final", ignore_errors=True)
            last = (
                f"; `neko train ... --resume` continues from {result.checkpoint}" if result.checkpoint else ""
            )
            reason = (str(e).strip().splitlines() or [""])[0]
            raise OutputError(
                f"cannot write the final model into {out} ({type(e).__name__}: {reason}); free disk space "
                f"or choose another --output-dir{last}"
            ) from None
    acc.wait_for_everyone()


def _write_final(
    acc: Accelerator,
    model: torch.nn.Module,
    tok: PreTrainedTokenizerBase,
    cfg: TrainConfig,
    registry: TaskRegistry | None,
    result: TrainResult,
    state_dict: dict[str, Any],
    out: Path,
) -> None:
    """Main process only: stage the model in ``.tmp-final``, move its files in, write the summary last."""
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
    settle_file_modes(stage)
    (out / SUMMARY_FILE).unlink(missing_ok=True)  # absent while files change: the dir is incomplete
    for f in stage.iterdir():
        dest = out / f.name
        if dest.is_dir():
            shutil.rmtree(dest)
        os.replace(f, dest)
    shutil.rmtree(stage, ignore_errors=True)
    summary = {**asdict(result), "config": config_to_dict(cfg), "mode": cfg.mode}
    atomic_write_json(out / SUMMARY_FILE, summary)
