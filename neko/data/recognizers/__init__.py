"""First-pass recognizers that make real errors: the `Recognizer` interface and its implementations.

``Recognizer.recognize(item) -> list[str]`` (N-best, best first). Implementations:
:class:`~neko.data.recognizers.speech.PocketSphinxRecognizer` (audio),
:class:`~neko.data.recognizers.ocr.TesseractRecognizer` (images),
:class:`~neko.data.recognizers.mt.ApertiumRoundTrip` (text),
:class:`~neko.data.recognizers.whisper.WhisperRecognizer` (audio, transformers, your own weights).
Sources: :func:`~neko.data.recognizers.speech.synthesize` (flite + sox) and
:func:`~neko.data.recognizers.ocr.render_line` / :func:`~neko.data.recognizers.ocr.degrade` (PIL).

Wrapping your own system::

    class MyASR(Recognizer):
        name = "my-asr"
        def recognize(self, audio):            # raw 16 kHz PCM bytes or a path
            return my_system.nbest(audio, 5)   # list of strings, best first

Implementations are imported from their modules so importing this package stays light.
"""

from neko.data.recognizers.base import MissingToolError, Recognizer, RecognizerError, require_tool

__all__ = ["Recognizer", "RecognizerError", "MissingToolError", "require_tool"]
