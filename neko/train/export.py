"""The final model export: output_dir becomes a plain ``AutoModelForCausalLM`` directory.

Staged in ``.tmp-final`` and moved in file by file; ``neko_train.json`` is removed first and written
last, so a directory with ``neko_train.json`` always holds a complete model. LoRA runs keep the
adapter in ``adapter/`` and save the merged weights.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from neko.train.config import TrainConfig, config_to_dict

__all__ = ["SUMMARY_FILE", "save_final"]

SUMMARY_FILE = "neko_train.json"


def save_final(acc: Any, model: Any, tok: Any, cfg: TrainConfig, registry: Any, result: Any) -> None:
    """Write the final model into output_dir (staged in a temp dir, files moved in, summary last)."""
    from neko.io import OutputError

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
    acc: Any, model: Any, tok: Any, cfg: TrainConfig, registry: Any, result: Any, state_dict: Any, out: Path
) -> None:
    """Main process only: stage the model in ``.tmp-final``, move its files in, write the summary last."""
    from neko.io import atomic_write_json
    from neko.tasks import save_prompt_config

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
