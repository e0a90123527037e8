"""A checkpoint is data, never code: resume from real tiny-run checkpoints, planted pickles, damaged files."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from neko.train.checkpoint import STATE_FILE, latest_checkpoint
from neko.train.config import config_from_dict
from neko.train.loop import train


def _cfg(out, train_file):
    return config_from_dict(
        {
            "mode": "dense",
            "model": {"base": "tiny:llama"},
            "data": {"train": [{"path": str(train_file)}], "max_seq_len": 256},
            "batch": {"micro_batch_size": 2},
            "optim": {"lr": 3e-3, "warmup_ratio": 0.5, "scheduler": "cosine"},
            "max_steps": 4,
            "save_every": 2,
            "keep_checkpoints": 5,
            "log": {"progress": False},
            "output_dir": str(out),
        }
    )


class _Payload:
    """Unpickling this runs code: it writes ``marker``. What an attacker would put in a checkpoint."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, train_file):
    """A real 4-step run that kept its step-2 checkpoint; its final weights are the reference."""
    out = tmp_path_factory.mktemp("ref") / "run"
    train(_cfg(out, train_file))
    return out


def _resumable_copy(finished_run, dest):
    """A fresh output dir holding only the finished run's step-2 checkpoint (as if killed after it)."""
    ckpt = latest_checkpoint(finished_run)
    assert ckpt is not None and ckpt.name == "checkpoint-00000002"
    shutil.copytree(ckpt, dest / "checkpoints" / ckpt.name)
    return dest / "checkpoints" / ckpt.name


def _same_weights(a, b) -> bool:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_checkpoints_hold_no_pickle_and_resume_bit_identically(finished_run, tmp_path, train_file):
    ckpt = _resumable_copy(finished_run, tmp_path)
    assert not list(ckpt.glob("custom_checkpoint_*"))
    assert json.loads((ckpt / STATE_FILE).read_text())["scheduler"]["last_epoch"] == 2
    res = train(_cfg(tmp_path, train_file), resume=True)
    assert res.resumed_from == str(ckpt) and res.steps == 4
    assert _same_weights(tmp_path, finished_run)


def test_a_checkpoint_without_scheduler_state_rebuilds_it_from_the_step(finished_run, tmp_path, train_file):
    ckpt = _resumable_copy(finished_run, tmp_path)
    state = json.loads((ckpt / STATE_FILE).read_text())
    del state["scheduler"]  # as written before neko kept the scheduler in JSON
    (ckpt / STATE_FILE).write_text(json.dumps(state))
    train(_cfg(tmp_path, train_file), resume=True)
    assert _same_weights(tmp_path, finished_run)


def test_a_planted_pickle_is_refused_and_never_run(finished_run, tmp_path, train_file):
    ckpt = _resumable_copy(finished_run, tmp_path)
    marker = tmp_path / "pwned"
    torch.save(_Payload(marker), ckpt / "custom_checkpoint_0.pkl")
    with pytest.raises(ValueError, match=r"custom_checkpoint_0\.pkl: neko does not load pickled state"):
        train(_cfg(tmp_path, train_file), resume=True)
    assert not marker.exists()

    (ckpt / "custom_checkpoint_0.pkl").unlink()
    torch.save(_Payload(marker), ckpt / "optimizer.bin")  # Accelerate's own file: loaded weights-only
    with pytest.raises(ValueError, match=r"optimizer\.bin \(data\.pkl\): names builtins\.exec; not loaded"):
        train(_cfg(tmp_path, train_file), resume=True)
    assert not marker.exists()


def test_a_truncated_or_garbled_checkpoint_file_is_named(finished_run, tmp_path, train_file):
    ckpt = _resumable_copy(finished_run, tmp_path)
    good = (ckpt / "optimizer.bin").read_bytes()
    (ckpt / "optimizer.bin").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"optimizer\.bin: damaged \(RuntimeError"):
        train(_cfg(tmp_path, train_file), resume=True)
    (ckpt / "optimizer.bin").write_bytes(good)
    (ckpt / STATE_FILE).write_text('{"step": 2, "fingerpr')
    with pytest.raises(ValueError, match=rf"{STATE_FILE}: damaged trainer state \(JSONDecodeError"):
        train(_cfg(tmp_path, train_file), resume=True)
