"""`neko upcycle` and `neko btx` on real tiny checkpoints, through the real CLI."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from neko.cli import app
from neko.model.tiny import tiny_dense, tiny_tokenizer

runner = CliRunner()


def _dense_dir(path, seed=0, **over):
    tiny_dense("llama", seed=seed, num_hidden_layers=3, **over).save_pretrained(path)
    tiny_tokenizer(save_dir=path)
    return path


def test_upcycle_cli_partial(tmp_path):
    src = _dense_dir(tmp_path / "dense")
    res = runner.invoke(
        app,
        [
            "upcycle",
            str(src),
            str(tmp_path / "moe"),
            "--num-experts",
            "4",
            "--top-k",
            "2",
            "--moe-layers",
            "1-2",
            "--router-init",
            "orthogonal",
            "--seed",
            "3",
        ],
    )
    assert res.exit_code == 0, res.output
    assert res.output.strip().endswith("moe")
    cfg = json.loads((tmp_path / "moe" / "config.json").read_text())
    assert (cfg["model_type"], cfg["num_experts"], cfg["mlp_only_layers"]) == ("qwen2_moe", 4, [0])
    assert cfg["neko_upcycle"]["router_init"] == "orthogonal"


def test_upcycle_cli_bad_input_is_one_clear_error(tmp_path):
    src = _dense_dir(tmp_path / "dense")
    res = runner.invoke(app, ["upcycle", str(src), str(tmp_path / "moe"), "--moe-layers", "7-9"])
    assert res.exit_code != 0 and "do not exist" in res.output
    assert not (tmp_path / "moe").exists()


def test_btx_cli(tmp_path):
    a, b = _dense_dir(tmp_path / "a", seed=1), _dense_dir(tmp_path / "b", seed=2)
    res = runner.invoke(app, ["btx", str(tmp_path / "btx"), str(a), str(b), "--top-k", "1"])
    assert res.exit_code == 0, res.output
    cfg = json.loads((tmp_path / "btx" / "config.json").read_text())
    assert (cfg["model_type"], cfg["num_local_experts"], cfg["num_experts_per_tok"]) == ("mixtral", 2, 1)
    c = _dense_dir(tmp_path / "c", seed=3, intermediate_size=96)
    res = runner.invoke(app, ["btx", str(tmp_path / "btx2"), str(a), str(c)])
    assert res.exit_code != 0 and "intermediate_size" in res.output
