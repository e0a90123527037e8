"""Logits at answer positions only: the same loss and gradients as the full-logit path, every mode."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

import neko.train.loop as loop
from neko.train.config import config_from_dict
from neko.train.loss import answer_head, answer_token_losses, predicting_positions, token_losses


def _cfg(out, train_file, mode):
    d = {
        "mode": mode,
        "model": {"base": "tiny:llama"},
        "upcycle": {"num_experts": 4, "top_k": 2, "noise_std": 0.01},
        "data": {"train": [{"path": str(train_file)}], "max_seq_len": 128},
        "batch": {"micro_batch_size": 3},
        "routing": {"aux_loss": "free" if mode == "neko" else "standard"},
        "max_steps": 1,
        "log": {"progress": False},
        "output_dir": str(out),
        "precision": "fp32",
    }
    if mode == "lora":
        d["lora"] = {"r": 4, "alpha": 8, "dropout": 0.0, "base_mode": "neko"}
    return config_from_dict(d)


def _grads(run):
    return {n: p.grad.detach().clone() for n, p in run.unwrapped.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("mode", ["neko", "moe", "dense", "lora"])
def test_answer_logits_give_the_full_paths_loss_and_gradients(tmp_path, train_file, mode, monkeypatch):
    run = loop.setup(_cfg(tmp_path / mode, train_file, mode))
    batch = run.plan.micro_batches(0, 0, 0)[0]
    scale = 1.0 / max(1, run.plan.label_tokens(batch))
    heads = []

    @contextmanager
    def recording(model, labels, enabled=True):
        with answer_head(model, labels, enabled=enabled) as h:
            heads.append(h)
            yield h

    results = {}
    for path, enabled in (("answer", True), ("full", False)):
        monkeypatch.setattr(loop, "answer_head", lambda m, lab, e=enabled: recording(m, lab, e))
        run.optimizer.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        loss = loop.forward_backward(run, batch, scale)
        results[path] = (float(loss.detach()), _grads(run))
    assert heads[0].applied and not heads[1].applied  # the answer path really ran on (N, V) logits
    (la, ga), (lf, gf) = results["answer"], results["full"]
    assert la == pytest.approx(lf, rel=1e-6, abs=1e-7)
    assert ga.keys() == gf.keys() and ga
    for name in gf:
        torch.testing.assert_close(ga[name], gf[name], rtol=1e-4, atol=1e-6, msg=name)


def test_answer_token_losses_equal_token_losses_and_keep_the_mask():
    torch.manual_seed(0)
    B, T, V = 3, 11, 17
    logits = torch.randn(B, T, V)
    labels = torch.randint(0, V, (B, T))
    labels[0, :5] = -100
    labels[1, :] = -100  # a row without an answer token
    labels[2, 7] = -100
    sel = predicting_positions(labels)
    full, full_mask = token_losses(logits, labels)
    part, part_mask = answer_token_losses(logits[sel], labels, chunk_tokens=4)
    assert torch.equal(full_mask, part_mask)
    torch.testing.assert_close(part, full, rtol=0, atol=0)
    with pytest.raises(ValueError, match="logit rows"):
        answer_token_losses(logits[sel][1:], labels)


def test_an_unknown_head_layout_keeps_the_full_path():
    class Bare(torch.nn.Module):  # no get_output_embeddings: the head cannot be found
        def forward(self, x):
            return x

    labels = torch.tensor([[-100, 1, 2]])
    with answer_head(Bare(), labels) as head:
        logits = torch.randn(1, 3, 5)
        loss, mask = head.losses(logits)
    assert not head.applied
    assert torch.equal(loss, token_losses(logits, labels)[0])


def test_fused_adamw_trains_like_the_for_loop_adamw(tmp_path, train_file, monkeypatch):
    """neko train steps AdamW as torch's fused kernel on a plain CPU process; the weights it reaches
    equal the for-loop AdamW's to fp32 rounding."""
    from safetensors.torch import load_file

    from neko.train.loop import train

    cfg = {
        "mode": "dense",
        "model": {"base": "tiny:llama"},
        "data": {"train": [{"path": str(train_file)}], "max_seq_len": 128},
        "batch": {"micro_batch_size": 2},
        "optim": {"lr": 1e-3, "warmup_ratio": 0.0},
        "max_steps": 3,
        "log": {"progress": False},
        "precision": "fp32",
    }
    seen = []
    real = loop._optimizer
    monkeypatch.setattr(loop, "_optimizer", lambda m, c, fused=False: seen.append(fused) or real(m, c, fused))
    a = train(config_from_dict({**cfg, "output_dir": str(tmp_path / "fused")}))
    monkeypatch.setattr(loop, "_fused_adamw", lambda acc: False)
    b = train(config_from_dict({**cfg, "output_dir": str(tmp_path / "loop")}))
    assert seen == [True, False]
    assert a.final_loss == pytest.approx(b.final_loss, rel=1e-5)
    wa, wb = (
        load_file(tmp_path / "fused" / "model.safetensors"),
        load_file(tmp_path / "loop" / "model.safetensors"),
    )
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-5
