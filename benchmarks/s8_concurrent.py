"""S8: many concurrent small runs (a Linear of 3 no-op tasks each) in one event loop."""

# The tables print typographic symbols (micro sign, en dash, times sign) on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import tempfile
import uuid
from pathlib import Path

import ckflow
from benchmarks import _dbos_peer
from benchmarks._harness import REPEAT, Stat, Table, measure_rounds, percentile
from benchmarks.s1_linear import build_ckflow
from benchmarks.s5_stores import (
    DEFAULT_DSN,
    DSN_ENV,
    _drop_schema,
    _postgres_unavailable,
    _with_query,
    remove_sqlite,
)

TASKS_PER_RUN = 3
WARMUP = 1

NO_STORE = "no store (Engine()), for reference"
MEMORY = "memory://"
SQLITE = "SQLite file, WAL: the store's defaults"
POSTGRES = "PostgreSQL, fresh schema"
MEMORY_NO_GC = "memory://, cyclic GC paused (diagnostic)"
DBOS_SQLITE = "DBOS 3.4, SQLite system database (N_DBOS workflows)"
DBOS_POSTGRES = f"DBOS 3.4, PostgreSQL database {_dbos_peer.DATABASE} (N_DBOS workflows)"
#: which of ckflow's rows each DBOS row is compared with
DBOS_ROWS = {DBOS_SQLITE: SQLITE, DBOS_POSTGRES: POSTGRES}


async def start_all(engine: ckflow.Engine, flow: ckflow.Flow, runs: int) -> tuple[float, list[float]]:
    """Start ``runs`` runs one after the other, then await them all (``_dbos_peer.start_all``).

    Returns the wall time from the first start to the last end, and each run's latency: from just
    before its ``engine.start`` to its ``wait()`` returning (seen by a task per run, created as
    soon as the run has started).
    """

    async def finish(run: ckflow.Run) -> None:
        result = await run.wait()
        assert result.state == ckflow.FlowState.SUCCESS, result.state

    return await _dbos_peer.start_all(lambda: engine.start(flow), finish, runs)


def run(quick: bool = False) -> Table:
    runs = 200 if quick else 1_000
    # DBOS starts some 50-150 workflows a second here: fewer of them keep a round within seconds
    dbos_runs = 100 if quick else 200
    flow = build_ckflow(TASKS_PER_RUN)
    flow.compile()
    # p50 and p99 of each round, warm-up round included (dropped below)
    p50: dict[str, list[float]] = {}
    p99: dict[str, list[float]] = {}

    with tempfile.TemporaryDirectory(prefix="ckflow-bench-s8-") as tmp:
        workdir = Path(tmp)

        def batch(name: str, store: str | None, *, gc_paused: bool = False):
            async def go() -> float:
                path = workdir / "s8.db"
                schema = f"ckflow_bench_{uuid.uuid4().hex[:12]}"
                url = f"sqlite:///{path}" if store == "sqlite" else store
                if store == "postgres":
                    url = _with_query(dsn, schema=schema)
                if gc_paused:
                    gc.disable()
                try:
                    async with ckflow.Engine(store=url) as engine:
                        wall, latencies = await start_all(engine, flow, runs)
                finally:
                    gc.enable()
                    remove_sqlite(path)
                    if store == "postgres":
                        await _drop_schema(dsn, schema)
                p50.setdefault(name, []).append(statistics.median(latencies))
                p99.setdefault(name, []).append(percentile(latencies, 99))
                return wall

            return go

        def dbos(name: str, url: str):
            async def go() -> float:
                got = await _dbos_peer.once("concurrent", url, dbos_runs)
                p50.setdefault(name, []).append(statistics.median(got["latencies"]))
                p99.setdefault(name, []).append(percentile(got["latencies"], 99))
                return float(got["wall"]) * runs / dbos_runs  # runs/s below is runs ÷ this

            return go

        fns = {
            NO_STORE: batch(NO_STORE, None),
            MEMORY: batch(MEMORY, "memory://"),
            SQLITE: batch(SQLITE, "sqlite"),
            MEMORY_NO_GC: batch(MEMORY_NO_GC, "memory://", gc_paused=True),
        }
        dsn = os.environ.get(DSN_ENV, DEFAULT_DSN)
        errors: dict[str, str] = {}
        why = asyncio.run(_postgres_unavailable(dsn))
        if why is None:
            fns[POSTGRES] = batch(POSTGRES, "postgres")
        else:
            errors[POSTGRES] = why
        no_dbos = _dbos_peer.unavailable()
        if no_dbos is None:
            fns[DBOS_SQLITE] = dbos(DBOS_SQLITE, f"sqlite:///{workdir}/dbos.sqlite")
            if why is None:
                url = asyncio.run(_dbos_peer.fresh_database(dsn, _dbos_peer.DATABASE))
                fns[DBOS_POSTGRES] = dbos(DBOS_POSTGRES, url)
            else:
                errors[DBOS_POSTGRES] = why
        else:
            errors[DBOS_SQLITE] = errors[DBOS_POSTGRES] = no_dbos
        fallible = (POSTGRES, DBOS_SQLITE, DBOS_POSTGRES)
        walls = asyncio.run(measure_rounds(fns, repeat=REPEAT, warmup=WARMUP, fallible=fallible, errors=errors))

    table = Table(
        f"S8 — {runs:,} concurrent runs of a Linear of {TASKS_PER_RUN} no-op tasks, one event loop "
        "(median (min–max) over rounds)",
        ["store", "runs/s", "run latency p50 (ms)", "run latency p99 (ms)", "p99 / p50", "first start → last end (ms)"],
    )
    ratios: dict[str, Stat] = {}
    rates: dict[str, Stat] = {}
    for name, wall in walls.items():
        rate = Stat([runs / w for w in wall.samples])
        lo = Stat(p50[name][WARMUP:]).scaled(1e3)
        hi = Stat(p99[name][WARMUP:]).scaled(1e3)
        ratio = Stat([b / a for a, b in zip(lo.samples, hi.samples, strict=True)])
        rates[name], ratios[name] = rate, ratio
        label = name.replace("N_DBOS", f"{dbos_runs:,}")
        table.add(label, rate.fmt(0), lo.fmt(1), hi.fmt(1), f"{ratio.fmt(2)}×", wall.scaled(1e3).fmt(1))

    for name, why in errors.items():
        table.add(name.replace("N_DBOS", f"{dbos_runs:,}"), f"skipped: {why}", "—", "—", "—", "—")
    mem_rate = rates[MEMORY].median
    table.target("S8 ≥5,000 runs/s on memory (one core)", mem_rate >= 5_000, f"{mem_rate:,.0f} runs/s")
    if POSTGRES in rates:
        pg_rate = rates[POSTGRES].median
        table.target("S8 ≥2,000 runs/s on PostgreSQL", pg_rate >= 2_000, f"{pg_rate:,.0f} runs/s")
    for name, ours in DBOS_ROWS.items():
        label = f"S8 ≥10× DBOS on the same shape, {'SQLite' if ours == SQLITE else 'PostgreSQL'}"
        if name in rates and ours in rates:
            times = rates[ours].median / rates[name].median
            detail = f"{times:,.1f}× ({rates[ours].median:,.0f} against {rates[name].median:,.0f} runs/s)"
            table.target(label, times >= 10, detail)
        else:
            table.target(label, None, errors.get(name) or errors.get(ours, ""))
    durable = tuple(name for name in (MEMORY, SQLITE, POSTGRES) if name in ratios)
    table.target(
        "S8 p99 ≤10× p50",
        all(ratios[name].median <= 10 for name in durable),
        ", ".join(f"{name.split(',')[0]}: {ratios[name].median:.2f}×" for name in durable)
        + f" (no store: {ratios[NO_STORE].median:.2f}×)",
    )
    table.notes.append(
        f"Each round opens an engine (outside the timer; a fresh SQLite file each time), calls `engine.start(flow)` "
        f"{runs:,} times in a row (with a store, start records the run before it returns, so runs already started "
        "go on meanwhile) with a task per run awaiting `run.wait()`, and awaits them all. runs/s = runs ÷ (first "
        "start → last end); latency = just before a run's start → its wait() returned. The flow is compiled once "
        f"beforehand. The stores alternate within each round (order rotating), after {WARMUP} warm-up round. "
        "The event loop uses one core; the SQLite store's writer thread may use the other."
    )
    table.notes.append(
        "The last row pauses Python's cyclic GC for the batch (gc.disable(), re-enabled after): not a setting to "
        "run with, a measure of what the collector's passes over the live runs' objects cost, which grows with "
        "the number of runs alive at once."
    )
    table.notes.append(
        f"DBOS: {dbos_runs:,} workflows of {TASKS_PER_RUN} async `@DBOS.step` calls started one after the other "
        "with `await DBOS.start_workflow_async` in one event loop, a task per workflow awaiting its result, in "
        "the same rounds as ckflow's stores, each time in a fresh process (`benchmarks/_dbos_peer.py`) after a "
        "warm-up of 50 workflows; its runs/s is workflows ÷ (first start → last end), its wall column scaled to "
        f"{runs:,} runs. Its SQLite file and PostgreSQL database are made afresh once, before the rounds."
    )
    return table
