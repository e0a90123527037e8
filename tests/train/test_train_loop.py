"""End-to-end `train()` on tiny models: what the output directory holds, modes, stops and divergence."""

from __future__ import annotations

import json

import pytest
import torch

from neko.train.config import config_from_dict
from neko.train.loop import TrainingDiverged, train
from neko.train.monitor import read_log


def _cfg(out, train_file, **kw):
    d = {
        "mode": "dense",
        "model": {"base": "tiny:llama"},
        "data": {"train": [{"path": str(train_file)}], "max_seq_len": 256},
        "batch": {"micro_batch_size": 2},
        "max_steps": 3,
        "log": {"progress": False},
        "output_dir": str(out),
    }
    for k, v in kw.items():
        if isinstance(v, dict):
            d.setdefault(k, {}).update(v)
        else:
            d[k] = v
    return config_from_dict(d)


def test_neko_mode_writes_a_plain_hf_moe_checkpoint(tmp_path, train_file, dev_file):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from neko.tasks import load_prompt_config

    out = tmp_path / "run"
    res = train(
        _cfg(
            out,
            train_file,
            mode="neko",
            model={"base": "tiny:mixtral"},
            data={"dev": str(dev_file)},
            eval={"every": 100, "decode_rows": 1, "max_new_tokens": 4},
        )
    )
    assert res.steps == 3 and res.stop_reason == "max_steps"
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.model_type == "mixtral"
    assert list(model.config.neko_task_to_expert) == ["asr", "ocr", "tec-grammar"]
    assert model.config.use_cache is True
    AutoTokenizer.from_pretrained(out)
    registry, chat = load_prompt_config(out)
    assert "asr" in registry and chat is True
    summary = json.loads((out / "neko_train.json").read_text())
    assert summary["mode"] == "neko" and summary["steps"] == 3
    assert set(summary["eval"]["per_task"]) == {"asr", "ocr", "tec-grammar"}
    log = [r for r in read_log(out) if "loss" in r]
    assert [r["step"] for r in log] == [1, 2, 3]
    for r in log:
        # the forced expert takes exactly half of each task's top-2 assignments
        for task, shares in r["routing_load"].items():
            assert shares[model.config.neko_task_to_expert[task]] == pytest.approx(0.5)
        assert r["real_token_share"] > 0.5 and "aux_loss" in r


def test_partial_moe_run_is_quiet_shows_its_slow_steps_and_resumes(
    tmp_path, train_file, dev_file, caplog, capfd
):
    """Qwen2-MoE up-cycle (zero-width shared experts, tied head): checkpoints save without
    Accelerate's "Removed shared tensor" wall and resume; loading, up-cycling and the final dev
    evaluation announce themselves; eval.every=0 evaluates nothing and says so."""
    import logging

    out = tmp_path / "qwen"
    cfg = _cfg(
        out,
        train_file,
        mode="neko",
        upcycle={"num_experts": 4, "moe_layers": "1"},
        max_steps=2,
        save_every=1,
        data={"dev": str(dev_file)},
        eval={"every": 100, "decode_rows": 1, "max_new_tokens": 4},
        log={"progress": True},
    )
    with caplog.at_level(logging.WARNING):
        res = train(cfg)
    err = capfd.readouterr().err
    assert "Removed shared tensor" not in caplog.text + err
    assert "up-cycling llama into 4 experts (top-2) on layers 1" in err and "up-cycled in" in err
    assert "final dev evaluation: dev loss on 9 rows, 3 greedy decodes of <= 4 tokens" in err
    assert "dev decode" in err and res.eval is not None
    # the checkpoint of a partial-MoE run loads back (it used to miss the shared-expert tensors)
    res2 = train(cfg, resume=True)
    assert res2.resumed_from and res2.resumed_from.endswith("checkpoint-00000001") and res2.steps == 2
    capfd.readouterr()

    quiet = train(
        _cfg(tmp_path / "noeval", train_file, max_steps=1, data={"dev": str(dev_file)}, eval={"every": 0})
    )
    err = capfd.readouterr().err
    assert quiet.eval is None and "final dev evaluation" not in err
    assert "data.dev is set but eval.every is 0: no dev evaluation" in err


def test_dense_training_lowers_the_loss(tmp_path, train_file):
    res = train(_cfg(tmp_path / "d", train_file, max_steps=12, optim={"lr": 3e-3, "warmup_ratio": 0.0}))
    log = [r["loss"] for r in read_log(tmp_path / "d") if "loss" in r]
    assert log[-1] < log[0] - 0.3, log
    assert res.final_loss == log[-1]


def test_lora_saves_merged_model_and_adapter(tmp_path, train_file):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora"
    train(
        _cfg(
            out,
            train_file,
            mode="lora",
            lora={"r": 4, "alpha": 8, "dropout": 0.0},
            max_steps=2,
            optim={"lr": 1e-2, "warmup_ratio": 0.0},
        )
    )
    assert (out / "adapter" / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    from neko.model.tiny import tiny_llama

    base = tiny_llama(seed=0)
    q = "model.layers.0.self_attn.q_proj.weight"
    diff = (merged.state_dict()[q] - base.state_dict()[q]).abs().max()
    assert diff > 0  # the adapter was merged into the weights


def test_nan_loss_stops_with_step_and_ids_and_keeps_last_good_checkpoint(tmp_path, train_file):
    out = tmp_path / "nan"
    cfg = _cfg(
        out,
        train_file,
        max_steps=8,
        save_every=1,
        optim={"lr": 1e4, "max_grad_norm": 0.0, "warmup_ratio": 0.0, "scheduler": "constant"},
    )
    with pytest.raises(TrainingDiverged, match=r"optimizer step \d+ .*example ids") as ei:
        train(cfg)
    step = int(str(ei.value).split("optimizer step ")[1].split()[0])
    from neko.train.checkpoint import latest_checkpoint

    ck = latest_checkpoint(out)
    assert ck is not None and ck.name == f"checkpoint-{step - 1:08d}"
    assert not (out / "neko_train.json").exists()


def test_time_budget_stops_cleanly_with_a_checkpoint(tmp_path, train_file):
    out = tmp_path / "tb"
    res = train(_cfg(out, train_file, max_steps=500, time_budget_s=0.01))
    assert res.stop_reason == "time_budget" and res.steps < 500
    assert (out / "model.safetensors").exists() and res.checkpoint
    res2 = train(_cfg(out, train_file, max_steps=500, time_budget_s=0.01), resume=True)
    assert res2.resumed_from and res2.steps > res.steps


def test_resume_rejects_a_changed_data_setting(tmp_path, train_file):
    from neko.train.config import ConfigError

    out = tmp_path / "ch"
    train(_cfg(out, train_file, max_steps=2, save_every=1))
    with pytest.raises(ConfigError, match="max_seq_len"):
        train(_cfg(out, train_file, max_steps=2, data={"max_seq_len": 300}), resume=True)


def test_packed_loss_and_weights_identical_with_and_without_grad_accum(tmp_path, train_file):
    """2 micro batches x 1 accumulation == 1 x 2: the loss is normalised per optimizer step."""
    train(_cfg(tmp_path / "a", train_file, max_steps=2, batch={"micro_batch_size": 4}))
    train(_cfg(tmp_path / "b", train_file, max_steps=2, batch={"micro_batch_size": 2, "grad_accum": 2}))
    la = [r["loss"] for r in read_log(tmp_path / "a") if "loss" in r]
    lb = [r["loss"] for r in read_log(tmp_path / "b") if "loss" in r]
    assert la == pytest.approx(lb, abs=1e-6)
    from safetensors.torch import load_file

    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-5
    assert torch.is_tensor(next(iter(wa.values())))


def test_moe_mode_upcycles_a_dense_base_and_routes_plain_top_k(tmp_path, train_file):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "moe"
    train(
        _cfg(
            out,
            train_file,
            mode="moe",
            max_steps=2,
            upcycle={"num_experts": 4, "top_k": 2, "moe_layers": "1", "noise_std": 0.01},
        )
    )
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.model_type == "qwen2_moe" and model.config.num_experts == 4
    assert not getattr(model.config, "neko_task_to_expert", None)  # plain routing: no task map saved
    rec = [r for r in read_log(out) if "loss" in r][-1]
    assert set(rec["routing_load"]) == set(rec["loss_per_task"]) and rec["aux_loss"] > 0


def test_train_layers_freezes_everything_below_the_moe_block(tmp_path, train_file):
    """model.train_layers='moe': the up-cycled layers and the final norm learn; the layers below and
    the (tied) embeddings keep their base weights exactly, so no backward ever runs through them."""
    from safetensors.torch import load_file

    from neko.model.tiny import tiny_llama

    cfg = _cfg(
        tmp_path / "f",
        train_file,
        mode="neko",
        upcycle={"num_experts": 4, "moe_layers": "1"},
        model={"train_layers": "moe"},
        optim={"lr": 1e-2, "warmup_ratio": 0.0},
    )
    train(cfg)
    trained = load_file(str(tmp_path / "f" / "model.safetensors"))
    base = tiny_llama(seed=0).state_dict()
    assert torch.equal(
        trained["model.layers.0.self_attn.q_proj.weight"], base["model.layers.0.self_attn.q_proj.weight"]
    )
    assert torch.equal(trained["model.embed_tokens.weight"], base["model.embed_tokens.weight"])
    assert not torch.equal(
        trained["model.layers.1.self_attn.q_proj.weight"], base["model.layers.1.self_attn.q_proj.weight"]
    )
    assert not torch.equal(trained["model.norm.weight"], base["model.norm.weight"])


def test_train_layers_is_checked():
    from neko.model.tiny import tiny_llama
    from neko.train.modeling import freeze_layers

    m = tiny_llama()
    with pytest.raises(ValueError, match="no MoE layer"):
        freeze_layers(m, "moe")
    assert freeze_layers(m, "-1:", train_embeddings=True) == [len(m.model.layers) - 1]
    assert (
        m.model.embed_tokens.weight.requires_grad
        and not m.model.layers[0].self_attn.q_proj.weight.requires_grad
    )
    with pytest.raises(ValueError, match="do not exist"):
        freeze_layers(m, "7-9")
