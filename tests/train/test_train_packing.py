"""Packing isolates examples (same per-example loss packed as alone) and the loss covers answers only."""

from __future__ import annotations

import pytest
import torch
from train_fixtures import make_rows, per_example_losses

from neko.schema import example_from_dict
from neko.train.loss import token_losses
from neko.train.mixture import tokenize_example
from neko.train.packing import collate_packed, collate_padded, pack_rows


def _examples(tok, n=7, max_len=512):
    out = []
    for row in make_rows(n, seed=3):
        te, outcome = tokenize_example(example_from_dict(row), tok, max_seq_len=max_len)
        assert outcome == "ok"
        out.append(te)
    return out


def _alone_losses(model, tok, exs):
    res = []
    for e in exs:
        b = collate_padded([e], tok.pad_token_id, {})
        with torch.no_grad():
            logits = model(**b.model_inputs()).logits
        loss, mask = token_losses(logits, b.labels)
        res.append(float(loss.sum() / mask.sum()))
    return res


@pytest.mark.parametrize("arch", ["llama", "mixtral"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_rows_give_each_example_its_alone_loss(tok, arch, attn):
    from neko.model.tiny import tiny_llama, tiny_mixtral

    model = (tiny_llama if arch == "llama" else tiny_mixtral)(seed=1, attn_implementation=attn).eval()
    exs = _examples(tok)
    rows = pack_rows(exs, max_seq_len=max(len(e) for e in exs) * 3, seed=0)
    assert any(len(r) > 1 for r in rows), "the test needs rows with several examples"
    batch = collate_packed([[exs[i] for i in r] for r in rows], tok.pad_token_id, {})
    assert batch.attention_mask is None
    with torch.no_grad():
        logits = model(**batch.model_inputs()).logits
    loss, mask = token_losses(logits, batch.labels)
    packed = per_example_losses(loss, mask, batch.seq_ids)
    alone = _alone_losses(model, tok, exs)
    for r, row in enumerate(rows):
        for s, i in enumerate(row):
            assert packed[r][s] == pytest.approx(alone[i], rel=1e-5, abs=1e-6), (r, s, i)


def test_cross_example_attention_would_change_the_loss(tok):
    """The isolation test can fail: positions that do not restart (plain causal) give other losses."""
    from neko.model.tiny import tiny_llama

    model = tiny_llama(seed=1).eval()
    exs = _examples(tok, n=4)
    batch = collate_packed([exs], tok.pad_token_id, {})
    inputs = batch.model_inputs()
    inputs["position_ids"] = torch.arange(batch.input_ids.shape[1]).unsqueeze(0)
    with torch.no_grad():
        logits = model(**inputs).logits
    loss, mask = token_losses(logits, batch.labels)
    leaky = per_example_losses(loss, mask, batch.seq_ids)[0]
    alone = _alone_losses(model, tok, exs)
    assert abs(leaky[-1] - alone[-1]) > 1e-3


def test_loss_is_on_answer_tokens_only(tok):
    exs = _examples(tok, n=3)
    for e in exs:
        answer = e.input_ids[e.n_prompt :]
        assert e.labels[: e.n_prompt] == [-100] * e.n_prompt
        assert e.labels[e.n_prompt :] == answer
        assert answer[-1] == tok.eos_token_id
        assert tok.decode(answer[:-1]).strip() in {r["output"] for r in make_rows(3, seed=3)}
    batch = collate_packed([exs], tok.pad_token_id, {"asr": 0, "ocr": 1})
    n_answer = sum(len(e) - e.n_prompt for e in exs)
    assert int((batch.labels != -100).sum()) == n_answer
    # changing a prompt token's label target cannot change the loss; changing an answer token's can
    logits = torch.randn(1, batch.input_ids.shape[1], len(tok))
    loss, mask = token_losses(logits, batch.labels)
    assert int(mask.sum()) == n_answer
    assert set(batch.task_ids[0].tolist()) <= {-1, 0, 1}


def test_padding_has_no_task_and_no_loss(tok):
    exs = _examples(tok, n=2)
    total = sum(len(e) for e in exs)
    batch = collate_packed([exs], tok.pad_token_id, {}, length=total + 5)
    assert batch.task_ids[0, total:].tolist() == [-1] * 5
    assert batch.labels[0, total:].tolist() == [-100] * 5
    assert batch.real_tokens == total


def test_pack_rows_fill_and_reject_overlong(tok):
    exs = _examples(tok, n=30)
    L = max(len(e) for e in exs) * 4
    rows = pack_rows(exs, L, seed=1)
    assert sorted(i for r in rows for i in r) == list(range(30))
    assert all(sum(len(exs[i]) for i in r) <= L for r in rows)
    with pytest.raises(ValueError, match="max_seq_len"):
        pack_rows(exs, 8)
