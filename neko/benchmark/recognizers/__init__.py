"""First-pass recognizers that make real errors: the `Recognizer` interface and its implementations.

``Recognizer.recognize(item) -> list[str]`` (N-best, best first). Implementations:
:class:`~neko.benchmark.recognizers.speech.PocketSphinxRecognizer` (audio),
:class:`~neko.benchmark.recognizers.ocr.TesseractRecognizer` (images),
:class:`~neko.benchmark.recognizers.mt.ApertiumRoundTrip` (text),
:class:`~neko.benchmark.recognizers.whisper.WhisperRecognizer` (audio, transformers, your own weights).
Sources: :func:`~neko.benchmark.recognizers.speech.synthesize` (flite + sox) and
:func:`~neko.benchmark.recognizers.ocr.render_line` / :func:`~neko.benchmark.recognizers.ocr.degrade` (PIL).

Wrapping your own system::

    class MyASR(Recognizer):
        name = "my-asr"
        def recognize(self, audio):            # raw 16 kHz PCM bytes or a path
            return my_system.nbest(audio, 5)   # list of strings, best first

Implementations are imported from their modules so importing this package stays light.
"""

from neko.benchmark.recognizers.base import MissingToolError, Recognizer, RecognizerError, require_tool

__all__ = ["Recognizer", "RecognizerError", "MissingToolError", "require_tool"]
