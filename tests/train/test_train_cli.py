"""`neko train` CLI: bad configs get one message listing every problem; --tasks/--set/--output-dir reach the config."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from neko.cli import app


def test_bad_config_lists_every_problem(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("mode: nekoo\noptim: {lr: fast}\nbatch: {micro_batch: 2}\n")
    res = CliRunner().invoke(app, ["train", str(p), "--set", "seed=x"])
    assert res.exit_code == 2
    out = res.output
    for needle in ("4 problems", "mode", "optim.lr", "batch.micro_batch", "did you mean", "seed"):
        assert needle in out, out


def test_missing_config_file(tmp_path):
    res = CliRunner().invoke(app, ["train", str(tmp_path / "nope.yaml")])
    assert res.exit_code == 2 and "not found" in res.output


def test_cli_trains_one_task_for_btx(tmp_path, train_file):
    out = tmp_path / "asr_only"
    res = CliRunner().invoke(app, _args(out, train_file))
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "neko_train.json").read_text())
    assert summary["config"]["data"]["tasks"] == ["asr"]
    assert summary["mixture"]["kept"] == {"asr": 16}

    # The same command again must not clobber the finished model's config and log...
    before = {f.name: f.read_bytes() for f in out.iterdir() if f.is_file()}
    again = CliRunner().invoke(app, res_args := _args(out, train_file))
    assert again.exit_code == 2 and "already holds a trained model" in again.output
    assert {f.name: f.read_bytes() for f in out.iterdir() if f.is_file()} == before
    # ... unless asked to.
    assert CliRunner().invoke(app, [*res_args, "--overwrite"]).exit_code == 0


def _args(out, train_file) -> list[str]:
    return [
        "train",
        "--mode",
        "dense",
        "--tasks",
        "asr",
        "--output-dir",
        str(out),
        "--set",
        f"data.train=[{{path: {train_file}}}]",
        "--set",
        "data.max_seq_len=256",
        "--set",
        "max_steps=1",
        "--set",
        "log.progress=false",
    ]


@pytest.mark.slow
def test_real_console_of_a_partial_moe_run_is_quiet(tmp_path, train_file, dev_file):
    """The console as a user sees it (real processes, real warning filters): training a Qwen2-MoE
    up-cycle, resuming it and loading it for correction print neither Accelerate's "Removed shared
    tensor" wall at each save nor torch's "Initializing zero-element tensors" at each load."""
    import subprocess
    import sys

    import yaml

    from neko.paths import SAMPLES_DIR

    out = tmp_path / "run"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "mode": "neko",
                "model": {"base": "tiny:llama"},
                "upcycle": {"num_experts": 4, "moe_layers": "1"},
                "data": {"train": [{"path": str(train_file)}], "dev": str(dev_file), "max_seq_len": 256},
                "batch": {"micro_batch_size": 2},
                "max_steps": 2,
                "save_every": 1,
                "eval": {"every": 100, "decode_rows": 1, "max_new_tokens": 4},
                "output_dir": str(out),
            }
        )
    )
    neko = [sys.executable, "-m", "neko"]
    runs = [
        [*neko, "train", str(cfg)],
        [*neko, "train", str(cfg), "--resume"],
        [*neko, "correct", "--model", str(out), "--input", str(SAMPLES_DIR / "hyporadise.json")]
        + ["--output", str(tmp_path / "p.jsonl"), "--max-new-tokens", "4", "--no-guard"],
    ]
    for cmd in runs:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        console = res.stdout + res.stderr
        assert res.returncode == 0, console[-3000:]
        assert "Removed shared tensor" not in console, cmd
        assert "zero-element" not in console, cmd
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 5
