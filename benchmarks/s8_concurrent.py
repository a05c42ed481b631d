"""S8: many concurrent small runs (a Linear of 3 no-op tasks each) in one event loop."""

# The tables print typographic symbols (micro sign, en dash, times sign) on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import ckflow
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


async def start_all(engine: ckflow.Engine, flow: ckflow.Flow, runs: int) -> tuple[float, list[float]]:
    """Start ``runs`` runs one after the other, then await them all.

    Returns the wall time from the first start to the last end, and each run's latency: from just
    before its ``engine.start`` to its ``wait()`` returning (seen by a task per run, created as
    soon as the run has started).
    """
    latencies = [0.0] * runs
    last_end = 0.0

    async def watch(i: int, run: ckflow.Run, started: float) -> None:
        nonlocal last_end
        result = await run.wait()
        ended = time.perf_counter()
        assert result.state == ckflow.FlowState.SUCCESS, result.state
        latencies[i] = ended - started
        last_end = max(last_end, ended)

    first = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for i in range(runs):
            started = time.perf_counter()
            run = await engine.start(flow)
            tg.create_task(watch(i, run, started))
    return last_end - first, latencies


def run(quick: bool = False) -> Table:
    runs = 200 if quick else 1_000
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
        walls = asyncio.run(measure_rounds(fns, repeat=REPEAT, warmup=WARMUP, fallible=(POSTGRES,), errors=errors))

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
        table.add(name, rate.fmt(0), lo.fmt(1), hi.fmt(1), f"{ratio.fmt(2)}×", wall.scaled(1e3).fmt(1))

    for name, why in errors.items():
        table.add(name, f"skipped: {why}", "—", "—", "—", "—")
    mem_rate = rates[MEMORY].median
    table.target("S8 ≥5,000 runs/s on memory (one core)", mem_rate >= 5_000, f"{mem_rate:,.0f} runs/s")
    if POSTGRES in rates:
        pg_rate = rates[POSTGRES].median
        table.target("S8 ≥2,000 runs/s on PostgreSQL", pg_rate >= 2_000, f"{pg_rate:,.0f} runs/s")
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
    return table
