"""Atomic checkpoints and exact resume: a real `kill -9` mid-run, then `neko train --resume`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from neko.train.checkpoint import STATE_FILE, latest_checkpoint
from neko.train.monitor import read_log


def test_half_written_checkpoints_are_never_picked(tmp_path):
    root = tmp_path / "checkpoints"
    good = root / "checkpoint-00000004"
    good.mkdir(parents=True)
    (good / STATE_FILE).write_text("{}")
    (root / ".tmp-checkpoint-00000006").mkdir()  # killed while writing
    (root / ".tmp-checkpoint-00000006" / STATE_FILE).write_text("{}")
    (root / "checkpoint-00000008").mkdir()  # no state file: incomplete
    (root / "checkpoint-x").mkdir()
    assert latest_checkpoint(tmp_path) == good
    assert latest_checkpoint(tmp_path / "nothing") is None


def _config(path: Path, train_file: Path, out: Path) -> Path:
    cfg = {
        "mode": "neko",
        "model": {"base": "tiny:mixtral"},
        "upcycle": {"num_experts": 4},
        "data": {"train": [{"path": str(train_file)}], "max_seq_len": 256},
        "batch": {"micro_batch_size": 2},
        "optim": {"epochs": 2, "lr": 1e-3},
        "save_every": 2,
        "keep_checkpoints": 1,
        "log": {"progress": False},
        "output_dir": str(out),
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def _losses(out: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_log(out) if "loss" in r]


@pytest.mark.slow
def test_kill_dash_9_then_resume_reproduces_the_uninterrupted_loss_curve(tmp_path, train_file):
    ref_out, run_out = tmp_path / "ref", tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "neko", "train"]
    subprocess.run(
        cmd + [str(_config(tmp_path / "ref.yaml", train_file, ref_out))],
        check=True,
        env=env,
        capture_output=True,
        timeout=600,
    )
    ref = _losses(ref_out)
    assert len(ref) >= 8

    cfg = _config(tmp_path / "run.yaml", train_file, run_out)
    proc = subprocess.Popen(cmd + [str(cfg)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    try:
        # kill right after the second complete checkpoint, i.e. mid-run, at whatever the process is doing
        while time.time() < deadline:
            ck = latest_checkpoint(run_out)
            if ck is not None and int(ck.name.split("-")[1]) >= 4:
                break
            if proc.poll() is not None:
                pytest.fail("training finished before it could be killed")
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (run_out / "neko_train.json").exists()
    killed_at = len(_losses(run_out))
    assert killed_at < len(ref)

    res = subprocess.run(cmd + [str(cfg), "--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    got = _losses(run_out)
    assert [s for s, _ in got] == [s for s, _ in ref]
    for (s, a), (_, b) in zip(got, ref, strict=True):
        assert a == pytest.approx(b, abs=1e-6), f"step {s}: resumed {a} vs uninterrupted {b}"
    from safetensors.torch import load_file

    wa, wb = load_file(run_out / "model.safetensors"), load_file(ref_out / "model.safetensors")
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-6
