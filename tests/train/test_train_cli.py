"""`neko train` CLI: bad configs get one message listing every problem; --tasks/--set/--output-dir reach the config."""

from __future__ import annotations

import json

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
