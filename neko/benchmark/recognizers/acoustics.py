"""Speech for a neural recognizer: a TTS voice, then sox/numpy degradations, all seeded.

Design choices:
- Whisper transcribes clean synthetic speech almost perfectly, so its errors have to come from the
  channel: additive noise at a signal-to-noise ratio (pink, white, or *babble*: other synthetic
  voices talking at once), reverberation, a telephone band (300-3400 Hz through 8 kHz), and tempo.
  Each is an independent knob of :class:`Acoustics`, so held-out conditions can be a voice or a
  noise type that training never saw.
- Voices come from two engines: flite (``rms``, ``awb``, ``kal16``, ``slt``, ``kal``) and espeak-ng
  (``espeak:en-us``, ``espeak:en-gb``, ``espeak:en-us+f3``, ...), which sound unlike each other.
- Noise is mixed in numpy at a measured SNR (speech RMS over noise RMS), from a seeded generator,
  so the same row always gets the same audio on every machine; sox runs with ``-R`` (repeatable
  dither).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass

import numpy as np

from neko.benchmark.recognizers.base import RecognizerError, require_tool, run_tool
from neko.benchmark.recognizers.speech import FLITE_VOICES, SAMPLE_RATE, to_raw16k

__all__ = ["Acoustics", "NOISE_TYPES", "render_speech", "BABBLE_TEXTS"]

NOISE_TYPES = ("none", "pink", "white", "babble")
# What the babble voices say: neutral sentences no benchmark row uses as a reference.
BABBLE_TEXTS = (
    "the committee will meet again on tuesday to review the budget proposal",
    "please remember to bring your documents to the front desk before noon",
    "several trains were delayed this morning because of the heavy snow",
    "she opened the window and listened to the birds in the garden",
    "our next speaker has worked on this problem for more than ten years",
    "the market closed slightly higher after a quiet day of trading",
)
_BABBLE_VOICES = ("rms", "awb", "slt", "kal16")


@dataclass(frozen=True)
class Acoustics:
    """How one utterance is spoken and degraded. ``snr_db`` applies when ``noise`` is not ``none``."""

    voice: str = "rms"
    tempo: float = 1.0
    noise: str = "none"
    snr_db: float = 20.0
    reverb: int = 0  # sox reverberance 0-100; 0 = dry
    telephone: bool = False

    def __post_init__(self) -> None:
        if self.noise not in NOISE_TYPES:
            raise ValueError(f"unknown noise type {self.noise!r}; choose one of {', '.join(NOISE_TYPES)}")
        engine, _, name = self.voice.partition(":")
        if not name and self.voice not in FLITE_VOICES:
            raise ValueError(
                f"unknown voice {self.voice!r}: a flite voice ({', '.join(FLITE_VOICES)}) or espeak:<voice>"
            )
        if name and engine != "espeak":
            raise ValueError(f"unknown speech engine {engine!r} in voice {self.voice!r}; use espeak:<voice>")

    def to_dict(self) -> dict:
        return asdict(self)


def _tts(text: str, voice: str, tmp: str, name: str = "speech.wav") -> str:
    wav = os.path.join(tmp, name)
    engine, _, espeak_voice = voice.partition(":")
    if espeak_voice:
        require_tool("espeak-ng")
        run_tool(["espeak-ng", "-v", espeak_voice, "-w", wav, text])
    else:
        require_tool("flite")
        run_tool(["flite", "-voice", voice, "-t", text, "-o", wav])
    return wav


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) or 1.0


def _noise(kind: str, n: int, rng: np.random.Generator, tmp: str) -> np.ndarray:
    if kind == "white":
        return rng.standard_normal(n).astype(np.float32)
    if kind == "pink":
        # 1/f spectrum shaped in the frequency domain from seeded white noise.
        spec = np.fft.rfft(rng.standard_normal(n))
        f = np.arange(len(spec), dtype=np.float64)
        f[0] = 1.0
        return np.fft.irfft(spec / np.sqrt(f), n).astype(np.float32)
    # babble: three other talkers, each from a random offset, summed.
    out = np.zeros(n, dtype=np.float32)
    for k in range(3):
        text = BABBLE_TEXTS[int(rng.integers(len(BABBLE_TEXTS)))]
        voice = _BABBLE_VOICES[int(rng.integers(len(_BABBLE_VOICES)))]
        talk = np.frombuffer(to_raw16k(_tts(text, voice, tmp, f"babble{k}.wav")), dtype=np.int16)
        talk = np.tile(talk.astype(np.float32), n // max(len(talk), 1) + 2)
        start = int(rng.integers(0, max(1, len(talk) - n)))
        seg = talk[start : start + n]
        out += seg / _rms(seg)
    return out


def render_speech(text: str, ac: Acoustics, seed: int = 0) -> bytes:
    """Speak ``text`` as ``ac`` says; raw 16 kHz mono 16-bit PCM."""
    if not text.strip():
        raise RecognizerError("nothing to synthesize: empty text")
    effects: list[str] = []
    if abs(ac.tempo - 1.0) > 1e-6:
        effects += ["tempo", f"{ac.tempo:g}"]
    if ac.reverb:
        effects += ["reverb", str(int(ac.reverb))]
    if ac.telephone:
        effects += ["sinc", "300-3400", "rate", "8000", "rate", str(SAMPLE_RATE)]
    with tempfile.TemporaryDirectory(prefix="neko-tts-") as tmp:
        raw = to_raw16k(_tts(text, ac.voice, tmp), effects)
        speech = np.frombuffer(raw, dtype=np.int16).astype(np.float32)
        if ac.noise != "none" and speech.size:
            rng = np.random.default_rng(seed)
            noise = _noise(ac.noise, speech.size, rng, tmp)
            scale = _rms(speech) / (_rms(noise) * 10 ** (ac.snr_db / 20.0))
            speech = speech + noise * scale
    peak = float(np.abs(speech).max()) if speech.size else 0.0
    if peak > 32767:  # keep the mix in range without clipping its shape
        speech = speech * (32767.0 / peak)
    return np.clip(speech, -32768, 32767).astype(np.int16).tobytes()
