"""Inference: the correction API, resumable file correction, the no-harm guard and the HTTP server.

``from neko.infer import Corrector, CorrectionOptions, correct_file``. Importing the package loads
neither torch nor transformers: each name is imported on first use, so ``neko --help`` and the
option definitions stay light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from neko.infer.correct import Corrector
    from neko.infer.files import correct_file
    from neko.infer.items import CorrectionResult
    from neko.infer.options import CorrectionOptions

__all__ = ["Corrector", "CorrectionOptions", "CorrectionResult", "correct_file"]

_HOME = {
    "Corrector": "neko.infer.correct",
    "CorrectionOptions": "neko.infer.options",
    "CorrectionResult": "neko.infer.items",
    "correct_file": "neko.infer.files",
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOME[name]), name)
