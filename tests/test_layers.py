"""The package reads as the pipeline: each subpackage imports only from its own layer or those below.

Every import counts, at module level or inside a function: a lazy import that
runs up the layers is still a dependency the other way.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "triage"
# Low to high. "base" is the package's own top-level modules (errors, settings, hooks, ...);
# the command line and the test helpers sit on top of everything.
LAYERS = ("base", "outputs", "inputs", "model", "engine", "labelled", "results", "report", "dicom_out",
          "scan", "train", "evaluate", "top")
TOP_MODULES = {"cli", "__main__", "testing"}


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "base"
    if parts[1] in TOP_MODULES:
        return "top"
    return parts[1] if parts[1] in LAYERS else "base"


def _imports(path: Path) -> set[str]:
    """Every ``triage`` module ``path`` imports (``from triage.x import y`` counts y if it is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "triage"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] != "triage":
                continue
            found.add(node.module)
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                as_path = PACKAGE.parent / name.replace(".", "/")
                if as_path.with_suffix(".py").is_file() or as_path.is_dir():
                    found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    return {_module(path): _imports(path) for path in sorted(PACKAGE.rglob("*.py"))}


def test_every_subpackage_is_a_known_layer_with_a_docstring() -> None:
    subpackages = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py") if not p.parent.is_symlink())
    assert len(subpackages) >= 8, subpackages
    for name in subpackages:
        assert name in LAYERS, f"triage/{name}/ has no place in LAYERS"
        docstring = ast.get_docstring(ast.parse((PACKAGE / name / "__init__.py").read_text()))
        assert docstring and len(docstring) > 80, f"triage/{name}/__init__.py says what it holds"


def test_no_import_runs_up_the_layers() -> None:
    graph = _graph()
    assert len(graph) >= 40, "the walk found too few modules"
    upward = [f"{module} ({_layer(module)}) imports {dependency} ({_layer(dependency)})"
              for module, dependencies in graph.items() for dependency in sorted(dependencies)
              if LAYERS.index(_layer(dependency)) > LAYERS.index(_layer(module))]
    assert not upward, "\n".join(upward)


def test_no_import_circles() -> None:
    graph = _graph()
    edges = {module: {d for d in deps if d in graph and d != module} for module, deps in graph.items()}
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for dependency in sorted(edges[module]):
            if state.get(dependency) == "open":
                cycle = path[path.index(dependency):] + [dependency]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if dependency not in state:
                visit(dependency, path + [dependency])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])


def test_the_checks_see_an_upward_import(tmp_path: Path) -> None:
    """The walk would notice: a lower layer importing a higher one is reported."""
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from triage.scan.run import run_scan\n")
    assert "triage.scan.run" in _imports(source)
    assert LAYERS.index(_layer("triage.scan.run")) > LAYERS.index(_layer("triage.inputs.cases"))
