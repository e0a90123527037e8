"""The `Recognizer` interface: one input (audio, image or text) in, an N-best list out, best first.

Design choice: a recognizer is a small object with ``recognize(item) -> list[str]`` and a
``version`` string, nothing more, so a user can wrap their own system (an ASR server, a cloud OCR)
in a dozen lines and feed it to the same benchmark builder. Index 0 of the list is always the
1-best (the neko N-best policy, see :mod:`neko.schema`); lists hold distinct hypotheses.

System tools are looked up lazily and a missing one raises :class:`MissingToolError` whose message
names the install command, so the failure says how to fix itself.
"""

from __future__ import annotations

import shutil
import subprocess
from abc import ABC, abstractmethod
from typing import Any

__all__ = [
    "Recognizer",
    "RecognizerError",
    "MissingToolError",
    "require_tool",
    "run_tool",
    "dedup_keep_order",
    "SETUP_HINT",
]

SETUP_HINT = "bash scripts/setup.sh"

# Debian package that provides each tool we call (for the error message).
_APT_PACKAGE = {
    "flite": "flite",
    "espeak-ng": "espeak-ng",
    "sox": "sox libsox-fmt-all",
    "tesseract": "tesseract-ocr tesseract-ocr-eng",
    "apertium": "apertium apertium-eng-spa apertium-eng-cat apertium-en-gl apertium-eo-en apertium-hbs-eng "
    "apertium-es-pt apertium-spa-ita apertium-fr-es apertium-oc-ca apertium-cat-ita",
}


class RecognizerError(RuntimeError):
    """A recognizer failed on one item (bad input, crash, empty output). The build records it."""


class MissingToolError(RecognizerError):
    """A system tool or Python package a recognizer needs is not installed."""


def require_tool(name: str) -> str:
    """Path of executable ``name`` or a :class:`MissingToolError` naming the install command."""
    path = shutil.which(name)
    if path is None:
        pkg = _APT_PACKAGE.get(name, name)
        raise MissingToolError(
            f"the '{name}' program is not installed; install it with `sudo apt-get install {pkg}` "
            f"(or run `{SETUP_HINT}`, which installs every recognizer)"
        )
    return path


def run_tool(
    args: list[str], *, input: bytes | None = None, timeout: float = 60.0, env: dict | None = None
) -> bytes:
    """Run a tool, return stdout; a non-zero exit or timeout becomes a :class:`RecognizerError`."""
    require_tool(args[0])
    try:
        proc = subprocess.run(args, input=input, capture_output=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise RecognizerError(f"{args[0]} timed out after {timeout:.0f} s") from None
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise RecognizerError(f"{args[0]} exited with {proc.returncode}: {err[-1] if err else 'no message'}")
    return proc.stdout


def dedup_keep_order(hyps: list[str]) -> list[str]:
    """Collapse whitespace, drop empties and repeats; the first (best-ranked) copy wins."""
    out: list[str] = []
    seen: set[str] = set()
    for h in hyps:
        h = " ".join(h.split())
        if h and h not in seen:
            seen.add(h)
            out.append(h)
    return out


class Recognizer(ABC):
    """A first-pass recognizer: ``recognize(item)`` returns up to ``nbest`` hypotheses, best first.

    ``item`` is what the recognizer reads: raw audio (bytes of 16 kHz mono 16-bit PCM, or a path to
    an audio file), an image (``PIL.Image`` or a path), or a text for translation systems.
    Subclasses raise :class:`RecognizerError` for a failed item and return a non-empty list
    otherwise (an empty result is a failure too: :meth:`__call__` enforces it).
    """

    #: short name stored in the manifest ("pocketsphinx", "tesseract", ...)
    name: str = "recognizer"
    nbest: int = 1

    @property
    def version(self) -> str:
        """The version of the underlying system, recorded in the benchmark manifest."""
        return "unknown"

    @abstractmethod
    def recognize(self, item: Any) -> list[str]:
        """The N-best list for one item, best first."""

    def recognize_batch(self, items: list[Any]) -> list[list[str] | RecognizerError]:
        """Recognize many items; a failed item yields its :class:`RecognizerError` in place.

        Subclasses whose per-call start-up dominates (a process per call) override this.
        """
        out: list[list[str] | RecognizerError] = []
        for item in items:
            try:
                out.append(self(item))
            except MissingToolError:
                raise  # a set-up problem, not a bad row: stop with the install hint
            except RecognizerError as e:
                out.append(e)
        return out

    def __call__(self, item: Any) -> list[str]:
        hyps = self.recognize(item)
        if not hyps or not any(h.strip() for h in hyps):
            raise RecognizerError(f"{self.name} returned no hypothesis")
        return hyps
