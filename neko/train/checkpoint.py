"""Atomic training checkpoints: written under a temporary name, renamed when complete.

A checkpoint is ``<out>/checkpoints/checkpoint-<step:08d>/`` holding Accelerate's ``save_state``
(model, optimizer, registered scheduler, every process's RNG states, sharded as the backend needs:
DDP, FSDP2 or DeepSpeed) plus ``trainer_state.json`` (optimizer step, data position, config
fingerprint), written last. The directory is built as ``.tmp-checkpoint-<step>`` and renamed in one
``os.replace`` (atomic on POSIX), so a ``kill -9`` at any moment leaves either the previous complete
checkpoint or the new one, never half of one: :func:`latest_checkpoint` only considers
``checkpoint-*`` names that hold ``trainer_state.json``, and stale ``.tmp-*`` directories are
removed on the next save.

Nothing in a checkpoint may run code when it is loaded: a checkpoint directory is data a user may
have copied from anywhere. Accelerate loads what it wrote with ``torch.load(weights_only=True)`` except
the objects registered for checkpointing (``custom_checkpoint_N.pkl``, plain pickles), so neko
registers none: its own state (step, data position, the LR scheduler's state) is JSON in
``trainer_state.json``, and a checkpoint holding a ``custom_checkpoint_*.pkl`` is refused unread.
Other loaders a resume reaches unpickle without that restriction (FSDP's sharded ``.metadata`` and
DeepSpeed's ``*_states.pt``), so every file is first proven to name no code
(:mod:`neko.model.safeload`), for every launcher config.

Two kinds of tensors confuse Accelerate's safetensors save, which drops every tensor that seems to
share storage with an earlier one and logs "Removed shared tensor {...}" for them:
- zero-element tensors (the zero-width shared expert of an up-cycled Qwen2-MoE, one (0, H) / (H, 0)
  trio per MoE layer) all have a null storage, so they look shared with each other. Dropping them
  made ``--resume`` fail ("Missing key(s) ... shared_expert"), because safetensors' loader does not
  count null storages as shared and expects every one of them in the file. Each gets a storage of
  its own before the save (:func:`_prepare_state_for_safetensors`).
- tied weights (``lm_head`` = ``embed_tokens``) really are shared; the alias is dropped here, as
  Accelerate would drop it, and safetensors' loader re-ties it. So the save prints nothing.

Every file of a checkpoint (and of the final model, :mod:`neko.train.export`) gets the mode a new
file gets from ``open`` under the user's umask (:func:`neko.io.settle_file_modes`).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from neko.io import OutputError, atomic_write_json, settle_file_modes
from neko.model.safeload import DamagedFile, UnsafeCheckpoint, check_checkpoint_dir

__all__ = [
    "STATE_FILE",
    "checkpoint_root",
    "latest_checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "read_state",
    "restore_scheduler",
]

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
        try:
            accelerator.save_state(str(tmp))
        finally:
            hook.remove()
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            atomic_write_json(tmp / STATE_FILE, state)
            settle_file_modes(tmp)
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
    except Exception as e:  # a full disk surfaces as OSError, SafetensorError or torch's RuntimeError
        shutil.rmtree(tmp, ignore_errors=True)
        last = latest_checkpoint(output_dir)
        kept = f"the last complete checkpoint {last} is intact" if last else "no earlier checkpoint exists"
        raise OutputError(
            f"cannot write checkpoint {final} ({_reason(e)}); free disk space or choose another "
            f"--output-dir; {kept}"
        ) from None
    accelerator.wait_for_everyone()
    return final


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_RETRY = "delete that checkpoint directory to resume from an earlier one, or train afresh with --overwrite"


def read_state(path: str | Path) -> dict[str, Any]:
    """The trainer state of checkpoint ``path``; a damaged file is a ValueError naming it."""
    state_file = Path(path) / STATE_FILE
    if not state_file.is_file():
        raise ValueError(f"{path}: not a complete checkpoint (no {STATE_FILE}); resume from another one")
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
        int(state["step"])
    except (ValueError, KeyError, TypeError) as e:  # JSONDecodeError, UnicodeDecodeError included
        raise ValueError(f"{state_file}: damaged trainer state ({type(e).__name__}: {e}); {_RETRY}") from None
    return state


def load_checkpoint(accelerator: Any, path: str | Path) -> dict[str, Any]:
    """Restore model/optimizer/RNG from ``path``; returns its trainer state (with the scheduler's)."""
    path = Path(path)
    state = read_state(path)
    pickles = sorted(path.glob("custom_checkpoint_*.pkl"))
    if pickles:
        raise ValueError(
            f"{pickles[0]}: neko does not load pickled state (unpickling a file can run any code in it). "
            "The file was written by an older neko or placed there by someone else; delete it to "
            "resume (the LR schedule is then rebuilt from the step), or train afresh with --overwrite"
        )
    try:  # every file any loader below would unpickle (Accelerate, FSDP's DCP, DeepSpeed) is proven first
        check_checkpoint_dir(path)
    except DamagedFile as e:
        raise ValueError(f"{e}; {_RETRY}") from None
    except UnsafeCheckpoint as e:
        raise ValueError(
            f"{e}; not loaded: a checkpoint file may only hold tensors and plain data; {_RETRY}"
        ) from None
    try:
        accelerator.load_state(str(path))
    except Exception as e:  # whatever a damaged file makes torch/safetensors raise: name the file
        bad = _damaged_file(path)
        where = f"{bad}: damaged" if bad is not None else f"{path}: cannot restore this checkpoint"
        raise ValueError(f"{where} ({_reason(e)}); {_RETRY}") from None
    return state


def _reason(e: Exception) -> str:
    if isinstance(e, pickle.UnpicklingError):  # torch's text would suggest loading it unsafely
        return "UnpicklingError: it holds objects other than tensors, which neko never unpickles"
    first = _ANSI.sub("", (str(e).strip().splitlines() or [""])[0])
    return f"{type(e).__name__}: {first}"


def _damaged_file(path: Path) -> Path | None:
    """The first file of checkpoint ``path`` that does not load on its own (after a failed load).

    Each is read the way Accelerate reads it: safetensors, or ``torch.load(weights_only=True)``,
    which refuses anything but tensors and plain containers instead of running it."""
    from accelerate.utils import load
    from safetensors import safe_open

    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        try:
            if f.suffix == ".safetensors":
                with safe_open(str(f), framework="pt"):
                    pass
            elif f.suffix in (".bin", ".pkl", ".pt"):
                load(f, map_location="cpu")
            elif f.suffix == ".json":
                json.loads(f.read_text(encoding="utf-8"))
        except Exception:  # any failure to load marks the file
            return f
    return None


def restore_scheduler(scheduler: Any, state: dict[str, Any]) -> None:
    """Put the LR scheduler where the checkpoint's optimizer step left it.

    ``state["scheduler"]`` is its ``state_dict()`` saved as JSON. Checkpoints from before that have
    none; a LambdaLR is a function of the step, so its state is rebuilt from the step and the lr the
    optimizer state restored."""
    saved = state.get("scheduler")
    if saved is None:
        step = int(state["step"])
        lrs = [g["lr"] for g in scheduler.optimizer.param_groups]
        saved = {"last_epoch": step, "_step_count": step + 1, "_last_lr": lrs}
    scheduler.load_state_dict({**scheduler.state_dict(), **saved})
