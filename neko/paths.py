"""Where neko finds its shipped data and keeps its caches (one place, so every part agrees)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["REPO_ROOT", "DATA_DIR", "BENCHMARK_DIR", "SAMPLES_DIR", "cache_dir"]

REPO_ROOT = Path(__file__).resolve().parent.parent
# The shipped benchmark (train/dev/test JSONL + manifest.json), rebuilt by `neko data build`.
DATA_DIR = Path(os.environ.get("NEKO_DATA_DIR", REPO_ROOT / "data"))
BENCHMARK_DIR = DATA_DIR / "benchmark"
# Small hand-checked files, one per supported input format.
SAMPLES_DIR = DATA_DIR / "samples"


def cache_dir(*parts: str) -> Path:
    """``$NEKO_CACHE`` (default ``~/.cache/neko``) joined with ``parts``; created on demand."""
    root = Path(os.environ.get("NEKO_CACHE", Path.home() / ".cache" / "neko"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
