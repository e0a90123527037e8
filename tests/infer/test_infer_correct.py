from __future__ import annotations

import dataclasses
import re

import pytest
from infer_helpers import make_model_dir, sample_rows

from neko.infer.correct import CorrectionResult, Corrector
from neko.infer.options import CorrectionOptions
from neko.model.experts import find_routers, set_router_top_k
from neko.schema import Example


def test_options_reject_bad_values():
    with pytest.raises(ValueError, match="num_beams"):
        CorrectionOptions(num_beams=0)
    with pytest.raises(ValueError, match="guard"):
        CorrectionOptions(guard="maybe")
    assert CorrectionOptions().top_k_experts is None and CorrectionOptions().num_beams == 1


def test_batched_equals_one_at_a_time(corrector):
    rows = sample_rows(7)
    batched = corrector.correct(rows)
    single = [corrector.correct(r) for r in rows]
    assert [r.text for r in batched] == [r.text for r in single]
    assert [r.id for r in batched] == [r["id"] for r in rows]  # input order and ids preserved
    assert all(r.ok and r.text for r in batched)
    # Batch size and sorting do not change greedy outputs either.
    saved = corrector.options
    try:
        corrector.options = dataclasses.replace(saved, batch_size=3, sort_by_length=False)
        assert [r.text for r in corrector.correct(rows)] == [r.text for r in batched]
    finally:
        corrector.options = saved


def test_item_kinds(corrector):
    nbest = corrector.correct(["hello world", "hello word"], task="asr")
    assert isinstance(nbest, CorrectionResult) and nbest.task == "asr"
    ex = Example(id="e1", task="asr", input=["hello world", "hello word"])
    assert corrector.correct(ex).text == nbest.text
    d = corrector.correct({"id": "d1", "task": "asr", "input": ["hello world", "hello word"]})
    assert d.text == nbest.text and d.id == "d1"
    text = corrector.correct("speech text error", task="ocr")
    assert text.ok and text.task == "ocr"
    many = corrector.correct_batch(["speech text error", "hello"], task="ocr")
    assert len(many) == 2 and many[0].text == text.text


def test_per_item_errors_do_not_stop_the_batch(corrector):
    items = [
        {"id": "ok1", "task": "ocr", "input": "speech text"},
        {"id": "empty", "task": "ocr", "input": "   "},
        {"id": "unknown", "task": "asrr", "input": "hello"},
        b"\xff\xfe not utf-8",
        {"id": "long", "task": "ocr", "input": "word " * 20_000},
        {"id": "ok2", "task": "asr", "input": ["a b", "a c"]},
    ]
    res = corrector.correct(items)
    assert [r.ok for r in res] == [True, False, False, False, False, True]
    assert "empty" in res[1].error.lower()
    assert "did you mean 'asr'" in res[2].error.lower()
    assert "utf-8" in res[3].error.lower()
    assert "exceeds" in res[4].error
    assert res[0].text == corrector.correct(items[0]).text
    assert corrector.correct("hello").error.startswith("no task")


def test_token_limit_is_per_item(corrector):
    saved = corrector.options
    try:
        corrector.options = dataclasses.replace(saved, max_input_tokens=60)
        res = corrector.correct(
            [{"task": "tec-grammar", "input": "a"}, {"task": "asr", "input": ["x " * 200]}]
        )
        assert res[0].ok and "tokens exceeds the limit" in res[1].error
    finally:
        corrector.options = saved


def test_details_logprobs_and_experts(corrector):
    r = corrector.correct({"task": "asr", "input": ["hello world", "hello word"]}, details=True)
    d = r.details
    assert d["generated_tokens"] >= 1
    assert all(lp <= 0 for lp in d["token_logprobs"])
    assert d["mean_logprob"] == pytest.approx(sum(d["token_logprobs"]) / len(d["token_logprobs"]), abs=1e-3)
    ex = d["experts"]
    assert len(ex["layers"]) == 2 and len(ex["prompt"][0]) == 8
    # Top-2 routing: every real prompt token picks exactly 2 experts in each layer.
    assert all(sum(layer) == 2 * d["prompt_tokens"] for layer in ex["prompt"])
    # Generated tokens count once fed back to the model; a token that hit max_new_tokens never is.
    fed = d["generated_tokens"] - (d["generated_tokens"] == corrector.options.max_new_tokens)
    assert all(sum(layer) == 2 * fed for layer in ex["generated"])
    # Padding never counts: the same item inside a batch with a longer one gets the same counts.
    long = {"task": "ocr", "input": "speech text error " * 8}
    batched = corrector.correct(
        [long, {"task": "asr", "input": ["hello world", "hello word"]}], details=True
    )[1]
    assert batched.details["experts"]["prompt"] == ex["prompt"]


def test_top_k_is_set_on_every_router(model_dir):
    c = Corrector.from_pretrained(model_dir, CorrectionOptions(top_k_experts=1, max_new_tokens=4))
    routers = find_routers(c.model)
    assert len(routers) == 2 and all(r.top_k == 1 for _, r in routers)
    r = c.correct({"task": "ocr", "input": "speech text"}, details=True)
    assert all(sum(layer) == r.details["prompt_tokens"] for layer in r.details["experts"]["prompt"])
    with pytest.raises(ValueError, match="exceeds the 8 experts"):
        set_router_top_k(c.model, 9)


def test_qwen2_moe_routers_are_found():
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    cfg = Qwen2MoeConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, moe_intermediate_size=32,
        shared_expert_intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_experts=4, num_experts_per_tok=2,
    )  # fmt: skip
    model = Qwen2MoeForCausalLM(cfg)
    assert set_router_top_k(model, 3) == 2
    assert all(r.top_k == 3 for _, r in find_routers(model)) and model.config.num_experts_per_tok == 3


def test_dense_model_and_beam_search(tmp_path):
    d = make_model_dir(tmp_path / "llama", kind="llama")
    c = Corrector.from_pretrained(d, CorrectionOptions(max_new_tokens=6, num_beams=2))
    r = c.correct({"task": "ocr", "input": "speech text"}, details=True)
    assert r.ok and r.details["experts"] is None and r.details["token_logprobs"]


def test_beam_search_keeps_each_rows_own_token_limit(tmp_path):
    """Rows of one batch get different limits (from their input's length); beam search checks the
    stopping criteria on batch x beams (x 2 candidates) rows, not on batch rows."""
    d = make_model_dir(tmp_path / "llama", kind="llama")
    short, long = "text", " ".join(["speech text error grammar"] * 6)
    for beams in (1, 2, 3):
        c = Corrector.from_pretrained(d, CorrectionOptions(num_beams=beams, length_ratio=1.0, length_slack=1))
        rows = c.correct_batch(
            [{"task": "ocr", "input": short}, {"task": "ocr", "input": long}], details=True
        )
        limits = [c.prepare({"task": "ocr", "input": t}).max_new_tokens for t in (short, long)]
        assert limits[0] < limits[1]
        assert all(r.ok for r in rows), [r.error for r in rows]
        assert [r.details["generated_tokens"] <= n for r, n in zip(rows, limits, strict=True)] == [True, True]


def test_not_a_causal_lm(tmp_path):
    from transformers import ViTConfig

    with pytest.raises(FileNotFoundError, match="not found"):
        Corrector.from_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        Corrector.from_pretrained(tmp_path / "empty")
    ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path / "vit")
    with pytest.raises(ValueError, match="not a causal language model"):
        Corrector.from_pretrained(tmp_path / "vit")
    # A causal LM config without weights names the missing weights.
    from neko.model.tiny import tiny_llama_config

    tiny_llama_config().save_pretrained(tmp_path / "noweights")
    with pytest.raises(ValueError, match="could not load|tokenizer"):
        Corrector.from_pretrained(tmp_path / "noweights")


def test_expert_usage_by_task(corrector):
    from neko.model.experts import expert_usage_by_task

    res = corrector.correct(sample_rows(4), details=True)
    usage = expert_usage_by_task(res)
    assert set(usage) == {"asr", "ocr"} and usage["asr"]["items"] == 2
    asr = [r for r in res if r.task == "asr"]
    assert usage["asr"]["prompt"][0] == [
        sum(r.details["experts"]["prompt"][0][e] for r in asr) for e in range(8)
    ]


def test_copy_bias_favours_each_items_own_input_tokens(corrector):
    import torch

    text = corrector.prepare({"task": "ocr", "input": "speech text error"})
    nbest = corrector.prepare({"task": "asr", "input": ["grammar of", "grammar and"]})
    saved = corrector.options
    try:
        # Default: single texts get 1.5, N-best lists none.
        assert saved.copy_bias_for(text.nbest) == 1.5 and saved.copy_bias_for(nbest.nbest) == 0.0
        corrector.options = dataclasses.replace(saved, copy_bias=0.0)
        assert corrector._copy_bias([text, nbest]) is None  # nothing biased: plain generation
        corrector.options = dataclasses.replace(saved, copy_bias=float("inf"), num_beams=2)
        proc = corrector._copy_bias([text, nbest])
        scores = torch.randn(4, corrector.model.config.vocab_size, generator=torch.Generator().manual_seed(0))
        out = proc(torch.zeros((4, 1), dtype=torch.long), scores.clone())
        allowed = [set(torch.isfinite(out[r]).nonzero().flatten().tolist()) for r in range(4)]
        assert allowed[0] == allowed[1] and allowed[2] == allowed[3]  # one row per beam
        ids_text = set(corrector.tokenizer(" text", add_special_tokens=False)["input_ids"])
        ids_gram = set(corrector.tokenizer(" grammar", add_special_tokens=False)["input_ids"])
        assert ids_text <= allowed[0] and not ids_text <= allowed[2]
        assert ids_gram <= allowed[2] and set(corrector.eos_ids) <= allowed[2]
        assert torch.equal(out[0][list(allowed[0])], scores[0][list(allowed[0])])
        # Generation with input tokens only stays on the input (plus EOS/punctuation).
        corrector.options = dataclasses.replace(saved, copy_bias=float("inf"))
        res = corrector.correct({"task": "ocr", "input": "speech text error"})
        assert res.ok and set(re.sub(r"[^\w\s]", " ", res.generated).lower().split()) <= {
            "speech",
            "text",
            "error",
        }
        # A finite bias shifts only the input's tokens, by exactly that much.
        corrector.options = dataclasses.replace(saved, copy_bias=2.0)
        out = corrector._copy_bias([text])(torch.zeros((1, 1), dtype=torch.long), scores[:1].clone())
        diff = (out - scores[:1])[0]
        shifted = (diff - 2.0).abs() < 1e-5
        assert torch.all(shifted | (diff == 0))
        assert set(shifted.nonzero().flatten().tolist()) == allowed[0]
    finally:
        corrector.options = saved
