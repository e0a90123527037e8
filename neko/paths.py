"""Where neko finds its shipped data and keeps its caches (one place, so every part agrees).

The shipped data (the benchmark and the sample files) lives in ``data/`` at the repository root; a
built wheel carries a copy inside the package as ``neko/_data`` (``setup.py``), so an installed neko
finds it from any directory. Order: ``$NEKO_DATA_DIR``, else the package's copy, else the
checkout's ``data/`` (source trees and editable installs).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["REPO_ROOT", "PACKAGED_DATA_DIR", "DATA_DIR", "BENCHMARK_DIR", "SAMPLES_DIR", "cache_dir"]

# The source checkout's root; only meaningful when neko runs from one (configs/, data/ live there).
REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGED_DATA_DIR = Path(__file__).resolve().parent / "_data"


def _data_dir() -> Path:
    env = os.environ.get("NEKO_DATA_DIR")
    if env:
        return Path(env)
    return PACKAGED_DATA_DIR if PACKAGED_DATA_DIR.is_dir() else REPO_ROOT / "data"


DATA_DIR = _data_dir()
# The shipped benchmark (train/dev/test JSONL + manifest.json), rebuilt by `neko data build`.
BENCHMARK_DIR = DATA_DIR / "benchmark"
# Small files, one per supported input format and released variant.
SAMPLES_DIR = DATA_DIR / "samples"


def cache_dir(*parts: str) -> Path:
    """``$NEKO_CACHE`` (default ``~/.cache/neko``) joined with ``parts``; created on demand."""
    root = Path(os.environ.get("NEKO_CACHE", Path.home() / ".cache" / "neko"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
