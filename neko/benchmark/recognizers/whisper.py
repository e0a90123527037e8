"""A transformers Whisper recognizer: beam search with ``num_return_sequences`` gives the N-best.

Design choice: this is the adapter for users who have Whisper weights and want HyPoradise-style
data from their own audio (the paper's first pass). It takes an already-loaded model and processor
(or a local directory), never downloads anything, and returns the beam's top-N sequences in the
beam's own order (best first), duplicates after decoding dropped as for every other recognizer
unless ``dedup=False``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from neko.benchmark.recognizers.base import Recognizer, RecognizerError, dedup_keep_order
from neko.benchmark.recognizers.speech import float_samples

if TYPE_CHECKING:
    from transformers import WhisperForConditionalGeneration

__all__ = ["WhisperRecognizer"]


class WhisperRecognizer(Recognizer):
    """``recognize(audio)``: float32 samples at 16 kHz (numpy), raw 16-bit PCM bytes, or a file path.

    ``model``/``processor``: a ``WhisperForConditionalGeneration`` and a ``WhisperProcessor`` (or
    anything with ``feature_extractor`` and ``tokenizer``). Use :meth:`from_pretrained` for a local
    directory.
    """

    name = "whisper"

    def __init__(
        self,
        model: WhisperForConditionalGeneration,
        processor: Any,
        *,
        nbest: int = 5,
        num_beams: int | None = None,
        max_new_tokens: int = 128,
        dedup: bool = True,
        generate_kwargs: dict[str, Any] | None = None,
    ):
        if nbest < 1:
            raise ValueError(f"nbest must be >= 1, got {nbest}")
        self.model, self.processor = model, processor
        self.nbest = nbest
        self.num_beams = max(num_beams or nbest, nbest)
        self.max_new_tokens = max_new_tokens
        self.dedup = dedup
        self.generate_kwargs = dict(generate_kwargs or {})

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, **kwargs: Any) -> WhisperRecognizer:
        """Load a local Whisper checkpoint directory (no hub access: ``local_files_only``)."""
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise FileNotFoundError(f"{model_dir}: not a directory; pass a local Whisper checkpoint folder")
        model = WhisperForConditionalGeneration.from_pretrained(model_dir, local_files_only=True).eval()
        processor = WhisperProcessor.from_pretrained(model_dir, local_files_only=True)
        return cls(model, processor, **kwargs)

    @property
    def version(self) -> str:
        import transformers

        name = getattr(self.model.config, "_name_or_path", "") or "whisper"
        return f"transformers {transformers.__version__} {name}"

    @staticmethod
    def _samples(item: Any) -> np.ndarray:
        return float_samples(item, "whisper")

    def recognize(self, item: Any) -> list[str]:
        import torch

        samples = self._samples(item)
        if samples.size == 0:
            raise RecognizerError("whisper: empty audio")
        fe = self.processor.feature_extractor
        feats = fe(samples, sampling_rate=16000, return_tensors="pt").input_features
        feats = feats.to(device=self.model.device, dtype=self.model.dtype)
        with torch.no_grad():
            seqs = self.model.generate(
                input_features=feats,
                num_beams=self.num_beams,
                num_return_sequences=self.nbest,
                max_new_tokens=self.max_new_tokens,
                **self.generate_kwargs,
            )
        if not isinstance(seqs, torch.Tensor):  # a ModelOutput when return_dict_in_generate is set
            seqs = seqs.sequences
        texts = [t.strip() for t in self.processor.tokenizer.batch_decode(seqs, skip_special_tokens=True)]
        return dedup_keep_order(texts) if self.dedup else texts
