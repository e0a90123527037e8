"""Build hook only (metadata lives in pyproject.toml): the wheel carries the shipped data.

``data/benchmark`` and ``data/samples`` stay at the repository root, where the configs, the docs and
``neko data build`` expect them; this copies them into the built package as ``neko/_data``, where an
installed neko finds them (``neko.paths``). Editable installs read ``data/`` in place.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# Per data/ subfolder, the files that ship (the benchmark's .build/ work folder never does).
SHIPPED = {
    "benchmark": ("*.jsonl", "manifest.json"),
    "samples": ("*.json", "*.jsonl", "*.csv", "*.parquet", "README.md"),
}


class BuildPyWithData(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        for folder, patterns in SHIPPED.items():
            dest = Path(self.build_lib) / "neko" / "_data" / folder
            files = sorted({f for p in patterns for f in (ROOT / "data" / folder).glob(p)})
            if not files:
                raise RuntimeError(
                    f"data/{folder} holds no {patterns} files; the wheel would ship without them"
                )
            self.mkpath(str(dest))
            for f in files:
                self.copy_file(str(f), str(dest / f.name))


setup(cmdclass={"build_py": BuildPyWithData})
