"""`precision`: bf16 autocast trains on a CPU (fp32 master weights), auto is resolved and printed."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from neko.cli import app
from neko.model.precision import resolve_precision
from neko.train.config import config_from_dict
from neko.train.loop import train


def _cfg(out, train_file, precision, mode="neko"):
    return config_from_dict(
        {
            "mode": mode,
            "model": {"base": "tiny:llama"},
            "upcycle": {"num_experts": 4, "top_k": 2},
            "data": {"train": [{"path": str(train_file)}], "max_seq_len": 128},
            "batch": {"micro_batch_size": 2},
            "optim": {"lr": 3e-3, "warmup_ratio": 0.0},
            "max_steps": 2,
            "log": {"progress": False},
            "output_dir": str(out),
            "precision": precision,
        }
    )


def test_bf16_on_cpu_trains_with_fp32_master_weights(tmp_path, train_file, capfd):
    out = tmp_path / "bf16"
    res = train(_cfg(out, train_file, "bf16"))
    assert "precision bf16 (as requested)" in capfd.readouterr().err
    assert res.precision == "bf16" and res.final_loss is not None and res.final_loss == res.final_loss
    summary = json.loads((out / "neko_train.json").read_text())
    assert summary["precision"] == "bf16" and summary["config"]["precision"] == "bf16"
    from safetensors.torch import load_file

    weights = load_file(out / "model.safetensors")
    assert {w.dtype for w in weights.values()} == {torch.float32}


def test_bf16_step_is_autocast_not_bf16_weights(tmp_path, train_file):
    """One step in bf16 moves the same weights as fp32, to bf16 accuracy (autocast on fp32 weights)."""
    from safetensors.torch import load_file

    train(_cfg(tmp_path / "a", train_file, "bf16", mode="dense"))
    train(_cfg(tmp_path / "b", train_file, "fp32", mode="dense"))
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    diffs = [float((a[k] - b[k]).abs().max()) for k in a]
    assert 0 < max(diffs) < 2e-2


def test_auto_is_resolved_for_this_machine_and_printed(tmp_path, train_file, capfd):
    res = train(_cfg(tmp_path / "auto", train_file, "auto", mode="dense"))
    expected = resolve_precision("auto", "cpu")
    assert f"{expected.describe()}" in capfd.readouterr().err
    assert (res.precision, res.precision_reason) == (expected.name, expected.reason)


def test_cli_precision_flag_and_its_error(tmp_path, train_file):
    base = [
        "train",
        "--mode",
        "dense",
        "--set",
        f"data.train=[{{path: {train_file}}}]",
        "--set",
        "max_steps=1",
    ]
    bad = CliRunner().invoke(app, [*base, "--output-dir", str(tmp_path / "x"), "--precision", "bf17"])
    assert bad.exit_code == 2
    assert "precision: must be one of ['auto', 'fp32', 'bf16', 'fp16'], got 'bf17'" in bad.output
    ok = CliRunner().invoke(
        app,
        [*base, "--output-dir", str(tmp_path / "y"), "--precision", "fp32", "--set", "data.max_seq_len=128"],
    )
    assert ok.exit_code == 0, ok.output
    assert json.loads((tmp_path / "y" / "neko_train.json").read_text())["precision"] == "fp32"


@pytest.mark.parametrize("value", ["auto", "fp32", "bf16", "fp16"])
def test_every_precision_value_is_a_valid_config(tmp_path, train_file, value):
    assert _cfg(tmp_path, train_file, value).validate() == []
