"""docs/semantics.md names the test that pins each rule: every test it names exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: ``tests/path.py::Class`` or ``tests/path.py::Class::test_name`` or ``tests/path.py::test_name``
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)::([\w]+)(?:::([\w]+))?")


def _names(path: Path) -> dict[str, set[str]]:
    """Class name -> its method names, and "" -> the module's function names."""
    tree = ast.parse(path.read_text())
    found: dict[str, set[str]] = {"": set()}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            found[node.name] = {n.name for n in node.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found[""].add(node.name)
    return found


def test_every_test_the_semantics_name_exists() -> None:
    """A test named in docs/semantics.md exists under that name (a renamed test must be renamed there too)."""
    text = (ROOT / "docs" / "semantics.md").read_text()
    references = REFERENCE.findall(text)
    assert len(references) > 100
    missing = []
    cache: dict[str, dict[str, set[str]]] = {}
    for path, first, second in references:
        file = ROOT / path
        if not file.exists():
            missing.append(f"{path} (no such file)")
            continue
        names = cache.setdefault(path, _names(file))
        if second:
            if second not in names.get(first, set()):
                missing.append(f"{path}::{first}::{second}")
        elif first not in names and first not in names[""]:
            missing.append(f"{path}::{first}")
    assert not missing, "docs/semantics.md names tests that do not exist:\n" + "\n".join(missing)
