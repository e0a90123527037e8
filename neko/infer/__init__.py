"""Inference: the correction API, resumable file correction, the no-harm guard and the HTTP server.

``from neko.infer import Corrector, CorrectionOptions, correct_file`` (torch loads on first use).
"""

from neko.infer.correct import CorrectionResult, Corrector
from neko.infer.files import correct_file
from neko.infer.options import CorrectionOptions

__all__ = ["Corrector", "CorrectionOptions", "CorrectionResult", "correct_file"]
