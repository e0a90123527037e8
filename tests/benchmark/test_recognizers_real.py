"""The real recognizers on a handful of inputs: flite -> PocketSphinx, PIL -> Tesseract, Apertium,
and the transformers Whisper adapter on a tiny random model (no weights)."""

from __future__ import annotations

import numpy as np
import pytest

from neko.benchmark.recognizers.base import MissingToolError, RecognizerError, require_tool
from neko.benchmark.recognizers.speech import clean_sphinx_hyp

SENTENCE = "Never put off till tomorrow what you can do today."


def _words(s: str) -> list[str]:
    return "".join(c for c in s.lower() if c.isalpha() or c in " '").split()


@pytest.mark.recognizers
def test_flite_pocketsphinx_nbest_is_distinct_and_close():
    from neko.benchmark.recognizers.speech import PocketSphinxRecognizer, synthesize

    rec = PocketSphinxRecognizer(nbest=5)
    for voice, tempo, noise in (("rms", 1.0, 0.0), ("awb", 1.2, 0.0), ("kal16", 1.0, 0.02)):
        raw = synthesize(SENTENCE, voice, tempo=tempo, noise=noise, seed=1)
        assert len(raw) > 16000  # more than half a second of 16-bit audio
        hyps = rec(raw)
        assert 2 <= len(hyps) <= 5
        assert len(set(hyps)) == len(hyps)
        assert all("<" not in h and "(" not in h and "[" not in h for h in hyps)
        ref = _words(SENTENCE)
        # The 1-best shares most words with the reference: real recognition, not noise.
        assert len(set(_words(hyps[0])) & set(ref)) >= len(ref) // 2


@pytest.mark.recognizers
def test_noise_is_seeded_and_changes_audio():
    from neko.benchmark.recognizers.speech import synthesize

    a = synthesize(SENTENCE, "rms", noise=0.02, seed=3)
    assert a == synthesize(SENTENCE, "rms", noise=0.02, seed=3)
    assert a != synthesize(SENTENCE, "rms", noise=0.02, seed=4)
    assert a != synthesize(SENTENCE, "rms")


def test_sphinx_fillers_and_pronunciation_marks_removed():
    assert clean_sphinx_hyp("<s> the(2) cat [NOISE] sat ++UH++ <sil> down </s>") == "the cat sat down"


@pytest.mark.recognizers
def test_tesseract_reads_clean_line_and_degradation_hurts():
    from neko.benchmark.recognizers.ocr import TesseractRecognizer, degrade, render_line

    rec = TesseractRecognizer()
    assert rec.version.startswith("tesseract")
    clean = rec(degrade(render_line(SENTENCE), "clean", seed=0))
    assert clean == [SENTENCE]
    heavy = rec(degrade(render_line(SENTENCE, "DejaVuSans.ttf"), "heavy", seed=0))
    assert len(heavy) == 1 and heavy[0] != SENTENCE


@pytest.mark.recognizers
def test_tesseract_unreadable_image_is_a_row_error(tmp_path):
    from neko.benchmark.recognizers.ocr import TesseractRecognizer

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(RecognizerError, match="unreadable image"):
        TesseractRecognizer()(bad)
    # recognize_batch records it in place and keeps going
    from neko.benchmark.recognizers.ocr import render_line

    out = TesseractRecognizer().recognize_batch([bad, render_line("A short clean line of text here.")])
    assert isinstance(out[0], RecognizerError) and out[1] == ["A short clean line of text here."]


@pytest.mark.recognizers
def test_apertium_round_trip_five_pivots():
    from neko.benchmark.recognizers.mt import ApertiumRoundTrip

    rec = ApertiumRoundTrip()
    texts = ["The children are playing in the garden.", "He said that time flies like an arrow."]
    out = rec.recognize_batch(texts)
    for hyps in out:
        assert isinstance(hyps, list) and len(hyps) == 5
        assert all(h and "*" not in h for h in hyps)
    # real transfer errors: at least one pivot changes each sentence
    assert all(any(h != t for h in hyps) for t, hyps in zip(texts, out, strict=True))
    assert rec.recognize(texts[0]) == out[0]


def test_missing_tool_names_install_command(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(MissingToolError, match=r"apt-get install flite.*scripts/setup\.sh"):
        require_tool("flite")
    from neko.benchmark.recognizers.speech import synthesize

    with pytest.raises(MissingToolError, match="flite"):
        synthesize("Some words to say out loud.", "rms")


def test_whisper_beam_nbest_on_tiny_random_model():
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    from neko.benchmark.recognizers.whisper import WhisperRecognizer
    from neko.model.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    cfg = WhisperConfig(
        vocab_size=len(tok),
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        num_mel_bins=80,
        max_target_positions=32,
        decoder_start_token_id=0,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=0,
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(cfg).eval()

    class Proc:
        feature_extractor = WhisperFeatureExtractor(feature_size=80)
        tokenizer = tok

    audio = np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)
    rec = WhisperRecognizer(model, Proc(), nbest=3, max_new_tokens=6, dedup=False)
    hyps = rec.recognize(audio)
    assert len(hyps) == 3 and all(isinstance(h, str) for h in hyps)
    # PCM bytes are accepted too, and dedup keeps at most nbest distinct strings
    pcm = (audio * 32767).astype(np.int16).tobytes()
    distinct = WhisperRecognizer(model, Proc(), nbest=3, max_new_tokens=6).recognize(pcm)
    assert 1 <= len(distinct) <= 3 and len(set(distinct)) == len(distinct)
    with pytest.raises(ValueError, match="nbest"):
        WhisperRecognizer(model, Proc(), nbest=0)
