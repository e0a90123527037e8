"""Two CPU processes (gloo) under `accelerate launch` give the single-process loss at the same global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import yaml

from neko.train.monitor import read_log


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_ddp_matches_single_process(tmp_path, train_file):
    base = {
        "mode": "neko",  # exercises task-guided routing under DDP too
        "model": {"base": "tiny:mixtral"},
        "upcycle": {"num_experts": 4},
        # the aux loss is a per-micro-batch statistic (not additive over tokens), so it would differ
        "routing": {"aux_loss": "off"},
        "data": {"train": [{"path": str(train_file)}], "max_seq_len": 256},
        "max_steps": 3,
        "log": {"progress": False},
    }
    one = {**base, "batch": {"micro_batch_size": 4}, "output_dir": str(tmp_path / "one")}
    two = {**base, "batch": {"micro_batch_size": 2}, "output_dir": str(tmp_path / "two")}
    (tmp_path / "one.yaml").write_text(yaml.safe_dump(one))
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(two))
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, "-m", "neko", "train", str(tmp_path / "one.yaml")],
        check=True,
        env=env,
        capture_output=True,
        timeout=600,
    )
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        "-m",
        "neko",
        "train",
        str(tmp_path / "two.yaml"),
    ]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "2 process(es)" in res.stderr
    a = [r for r in read_log(tmp_path / "one") if "loss" in r]
    b = [r for r in read_log(tmp_path / "two") if "loss" in r]
    assert len(a) == len(b) == 3
    for ra, rb in zip(a, b, strict=True):
        assert rb["loss"] == pytest.approx(ra["loss"], abs=1e-5)
        assert rb["answer_tokens"] == ra["answer_tokens"]
        assert rb["loss_per_task"] == pytest.approx(ra["loss_per_task"], abs=1e-5)
