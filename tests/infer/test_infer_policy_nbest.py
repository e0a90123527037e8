"""N-best lists from strong recognizers: recognizer scores in rescoring, keeping rows whose
hypotheses agree (without running the model), and N-best-constrained generation as a mode."""

from __future__ import annotations

import json
import random
import shutil

import pytest
from infer_helpers import write_rows

from neko.infer.correct import AM_CLIP, Corrector, recognizer_scores
from neko.infer.files import correct_file
from neko.infer.guard import GuardConfig
from neko.infer.options import CorrectionOptions
from neko.infer.policy import (
    AGREE_REASON,
    MODES,
    Policy,
    RescoreConfig,
    RowScores,
    TaskPolicy,
    decide,
    hypotheses_agree,
    load_policy,
    save_policy,
)
from neko.infer.tuning import TuneRow, rows_from_predictions, tune_on_dev, tune_policy
from neko.schema import Example

VOCAB = [f"w{i}" for i in range(60)]
PUNCT = set(" .,?!'\":;-()")


# --------------------------------------------------------------------------- recognizer scores


def test_choose_adds_the_weighted_recognizer_score_and_keeps_rank_prior_and_margin():
    cfg = RescoreConfig(alpha=0.0, cond_weight=1.0, rank_weight=0.5, margin=0.25, am_weight=2.0)
    cond, lm, ntok = [-5.0, -5.0, -5.0], [0.0] * 3, [3, 3, 3]
    assert cfg.choose(cond, lm, ntok) == 0  # the model alone: a tie, the rank prior keeps the 1-best
    # 2 * (-0.2 - -0.9) = 1.4 gain, minus the rank prior 0.5: 0.9 > 0.25
    assert cfg.choose(cond, lm, ntok, am=[-0.9, -0.2, -0.9]) == 1
    # gain 2 * 0.3 - 0.5 = 0.1 < margin: keep
    assert cfg.choose(cond, lm, ntok, am=[-0.5, -0.2, -0.9]) == 0
    assert RescoreConfig(0.0, 1.0, 0.5, 0.25).choose(cond, lm, ntok, am=[-0.9, -0.2, -0.9]) == 0  # weight 0
    # the model's own score (what the guard's margin compares) never includes the recognizer's
    assert cfg.scores(cond, lm, ntok) == [-5.0, -5.0, -5.0]


def test_row_scores_drop_recognizer_scores_that_do_not_fit_the_hypotheses():
    assert RowScores(["a", "b"], am=[-0.1]).am is None
    assert RowScores(["a", "b"], am=[-0.1, -0.2]).am == [-0.1, -0.2]


def test_recognizer_scores_are_read_from_meta_and_kept_aligned():
    def ex(meta, hyps=("a b", "a c", "a d")):
        return Example(id="1", task="asr", input=list(hyps), meta=meta)

    # relative to the 1-best's score
    assert recognizer_scores(ex({"am_score": [-0.1, -0.2, -0.3]})) == pytest.approx([0.0, -0.1, -0.2])
    assert recognizer_scores(ex({"am_score": [-0.1, -0.2, -0.3], "score": [9, 9, 9]})) == pytest.approx(
        [0.0, -0.1, -0.2]
    )
    # summed log-probs (another scale): differences clipped, so a weight tuned on mean log-probs
    # cannot let them overrule the model by more than the clip
    assert recognizer_scores(ex({"score": [-120.0, -118.5, -131.0]})) == [0.0, AM_CLIP, -AM_CLIP]
    # an empty hypothesis is dropped by the Corrector: its score goes with it
    assert recognizer_scores(ex({"am_score": [-0.1, -0.2, -0.3]}, ("a b", "  ", "a d"))) == pytest.approx(
        [0.0, -0.2]
    )
    for bad in ([-0.1, -0.2], [-0.1, "x", -0.3], [-0.1, float("nan"), -0.3], [True, False, True], -0.5):
        assert recognizer_scores(ex({"am_score": bad})) is None, bad
    assert recognizer_scores(ex({})) is None
    assert recognizer_scores(Example(id="1", task="ocr", input="a b", meta={"score": [1.0]})) is None


def _am_rows(n=60, seed=0, with_am=True):
    """Dev rows on which the model cannot tell the hypotheses apart (equal scores) but the
    recognizer's score picks the reference (hypothesis 1) in 2 rows of 3."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        ref = [rng.choice(VOCAB) for _ in range(8)]
        h0, h2 = ref[:], ref[:]
        h0[3], h2[5] = "err", "bad"
        am = [-0.6, -0.2, -0.7] if i % 3 else [-0.2, -0.6, -0.7]
        s = RowScores(
            [" ".join(h0), " ".join(ref), " ".join(h2)],
            cond=[-10.0] * 3,
            lm=[-10.0] * 3,
            ntok=[9] * 3,
            am=am if with_am else None,
        )
        rows.append(TuneRow("asr", s, " ".join(ref), True))
    return rows


def test_tuning_searches_the_recognizer_weight_when_dev_rows_have_scores():
    rows = _am_rows()
    policy = tune_policy(rows, metrics={"asr": "wer"}, max_harm_rate=0.5, normalizer="none")
    tp = policy.per_task["asr"]
    rep = policy.report["tasks"]["asr"]
    assert tp.mode == "rescore" and tp.rescore.am_weight > 0
    assert rep["rescore"] < rep["keep"]
    # the numpy search and decide() agree row by row (the reported errors are decide()'s)
    texts = [decide(tp, r.scores).text for r in rows]
    wrong = sum(t != r.reference for t, r in zip(texts, rows, strict=True))
    assert rep["modes"]["rescore"]["errors"] == wrong == 20
    assert rep["modes"]["keep"]["errors"] == 60
    # without recognizer scores nothing tells the hypotheses apart: the input, and no weight
    plain = tune_policy(_am_rows(with_am=False), metrics={"asr": "wer"}, normalizer="none")
    assert plain.per_task["asr"].mode == "keep" and plain.per_task["asr"].rescore.am_weight == 0.0


def test_rows_without_scores_beside_rows_with_them():
    rows = _am_rows(60) + _am_rows(30, seed=5, with_am=False)
    tp = tune_policy(rows, metrics={"asr": "wer"}, max_harm_rate=0.5, normalizer="none").per_task["asr"]
    assert tp.rescore.am_weight > 0
    # rows without scores keep their 1-best: the model ties, and the weight multiplies nothing
    assert all(decide(tp, r.scores).index == 0 for r in rows[60:])


# --------------------------------------------------------------------------- agreement


def test_hypotheses_agree_after_the_whisper_normalizer():
    assert hypotheses_agree(["Hello, world.", "hello world", "HELLO WORLD!"])
    assert hypotheses_agree(["It's the colour.", "it is the color"])  # contraction and spelling
    assert not hypotheses_agree(["hello world", "hello word"])
    assert not hypotheses_agree(["hello world"])  # one hypothesis: nothing agrees with it


def test_decide_keeps_the_one_best_when_hypotheses_agree_whatever_the_mode():
    row = RowScores(
        ["Hello, world.", "hello world"],
        cond=[-9.0, -2.0],
        lm=[0.0, 0.0],
        ntok=[3, 3],
        generated="hello there world",
        con_generated="hello world world",
    )
    row.gen_cond = row.con_cond = -1.0
    row.gen_lm = row.con_lm = 0.0
    row.gen_ntok = row.con_ntok = 3
    tp = TaskPolicy("generate", RescoreConfig(0.0, 1.0, 0.0, 0.0), GuardConfig.from_dict({}))
    for mode in MODES:
        d = decide(tp, row, mode=mode, guard=False)
        assert (d.text, d.used, d.index, d.reasons) == ("Hello, world.", "input", 0, [AGREE_REASON]), mode
        assert d.to_dict(mode)["reasons"] == ["hypotheses agree"]
    off = TaskPolicy("generate", tp.rescore, tp.guard, keep_if_agree=False)
    assert decide(off, row, guard=False).text == "hello there world"
    assert decide(off, row, mode="constrained", guard=False).text == "hello world world"
    assert decide(off, row, mode="rescore").text == "hello world"
    # single texts are unaffected
    text = RowScores(["the txet"], generated="the text")
    assert decide(TaskPolicy("generate"), text).text == "the text"


def test_tuning_scores_agreeing_rows_as_kept():
    # generation "fixes" rows whose hypotheses agree (they differ in case only) and nothing else:
    # the policy will never use it there, so tuning must not count it
    rows = []
    for i in range(40):
        ref = " ".join(VOCAB[i : i + 6])
        hyp = ref.replace(VOCAB[i + 2], "zz")
        s = RowScores([hyp, hyp.upper()], cond=[-5.0, -5.0], lm=[0.0, 0.0], ntok=[6, 6], generated=ref)
        s.gen_cond, s.gen_lm, s.gen_ntok, s.gen_mean_logprob = -1.0, 0.0, 6, -0.2
        rows.append(TuneRow("asr", s, ref, True))
    policy = tune_policy(rows, metrics={"asr": "wer"}, normalizer="whisper")
    rep = policy.report["tasks"]["asr"]
    assert rep["agree_rows"] == 40 and rep["generate_raw"] == 0.0  # raw generation alone would fix all
    assert rep["generate_guarded"] == rep["keep"] > 0 and policy.per_task["asr"].mode == "keep"
    with_gen = tune_policy(rows, metrics={"asr": "wer"}, normalizer="whisper", keep_if_agree=False)
    assert with_gen.per_task["asr"].mode == "generate" and not with_gen.per_task["asr"].keep_if_agree


def test_policy_files_carry_the_new_fields_and_older_files_still_load(tmp_path):
    tp = TaskPolicy(
        "constrained", RescoreConfig(0.5, 0.25, 0.25, 2.0, 1.0), GuardConfig(), keep_if_agree=False
    )
    p = Policy({"asr": tp}, TaskPolicy("keep"))
    save_policy(tmp_path, p)
    saved = json.loads((tmp_path / "neko_policy.json").read_text())
    assert saved["per_task"]["asr"]["keep_if_agree"] is False
    assert saved["per_task"]["asr"]["rescore"]["am_weight"] == 1.0
    assert load_policy(tmp_path).per_task == p.per_task
    old = {"per_task": {"asr": {"mode": "rescore", "rescore": {"alpha": 0.5, "margin": 1.0}, "guard": {}}}}
    (tmp_path / "neko_policy.json").write_text(json.dumps(old))
    back = load_policy(tmp_path).per_task["asr"]
    assert back.keep_if_agree is True and back.rescore.am_weight == 0.0 and back.mode == "rescore"
    (tmp_path / "neko_policy.json").write_text(json.dumps({"per_task": {"asr": {"keep_if_agree": "yes"}}}))
    with pytest.raises(ValueError, match="keep_if_agree"):
        load_policy(tmp_path)


# --------------------------------------------------------------------------- constrained mode


def _con_rows(n=60, seed=2, gen_fixes=False):
    """N-best dev rows where no hypothesis is the reference but the words of two together are: the
    constrained generation combines them (a fix) in every row; the free generation invents a word
    (harm) in half of them, or fixes every row too with ``gen_fixes``."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        ref = [rng.choice(VOCAB) for _ in range(8)]
        h0, h1 = ref[:], ref[:]
        h0[2], h1[5] = "err", "bad"
        free = ref if gen_fixes or i % 2 else ref[:4] + ["new"] + ref[5:]
        s = RowScores([" ".join(h0), " ".join(h1)], cond=[-10.0, -10.5], lm=[0.0, 0.0], ntok=[9, 9])
        s.generated, s.gen_cond, s.gen_lm, s.gen_ntok, s.gen_mean_logprob = " ".join(free), -9.0, 0.0, 9, -0.3
        s.con_generated, s.con_cond, s.con_lm, s.con_ntok = " ".join(ref), -9.0, 0.0, 9
        s.con_mean_logprob = -0.3
        rows.append(TuneRow("asr", s, " ".join(ref), True))
    return rows


def test_tuning_chooses_constrained_generation_and_reports_every_mode():
    policy = tune_policy(_con_rows(), metrics={"asr": "wer"}, max_harm_rate=0.1, normalizer="none")
    tp = policy.per_task["asr"]
    rep = policy.report["tasks"]["asr"]
    assert tp.mode == "constrained" and rep["chosen"] == "constrained"
    modes = rep["modes"]
    assert set(modes) == {"keep", "rescore", "generate", "constrained"}
    assert modes["keep"]["errors"] == 60 and modes["constrained"]["errors"] == 0
    assert modes["generate"]["errors"] > 0 and rep["constrained_raw"] == 0.0
    # the saved policy does on the rows what the report says
    assert all(decide(tp, r.scores).text == r.reference for r in _con_rows())
    assert all(decide(tp, r.scores).used == "generated" for r in _con_rows())


def test_free_generation_must_gain_min_gain_over_constrained():
    # both fix every row: the free generation gains nothing over the constrained one
    policy = tune_policy(_con_rows(gen_fixes=True), metrics={"asr": "wer"}, normalizer="none")
    assert policy.per_task["asr"].mode == "constrained"
    # without constrained outputs (e.g. predictions from an older decode) it is not a candidate
    rows = _con_rows(gen_fixes=True)
    for r in rows:
        r.scores.con_generated = None
    policy = tune_policy(rows, metrics={"asr": "wer"}, normalizer="none")
    rep = policy.report["tasks"]["asr"]
    assert policy.per_task["asr"].mode == "generate" and rep["modes"]["constrained"] is None


def test_decide_constrained_is_guarded_like_generate():
    row = RowScores(["a b c", "a b d"], cond=[-6.0, -2.0], lm=[0.0, 0.0], ntok=[3, 3])
    row.con_generated, row.con_cond, row.con_lm, row.con_ntok, row.con_mean_logprob = (
        "x y z w v u",
        -9.0,
        0,
        6,
        -1.0,
    )
    tp = TaskPolicy("constrained", RescoreConfig(0.0, 1.0, 0.0, 0.0), GuardConfig(max_edit=0.5))
    d = decide(tp, row)
    assert d.used == "rescored" and d.text == "a b d" and d.reasons  # rejected: the rescored choice
    assert decide(tp, row, guard=False).text == "x y z w v u"
    assert decide(tp, RowScores(["a b c", "a b d"])).used == "input"  # nothing generated: the input


# --------------------------------------------------------------------------- the Corrector


def _forward_counter(model):
    calls = []
    handle = model.register_forward_pre_hook(lambda *a: calls.append(1))
    return calls, handle


def test_a_file_whose_rows_all_agree_never_runs_the_model(tmp_path, model_dir):
    c = Corrector.from_pretrained(model_dir, CorrectionOptions(max_new_tokens=6))
    rows = [
        {"id": "a", "task": "asr", "input": ["Hello, world.", "hello world", "Hello world!"]},
        {"id": "b", "task": "asr", "input": ["the speech text", "The speech text."]},
    ]
    src = write_rows(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    calls, handle = _forward_counter(c.model)
    try:
        correct_file(model_dir, src, out, corrector=c, progress=False, details=True)
    finally:
        handle.remove()
    assert calls == []  # no scoring, no generation
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["prediction"] for r in got] == ["Hello, world.", "the speech text"]
    for r in got:
        assert r["decision"]["used"] == "input" and r["decision"]["reasons"] == ["hypotheses agree"]
        assert r["decision"]["mode"] == "generate" and "prediction_generated" not in r


def test_agreeing_rows_beside_others_and_the_option_to_decode_them(model_dir):
    c = Corrector.from_pretrained(model_dir, CorrectionOptions(max_new_tokens=6))
    agree = {"task": "asr", "input": ["speech text", "Speech text."]}
    other = {"task": "asr", "input": ["hello world", "hello word"]}
    ocr = {"task": "ocr", "input": "speech text"}
    res = c.correct([agree, other, ocr])
    assert res[0].text == "speech text" and res[0].generated is None
    alone = c.correct([other, ocr])
    assert [r.text for r in res[1:]] == [r.text for r in alone] and res[1].decision["used"] == "generated"
    raw = Corrector.from_pretrained(model_dir, CorrectionOptions(max_new_tokens=6, keep_if_agree=False))
    r = raw.correct(agree)
    assert r.generated is not None and r.decision["used"] == "generated" and r.text == r.generated
    # all outputs: every column is filled, the decision still keeps the agreeing row
    full = c.run([c.prepare(agree)], all_outputs=True)[0]
    assert full.generated is not None and full.scores is not None
    assert full.text == "speech text" and full.decision["reasons"] == ["hypotheses agree"]


def test_constrained_mode_generates_from_the_input_tokens_only(model_dir):
    item = {"task": "asr", "input": ["aaa aaa", "aaa bbb"]}
    free = Corrector.from_pretrained(model_dir, CorrectionOptions(max_new_tokens=12)).correct(item)
    assert set(free.text) - set("abAB") - PUNCT  # the random model writes other characters freely
    c = Corrector.from_pretrained(model_dir, CorrectionOptions(max_new_tokens=12, mode="constrained"))
    res = c.correct(item, details=True)
    assert res.constrained and not set(res.constrained) - set("abAB") - PUNCT
    assert res.decision["mode"] == "constrained" and res.generated is None
    assert res.text == res.constrained and res.decision["used"] == "generated"  # no policy: unguarded
    assert res.details["generated_tokens"] >= 1
    guarded = Corrector.from_pretrained(
        model_dir, CorrectionOptions(max_new_tokens=12, mode="constrained", guard="on")
    ).correct(item)
    assert guarded.constrained == res.constrained and guarded.decision["mode"] == "constrained"
    if guarded.decision["used"] != "generated":
        assert guarded.text in item["input"] and guarded.decision["reasons"]
    with pytest.raises(ValueError, match="constrained"):
        CorrectionOptions(mode="constrain")


def test_recognizer_scores_reach_the_rescoring(tmp_path, model_dir):
    model = tmp_path / "m"
    shutil.copytree(model_dir, model)
    # a huge weight on the recognizer's score: rescoring returns its favourite, whatever the model says
    tp = TaskPolicy("rescore", RescoreConfig(0.0, 0.0, 0.0, 0.0, 1000.0))
    save_policy(model, Policy({"asr": tp}))
    c = Corrector.from_pretrained(model, CorrectionOptions(max_new_tokens=4))
    hyps = ["the speech text", "", "the speech test", "a speech text"]
    for best in (0, 2, 3):
        am = [-1.0, -1.0, -1.0, -1.0]
        am[best] = -0.1
        r = c.correct({"task": "asr", "input": hyps, "meta": {"am_score": am}})
        kept = [a - am[0] for i, a in enumerate(am) if i != 1]
        assert r.text == hyps[best] and r.scores.am == pytest.approx(kept)
    # scores that do not fit: the model alone decides, as without any
    plain = c.correct({"task": "asr", "input": hyps})
    misfit = c.correct({"task": "asr", "input": hyps, "meta": {"am_score": [0.0, -9.0]}})
    assert misfit.text == plain.text and misfit.scores.am is None


def test_prediction_rows_round_trip_recognizer_and_constrained_scores(tmp_path, model_dir):
    rows = [
        {
            "id": "1",
            "task": "asr",
            "input": ["hello world", "hello word"],
            "output": "hello world",
            "meta": {"am_score": [-0.3, -0.5]},
        },
        {"id": "2", "task": "asr", "input": ["Speech text.", "speech text"], "output": "speech text"},
        {"id": "3", "task": "ocr", "input": "speech txet", "output": "speech text"},
    ]
    src = write_rows(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    c = Corrector.from_pretrained(model_dir, CorrectionOptions(max_new_tokens=6))
    correct_file(
        model_dir, src, out, corrector=c, progress=False, details=True, all_outputs=True, constrained=True
    )
    preds = [json.loads(x) for x in out.read_text().splitlines()]
    assert "prediction_constrained" in preds[0] and "prediction_constrained" not in preds[1]  # agree
    assert "prediction_constrained" not in preds[2]  # a single text: no N-best to constrain to
    back = rows_from_predictions(preds, c.registry)
    assert back[0].scores.am == pytest.approx([0.0, -0.2]) and back[1].scores.am is None
    assert back[0].scores.con_generated == preds[0]["prediction_constrained"]
    assert back[0].scores.con_cond is not None and back[0].scores.con_ntok >= 1
    assert back[0].scores.generated == preds[0]["prediction_generated"]


def test_tune_on_dev_decodes_constrained_outputs_and_reports_every_mode(tmp_path, model_dir):
    model = tmp_path / "m"
    shutil.copytree(model_dir, model)
    dev = []
    for i in range(8):
        ws = VOCAB[i : i + 4]
        hyps = [" ".join(ws), " ".join(ws[:-1])] if i % 2 else [" ".join(ws), " ".join(ws).upper()]
        dev.append(
            Example(id=str(i), task="asr", input=hyps, output=" ".join(ws), meta={"am_score": [-0.1, -0.2]})
        )
    policy = tune_on_dev(
        model,
        dev,
        work_dir=tmp_path / "work",
        options=CorrectionOptions(max_new_tokens=6),
        min_task_rows=4,
        progress=False,
    )
    preds = [
        json.loads(x) for x in (tmp_path / "work" / "policy_dev_predictions.jsonl").read_text().splitlines()
    ]
    # constrained decoding ran on the rows that do not agree, and only there
    assert [("prediction_constrained" in p) for p in preds] == [i % 2 == 1 for i in range(8)]
    assert all(p["details"]["scores"]["am"] == pytest.approx([0.0, -0.1]) for p in preds)
    rep = policy.report["tasks"]["asr"]
    assert set(rep["modes"]) == {"keep", "rescore", "generate", "constrained"}
    assert rep["modes"]["constrained"] is not None and rep["agree_rows"] == 4
    assert rep["chosen"] in MODES and load_policy(model).per_task["asr"].keep_if_agree is True


def test_correct_cli_accepts_constrained_mode(tmp_path, model_dir):
    from typer.testing import CliRunner

    from neko.cli import app

    src = write_rows(tmp_path / "in.jsonl", [{"id": "1", "task": "asr", "input": ["a b c", "a b d"]}])
    out = tmp_path / "out.jsonl"
    res = CliRunner().invoke(
        app,
        [
            "correct",
            "--model",
            str(model_dir),
            "--input",
            str(src),
            "--output",
            str(out),
            "--mode",
            "constrained",
            "--max-new-tokens",
            "4",
        ],
    )
    assert res.exit_code == 0, res.output
    row = json.loads(out.read_text())
    assert row["decision"]["mode"] == "constrained" and "prediction_constrained" in row
    bad = CliRunner().invoke(
        app, ["correct", "--model", str(model_dir), "--input", str(src), "--output", str(out), "--mode", "x"]
    )
    assert bad.exit_code != 0 and "constrained" in bad.output


def test_rescoring_never_picks_a_hypothesis_of_implausible_length():
    """Whisper beams hold hallucinated short outputs ("thank you"); however much the LM likes one,
    rescoring (decide and the tuning fast path alike) keeps to hypotheses of plausible length."""
    from neko.infer.policy import rescore_candidates

    hyps = ["i want to fly from boston to dallas", "i want to fly from boston to dulles", "bye"]
    assert rescore_candidates(hyps) == [True, True, False]
    assert rescore_candidates(["a b", "a b c d e"]) == [True, False]  # longer than twice the 1-best
    row = RowScores(hyps, cond=[0.0] * 3, lm=[-30.0, -29.0, -1.0], ntok=[10, 10, 2])
    tp = TaskPolicy("rescore", RescoreConfig(0.0, 0.0, 0.0, 0.0))
    assert decide(tp, row).text == hyps[1]  # "bye" scores best but is no candidate
    rows = [TuneRow("asr", row, hyps[0], True)] * 30
    tuned = tune_policy(rows, metrics={"asr": "wer"}, normalizer="none")
    assert decide(tuned.per_task["asr"], row).text != "bye"
