"""Crash tests: a process running a durable flow is killed with SIGKILL; a new process resumes it (DESIGN §7).

Each trial kills ``tests/crash_worker.py`` at one point (inside an execute or
a revert, during the retry backoff, or just before or after one of its
commits), reads what the store holds, resumes the run in a new process and
checks that the run ends as it would have without the crash: the same state
and outputs, no task that the store had as SUCCESS executed again, the retry
counted once.

CI runs a spread subset. ``CKFLOW_CRASH_TRIALS=all`` runs every point (over
fifty per store): ``CKFLOW_CRASH_TRIALS=all pytest tests/test_crash.py`` or
``nox -s crash``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest

from ckflow import FlowState, TaskState
from ckflow.stores import open_store

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

ROOT = Path(__file__).resolve().parent.parent
#: a run makes eight or nine writes here (group commit merges some, depending on timing)
WRITES = range(1, 10)

POINTS = {
    "retry": [
        *(f"execute:{t}" for t in ("create:1", "attach:1", "attach:2", "net:1", "format_disk:1", "boot:1")),
        "revert:attach",
        "backoff",
        *(f"{when}-write:{k}" for k in WRITES for when in ("before", "after")),
    ],
    "revert": [
        *(f"execute:{t}" for t in ("create:1", "attach:1", "attach:2", "net:1", "format_disk:1", "boot:1")),
        "backoff",
        *(f"revert:{t}" for t in ("attach", "format_disk", "net", "create")),
        *(f"{when}-write:{k}" for k in WRITES for when in ("before", "after")),
    ],
}
#: what CI runs: kills in an execute, the backoff, a revert, and around commits early and late
SUBSET = {
    "retry": ["execute:attach:1", "backoff", "after-write:3", "before-write:5"],
    "revert": ["revert:net", "after-write:6"],
}
FULL = os.environ.get("CKFLOW_CRASH_TRIALS", "") == "all"
TRIALS = [(s, p) for s, points in (POINTS if FULL else SUBSET).items() for p in points]


@dataclass
class Line:
    pid: int
    kind: str
    task: str
    attempt: int


def worker(
    url: str, run_id: str, ledger: Path, mode: str, scenario: str, kill: str = ""
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "tests.crash_worker", url, run_id, str(ledger), mode, scenario, kill]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


def ledger_lines(path: Path) -> list[Line]:
    if not path.exists():
        return []
    lines = []
    for raw in path.read_text().splitlines():
        pid, kind, name, attempt = raw.split()
        lines.append(Line(int(pid), kind, name, int(attempt)))
    return lines


async def run_worker(*args: str) -> subprocess.CompletedProcess[str]:
    return await anyio.to_thread.run_sync(lambda: worker(*args))  # type: ignore[arg-type]


@pytest.fixture(params=["sqlite", "postgres"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh store for one trial: a SQLite file, or a PostgreSQL schema dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/crash.db"
        return
    dsn: str = request.getfixturevalue("postgres_dsn")
    schema = f"ckflow_crash_{uuid.uuid4().hex[:12]}"
    yield f"{dsn}{'&' if '?' in dsn else '?'}schema={schema}"
    import asyncpg

    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await connection.close()


_REFERENCE: dict[str, dict[str, object]] = {}


async def reference(scenario: str, tmp_path: Path) -> dict[str, object]:
    """The end of the run without a crash (computed once per scenario, on SQLite)."""
    if scenario not in _REFERENCE:
        done = await run_worker(
            f"sqlite:///{tmp_path}/reference.db", "ref", str(tmp_path / "ref-ledger"), "start", scenario
        )
        assert done.returncode == 0, done.stderr
        _REFERENCE[scenario] = json.loads(done.stdout.splitlines()[-1])
    return _REFERENCE[scenario]


@pytest.mark.parametrize(("scenario", "point"), TRIALS, ids=[f"{s}-{p}" for s, p in TRIALS])
async def test_killed_run_resumes_to_the_same_end(store_url: str, scenario: str, point: str, tmp_path: Path) -> None:
    """SIGKILL at the point, resume in a new process: same end, no stored success run again, no retry counted twice."""
    expected = await reference(scenario, tmp_path)
    ledger = tmp_path / "ledger"
    first = await run_worker(store_url, "run", str(ledger), "start", scenario, point)
    killed = first.returncode == -signal.SIGKILL
    assert killed or first.returncode == 0, first.stderr
    if not killed:
        pytest.skip(f"the run ended before reaching {point!r}: nothing to resume")  # only past the last write
    async with open_store(store_url) as store:
        at_crash = {t.task: t.state for t in await store.tasks("run")}
    done_before = {name for name, state in at_crash.items() if state is TaskState.SUCCESS}

    second = await run_worker(store_url, "run", str(ledger), "resume", scenario)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout.splitlines()[-1]) == expected

    lines = ledger_lines(ledger)
    crashed_pid = lines[0].pid
    again = {line.task for line in lines if line.pid != crashed_pid and line.kind == "execute"} & done_before
    assert again == set(), f"{again} had succeeded before the crash and ran again"
    attach_attempts = [line.attempt for line in lines if line.kind == "execute" and line.task == "attach"]
    assert max(attach_attempts) == 2, f"attach ran with attempts {attach_attempts}: a retry was counted twice"

    async with open_store(store_url) as store:
        tasks = {t.task: t for t in await store.tasks("run")}
        run = await store.get_run("run")
    if scenario == "retry":
        assert run.state is FlowState.SUCCESS
        assert tasks["attach"].retries == {"disk": 1}
    else:
        assert run.state is FlowState.REVERTED
        assert {t.state for t in tasks.values()} <= {TaskState.REVERTED, TaskState.PENDING}
        executed = {line.task for line in lines if line.kind == "execute"} - {"boot"}  # boot has no revert
        reverted_last = {name for name in executed if [ln.kind for ln in lines if ln.task == name][-1] == "revert"}
        assert reverted_last == executed, "every task that ran is undone at the end"
