"""The package's import graph: no cycles anywhere, and the layers import one way.

Every module of the installed `neurenix` package (the frontend, `neurenix.compiler`,
`neurenix.runtime`) is parsed, and every import that can execute (module level and inside
functions; `if TYPE_CHECKING:` blocks excluded) is an edge.  A function-level import that
dodges a cycle at import time is still a cycle in the design, so it counts.
"""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import neurenix.compiler
import neurenix.runtime

import neurenix

# the installed layers: compiler/ and runtime/ are mapped into the package from their own
# folders (package-dir), so walking neurenix/ alone would not find them
LAYERS = (neurenix, neurenix.compiler, neurenix.runtime)


def package_modules() -> dict[str, tuple[Path, bool]]:
    """Every module of the installed package: dotted name -> (file, is a package).  Found
    on disk from the three layers' folders, without importing any submodule."""
    found: dict[str, tuple[Path, bool]] = {}
    pending = [(package.__name__, Path(package.__file__).parent) for package in LAYERS]
    while pending:
        name, folder = pending.pop()
        found[name] = (folder / "__init__.py", True)
        for path in sorted(folder.iterdir()):
            if path.is_dir() and (path / "__init__.py").is_file():
                if f"{name}.{path.name}" not in found:
                    pending.append((f"{name}.{path.name}", path))
            elif path.suffix == ".py" and path.name != "__init__.py":
                found[f"{name}.{path.stem}"] = (path, False)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: all of them but those under `if TYPE_CHECKING`."""
    out: list[ast.Import | ast.ImportFrom] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))
    return out


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a `from ... import` names (relative levels resolved)."""
    if node.level == 0:
        return node.module or ""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_edges(modules: dict[str, tuple[Path, bool]]) -> set[tuple[str, str]]:
    """(importer, imported) for every import inside the package between its modules.

    `import a.b.c` and `from a.b import c` (c a submodule) are edges to `a.b.c` only, not to
    its parent packages; `from neurenix import Tensor` is an edge to `neurenix` itself.
    """
    edges: set[tuple[str, str]] = set()
    for name, (path, is_package) in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in _imports(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = _resolve(name, is_package, node)
                targets = []
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in modules else base)
            for target in targets:
                if target in modules and target != name:
                    edges.add((name, target))
    return edges


def import_cycles(edges: set[tuple[str, str]]) -> list[list[str]]:
    """The strongly connected components with more than one module, each sorted."""
    graph = nx.DiGraph(edges)
    return sorted(sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1)


def describe(cycles: list[list[str]], edges: set[tuple[str, str]]) -> str:
    lines = []
    for members in cycles:
        inside = sorted((a, b) for a, b in edges if a in members and b in members)
        lines.append(f"{len(members)} modules import each other: " + ", ".join(members))
        lines.extend(f"    {a} -> {b}" for a, b in inside)
    return "\n".join(lines)


def test_cycle_finder_reports_an_injected_cycle() -> None:
    edges = {("pkg.a", "pkg.b"), ("pkg.b", "pkg.c"), ("pkg.c", "pkg.a"), ("pkg.c", "pkg.d"),
             ("pkg.e", "pkg.d")}
    cycles = import_cycles(edges)
    assert cycles == [["pkg.a", "pkg.b", "pkg.c"]]
    assert "pkg.c -> pkg.a" in describe(cycles, edges)
    assert import_cycles(edges - {("pkg.c", "pkg.a")}) == []


def test_an_upward_import_in_the_package_is_a_cycle() -> None:
    """One function-level import from the core state up to the tensor closes a loop."""
    edges = import_edges(package_modules())
    cycles = import_cycles(edges | {("neurenix.state", "neurenix.tensor")})
    assert any({"neurenix.state", "neurenix.tensor"} <= set(c) for c in cycles)


def test_edges_resolve_relative_and_function_level_imports(tmp_path: Path) -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "from . import b\n"
        "from .c import thing\n"
        "from pkg import Top\n"
        "if TYPE_CHECKING:\n"
        "    from .d import Hidden\n"
        "def f():\n"
        "    import pkg.e\n")
    (tmp_path / "a.py").write_text(source)
    modules = {m: (tmp_path / "a.py" if m == "pkg.a" else tmp_path / "empty.py", m == "pkg")
               for m in ("pkg", "pkg.a", "pkg.b", "pkg.c", "pkg.d", "pkg.e")}
    (tmp_path / "empty.py").write_text("")
    assert import_edges(modules) == {("pkg.a", "pkg.b"), ("pkg.a", "pkg.c"), ("pkg.a", "pkg"),
                                     ("pkg.a", "pkg.e")}


def test_no_import_cycles() -> None:
    edges = import_edges(package_modules())
    cycles = import_cycles(edges)
    assert not cycles, "import cycles:\n" + describe(cycles, edges)


def _frontend(target: str) -> bool:
    return not target.startswith(("neurenix.compiler", "neurenix.runtime"))


def test_layers_import_one_way() -> None:
    """compiler -> runtime.program and runtime.sizes (plain data) only; runtime -> nothing of
    the compiler or the frontend."""
    edges = import_edges(package_modules())
    wrong = []
    for a, b in sorted(edges):
        if a.startswith("neurenix.compiler"):
            if _frontend(b) or (b.startswith("neurenix.runtime")
                                and b not in ("neurenix.runtime.program",
                                              "neurenix.runtime.sizes")):
                wrong.append(f"{a} -> {b}")
        elif a.startswith("neurenix.runtime"):
            if _frontend(b) or b.startswith("neurenix.compiler"):
                wrong.append(f"{a} -> {b}")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)
