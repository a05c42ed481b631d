"""S10: workers on PostgreSQL (``ckflow worker`` processes) running submitted runs of 5 no-op tasks.

Three measurements, each on a fresh schema of the server (dropped after it):

- throughput: ``runs`` runs submitted to a queue, then 1 (or 2) worker processes started; runs/s = runs ÷
  (first task started → last run ended), from the store's own records;
- pick-up latency: one idle worker; runs submitted one at a time (5 ms apart, so the queue stays empty);
  latency = the run's ``created_at`` (set just before its INSERT) → its first task's RUNNING event;
- takeover: worker A runs 20 runs whose first task sleeps, worker B idles beside it; A is SIGKILLed;
  takeover time = the kill → each run's ``ckflow.run.resumed`` event in B (default options: B looks for
  dead workers of its host every ``poll_interval`` = 1 s).

This module also registers the flows the worker processes run (``--import benchmarks.s10_workers``).
"""

# The tables print typographic symbols (en dash, arrows) on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import ckflow
from benchmarks._harness import Stat, Table, percentile
from benchmarks.s5_stores import DEFAULT_DSN, DSN_ENV, _postgres_unavailable, _public, _with_query, _without_query

ROOT = Path(__file__).resolve().parent.parent
TASKS = 5
CONCURRENCY = 50
SLOW = 20


def _flow() -> ckflow.Linear:
    tasks = []
    for i in range(TASKS):

        async def step() -> None:
            return None

        tasks.append(ckflow.task(step, name=f"step{i}"))
    return ckflow.Linear("s10", *tasks)


def _slow_flow() -> ckflow.Linear:
    async def sleeper() -> None:
        await asyncio.sleep(3600)

    return ckflow.Linear("s10-slow", ckflow.task(sleeper, name="sleeper"))


ckflow.register_flow("s10", _flow)
ckflow.register_flow("s10-slow", _slow_flow)


class _Workers:
    """``ckflow worker`` processes on one store, their output in files of ``workdir``."""

    def __init__(self, url: str, workdir: Path) -> None:
        self.url = url
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self) -> subprocess.Popen[bytes]:
        log = self.workdir / f"worker-{uuid.uuid4().hex[:8]}.log"
        command = [
            sys.executable, "-m", "ckflow", "worker", "--store", self.url, "--import", "benchmarks.s10_workers",
            "--concurrency", str(CONCURRENCY), "--grace", "5",
        ]  # fmt: skip
        with log.open("wb") as out:
            proc = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        proc.log = log  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    async def ready(self, proc: subprocess.Popen[bytes]) -> None:
        """Wait until the worker says it claims (its store is open, its listener on)."""
        log: Path = proc.log  # type: ignore[attr-defined]
        deadline = time.monotonic() + 30
        while True:
            said = _read(log)
            if "claiming from" in said:
                return
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start: {said}")
            await asyncio.sleep(0.02)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait()


def _read(log: Path) -> str:
    return log.read_text(errors="replace")


async def _fresh(dsn: str) -> tuple[str, str]:
    schema = f"ckflow_bench_s10_{uuid.uuid4().hex[:10]}"
    return _with_query(dsn, schema=schema), schema


async def _drop(dsn: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(_without_query(dsn, "schema"), timeout=5)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def _fetch(url: str, schema: str, query: str, *args: object) -> list[tuple[object, ...]]:
    import asyncpg

    conn = await asyncpg.connect(_without_query(url, "schema"), server_settings={"search_path": schema})
    try:
        return [tuple(row) for row in await conn.fetch(query, *args)]
    finally:
        await conn.close()


_FIRST_RUNNING = (
    "SELECT r.created_at, r.ended_at, (SELECT (e.body::json->>'wall')::float8 FROM ckflow_events e "
    "WHERE e.run_id = r.run_id AND e.body::json->>'name' = 'ckflow.task.running' ORDER BY e.seq LIMIT 1) "
    "FROM ckflow_runs r"
)


async def _wait_ended(url: str, schema: str, runs: int, within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        [(ended,)] = await _fetch(url, schema, "SELECT count(*) FROM ckflow_runs WHERE ended_at IS NOT NULL")
        if ended == runs:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {ended} of {runs} runs ended within {within} s")
        await asyncio.sleep(0.1)


async def throughput(dsn: str, workdir: Path, runs: int, n_workers: int) -> float:
    """Runs/s of ``n_workers`` worker processes over ``runs`` runs queued beforehand."""
    url, schema = await _fresh(dsn)
    workers = _Workers(url, workdir)
    try:
        async with ckflow.Engine(store=url) as engine:
            for _ in range(runs):
                await engine.submit("s10")
        for _ in range(n_workers):
            workers.spawn()
        await _wait_ended(url, schema, runs, within=600)
        rows = await _fetch(url, schema, _FIRST_RUNNING)
        first = min(float(r[2]) for r in rows)  # type: ignore[arg-type]
        last = max(float(r[1]) for r in rows)  # type: ignore[arg-type]
        return runs / (last - first)
    finally:
        workers.stop()
        await _drop(dsn, schema)


async def pickup(dsn: str, workdir: Path, runs: int) -> list[float]:
    """Submit → first task started (seconds) of runs submitted one at a time to an idle worker."""
    url, schema = await _fresh(dsn)
    workers = _Workers(url, workdir)
    try:
        async with ckflow.Engine(store=url) as engine:
            await workers.ready(workers.spawn())
            for _ in range(runs):
                await engine.submit("s10")
                await asyncio.sleep(0.005)
        await _wait_ended(url, schema, runs, within=120)
        return [float(r[2]) - float(r[0]) for r in await _fetch(url, schema, _FIRST_RUNNING)]  # type: ignore[arg-type]
    finally:
        workers.stop()
        await _drop(dsn, schema)


async def takeover(dsn: str, workdir: Path) -> list[float]:
    """SIGKILL of a worker → each of its runs resumed by another worker (seconds)."""
    url, schema = await _fresh(dsn)
    workers = _Workers(url, workdir)
    try:
        first = workers.spawn()
        await workers.ready(first)
        async with ckflow.Engine(store=url) as engine:
            for _ in range(SLOW):
                await engine.submit("s10-slow")
        running = "SELECT count(*) FROM ckflow_runs WHERE state = 'RUNNING' AND owner IS NOT NULL"
        while True:
            if (await _fetch(url, schema, running))[0][0] >= SLOW:
                break
            await asyncio.sleep(0.05)
        await workers.ready(workers.spawn())
        first.send_signal(signal.SIGKILL)
        killed = time.time()
        first.wait()
        resumed = (
            "SELECT min((body::json->>'wall')::float8) FROM ckflow_events WHERE body::json->>'name' = "
            "'ckflow.run.resumed' AND (body::json->>'wall')::float8 > $1 GROUP BY run_id"
        )
        deadline = time.monotonic() + 60
        while True:
            rows = await _fetch(url, schema, resumed, killed)
            if len(rows) >= SLOW or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        return [float(r[0]) - killed for r in rows]  # type: ignore[arg-type]
    finally:
        workers.stop()
        await _drop(dsn, schema)


def run(quick: bool = False) -> Table:
    dsn = os.environ.get(DSN_ENV, DEFAULT_DSN)
    runs = 1_000 if quick else 10_000
    rounds = 1 if quick else 3
    table = Table(
        f"S10 — workers on PostgreSQL: {runs:,} submitted runs of {TASKS} no-op tasks (median (min–max) over "
        f"{rounds} round{'s' if rounds > 1 else ''})",
        ["measure", "ckflow"],
    )
    why = asyncio.run(_postgres_unavailable(dsn))
    if why is not None:
        table.add("skipped", why)
        return table
    with tempfile.TemporaryDirectory(prefix="ckflow-bench-s10-") as tmp:
        workdir = Path(tmp)
        rates = {n: Stat([asyncio.run(throughput(dsn, workdir, runs, n)) for _ in range(rounds)]) for n in (1, 2)}
        latencies = asyncio.run(pickup(dsn, workdir, 200 if quick else 500))
        taken = asyncio.run(takeover(dsn, workdir))
    for n, rate in rates.items():
        table.add(f"runs/s, {n} worker process{'es' if n > 1 else ''} ({CONCURRENCY} runs at once each)", rate.fmt(0))
    p50, p99 = percentile(latencies, 50) * 1e3, percentile(latencies, 99) * 1e3
    table.add(
        f"submit → first task started, p50 / p99 (ms), {len(latencies)} runs one at a time", f"{p50:.1f} / {p99:.1f}"
    )
    table.add(
        f"takeover after SIGKILL, p50 / max (ms), {len(taken)} runs",
        f"{percentile(taken, 50) * 1e3:.0f} / {max(taken) * 1e3:.0f}" if taken else "none taken over",
    )
    table.target("S10 submit → first task p50 ≤ 5 ms", p50 <= 5, f"{p50:.1f} ms")
    table.target("S10 submit → first task p99 ≤ 50 ms", p99 <= 50, f"{p99:.1f} ms")
    table.target("S10 ≥ 5× DBOS queues and procrastinate", None, "peers not measured yet")
    table.notes.append(
        f"Server {_public(dsn)} (env {DSN_ENV}), over loopback; each measure on a fresh schema. Workers are "
        f"`ckflow worker` processes with their defaults but --concurrency {CONCURRENCY}; the runs are submitted by "
        "`engine.submit` from this process before the workers start (throughput), or one every 5 ms to an idle worker "
        "(latency). Times come from the store: a run's created_at, its events' wall times, its ended_at."
    )
    return table
