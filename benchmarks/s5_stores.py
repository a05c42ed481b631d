"""S5: S1's Linear of N no-op tasks on each store (memory, SQLite, PostgreSQL); TaskFlow on SQLite."""

# The tables print typographic symbols (micro sign, en dash, times sign) on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import ckflow
from benchmarks import _dbos_peer
from benchmarks._harness import Stat, Table, measure, measure_rounds, time_ckflow_run
from benchmarks.s1_linear import build_ckflow, build_taskflow

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

#: the PostgreSQL server (without ``?schema=``: each run gets a fresh schema, dropped after it)
DSN_ENV = "CKFLOW_BENCH_POSTGRES_DSN"
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"

MEMORY = "memory:// (Engine)"
SQLITE = "SQLite file, WAL: the store's defaults (Engine)"
POSTGRES = "PostgreSQL, fresh schema (Engine)"
NO_STORE = "no store (ckflow.run), for reference"
BARE = "PostgreSQL floor: a bare `INSERT …` + COMMIT round trip (asyncpg, autocommit), per insert"
DBOS_SQLITE = "DBOS 3.4, SQLite system database (per step, from a workflow of N_DBOS steps)"
DBOS_POSTGRES = f"DBOS 3.4, PostgreSQL database {_dbos_peer.DATABASE} (per step, from N_DBOS steps)"
#: which of ckflow's rows each DBOS row is compared with
DBOS_ROWS = {DBOS_SQLITE: SQLITE, DBOS_POSTGRES: POSTGRES}


def _with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in params] + list(params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


def _without_query(url: str, key: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query=urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != key])))


def _public(url: str) -> str:
    """``url`` without its password, for the table."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


async def _postgres_unavailable(dsn: str) -> str | None:
    """None if the PostgreSQL server answers, else why not (for a "skipped" row)."""
    try:
        import asyncpg
    except ImportError:
        return "asyncpg is not installed (pip install 'ckflow[postgres]')"
    try:
        conn = await asyncpg.connect(_without_query(dsn, "schema"), timeout=5)
    except Exception as exc:  # any failure to connect is a reason to skip, reported as such
        return f"cannot connect to {_public(dsn)} ({type(exc).__name__}: {exc}); set {DSN_ENV}"
    await conn.close()
    return None


async def _drop_schema(dsn: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(_without_query(dsn, "schema"), timeout=5)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def bare_round_trips(dsn: str, n: int) -> float:
    """Seconds that ``n`` single-row ``INSERT``s take, each its own transaction (one round trip and one commit
    each, as asyncpg sends a statement outside a transaction), into a fresh table of ``task``-like rows:
    S5's floor for a store that commits each task's result before its consumer starts."""
    import asyncpg

    conn = await asyncpg.connect(_without_query(dsn, "schema"), timeout=5)
    table = f"ckflow_bench_floor_{uuid.uuid4().hex[:12]}"
    try:
        await conn.execute(
            f"CREATE TABLE {table} (run_id text, task text, state text, result text, PRIMARY KEY (run_id, task))"
        )
        insert = f"INSERT INTO {table} VALUES ($1, $2, $3, $4)"
        t0 = time.perf_counter()
        for i in range(n):
            await conn.execute(insert, "run", f"t{i}", "SUCCESS", "0")
        elapsed = time.perf_counter() - t0
        await conn.execute(f"DROP TABLE {table}")
    finally:
        await conn.close()
    return elapsed


async def run_durable(url: str, flow: ckflow.Flow) -> float:
    """Seconds from ``engine.start(flow)`` (which records the run) to ``wait()`` returning (its end committed).

    Opening the engine (and so creating the store's tables) and closing it are not timed.
    """
    async with ckflow.Engine(store=url) as engine:
        t0 = time.perf_counter()
        run = await engine.start(flow)
        result = await run.wait()
        elapsed = time.perf_counter() - t0
    assert result.state == ckflow.FlowState.SUCCESS, result.state
    return elapsed


def remove_sqlite(path: Path) -> None:
    """Remove a SQLite database file and its companions (WAL, shared memory, rollback journal)."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


async def _measure_ckflow(n: int, dbos_n: int, workdir: Path, dsn: str) -> tuple[dict[str, Stat], dict[str, str]]:
    """µs per task for each store and for DBOS on SQLite and PostgreSQL, alternating within each round.

    DBOS costs milliseconds a step, so it runs ``dbos_n`` steps, its time scaled to ``n`` for the table.
    """
    flow = build_ckflow(n)
    flow.compile()

    async def memory() -> float:
        return await run_durable("memory://", flow)

    async def sqlite() -> float:
        path = workdir / "s5.db"  # a fresh file each time
        try:
            return await run_durable(f"sqlite:///{path}", flow)
        finally:
            remove_sqlite(path)

    async def postgres() -> float:
        schema = f"ckflow_bench_{uuid.uuid4().hex[:12]}"
        try:
            return await run_durable(_with_query(dsn, schema=schema), flow)
        finally:
            await _drop_schema(dsn, schema)

    async def no_store() -> float:
        return await time_ckflow_run(flow)

    def dbos(url: str) -> Callable[[], Awaitable[float]]:
        async def go() -> float:
            got = await _dbos_peer.once("linear", url, dbos_n)
            return float(got["wall"]) * n / dbos_n

        return go

    fns: dict[str, Callable[[], Awaitable[float | None]]] = {NO_STORE: no_store, MEMORY: memory, SQLITE: sqlite}
    errors: dict[str, str] = {}
    why = await _postgres_unavailable(dsn)
    if why is None:
        fns[POSTGRES] = postgres
        fns[BARE] = functools.partial(bare_round_trips, dsn, n)
    else:
        errors[POSTGRES] = errors[BARE] = why
    no_dbos = _dbos_peer.unavailable()
    if no_dbos is None:
        fns[DBOS_SQLITE] = dbos(f"sqlite:///{workdir}/dbos.sqlite")
        if why is None:
            fns[DBOS_POSTGRES] = dbos(await _dbos_peer.fresh_database(dsn, _dbos_peer.DATABASE))
        else:
            errors[DBOS_POSTGRES] = why
    else:
        errors[DBOS_SQLITE] = errors[DBOS_POSTGRES] = no_dbos
    # Only a server or a peer outside this process may fail without failing the scenario.
    stats = await measure_rounds(fns, fallible=(POSTGRES, BARE, DBOS_SQLITE, DBOS_POSTGRES), errors=errors)
    return {name: stat.scaled(1e6 / n) for name, stat in stats.items()}, errors


def run_taskflow(n: int, path: Path) -> float:
    """Seconds TaskFlow's serial engine takes on an N-task linear flow, persisted with its SQLAlchemy backend."""
    from taskflow import engines
    from taskflow.persistence import backends

    backend = backends.fetch({"connection": f"sqlite:///{path}"})
    try:
        with contextlib.closing(backend.get_connection()) as conn:
            conn.upgrade()
        flow = build_taskflow(n)
        t0 = time.perf_counter()
        # load() records a logbook and a flow detail, the run records every atom's state and result.
        engine = engines.load(flow, store={"start": 0}, backend=backend, engine="serial")
        engine.run()
        elapsed = time.perf_counter() - t0
        assert engine.storage.fetch(f"v{n - 1}") == 0
    finally:
        backend.close()
        remove_sqlite(path)
    return elapsed


def _measure_taskflow(n: int, repeat: int, workdir: Path) -> Stat | str:
    """µs per task, or why TaskFlow's SQLAlchemy backend cannot run here."""
    try:
        import alembic
        import sqlalchemy
        import taskflow.persistence.backends  # noqa: F401  (checks that TaskFlow is there)
    except ImportError as exc:
        return f"could not run: {exc} (its SQLAlchemy backend needs SQLAlchemy and alembic: the bench extra)"
    del alembic, sqlalchemy
    try:
        stat = measure(lambda: run_taskflow(n, workdir / "taskflow.db"), repeat=repeat, warmup=0)
    except Exception as exc:  # the peer failing must not lose ckflow's figures
        return f"could not run: {type(exc).__name__}: {exc}"
    return stat.scaled(1e6 / n)


def run(quick: bool = False) -> Table:
    n = 200 if quick else 1_000
    dbos_n = 100 if quick else 200
    tf_n = 20 if quick else 50
    tf_repeat = 3
    dsn = os.environ.get(DSN_ENV, DEFAULT_DSN)
    with tempfile.TemporaryDirectory(prefix="ckflow-bench-s5-") as tmp:
        workdir = Path(tmp)
        ck, errors = asyncio.run(_measure_ckflow(n, dbos_n, workdir, dsn))
        tf = _measure_taskflow(tf_n, tf_repeat, workdir)

    table = Table(
        "S5 — S1's Linear of N no-op tasks on each store (µs per task, median (min–max))",
        ["store", "N", "runs", "µs per task", "÷ memory store"],
    )
    memory = ck[MEMORY]
    for name in (NO_STORE, MEMORY, SQLITE, POSTGRES, BARE, DBOS_SQLITE, DBOS_POSTGRES):
        size = dbos_n if name in DBOS_ROWS else n
        if name in ck:
            stat = ck[name]
            table.add(
                name.replace("N_DBOS", f"{dbos_n:,}"),
                f"{size:,}",
                len(stat.samples),
                stat.fmt(1),
                f"{stat.median / memory.median:.2f}×",
            )
        else:
            table.add(name.replace("N_DBOS", f"{dbos_n:,}"), f"{size:,}", "—", f"skipped: {errors[name]}", "—")
    tf_name = "TaskFlow 6.5 serial, SQLAlchemy backend on a SQLite file"
    if isinstance(tf, Stat):
        table.add(tf_name, f"{tf_n:,}", len(tf.samples), tf.fmt(0), f"{tf.median / memory.median:,.0f}×")
    else:
        table.add(tf_name, f"{tf_n:,}", "—", tf, "—")

    sqlite = ck[SQLITE]
    ratio = sqlite.median / memory.median
    table.target("S5 SQLite ≤2× the memory store", ratio <= 2, f"{ratio:.2f}×")
    if POSTGRES in ck and BARE in ck:
        floor = ck[POSTGRES].median / ck[BARE].median
        table.target("S5 PostgreSQL ≤1.3× a bare INSERT + COMMIT round trip", floor <= 1.3, f"{floor:.2f}×")
    else:
        table.target("S5 PostgreSQL ≤1.3× a bare INSERT + COMMIT round trip", None, errors.get(POSTGRES, ""))
    if isinstance(tf, Stat):
        speedup = tf.median / sqlite.median
        table.target(
            "S5 ≥300× faster than TaskFlow on SQLite",
            speedup >= 300,
            f"{speedup:,.0f}× (TaskFlow at N = {tf_n}, {tf_repeat} runs; ckflow at N = {n:,})",
        )
    else:
        table.target("S5 ≥300× faster than TaskFlow on SQLite", None, tf)
    for name, ours in DBOS_ROWS.items():
        label = f"S5 ≥10× faster than DBOS on {'SQLite' if ours == SQLITE else 'PostgreSQL'}"
        if name in ck and ours in ck:
            speedup = ck[name].median / ck[ours].median
            table.target(
                label, speedup >= 10, f"{speedup:,.1f}× ({ck[name].median:,.0f} against {ck[ours].median:,.1f} µs)"
            )
        else:
            table.target(label, None, errors.get(name) or errors.get(ours, ""))
    table.notes.append(
        "ckflow: the flow is compiled once beforehand; each run opens `ckflow.Engine(store=URL)` (creating the "
        "store's tables) outside the timer, and times `engine.start(flow)` (which records the run) → `run.wait()` "
        "returning (its terminal state committed). Every run gets a fresh SQLite file / PostgreSQL schema, dropped "
        f"after it. The stores alternate within each round (order rotating), after one warm-up round. PostgreSQL: "
        f"{_public(dsn)} (env {DSN_ENV}), over loopback. The floor row times N single-row INSERTs on one "
        "connection, each committed on its own, in the same rounds: what any store pays that commits each "
        "task's result before its consumer starts (DESIGN §7)."
    )
    table.notes.append(
        f"TaskFlow: N = {tf_n} instead of {n:,} and {tf_repeat} runs, because it costs tens of ms per task here; "
        "its cost per task grows with N (S1), so the smaller N favours it. Each run uses a fresh file with the "
        "backend's default journal (rollback); timed: `engines.load(flow, backend=...)` (records the logbook and "
        "flow detail) and `engine.run()`."
    )
    table.notes.append(
        f"DBOS: a workflow of N = {dbos_n} `@DBOS.step` calls in turn, each consuming the previous one's output "
        "(DBOS records each step's output before the next starts), in the same rounds as ckflow's stores, each "
        "time in a fresh process (`benchmarks/_dbos_peer.py`: DBOS is one object per process) after a warm-up "
        "workflow of 50 steps; timed: `DBOS.start_workflow` → `get_result()`. Its SQLite file and PostgreSQL "
        "database are made afresh once, before the rounds; logging at CRITICAL."
    )
    return table
