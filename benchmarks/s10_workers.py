"""S10: workers on PostgreSQL (``ckflow worker`` processes) running submitted runs of 5 no-op tasks, beside DBOS
queues and procrastinate (``s10_peers``) when they are installed.

Three measurements, each on a fresh schema of the server for ckflow and a fresh database for each peer (dropped
after it); the first two for each system, the third for ckflow:

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
import functools
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import ckflow
from benchmarks._harness import Stat, Table, percentile
from benchmarks.s5_stores import DEFAULT_DSN, DSN_ENV, _postgres_unavailable, _public, _with_query, _without_query

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

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
    """Worker processes (``command``) on one store, their output in files of ``workdir``."""

    def __init__(self, command: list[str], workdir: Path) -> None:
        self.command = command
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self) -> subprocess.Popen[bytes]:
        log = self.workdir / f"worker-{uuid.uuid4().hex[:8]}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(self.command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        proc.log = log  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    async def ready(self, proc: subprocess.Popen[bytes]) -> None:
        """Wait until the worker says it claims (its store is open, its listener on)."""
        log: Path = proc.log  # type: ignore[attr-defined]
        deadline = time.monotonic() + 60
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


async def _admin(dsn: str, statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(_without_query(dsn, "schema"), timeout=5)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def _fetch(url: str, query: str, *args: object) -> list[tuple[object, ...]]:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return [tuple(row) for row in await conn.fetch(query, *args)]
    finally:
        await conn.close()


@dataclass
class _System:
    """How to measure one system: where it keeps its runs, how to submit them, its workers, and its times."""

    name: str
    #: (the URL its code is given, the asyncpg URL of its tables)
    urls: tuple[str, str]
    worker: list[str]
    #: submit ``n`` runs, ``gap`` seconds apart
    submit: Callable[[int, float], Awaitable[None]]
    #: rows of (submitted, ended, first step started), epoch seconds, one per ended run
    times: str
    #: prepare the store (its schema), with no worker running afterwards
    setup: Callable[[_Workers], Awaitable[None]]
    drop: Callable[[], Awaitable[None]]


def _ckflow(dsn: str) -> _System:
    schema = f"ckflow_bench_s10_{uuid.uuid4().hex[:10]}"
    url = _with_query(dsn, schema=schema)
    plain = _with_query(_without_query(dsn, "schema"), search_path=schema)  # asyncpg: a server setting

    async def submit(n: int, gap: float) -> None:
        async with ckflow.Engine(store=url) as engine:
            for _ in range(n):
                await engine.submit("s10")
                if gap:
                    await asyncio.sleep(gap)

    async def setup(workers: _Workers) -> None:
        async with ckflow.Engine(store=url):
            pass

    command = [
        sys.executable, "-m", "ckflow", "worker", "--store", url, "--import", "benchmarks.s10_workers",
        "--concurrency", str(CONCURRENCY), "--grace", "5",
    ]  # fmt: skip
    return _System(
        "ckflow",
        (url, plain),
        command,
        submit,
        _CKFLOW_TIMES,
        setup,
        lambda: _admin(dsn, f'DROP SCHEMA "{schema}" CASCADE'),
    )


def _database(dsn: str, peer: str) -> tuple[str, str, Callable[[], Awaitable[None]]]:
    name = f"ckflow_s10_{peer}_{uuid.uuid4().hex[:8]}"
    base = _without_query(dsn, "schema")
    url = base.rsplit("/", 1)[0] + "/" + name
    return name, url, lambda: _admin(dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _dbos(dsn: str) -> _System:
    from benchmarks import s10_peers

    name, url, drop = _database(dsn, "dbos")

    async def setup(workers: _Workers) -> None:
        await _admin(dsn, f'CREATE DATABASE "{name}"')
        first = workers.spawn()  # DBOS migrates its system database when it launches
        await workers.ready(first)
        workers.stop()

    async def submit(n: int, gap: float) -> None:
        await asyncio.to_thread(s10_peers.dbos_enqueue, url, n, gap)

    command = [sys.executable, "-m", "benchmarks.s10_peers", "dbos", url]
    return _System("DBOS queues", (url, url), command, submit, s10_peers.DBOS_TIMES, setup, drop)


def _procrastinate(dsn: str) -> _System:
    from benchmarks import s10_peers

    name, url, drop = _database(dsn, "procrastinate")

    async def setup(workers: _Workers) -> None:
        await _admin(dsn, f'CREATE DATABASE "{name}"')
        await s10_peers.procrastinate_setup(url)

    async def submit(n: int, gap: float) -> None:
        await s10_peers.procrastinate_defer(url, n, gap)

    command = [sys.executable, "-m", "benchmarks.s10_peers", "procrastinate", url]
    return _System("procrastinate", (url, url), command, submit, s10_peers.PROCRASTINATE_TIMES, setup, drop)


_CKFLOW_TIMES = (
    "SELECT r.created_at, r.ended_at, (SELECT (e.body::json->>'wall')::float8 FROM ckflow_events e "
    "WHERE e.run_id = r.run_id AND e.body::json->>'name' = 'ckflow.task.running' ORDER BY e.seq LIMIT 1) "
    "FROM ckflow_runs r WHERE r.ended_at IS NOT NULL"
)


async def _wait_ended(system: _System, runs: int, within: float) -> list[tuple[float, float, float]]:
    deadline = time.monotonic() + within
    while True:
        rows = await _fetch(system.urls[1], system.times)
        if len(rows) >= runs:
            return [(float(a), float(b), float(c)) for a, b, c in rows]  # type: ignore[arg-type]
        if time.monotonic() > deadline:
            raise RuntimeError(f"{system.name}: only {len(rows)} of {runs} runs ended within {within} s")
        await asyncio.sleep(0.2)


async def throughput(make: Callable[[], _System], workdir: Path, runs: int, n_workers: int) -> float:
    """Runs/s of ``n_workers`` worker processes over ``runs`` runs queued beforehand."""
    system = make()
    workers = _Workers(system.worker, workdir)
    try:
        await system.setup(workers)
        await system.submit(runs, 0.0)
        for _ in range(n_workers):
            workers.spawn()
        rows = await _wait_ended(system, runs, within=900)
        return runs / (max(r[1] for r in rows) - min(r[2] for r in rows))
    finally:
        workers.stop()
        await system.drop()


async def pickup(make: Callable[[], _System], workdir: Path, runs: int) -> list[float]:
    """Submit → first step started (seconds) of runs submitted one every 5 ms to an idle worker."""
    system = make()
    workers = _Workers(system.worker, workdir)
    try:
        await system.setup(workers)
        await workers.ready(workers.spawn())
        await system.submit(runs, 0.005)
        return [r[2] - r[0] for r in await _wait_ended(system, runs, within=300)]
    finally:
        workers.stop()
        await system.drop()


async def takeover(dsn: str, workdir: Path) -> list[float]:
    """SIGKILL of a ckflow worker → each of its runs resumed by another worker (seconds)."""
    system = _ckflow(dsn)
    url, plain = system.urls
    workers = _Workers(system.worker, workdir)
    try:
        await system.setup(workers)
        first = workers.spawn()
        await workers.ready(first)
        async with ckflow.Engine(store=url) as engine:
            for _ in range(SLOW):
                await engine.submit("s10-slow")
        running = "SELECT count(*) FROM ckflow_runs WHERE state = 'RUNNING' AND owner IS NOT NULL"
        while True:
            if (await _fetch(plain, running))[0][0] >= SLOW:  # type: ignore[operator]
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
            rows = await _fetch(plain, resumed, killed)
            if len(rows) >= SLOW or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        return [float(r[0]) - killed for r in rows]  # type: ignore[arg-type]
    finally:
        workers.stop()
        await system.drop()


def run(quick: bool = False) -> Table:
    dsn = os.environ.get(DSN_ENV, DEFAULT_DSN)
    runs = 1_000 if quick else 10_000
    rounds = 1 if quick else int(os.environ.get("CKFLOW_BENCH_S10_ROUNDS", "3"))
    singles = 200 if quick else 500
    makers: dict[str, Callable[[], _System]] = {"ckflow": lambda: _ckflow(dsn)}
    missing: list[str] = []
    for peer, module, make in (("DBOS queues", "dbos", _dbos), ("procrastinate", "procrastinate", _procrastinate)):
        if importlib.util.find_spec(module) is None:
            missing.append(f"{peer} (not installed: the `bench` extra)")
        else:
            makers[peer] = functools.partial(make, dsn)
    table = Table(
        f"S10 — workers on PostgreSQL: {runs:,} submitted runs of {TASKS} no-op steps (median (min–max) over "
        f"{rounds} round{'s' if rounds > 1 else ''})",
        ["measure", *makers],
    )
    why = asyncio.run(_postgres_unavailable(dsn))
    if why is not None:
        table.add("skipped", why)
        return table
    rates: dict[str, dict[int, Stat]] = {name: {} for name in makers}
    picked: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="ckflow-bench-s10-") as tmp:
        workdir = Path(tmp)
        for n in (1, 2):
            samples: dict[str, list[float]] = {name: [] for name in makers}
            for _ in range(rounds):
                for name, make in makers.items():  # side by side within each round
                    samples[name].append(asyncio.run(throughput(make, workdir, runs, n)))
            for name in makers:
                rates[name][n] = Stat(samples[name])
        for name, make in makers.items():
            picked[name] = asyncio.run(pickup(make, workdir, singles))
        taken = asyncio.run(takeover(dsn, workdir))
    for n in (1, 2):
        label = f"runs/s, {n} worker process{'es' if n > 1 else ''} ({CONCURRENCY} runs at once each)"
        table.add(label, *(rates[name][n].fmt(0) for name in makers))
    table.add(
        f"submit → first step started, p50 / p99 (ms), {singles} runs one every 5 ms",
        *(f"{percentile(v, 50) * 1e3:.1f} / {percentile(v, 99) * 1e3:.1f}" for v in picked.values()),
    )
    table.add(
        f"takeover after SIGKILL, p50 / max (ms), {len(taken)} runs",
        f"{percentile(taken, 50) * 1e3:.0f} / {max(taken) * 1e3:.0f}" if taken else "none taken over",
        *("not measured" for _ in list(makers)[1:]),
    )
    p50, p99 = percentile(picked["ckflow"], 50) * 1e3, percentile(picked["ckflow"], 99) * 1e3
    table.target("S10 submit → first task p50 ≤ 5 ms", p50 <= 5, f"{p50:.1f} ms")
    table.target("S10 submit → first task p99 ≤ 50 ms", p99 <= 50, f"{p99:.1f} ms")
    peers = [name for name in makers if name != "ckflow"]
    if peers:
        ratios = {name: min(rates["ckflow"][n].median / rates[name][n].median for n in (1, 2)) for name in peers}
        table.target(
            "S10 ≥ 5× DBOS queues and procrastinate (runs/s, the lower of 1 and 2 workers)",
            all(r >= 5 for r in ratios.values()),
            ", ".join(f"{name}: {r:.1f}×" for name, r in ratios.items()),
        )
    if missing:
        table.notes.append("Not measured: " + "; ".join(missing) + ".")
    table.notes.append(
        f"Server {_public(dsn)} (env {DSN_ENV}), over loopback; ckflow on a fresh schema, each peer in a fresh "
        f"database. Workers run with their defaults but {CONCURRENCY} runs at once: `ckflow worker`, DBOS "
        "(`register_queue(worker_concurrency=50)`, which polls its queue every second by default), procrastinate "
        "(`run_worker_async(concurrency=50)`, LISTEN/NOTIFY). Throughput: the runs are submitted before the workers "
        "start; runs/s = runs ÷ (first step started → last run ended). Latency: runs submitted one every 5 ms to "
        "one idle worker. Times come from each system's own tables (ckflow: created_at, event wall times, "
        "ended_at; DBOS: workflow created_at, step started_at_epoch_ms, updated_at; procrastinate: its events). "
        "procrastinate has no workflows: a run is a chain of 5 jobs, each deferring the next."
    )
    return table
