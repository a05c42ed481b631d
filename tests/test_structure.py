"""The shape of the code base, checked with plain tools (issue 11): no import cycle, short modules and functions.

Each check runs twice: on the command line package `src/ckflow/_cli`, which must keep to it now, and on all of
`src/ckflow`, where the runtime redesign is still in progress (those runs are expected to fail until it is done).
A failing check lists every violation it finds, one a line.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
PACKAGE = SRC / "ckflow"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 60
CLI = "ckflow._cli"

#: the module whose files a check covers: the command line (must comply) and the whole package
SCOPES = [pytest.param(CLI, id="cli"), pytest.param("ckflow", id="all")]


def _modules() -> dict[str, Path]:
    """Every module of ckflow by dotted name; a package's ``__init__.py`` is the package's module."""
    found: dict[str, Path] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _in_scope(module: str, scope: str) -> bool:
    return module == scope or module.startswith(scope + ".")


def _absolute(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute name ``from ... import`` reads from, relative imports resolved against ``module``."""
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """The module of ckflow that importing ``name`` reaches: ``name`` itself, or its nearest known parent."""
    parts = name.split(".")
    while parts:
        if ".".join(parts) in modules:
            return ".".join(parts)
        parts.pop()
    return None


def _imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The ckflow modules ``module`` imports: every import statement, lazy and ``TYPE_CHECKING`` ones too.

    ``from ckflow.x import Y`` imports the module ``ckflow.x.Y`` when there is one, else ``ckflow.x``.
    """
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, path, node)
            named = [f"{base}.{alias.name}".lstrip(".") for alias in node.names]
            names = [name if name in modules else base for name in named]
        for name in names:
            target = _known(name, modules)
            if target is not None and target != module:
                targets.add(target)
    return targets


def _tangles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected parts of ``graph`` with more than one module: each is one or more cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    parts: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm; ckflow's graph is shallow enough to recurse
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            part: list[str] = []
            while not part or part[-1] != node:
                part.append(stack.pop())
            if len(part) > 1:
                parts.append(sorted(part))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return parts


def _cycles_in(part: list[str], graph: dict[str, set[str]]) -> list[list[str]]:
    """The shortest cycle through each module of ``part``, each cycle once, as a path that ends where it starts."""
    found: dict[tuple[str, ...], list[str]] = {}
    for start in part:
        cycle = _cycle_through(start, set(part), graph)
        turn = cycle.index(min(cycle[:-1]))
        found.setdefault(tuple(cycle[turn:-1] + cycle[:turn]), cycle)
    return list(found.values())


def _cycle_through(start: str, part: set[str], graph: dict[str, set[str]]) -> list[str]:
    """The shortest path from ``start`` back to itself inside ``part`` (breadth first)."""
    paths = [[start]]
    seen = {start}
    while paths:
        path = paths.pop(0)
        for nxt in sorted(graph[path[-1]] & part):
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                paths.append([*path, nxt])
    raise AssertionError(f"no cycle through {start}")  # pragma: no cover - a strongly connected part has one


def _long_functions(path: Path) -> list[str]:
    """``file:line name lines`` for each function or method of ``path`` over the limit (decorators excluded)."""
    found: list[str] = []

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = prefix + child.name
                lines = (child.end_lineno or child.lineno) - child.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    found.append(f"{path.relative_to(ROOT)}:{child.lineno} {name} {lines}")
                walk(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                walk(child, prefix + child.name + ".")
            else:
                walk(child, prefix)

    walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)), "")
    return found


def _ruff() -> list[str]:
    """The command that runs ruff: the module of this interpreter, else the executable next to it."""
    if importlib.util.find_spec("ruff") is not None:
        return [sys.executable, "-m", "ruff"]
    return [str(Path(sys.executable).with_name("ruff"))]  # pragma: no cover - ruff installed as a bare executable


@pytest.mark.parametrize("scope", SCOPES)
def test_no_import_cycle(scope: str) -> None:
    """No cycle among ckflow's modules, counting module level, lazy and TYPE_CHECKING imports."""
    modules = _modules()
    graph = {module: _imports(module, path, modules) for module, path in modules.items()}
    report = []
    for part in _tangles(graph):
        if any(_in_scope(module, scope) for module in part):
            report.append(f"modules importing each other: {', '.join(part)}")
            report.extend(f"  {' -> '.join(cycle)}" for cycle in _cycles_in(part, graph))
    assert not report, "import cycles:\n" + "\n".join(report)


@pytest.mark.parametrize("scope", SCOPES)
def test_no_long_module(scope: str) -> None:
    """No module of ckflow is over 600 lines."""
    long = []
    for module, path in _modules().items():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if _in_scope(module, scope) and lines > MAX_MODULE_LINES:
            long.append(f"{path.relative_to(ROOT)} {lines}")
    assert not long, f"modules over {MAX_MODULE_LINES} lines:\n" + "\n".join(long)


@pytest.mark.parametrize("scope", SCOPES)
def test_no_long_function(scope: str) -> None:
    """No function or method of ckflow is over 60 lines, from its ``def`` to the end of its body."""
    long = [line for module, path in _modules().items() if _in_scope(module, scope) for line in _long_functions(path)]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)


@pytest.mark.parametrize("scope", SCOPES)
def test_no_private_access_across_objects(scope: str) -> None:
    """``ruff check --select SLF001`` finds no access to another object's private members."""
    target = _modules()[scope]
    where = target.parent if target.name == "__init__.py" else target
    proc = subprocess.run(
        [*_ruff(), "check", "--no-cache", "--select", "SLF001", "--output-format", "concise", str(where)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_import_graph_counts_lazy_and_type_checking_imports(tmp_path: Path) -> None:
    """The cycle check sees relative, lazy and TYPE_CHECKING imports, and submodules named by ``from``."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("from . import a\n")
    (package / "a.py").write_text("def f():\n    from pkg.b import thing\n")
    (package / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import c\n")
    (package / "c.py").write_text("from pkg import VALUE\nimport pkg.a\n")
    modules = {"pkg": package / "__init__.py", **{f"pkg.{name}": package / f"{name}.py" for name in "abc"}}
    graph = {module: _imports(module, path, modules) for module, path in modules.items()}
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.c"}, "pkg.c": {"pkg", "pkg.a"}}
    assert _tangles(graph) == [["pkg", "pkg.a", "pkg.b", "pkg.c"]]
    assert _cycles_in(["pkg", "pkg.a", "pkg.b", "pkg.c"], graph) == [
        ["pkg", "pkg.a", "pkg.b", "pkg.c", "pkg"],
        ["pkg.a", "pkg.b", "pkg.c", "pkg.a"],
    ]
