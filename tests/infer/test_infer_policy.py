"""The correction policy: decisions per row, tuning on dev, saving, and the Corrector applying it."""

from __future__ import annotations

import json
import random
import shutil

import pytest

from neko.infer.correct import Corrector
from neko.infer.guard import GuardConfig
from neko.infer.options import CorrectionOptions
from neko.infer.policy import (
    Policy,
    RescoreConfig,
    RowScores,
    TaskPolicy,
    decide,
    load_policy,
    save_policy,
)
from neko.infer.tuning import TuneRow, tune_policy

VOCAB = [f"w{i}" for i in range(60)]


def test_rescore_choice_needs_the_margin_over_the_rank_prior():
    cfg = RescoreConfig(alpha=0.0, cond_weight=1.0, rank_weight=1.0, margin=0.5)
    ntok = [3, 3, 3]
    assert cfg.choose([-5.0, -3.0, -9.0], [0, 0, 0], ntok) == 1  # -3 - 1 beats -5 by 1 > 0.5
    assert cfg.choose([-5.0, -3.8, -9.0], [0, 0, 0], ntok) == 0  # gain 0.2 after the prior: keep
    lm = RescoreConfig(alpha=1.0, cond_weight=0.0, rank_weight=0.0, margin=0.0)
    assert lm.choose([9.0, 0.0], [-8.0, -6.0], [4, 2]) == 0  # answer LM per token: -2 vs -3
    assert lm.scores([0.0], [-8.0], [4]) == [-2.0]
    mix = RescoreConfig(alpha=0.0, cond_weight=0.25, rank_weight=0.0, margin=0.0)
    assert mix.scores([-4.0], [-8.0], [1]) == [-7.0]


def test_decide_modes_and_guard_fallback_to_the_rescored_hypothesis():
    row = RowScores(
        ["a b c", "a b d"], cond=[-6.0, -2.0], lm=[0.0, 0.0], ntok=[3, 3], generated="x y z w v u"
    )
    row.gen_cond, row.gen_lm, row.gen_ntok, row.gen_mean_logprob = -9.0, 0.0, 6, -1.5
    tp = TaskPolicy("generate", RescoreConfig(0.0, 1.0, 0.0, 0.0), GuardConfig(max_edit=0.5))
    d = decide(tp, row)
    # the generation is far from every hypothesis: rejected, and the rescored choice comes back
    assert d.used == "rescored" and d.text == "a b d" and d.index == 1 and d.reasons
    assert decide(tp, row, guard=False).used == "generated"
    assert decide(tp, row, mode="keep").text == "a b c"
    r = decide(tp, row, mode="rescore")
    assert r.used == "rescored" and r.rescored == "a b d"
    # single text: rescoring has nothing to choose from, the fallback is the input
    text = RowScores(["the txet"], generated="the text")
    assert decide(TaskPolicy("generate"), text).text == "the text"
    assert decide(TaskPolicy("rescore"), text).used == "input"
    # no generated text (e.g. a failed decode): the input
    assert decide(TaskPolicy("generate"), RowScores(["a"])).used == "input"


def _nbest_rows(n=60, seed=0, good_share=0.5):
    """ASR-like dev rows: the reference is hypothesis 1; the model ranks it first clearly in a share of
    rows, and prefers a wrong third hypothesis by a hair in the others."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        ref = [rng.choice(VOCAB) for _ in range(8)]
        h0 = ref[:]
        h0[3] = "err"
        h2 = ref[:]
        h2[5] = "bad"
        h2[3] = "err"
        if i < good_share * n:
            cond = [-12.0, -6.0, -12.5]
        else:
            cond = [-10.0, -10.5, -9.8]
        s = RowScores([" ".join(h0), " ".join(ref), " ".join(h2)], cond=cond, lm=[-20.0] * 3, ntok=[9, 9, 9])
        rows.append(TuneRow("asr", s, " ".join(ref), True))
    return rows


def _text_rows(n=60, seed=1):
    """OCR-like dev rows: generation fixes the error (a clear margin) in half, and rewrites a clean
    input into something wrong (a small margin) in the other half."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        ref = [rng.choice(VOCAB) for _ in range(10)]
        if i % 2 == 0:
            inp = ref[:]
            inp[2] = "0cr"
            gen, margin = ref, 4.0
        else:
            inp = ref[:]
            gen = ref[:]
            gen[6] = "oops"
            margin = 0.2
        s = RowScores([" ".join(inp)], cond=[-10.0], lm=[0.0], ntok=[10])
        s.generated, s.gen_cond, s.gen_lm, s.gen_ntok, s.gen_mean_logprob = (
            " ".join(gen),
            -10.0 + margin,
            0.0,
            10,
            -0.5,
        )
        rows.append(TuneRow("ocr", s, " ".join(ref), False))
    return rows


def test_tuning_picks_rescoring_with_a_margin_that_avoids_harm():
    policy = tune_policy(_nbest_rows(), metrics={"asr": "wer"}, max_harm_rate=0.0, normalizer="none")
    tp = policy.per_task["asr"]
    rep = policy.report["tasks"]["asr"]
    assert tp.mode == "rescore" and rep["chosen_harm_rate"] == 0.0
    assert rep["rescore"] < rep["keep"]
    # the tuned settings reproduce the reported result row by row
    chosen = [decide(tp, r.scores).text for r in _nbest_rows()]
    assert sum(c == r.reference for c, r in zip(chosen, _nbest_rows(), strict=True)) == 30
    assert policy.default_nbest.mode == "rescore"  # pooled N-best WER rows: the same ASR rows


def test_tuning_picks_guarded_generation_when_it_pays():
    policy = tune_policy(_text_rows(), metrics={"ocr": "wer"}, max_harm_rate=0.0, normalizer="none")
    tp = policy.per_task["ocr"]
    rep = policy.report["tasks"]["ocr"]
    assert tp.mode == "generate" and tp.guard.min_margin > 0.2
    assert rep["generate_raw_harm_rate"] == 0.5 and rep["chosen_harm_rate"] == 0.0
    assert rep["chosen_score"] < rep["keep"] == rep["generate_raw"]  # raw: one fix, one new error
    assert policy.default_text.mode == "generate" and policy.default_nbest.mode == "keep"


def test_small_gains_keep_the_input():
    rows = _nbest_rows(n=60, good_share=1 / 60)  # one row to gain: noise on a dev set this size
    policy = tune_policy(rows, metrics={"asr": "wer"}, max_harm_rate=0.1, normalizer="none", min_gain=0.02)
    assert policy.per_task["asr"].mode == "keep"


def test_tasks_with_too_few_rows_use_the_default_of_their_input_kind():
    rows = _text_rows(40) + [
        TuneRow("tec-grammar", r.scores, r.reference, False) for r in _text_rows(6, seed=3)
    ]
    policy = tune_policy(rows, metrics={}, normalizer="none", min_task_rows=20)
    assert "tec-grammar" not in policy.per_task and "ocr" in policy.per_task
    assert policy.for_task("tec-grammar", nbest=False) is policy.default_text
    assert policy.for_task("typo", nbest=False) is policy.default_text
    assert policy.for_task("st", nbest=True) is policy.default_nbest


def test_bleu_tasks_are_tuned_on_bleu():
    rows = [TuneRow("mt", r.scores, r.reference, True) for r in _nbest_rows()]
    policy = tune_policy(rows, metrics={"mt": "bleu"}, normalizer="none")
    rep = policy.report["tasks"]["mt"]
    assert rep["metric"] == "bleu" and rep["rescore"] > rep["keep"]  # BLEU: higher is better
    assert policy.per_task["mt"].mode == "rescore"


def test_no_rows_is_an_error():
    with pytest.raises(ValueError, match="no dev rows"):
        tune_policy([], metrics={})


def test_save_load_roundtrip_and_legacy_guard_file(tmp_path):
    p = Policy({"asr": TaskPolicy("rescore", RescoreConfig(0.5, 0.25, 0.25, 2.0))}, TaskPolicy("keep"))
    save_policy(tmp_path, p)
    back = load_policy(tmp_path)
    assert back.per_task == p.per_task and back.default_nbest == p.default_nbest
    assert load_policy(tmp_path / "nowhere") is None
    (tmp_path / "neko_policy.json").write_text('{"per_task": {"asr": {"mode": "shout"}}}')
    with pytest.raises(ValueError, match="neko_policy.json: unreadable correction policy.*shout"):
        load_policy(tmp_path)
    legacy = tmp_path / "old"
    legacy.mkdir()
    (legacy / "neko_guard.json").write_text(
        json.dumps({"default": {"max_edit": 0.3}, "per_task": {"ocr": {}}})
    )
    old = load_policy(legacy)
    assert old.default_text.mode == "generate" and old.default_text.guard.max_edit == 0.3
    assert set(old.per_task) == {"ocr"}


# --- the Corrector applying a policy (a tiny random model: it writes junk, which is the point) ---


def test_corrector_modes_and_decisions(model_dir):
    item = {"task": "asr", "input": ["the speech text", "the speech test"]}
    keep = Corrector.from_pretrained(model_dir, CorrectionOptions(max_new_tokens=6, mode="keep")).correct(
        item
    )
    assert keep.text == "the speech text" and keep.decision["used"] == "input" and keep.generated is None
    res = Corrector.from_pretrained(model_dir, CorrectionOptions(max_new_tokens=6, mode="rescore")).correct(
        item
    )
    assert res.text in item["input"] and res.decision["mode"] == "rescore" and res.generated is None
    assert res.rescored == res.text
    gen = Corrector.from_pretrained(model_dir, CorrectionOptions(max_new_tokens=6)).correct(item)
    # no tuned policy: plain generation, unguarded
    assert (
        gen.decision == {**gen.decision, "mode": "generate", "used": "generated"}
        and gen.text == gen.generated
    )
    guarded = Corrector.from_pretrained(model_dir, CorrectionOptions(max_new_tokens=6, guard="on")).correct(
        item
    )
    assert guarded.decision["used"] != "generated" and guarded.text in item["input"]  # junk rejected


def test_saved_policy_is_applied_by_default_and_all_outputs_fills_every_column(tmp_path, model_dir):
    model = tmp_path / "m"
    shutil.copytree(model_dir, model)
    save_policy(model, Policy({"asr": TaskPolicy("rescore"), "ocr": TaskPolicy("keep")}))
    c = Corrector.from_pretrained(model, CorrectionOptions(max_new_tokens=6))
    items = [{"task": "asr", "input": ["a b c", "a b d"]}, {"task": "ocr", "input": "the txet"}]
    plain = c.correct_batch(items)
    assert [r.decision["mode"] for r in plain] == ["rescore", "keep"]
    assert plain[1].text == "the txet" and all(r.generated is None for r in plain)
    full = c.run([c.prepare(x) for x in items], all_outputs=True)
    assert all(r.generated is not None for r in full) and full[0].rescored is not None
    assert [r.text for r in full] == [r.text for r in plain]  # same decisions, more columns
    assert full[0].scores is not None and len(full[0].scores.cond) == 2


def test_policy_tune_cli_from_predictions_and_correct_cli_modes(tmp_path, model_dir):
    from typer.testing import CliRunner

    from neko.cli import app

    model = tmp_path / "m"
    shutil.copytree(model_dir, model)
    rows = []
    for r in _text_rows(40) + _nbest_rows(40):
        task = r.task
        rows.append(
            {
                "id": str(len(rows)),
                "task": task,
                "input": r.scores.hypotheses if r.nbest else r.scores.hypotheses[0],
                "output": r.reference,
                "prediction": r.scores.hypotheses[0],
                "details": {"scores": r.scores.__dict__},
            }
        )
    pred = tmp_path / "dev_pred.jsonl"
    pred.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = CliRunner().invoke(
        app, ["policy", "tune", "--model", str(model), "--pred", str(pred), "--normalizer", "none"]
    )
    assert res.exit_code == 0, res.output
    assert "asr: rescore" in res.output and "ocr: generate" in res.output
    assert load_policy(model).per_task["ocr"].mode == "generate"
    bad = CliRunner().invoke(app, ["policy", "tune", "--model", str(model)])
    assert bad.exit_code == 2 and "--dev DEV" in bad.output
    src = tmp_path / "in.jsonl"
    src.write_text(
        json.dumps({"id": "1", "task": "asr", "input": ["a b c", "a b d"], "output": "a b c"}) + "\n"
    )
    out = tmp_path / "out.jsonl"
    res = CliRunner().invoke(
        app, ["correct", "--model", str(model), "--input", str(src), "--output", str(out), "--mode", "keep"]
    )
    assert res.exit_code == 0, res.output
    row = json.loads(out.read_text())
    assert row["prediction"] == "a b c" and row["decision"]["used"] == "input"


def test_each_row_stops_at_its_own_token_limit(model_dir):
    """A random model rarely emits EOS, so every row runs to its limit: ceil(1.5 x input) + slack."""
    c = Corrector.from_pretrained(model_dir, CorrectionOptions(length_ratio=1.0, length_slack=1))
    items = [
        {"task": "ocr", "input": "a"},
        {"task": "ocr", "input": "the speech text error correct recognition"},
    ]
    res = c.correct_batch(items, details=True)
    limits = [r.details["max_new_tokens"] for r in res]
    assert limits[0] < limits[1]
    assert all(r.details["generated_tokens"] <= r.details["max_new_tokens"] for r in res)
    # the short row really stopped early while the batch went on for the long one
    short = len(c.tokenizer(res[0].text, add_special_tokens=False)["input_ids"])
    assert short <= limits[0] + 1 < len(c.tokenizer(res[1].text, add_special_tokens=False)["input_ids"])
    fixed = Corrector.from_pretrained(model_dir, CorrectionOptions(max_new_tokens=3)).correct_batch(
        items, details=True
    )
    assert [r.details["max_new_tokens"] for r in fixed] == [3, 3]
