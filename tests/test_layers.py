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

Units are neko's direct children (``neko.train``, ``neko.tasks``, ...); within a unit the files may
import each other in either direction, but never in a circle: the files form a DAG too, so each one
can be read after the files it imports. A new subpackage must be given a layer here, so the order
stays a decision and not an accident.
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


def module_imports() -> dict[str, set[str]]:
    """module -> the neko modules it imports, each resolved to its file (``from neko.x import y``
    names the module ``neko.x.y`` when that is one, else ``neko.x``)."""
    files = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    imports: dict[str, set[str]] = {}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join([*base, node.module] if node.module else base)
                else:
                    source = node.module or ""
                found.update(
                    f"{source}.{a.name}" if f"{source}.{a.name}" in files else source for a in node.names
                )
        imports[module] = {t for t in found if (t == "neko" or t.startswith("neko.")) and t != module}
    return imports


def import_graph() -> dict[str, set[tuple[str, str]]]:
    """unit -> {(imported unit, "importing module -> imported module")}, for imports across units."""
    edges: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for module, targets in module_imports().items():
        for target in targets:
            src, dst = _unit(module), _unit(target)
            if src != dst:
                edges[src].add((dst, f"{module} -> {target}"))
    return edges


def _first_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that ends where it starts, or None."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        for dep in sorted(graph.get(node, ())):
            cycle = visit(dep, [*path, node])
            if cycle:
                return cycle
        done.add(node)
        return None

    for node in sorted(graph):
        cycle = visit(node, [])
        if cycle:
            return cycle
    return None


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
    cycle = _first_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_cycles_between_files() -> None:
    """Inside a package too: a lazy import that closes a circle still makes it one."""
    cycle = _first_cycle(module_imports())
    assert cycle is None, "import cycle between files: " + " -> ".join(cycle or [])


def test_the_checks_can_fail() -> None:
    """The graph sees function-level imports: train's loop imports the model layer inside functions."""
    graph = import_graph()
    assert any(dst == "model" for dst, _ in graph["train"])
    assert all(dst != "train" for dst, _ in graph["model"])
    # a package's submodule named in a from-import is the edge's end, and a circle is found
    assert "neko.experiment.tables" in module_imports()["neko.experiment.compare"]
    assert _first_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _first_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
