"""Atomic training checkpoints: written under a temporary name, renamed when complete.

A checkpoint is ``<out>/checkpoints/checkpoint-<step:08d>/`` holding Accelerate's ``save_state``
(model, optimizer, registered scheduler, every process's RNG states, sharded as the backend needs:
DDP, FSDP2 or DeepSpeed) plus ``trainer_state.json`` (optimizer step, data position, config
fingerprint), written last. The directory is built as ``.tmp-checkpoint-<step>`` and renamed in one
``os.replace`` (atomic on POSIX), so a ``kill -9`` at any moment leaves either the previous complete
checkpoint or the new one, never half of one: :func:`latest_checkpoint` only considers
``checkpoint-*`` names that hold ``trainer_state.json``, and stale ``.tmp-*`` directories are
removed on the next save.

Two kinds of tensors confuse Accelerate's safetensors save, which drops every tensor that seems to
share storage with an earlier one and logs "Removed shared tensor {...}" for them:
- zero-element tensors (the zero-width shared expert of an up-cycled Qwen2-MoE, one (0, H) / (H, 0)
  trio per MoE layer) all have a null storage, so they look shared with each other. Dropping them
  made ``--resume`` fail ("Missing key(s) ... shared_expert"), because safetensors' loader does not
  count null storages as shared and expects every one of them in the file. Each gets a storage of
  its own before the save (:func:`_prepare_state_for_safetensors`).
- tied weights (``lm_head`` = ``embed_tokens``) really are shared; the alias is dropped here, as
  Accelerate would drop it, and safetensors' loader re-ties it. So the save prints nothing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from neko.io import atomic_write_json

__all__ = ["STATE_FILE", "checkpoint_root", "latest_checkpoint", "save_checkpoint", "load_checkpoint"]

STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^checkpoint-(\d{8})$")


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def _complete(root: Path) -> list[tuple[int, Path]]:
    out = []
    if not root.is_dir():
        return out
    for p in root.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_dir() and (p / STATE_FILE).is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint, or None. Temporary and incomplete directories are ignored."""
    done = _complete(checkpoint_root(output_dir))
    return done[-1][1] if done else None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _prepare_state_for_safetensors(
    models: list[Any], weights: list[dict[str, Any]], _output_dir: str
) -> None:
    """``save_state`` pre-hook (see the module docstring): own storage for zero-element tensors,
    tied aliases dropped. ``weights[i]`` is the state dict Accelerate is about to save for ``models[i]``."""
    import torch

    if len(weights) != len(models):  # FSDP / DeepSpeed write their own shards: nothing to adjust
        return
    for model, state in zip(models, weights, strict=True):
        seen: dict[int, str] = {}
        for name, param in model.named_parameters(remove_duplicate=False):
            if id(param) in seen and name in state and seen[id(param)] in state:
                del state[name]  # a tied alias: stored once, under the name seen first
            seen.setdefault(id(param), name)
        for name, t in state.items():
            if isinstance(t, torch.Tensor) and t.numel() == 0:
                state[name] = torch.empty(1, dtype=t.dtype, device=t.device)[:0].view(t.shape)


def save_checkpoint(
    accelerator: Any, output_dir: str | Path, step: int, state: dict[str, Any], keep: int = 2
) -> Path:
    """Collective: every process calls it. Returns the final checkpoint path."""
    root = checkpoint_root(output_dir)
    final = root / f"checkpoint-{step:08d}"
    tmp = root / f".tmp-checkpoint-{step:08d}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-checkpoint-*"):
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    hook = accelerator.register_save_state_pre_hook(_prepare_state_for_safetensors)
    try:
        accelerator.save_state(str(tmp))
    finally:
        hook.remove()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_json(tmp / STATE_FILE, state)
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        for _, old in _complete(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Any, path: str | Path) -> dict[str, Any]:
    """Restore model/optimizer/scheduler/RNG from ``path``; returns its trainer state."""
    path = Path(path)
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise ValueError(f"{path}: not a complete checkpoint (no {STATE_FILE}); resume from another one")
    accelerator.load_state(str(path))
    return json.loads(state_file.read_text(encoding="utf-8"))
