"""S11: recovery. A 1,000-task Linear killed with SIGKILL at task 500; a new process → the run ended.

Each life is a process of its own (``benchmarks/_s11_worker.py``): the first starts the run and is killed while
task 500 runs; the second, started right after, is the service coming back with default options (ckflow:
``Engine(store=URL, recover=True)``; DBOS: ``DBOS.launch()``) and runs until the run has ended. Timed from the
second process's spawn; the interpreter's start with the imports is split out (the worker says when it is done
importing). ckflow and DBOS, each on SQLite and on PostgreSQL, alternate within each round.
"""

# The tables print typographic symbols (micro sign, en dash, times sign) on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks._dbos_peer import fresh_database
from benchmarks._harness import Stat, Table
from benchmarks.s5_stores import (
    DEFAULT_DSN,
    DSN_ENV,
    _drop_schema,
    _postgres_unavailable,
    _public,
    _with_query,
    _without_query,
    remove_sqlite,
)

if TYPE_CHECKING:
    from collections.abc import Callable

ROOT = Path(__file__).resolve().parent.parent
#: DBOS's system database on the PostgreSQL server: a database of its own, dropped and created again each round
DBOS_DATABASE = "ckflow_bench_dbos"
LIFE_LIMIT = 300.0

CKFLOW_SQLITE = "ckflow, SQLite file (WAL)"
CKFLOW_POSTGRES = "ckflow, PostgreSQL (fresh schema)"
DBOS_SQLITE = "DBOS, SQLite system database"
DBOS_POSTGRES = f"DBOS, PostgreSQL (database {DBOS_DATABASE})"


def _worker(engine: str, mode: str, url: str, log: Path) -> subprocess.Popen[str]:
    env = {**os.environ}
    env.pop("S11_HOLD", None)
    if mode == "first":
        env["S11_HOLD"] = "1"
    command = [sys.executable, "-m", "benchmarks._s11_worker", engine, mode, url]
    with log.open("w") as err:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, text=True)


def _said(process: subprocess.Popen[str], word: str, log: Path) -> list[str]:
    """The words of the worker's ``S11 <word> ...`` line, read from its stdout as it comes."""
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith(f"S11 {word}"):
            return line.split()
    process.kill()
    process.wait()
    raise RuntimeError(f"S11: the worker ended without saying {word!r}:\n{log.read_text()[-3000:]}")


def one(engine: str, url: str, work: Path) -> tuple[float, float, float]:
    """Kill a first life at task 500, start the second: spawn → imported, → opened, → run ended, in seconds."""
    first = _worker(engine, "first", url, work / "first.log")
    try:
        _said(first, "ready", work / "first.log")
    finally:
        first.kill()
        first.wait()  # reaped: the pid names no process any more
    spawned = time.time()
    second = _worker(engine, "restart", url, work / "second.log")
    try:
        imported = float(_said(second, "imported", work / "second.log")[2])
        opened = float(_said(second, "opened", work / "second.log")[2])
        done = _said(second, "done", work / "second.log")
        second.wait(timeout=LIFE_LIMIT)
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()
    if done[3] != "SUCCESS":
        raise RuntimeError(f"S11: {engine}'s run ended {done[3]}:\n{(work / 'second.log').read_text()[-3000:]}")
    return imported - spawned, opened - spawned, float(done[2]) - spawned


def _contenders(work: Path, dsn: str, postgres_ok: bool, dbos_ok: bool):
    """name -> a function that measures one round (and cleans up after it)."""

    def on_sqlite(engine: str, file: str) -> Callable[[], tuple[float, float, float]]:
        def measure() -> tuple[float, float, float]:
            path = work / file
            try:
                return one(engine, f"sqlite:///{path}", work)
            finally:
                remove_sqlite(path)

        return measure

    def ckflow_postgres() -> tuple[float, float, float]:
        schema = f"ckflow_s11_{uuid.uuid4().hex[:12]}"
        try:
            return one("ckflow", _with_query(dsn, schema=schema), work)
        finally:
            asyncio.run(_drop_schema(dsn, schema))

    def dbos_postgres() -> tuple[float, float, float]:
        return one("dbos", asyncio.run(fresh_database(dsn, DBOS_DATABASE)), work)

    found = {CKFLOW_SQLITE: on_sqlite("ckflow", "ckflow.db")}
    if postgres_ok:
        found[CKFLOW_POSTGRES] = ckflow_postgres
    if dbos_ok:
        found[DBOS_SQLITE] = on_sqlite("dbos", "dbos.sqlite")
        if postgres_ok:
            found[DBOS_POSTGRES] = dbos_postgres
    return found


def run(quick: bool = False) -> Table:
    rounds = 3 if quick else 5
    dsn = os.environ.get(DSN_ENV, DEFAULT_DSN)
    table = Table(
        f"S11 — recovery: a Linear of 1,000 no-op tasks killed (SIGKILL) at task 500, a new process → the run "
        f"ended (s, median (min–max) of {rounds} rounds)",
        [
            "engine, store",
            "restart → run ended",
            "interpreter + imports",
            "open (recovery)",
            "the 500 tasks left",
        ],
    )
    unavailable = asyncio.run(_postgres_unavailable(dsn))
    try:
        import dbos  # noqa: F401
    except ImportError:
        dbos_ok = False
        table.notes.append("DBOS skipped: it is not installed (pip install -e '.[bench]')")
    else:
        dbos_ok = True
    if unavailable:
        table.notes.append(f"PostgreSQL skipped: {unavailable}")
    with tempfile.TemporaryDirectory(prefix="ckflow-bench-s11-") as tmp:
        contenders = _contenders(Path(tmp), dsn, unavailable is None, dbos_ok)
        got: dict[str, list[tuple[float, float, float]]] = {name: [] for name in contenders}
        names = list(contenders)
        for i in range(rounds):
            shift = i % len(names)
            for name in names[shift:] + names[:shift]:
                got[name].append(contenders[name]())
    totals = {}
    for name, samples in got.items():
        total, imports = Stat([s[2] for s in samples]), Stat([s[0] for s in samples])
        opening, rest = Stat([s[1] - s[0] for s in samples]), Stat([s[2] - s[1] for s in samples])
        totals[name] = total
        table.add(name, total.fmt(3), imports.fmt(3), opening.fmt(3), rest.fmt(3))
    _targets(table, totals)
    table.notes.append(
        "Each round: a first process starts the run (run id `r`) and is killed with SIGKILL once task 500 has "
        "started (it prints a line, then waits; the 499 before it are committed, DESIGN §7), and reaped; then a "
        "second process is spawned and timed from the spawn (`time.time()` in the parent) to the run's end seen "
        "in it: ckflow's `run.wait()` returning (the end committed), DBOS's `get_workflow_status` reading "
        "SUCCESS (looked at every 5 ms). Default options: ckflow `Engine(store=URL, recover=True)` (its lease "
        "10 s: the dead process is recognised at once, not after the lease); DBOS `DBOS(config={name, "
        "system_database_url})` and `DBOS.launch()`, which recovers the pending workflows of executor `local`. "
        f"PostgreSQL: {_public(_without_query(dsn, 'schema'))} (env {DSN_ENV}); ckflow gets a fresh schema per "
        f"round, DBOS the database `{DBOS_DATABASE}`, dropped and created again per round (by the benchmark). "
        "The stores alternate within each round, order rotating. 'Interpreter + imports': spawn → the worker has "
        "imported the library and defined the flow; 'open (recovery)': → `Engine.__aenter__` "
        "returned, the run adopted and resumed (DBOS: → `DBOS.launch()` returned; its recovery goes on in a "
        "thread, which re-enqueues the workflow on its internal queue); 'the 500 tasks left': → the end. "
        "Neither configures logging (DBOS logs at INFO by default)."
    )
    return table


def _targets(table: Table, totals: dict[str, Stat]) -> None:
    for name, bar in ((CKFLOW_SQLITE, 0.5), (CKFLOW_POSTGRES, 1.0)):
        if name in totals:
            median = totals[name].median
            table.target(f"S11 {name}: restart → run ended ≤{bar:g} s", median <= bar, f"{median:.3f} s")
    for ours, theirs in ((CKFLOW_SQLITE, DBOS_SQLITE), (CKFLOW_POSTGRES, DBOS_POSTGRES)):
        if ours in totals and theirs in totals:
            ratio = totals[theirs].median / totals[ours].median
            table.notes.append(f"{theirs} takes {ratio:.1f}× as long as {ours}.")
