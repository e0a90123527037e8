"""Speech: flite text-to-speech with sox effects as the audio source, PocketSphinx as the ASR.

Design choices:
- Audio travels as raw 16 kHz mono signed 16-bit PCM bytes, PocketSphinx's native input, so no
  container parsing sits between synthesis and recognition.
- Acoustic domains come from the voice (speaker/accent), ``tempo`` (sox ``tempo``) and additive pink
  noise at a relative level. The noise is sox ``synth pinknoise`` in repeatable mode (``-R``) mixed
  in numpy with a seed, so the same row always gets the same audio.
- PocketSphinx 5-best: the decoder's 1-best (``hyp()``) first, then lattice paths from ``nbest()``
  with fillers (``<s>``, ``<sil>``, ``[NOISE]``, ``++X++``) and alternate-pronunciation marks
  (``word(2)``) removed and duplicates dropped; a lattice gives 6-13 paths per 5 distinct strings.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from neko.benchmark.recognizers.base import (
    MissingToolError,
    Recognizer,
    RecognizerError,
    dedup_keep_order,
    require_tool,
    run_tool,
)

__all__ = [
    "FLITE_VOICES",
    "synthesize",
    "to_raw16k",
    "float_samples",
    "PocketSphinxRecognizer",
    "clean_sphinx_hyp",
]

SAMPLE_RATE = 16000
FLITE_VOICES = ("rms", "kal16", "awb", "slt", "kal")
_RAW = ["-t", "raw", "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", "-e", "signed-integer"]
_FILLER = re.compile(r"^(<.*>|\[.*\]|\+\+.*\+\+)$")
_ALT = re.compile(r"\(\d+\)$")


def to_raw16k(path: str | Path, effects: list[str] | None = None) -> bytes:
    """Any audio file sox reads -> raw 16 kHz mono 16-bit PCM, with optional sox effects."""
    path = Path(path)
    if not path.exists():
        raise RecognizerError(f"{path}: audio file not found")
    # -R: the dither sox adds when it resamples (the 8 kHz kal voice) or changes tempo is then the same
    # on every run; without it two builds of one row differ (the shipped train/dev/test predate this).
    raw = run_tool(["sox", "-R", str(path), *_RAW, "-", *(effects or [])])
    if not raw:
        raise RecognizerError(f"{path}: sox produced no audio (unreadable or empty file)")
    return raw


def float_samples(item: Any, who: str) -> np.ndarray:
    """16 kHz float32 samples from a numpy array, raw 16-bit PCM bytes or an audio file path (what
    the neural recognizers read); ``who`` names the recognizer in the error."""
    if isinstance(item, np.ndarray):
        return item.astype(np.float32)
    if isinstance(item, (bytes, bytearray)):
        return np.frombuffer(bytes(item), dtype=np.int16).astype(np.float32) / 32768.0
    if isinstance(item, (str, Path)):
        return np.frombuffer(to_raw16k(item), dtype=np.int16).astype(np.float32) / 32768.0
    raise RecognizerError(f"{who}: unsupported audio type {type(item).__name__}")


def synthesize(
    text: str,
    voice: str = "rms",
    *,
    tempo: float = 1.0,
    noise: float = 0.0,
    seed: int = 0,
) -> bytes:
    """Speak ``text`` with flite, apply ``tempo`` and pink ``noise`` (0.0 = none; 0.02 is light).

    ``noise`` is the pink-noise amplitude relative to full scale (sox ``vol``). Returns raw PCM.
    """
    if voice not in FLITE_VOICES:
        raise ValueError(f"unknown flite voice {voice!r}; choose one of {', '.join(FLITE_VOICES)}")
    if not text.strip():
        raise RecognizerError("nothing to synthesize: empty text")
    require_tool("flite")
    with tempfile.TemporaryDirectory(prefix="neko-tts-") as tmp:
        wav = os.path.join(tmp, "speech.wav")
        run_tool(["flite", "-voice", voice, "-t", text, "-o", wav])
        effects = ["tempo", f"{tempo:g}"] if abs(tempo - 1.0) > 1e-6 else []
        raw = to_raw16k(wav, effects)
    if noise > 0:
        raw = _add_pink_noise(raw, noise, seed)
    return raw


def _add_pink_noise(raw: bytes, level: float, seed: int) -> bytes:
    speech = np.frombuffer(raw, dtype=np.int16).astype(np.float32)
    seconds = len(speech) / SAMPLE_RATE + 0.1
    pink = run_tool(["sox", "-R", "-n", *_RAW, "-", "synth", f"{seconds:.3f}", "pinknoise", "vol", "1.0"])
    pink_arr = np.frombuffer(pink, dtype=np.int16).astype(np.float32)
    # sox -R always gives the same noise; a seeded offset makes rows differ but stay reproducible.
    rng = np.random.default_rng(seed)
    pink_arr = np.roll(pink_arr, int(rng.integers(0, max(1, len(pink_arr)))))[: len(speech)]
    peak = float(np.abs(pink_arr).max()) or 1.0
    mixed = speech + pink_arr / peak * level * 32767.0
    return np.clip(mixed, -32768, 32767).astype(np.int16).tobytes()


def clean_sphinx_hyp(hyp: str) -> str:
    """Drop fillers and ``(2)`` pronunciation marks from one PocketSphinx hypothesis."""
    words = []
    for w in hyp.split():
        if _FILLER.match(w):
            continue
        words.append(_ALT.sub("", w))
    return " ".join(words)


class PocketSphinxRecognizer(Recognizer):
    """PocketSphinx 5 with its bundled en-us acoustic model, LM and dictionary.

    ``recognize(audio)``: ``audio`` is raw 16 kHz mono PCM bytes or a path to an audio file.
    ``max_paths`` bounds how many lattice paths are read to find ``nbest`` distinct hypotheses.
    ``fresh_state``: reset the decoder before every utterance (``reinit``, ~0.25 s). A reused decoder
    carries state from one utterance to the next, so without it a hypothesis can depend on what the
    same decoder heard before (the shipped train/dev/test ASR rows were made that way).
    """

    name = "pocketsphinx"

    def __init__(self, nbest: int = 5, max_paths: int = 40, fresh_state: bool = False, **decoder_kwargs: Any):
        self.nbest = nbest
        self.max_paths = max_paths
        self.fresh_state = fresh_state
        self._kwargs = decoder_kwargs
        self._decoder = None
        self._used = False

    @property
    def version(self) -> str:
        try:
            v = importlib.metadata.version("pocketsphinx")
        except importlib.metadata.PackageNotFoundError:
            return "pocketsphinx (not installed)"
        opts = "".join(f", {k}={val}" for k, val in sorted(self._kwargs.items()))
        fresh = ", fresh decoder state per utterance" if self.fresh_state else ""
        return f"pocketsphinx {v} (bundled en-us model{opts}{fresh})"

    def _get_decoder(self):
        if self._decoder is None:
            try:
                from pocketsphinx import Decoder
            except ImportError:
                raise MissingToolError(
                    "the pocketsphinx Python package is not installed; install it with "
                    "`pip install pocketsphinx==5.1.1` (or `pip install -e .[recognizers]`)"
                ) from None
            self._decoder = Decoder(loglevel="ERROR", **self._kwargs)
        return self._decoder

    def recognize(self, item: Any) -> list[str]:
        raw = item if isinstance(item, (bytes, bytearray)) else to_raw16k(item)
        if len(raw) < SAMPLE_RATE // 10 * 2:
            raise RecognizerError(f"audio too short ({len(raw) // 2} samples); need at least 0.1 s")
        dec = self._get_decoder()
        if self.fresh_state and self._used:
            dec.reinit()
        self._used = True
        dec.start_utt()
        dec.process_raw(bytes(raw), full_utt=True)
        dec.end_utt()
        best = dec.hyp()
        hyps = [clean_sphinx_hyp(best.hypstr)] if best is not None else []
        if self.nbest > 1:
            for i, path in enumerate(dec.nbest()):
                if i >= self.max_paths or len(dedup_keep_order(hyps)) >= self.nbest:
                    break
                hyps.append(clean_sphinx_hyp(path.hypstr))
        return dedup_keep_order(hyps)[: self.nbest]
