"""Speed of `neko eval`'s library path on a generated 100k-row ASR 5-best file, against jiwer called
naively once per utterance (the way many evaluation scripts do it).

Rows: reference + 5-best list + prediction, 6-20 words from a 2,000-word vocabulary with casing,
punctuation, contractions and spelled numbers, ~10% word errors; nearly every string is unique,
so the normalizer's memo gets no free hits. The Whisper normalizer (the default) is applied by every
method that says "whisper"; the "scoring only" rows start from already-normalized text.

Times are wall-clock and CPU (this process + its forked workers). The machine may be shared: CPU
time is the fair comparison there, wall time is what a user waits on an idle machine.

Measured here:
  neko load            read + validate the JSONL into rows (neko.eval.predictions)
  neko corpus_wer      normalize refs + predictions (cold memo) and score: WER, CER, S/D/I
  neko eval (full)     score_rows with defaults: prediction + 1best + ROVER, N-best and
                       compositional oracles, 1,000-resample bootstrap CIs and paired CIs
  jiwer naive          per utterance jiwer.process_words(ref, hyp) accumulated into a corpus WER,
                       on a subsample (default 2,000 rows), extrapolated linearly to all rows
                       (jiwer's cost per utterance does not depend on the corpus size)

  python bench/bench_eval.py                     # 100k rows, ~1-2 min on 2 cores
  python bench/bench_eval.py --rows 20000 --jiwer-sample 1000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import tempfile
import time
from pathlib import Path

WORDS_NUM = "one two three four five six seven eight nine ten twenty thirty hundred thousand".split()
CONTRACTIONS = "don't can't it's we're they'll i'm won't".split()
BRITISH = "colour favourite theatre organise centre programme".split()


def _vocab(rng: random.Random, n: int = 2000) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = {"".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(n * 2)}
    return sorted(words)[:n] + WORDS_NUM + CONTRACTIONS + BRITISH


def _corrupt(words: list[str], rng: random.Random, vocab: list[str], rate: float) -> list[str]:
    out = []
    for w in words:
        u = rng.random()
        if u < rate * 0.3:
            continue  # deletion
        out.append(rng.choice(vocab) if u < rate else w)
        if rng.random() < rate * 0.2:
            out.append(rng.choice(vocab))  # insertion
    return out


def make_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    vocab = _vocab(rng)
    rows = []
    for i in range(n):
        ref = [rng.choice(vocab) for _ in range(rng.randint(6, 20))]
        text = " ".join(ref).capitalize() + rng.choice([".", "!", "?", ""])
        nbest = [" ".join(_corrupt(ref, rng, vocab, 0.12)) for _ in range(5)]
        pred = " ".join(_corrupt(ref, rng, vocab, 0.08))
        rows.append({"id": str(i), "task": "asr", "input": nbest, "output": text, "prediction": pred})
    return rows


def _cpu() -> float:
    """CPU seconds of this process and its (forked worker) children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _time(fn):
    """(wall seconds, CPU seconds incl. workers, result)."""
    t, c = time.perf_counter(), _cpu()
    out = fn()
    return time.perf_counter() - t, _cpu() - c, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--jiwer-sample", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import jiwer

    from neko.eval.predictions import load_predictions
    from neko.eval.score import ScoreConfig, score_rows
    from neko.metrics._parallel import default_workers
    from neko.metrics.normalizers import get_normalizer
    from neko.metrics.wer import corpus_wer

    norm = get_normalizer("whisper")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pred.jsonl"
        t_gen, _, rows = _time(lambda: make_rows(args.rows, args.seed))
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        print(f"generated {args.rows} rows (5-best) in {t_gen:.1f} s; {path.stat().st_size / 1e6:.1f} MB")

        t_load, c_load, scored = _time(lambda: load_predictions([("prediction", path)]))
        refs = [r.example.output for r in scored]
        preds = [r.predictions["prediction"] for r in scored]

        norm.clear_cache()
        t_wer, c_wer, res = _time(lambda: corpus_wer(refs, preds, norm))
        nr = [" ".join(norm(r).split()) for r in refs]  # warm: for the scoring-only rows
        nh = [" ".join(norm(h).split()) for h in preds]
        t_wer_only, c_wer_only, res_none = _time(lambda: corpus_wer(nr, nh, "none"))
        assert abs(res_none.wer - res.wer) < 1e-12

        norm.clear_cache()
        t_full, c_full, report = _time(lambda: score_rows(scored, ScoreConfig()))

    k = min(args.jiwer_sample, args.rows)
    idx = random.Random(1).sample(range(args.rows), k)
    scale = args.rows / k

    def naive(with_norm: bool) -> tuple[float, int, int]:
        err = words = 0
        for i in idx:
            r, h = (refs[i], preds[i]) if with_norm else (nr[i], nh[i])
            if with_norm:
                r, h = hf_norm(r), hf_norm(h)
            if not r.strip():
                continue
            o = jiwer.process_words(r, h)
            err += o.substitutions + o.deletions + o.insertions
            words += o.substitutions + o.deletions + o.hits
        return err, words

    # A naive script's normalizer: transformers' Whisper normalizer with Whisper's spelling map, unmemoized.
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    from neko.metrics.normalizers import whisper_spelling_map

    hf_norm = EnglishTextNormalizer(whisper_spelling_map())
    t_j_only, c_j_only, (e1, w1) = _time(lambda: naive(False))
    t_j_norm, c_j_norm, (e2, w2) = _time(lambda: naive(True))
    sub = corpus_wer([nr[i] for i in idx], [nh[i] for i in idx], "none")
    assert (e1, w1) == (e2, w2) == (sub.errors, sub.ref_words), "jiwer and neko disagree"

    n = args.rows
    table = [  # name, rows timed, wall, cpu, scale to n rows, compare-with key
        ("neko load (read + validate JSONL)", n, t_load, c_load, 1.0, None),
        ("neko corpus_wer, whisper, cold memo", n, t_wer, c_wer, 1.0, "a"),
        ("neko corpus_wer, pre-normalized text", n, t_wer_only, c_wer_only, 1.0, "b"),
        ("neko eval full (+1best, ROVER, oracles, CIs)", n, t_full, c_full, 1.0, None),
        ("jiwer per utterance, whisper (transformers)", k, t_j_norm, c_j_norm, scale, "a"),
        ("jiwer per utterance, pre-normalized text", k, t_j_only, c_j_only, scale, "b"),
    ]
    base = {"a": (t_wer, c_wer), "b": (t_wer_only, c_wer_only)}
    print(
        f"\n{n} rows, WER {100 * res.wer:.2f} (whisper); jiwer rows timed on {k} rows and extrapolated x{scale:.0f}; "
        f"eval workers: {default_workers()}; load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    hdr = f"{'method':<46} {'rows timed':>10} {'wall s':>8} {'CPU s':>8} {'wall s/' + str(n):>12} {'CPU s/' + str(n):>12}"
    print(hdr + f" {'jiwer/neko wall':>15} {'jiwer/neko CPU':>15}")
    for name, rows_timed, wall, cpu, sc, pair in table:
        r_wall = r_cpu = ""
        if pair and name.startswith("jiwer"):
            r_wall = f"{wall * sc / base[pair][0]:.1f}x"
            r_cpu = f"{cpu * sc / base[pair][1]:.1f}x"
        print(
            f"{name:<46} {rows_timed:>10} {wall:>8.2f} {cpu:>8.2f} {wall * sc:>12.2f} {cpu * sc:>12.2f}"
            f" {r_wall:>15} {r_cpu:>15}"
        )
    asr = report["tasks"]["asr"]
    print(
        f"\nneko eval: prediction {100 * asr['systems']['prediction']['wer']:.2f}, "
        f"1best {100 * asr['systems']['1best']['wer']:.2f}, rover {100 * asr['systems']['rover']['wer']:.2f}, "
        f"o_nb {100 * asr['oracles']['nbest']['wer']:.2f}, o_cp {100 * asr['oracles']['compositional']['wer']:.2f}"
    )


if __name__ == "__main__":
    main()
