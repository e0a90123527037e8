"""The package's layers point one way: a module imports only from its own layer or the layers below.

Every ``import`` in neko/ counts, including the ones inside functions (a lazy import is still a
dependency; hiding a cycle behind one is what this test exists to stop). The layers, bottom first:

    io, paths            file and path utilities (import nothing of neko's)
    schema, tasks        the row (Example) and the task registry with its prompts
    data                 readers for public formats and conversion to neko JSONL
    metrics              normalizers, WER/CER, BLEU, oracles, bootstrap
    model                routing (Eq. 3), up-cycling, BTX, router control and statistics, the base
    train                training data preparation (mixture, packing), the loop, checkpoints
    infer                correction API, file correction, guard, rescoring, server
    eval                 scoring prediction files
    benchmark            `neko data build`: recognizers and the benchmark factory
    experiment           quick start, the paper's comparison, reports
    commands, cli        the `neko` command (the only layer allowed to import everything)

Units are neko's direct children (``neko.train``, ``neko.tasks``, ...); within a unit anything goes.
A new subpackage must be given a layer here, so the order stays a decision and not an accident.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from neko.paths import REPO_ROOT

LAYERS = [
    {"io", "paths"},
    {"schema", "tasks"},
    {"data"},
    {"metrics"},
    {"model"},
    {"train"},
    {"infer"},
    {"eval"},
    {"benchmark"},
    {"experiment"},
    {"commands", "cli", "__main__", "__init__"},
]
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}
PACKAGE = REPO_ROOT / "neko"


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[tuple[str, str]]]:
    """unit -> {(imported unit, "importing module -> imported module")}, for imports across units."""
    edges: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        module = _module_name(path)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    targets = [".".join([*base, node.module] if node.module else base)]
                else:
                    targets = [node.module or ""]
            else:
                continue
            for target in targets:
                if target == "neko" or target.startswith("neko."):
                    src, dst = _unit(module), _unit(target)
                    if src != dst:
                        edges[src].add((dst, f"{module} -> {target}"))
    return edges


def test_every_unit_has_a_layer() -> None:
    units = {_unit(_module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert units - set(RANK) == set(), "give the new part of neko a layer in tests/test_layers.py"


def test_no_upward_imports() -> None:
    upward = [
        f"{why} ({src} is in layer {RANK[src]}, {dst} in layer {RANK[dst]})"
        for src, deps in import_graph().items()
        for dst, why in sorted(deps)
        if RANK[dst] > RANK[src]
    ]
    assert upward == [], "imports that point up:\n" + "\n".join(upward)


def test_no_cycles_between_units() -> None:
    graph = {src: {dst for dst, _ in deps} for src, deps in import_graph().items()}
    done: set[str] = set()

    def visit(unit: str, path: list[str]) -> None:
        if unit in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(unit) :], unit]))
        if unit in done:
            return
        for dep in sorted(graph.get(unit, ())):
            visit(dep, [*path, unit])
        done.add(unit)

    for unit in sorted(graph):
        visit(unit, [])


def test_the_checks_can_fail() -> None:
    """The graph sees function-level imports: train's loop imports the model layer inside functions."""
    graph = import_graph()
    assert any(dst == "model" for dst, _ in graph["train"])
    assert all(dst != "train" for dst, _ in graph["model"])
