"""Training config: YAML + dotted overrides, one error listing every problem, defaults = paper recipe."""

from __future__ import annotations

import pytest

from neko.train.config import ConfigError, TrainConfig, config_from_dict, load_config


def test_defaults_are_the_papers_recipe():
    c = TrainConfig()
    assert (c.optim.lr, c.optim.weight_decay, c.optim.scheduler) == (1e-4, 0.01, "cosine")
    assert (c.optim.warmup_ratio, c.optim.max_grad_norm, c.optim.epochs) == (0.1, 1.0, 3)
    assert c.data.packing is True


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("mode: dense\ndata:\n  train:\n    - {path: a.jsonl, weight: 2}\noptim: {lr: 1.0e-3}\n")
    c = load_config(p, ["optim.lr=3e-4", "data.tasks=[asr, ocr]", "batch.micro_batch_size=8"], output_dir="o")
    assert c.mode == "dense" and c.optim.lr == 3e-4 and c.data.tasks == ["asr", "ocr"]
    assert c.data.train[0].weight == 2.0 and c.batch.micro_batch_size == 8 and c.output_dir == "o"


def test_every_problem_in_one_message():
    bad = {
        "mode": "sparse",
        "optim": {"lr": "fast", "epoch": 3},
        "data": {"train": [{"path": 1}], "packing": "yes"},
        "colour": "red",
    }
    with pytest.raises(ConfigError) as ei:
        config_from_dict(bad, source="x.yaml")
    msg = str(ei.value)
    assert len(ei.value.problems) == 6
    for needle in (
        "mode",
        "optim.lr",
        "optim.epoch",
        "did you mean 'epochs'",
        "data.train[0].path",
        "data.packing",
        "colour",
        "x.yaml",
    ):
        assert needle in msg


def test_value_problems_are_collected():
    with pytest.raises(ConfigError) as ei:
        config_from_dict({"optim": {"warmup_ratio": 1.5}, "batch": {"micro_batch_size": 0}})
    msg = str(ei.value)
    assert "data.train" in msg and "warmup_ratio" in msg and "micro_batch_size" in msg


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["optim.lr"])


def test_batch_tokens_sets_grad_accum():
    c = config_from_dict(
        {
            "data": {"train": [{"path": "a"}], "max_seq_len": 1024},
            "batch": {"micro_batch_size": 4, "batch_tokens": 32768},
        }
    )
    assert c.grad_accum_for(1) == 8 and c.grad_accum_for(2) == 4


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_nan_or_inf_numbers_are_refused_at_load(tmp_path, value):
    """Issue 23.6: a NaN lr passed validation (NaN <= 0 is false) and failed after the model loaded;
    inf trained until the loss was non-finite. Refused with the config, before anything loads."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {base: tiny:llama}\ndata: {train: [{path: x.jsonl}]}\n")
    with pytest.raises(ConfigError, match=r"optim\.lr: expected a finite number, got (nan|inf|-inf)"):
        load_config(cfg, [f"optim.lr={value}"])
    with pytest.raises(ConfigError, match=r"optim\.weight_decay: expected a finite number"):
        config_from_dict(
            {"model": {"base": "tiny:llama"}, "optim": {"weight_decay": float(value.replace(".", ""))}}
        )
