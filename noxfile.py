"""Development sessions: `nox` runs tests (core alone and with extras), lint and typing."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typing"]
nox.options.reuse_existing_virtualenvs = True

PYPROJECT = tomllib.loads(Path("pyproject.toml").read_text())
PYTHONS = [
    m.group(1)
    for c in PYPROJECT["project"]["classifiers"]
    if (m := re.fullmatch(r"Programming Language :: Python :: (3\.\d+)", c))
]


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The test suite on every supported Python; the core needs no extra."""
    session.install("-e", ".", *nox.project.dependency_groups(PYPROJECT, "test"))
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff, lint and format."""
    session.install(*nox.project.dependency_groups(PYPROJECT, "lint"))
    session.run("ruff", "check", "src", "tests", "benchmarks")
    session.run("ruff", "format", "--check", "src", "tests", "benchmarks")


@nox.session
def typing(session: nox.Session) -> None:
    """mypy --strict on the package and on the typed examples users would write."""
    session.install("-e", ".", *nox.project.dependency_groups(PYPROJECT, "typing"))
    session.run("mypy", "src")
    session.run("mypy", "--strict", "tests/typing")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks side by side with their peers (`-- --quick` for a short run); S5 wants a PostgreSQL server."""
    session.install("-e", ".[bench,postgres]")
    session.run("python", "-m", "benchmarks", *session.posargs)


@nox.session
def crash(session: nox.Session) -> None:
    """Every crash trial: SIGKILL a durable run at each kill point and resume it, on SQLite and PostgreSQL."""
    session.install("-e", ".", *nox.project.dependency_groups(PYPROJECT, "test"))
    session.env["CKFLOW_CRASH_TRIALS"] = "all"
    session.run("pytest", "tests/test_crash.py", *session.posargs)


@nox.session
def verifytypes(session: nox.Session) -> None:
    """pyright --verifytypes (downloads pyright on first use, so it is not in the defaults)."""
    session.install("-e", ".", "pyright")
    session.run("pyright", "--verifytypes", "ckflow", "--ignoreexternal")
