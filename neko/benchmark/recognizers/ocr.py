"""Images: PIL line rendering with controlled degradation as the source, Tesseract as the OCR.

Design choices:
- A degradation level is a (scale, blur, noise sigma, JPEG quality) tuple applied in the order a
  scan pipeline damages text: optical blur, then low-resolution sampling, then sensor noise, then
  lossy compression. Levels were picked on a scratch set (offline-resources.md) to span clean to
  hard; the level name goes into ``meta`` as the OCR domain.
- Tesseract runs as the binary with ``--psm 7`` (one text line) and ``OMP_THREAD_LIMIT=1``: its
  OpenMP threads otherwise fight the build's own worker processes for the cores.
- Tesseract gives one hypothesis, so the N-best list has length 1.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from neko.benchmark.recognizers.base import (
    MissingToolError,
    Recognizer,
    RecognizerError,
    require_tool,
    run_tool,
)

__all__ = [
    "Degradation",
    "DEGRADATION_LEVELS",
    "FONT_DIR",
    "FONTS",
    "render_line",
    "degrade",
    "TesseractRecognizer",
]

FONT_DIR = Path(os.environ.get("NEKO_FONT_DIR", "/usr/share/fonts/truetype/dejavu"))
FONTS = ("DejaVuSerif.ttf", "DejaVuSans.ttf", "DejaVuSansMono.ttf", "DejaVuSerifCondensed.ttf")


@dataclass(frozen=True)
class Degradation:
    """scale: downscale factor; blur: Gaussian radius (px); noise: sigma (0-255); jpeg: quality."""

    scale: float
    blur: float
    noise: float
    jpeg: int


DEGRADATION_LEVELS: dict[str, Degradation] = {
    "clean": Degradation(0.6, 0.6, 12, 60),
    "light": Degradation(0.45, 1.0, 25, 30),
    "medium": Degradation(0.42, 1.0, 30, 25),
    "heavy": Degradation(0.40, 1.1, 35, 20),
}


@lru_cache(maxsize=16)
def _font(name: str, size: int):
    from PIL import ImageFont

    path = FONT_DIR / name
    if not path.exists():
        raise MissingToolError(
            f"font {path} not found; install it with `sudo apt-get install fonts-dejavu-core` "
            "(or set NEKO_FONT_DIR to a folder holding the DejaVu fonts)"
        )
    return ImageFont.truetype(str(path), size)


def render_line(text: str, font: str = "DejaVuSerif.ttf", size: int = 28, margin: int = 12):
    """Black text on white, one line, as a grayscale ``PIL.Image``."""
    from PIL import Image, ImageDraw

    f = _font(font, size)
    left, top, right, bottom = f.getbbox(text)
    img = Image.new("L", (right - left + 2 * margin, bottom - top + 2 * margin), 255)
    ImageDraw.Draw(img).text((margin - left, margin - top), text, font=f, fill=0)
    return img


def degrade(img, level: Degradation | str, seed: int = 0):
    """Blur -> downscale -> Gaussian noise -> JPEG round trip; deterministic for a given seed."""
    from PIL import Image, ImageFilter

    d = DEGRADATION_LEVELS[level] if isinstance(level, str) else level
    img = img.convert("L")
    if d.blur > 0:
        img = img.filter(ImageFilter.GaussianBlur(d.blur))
    if d.scale != 1.0:
        w, h = img.size
        img = img.resize((max(1, round(w * d.scale)), max(1, round(h * d.scale))), Image.BILINEAR)
    if d.noise > 0:
        rng = np.random.default_rng(seed)
        arr = np.asarray(img, dtype=np.float32) + rng.normal(0.0, d.noise, (img.size[1], img.size[0]))
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
    if d.jpeg < 100:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=int(d.jpeg))
        buf.seek(0)
        img = Image.open(buf)
        img.load()
    return img


class TesseractRecognizer(Recognizer):
    """The ``tesseract`` binary on one text line; ``recognize(image)`` takes a PIL image or a path."""

    name = "tesseract"
    nbest = 1

    def __init__(self, lang: str = "eng", psm: int = 7, timeout: float = 60.0):
        self.lang, self.psm, self.timeout = lang, psm, timeout

    @property
    def version(self) -> str:
        require_tool("tesseract")
        out = subprocess.run(["tesseract", "--version"], capture_output=True, text=True).stdout
        return out.splitlines()[0].strip() if out else "tesseract"

    def recognize(self, item: Any) -> list[str]:
        from PIL import Image, UnidentifiedImageError

        require_tool("tesseract")
        env = dict(os.environ, OMP_THREAD_LIMIT="1")
        with tempfile.TemporaryDirectory(prefix="neko-ocr-") as tmp:
            if isinstance(item, (str, Path)):
                try:
                    with Image.open(item) as im:
                        im.load()
                        img = im.copy()
                except (OSError, UnidentifiedImageError) as e:
                    raise RecognizerError(f"{item}: unreadable image ({e})") from None
            else:
                img = item
            png = os.path.join(tmp, "line.png")
            img.save(png)
            out = run_tool(
                ["tesseract", png, "stdout", "-l", self.lang, "--psm", str(self.psm)],
                timeout=self.timeout,
                env=env,
            )
        text = re.sub(r"\s+", " ", out.decode("utf-8", "replace")).strip()
        return [text] if text else []
