"""DBOS as the peer of S5 and S8, in a process of its own: ``python -m benchmarks._dbos_peer MODE URL SIZE``.

DBOS is one object per process (``DBOS(config=...)``, ``DBOS.launch()``), so each measurement runs in a fresh
interpreter against the system database at URL (a SQLite file or a PostgreSQL database), called by the
scenario once per round so that DBOS alternates with ckflow's stores. After a warm-up of ``WARMUP`` steps (or
workflows) it times one and prints one JSON line ``{"wall": seconds, "latencies": [seconds, ...]}``:

- ``linear``: S5's shape, a workflow of SIZE ``@DBOS.step`` calls in turn, each consuming the previous one's
  output (DBOS checkpoints each step's output before the next starts, as ckflow commits each task's result);
  a wall is ``DBOS.start_workflow`` → ``get_result()`` returning.
- ``concurrent``: S8's shape, SIZE workflows of 3 such steps started one after the other in one event loop
  (``await DBOS.start_workflow_async``, async steps), a task per workflow awaiting its result; a wall is the
  first start → the last end, a latency a workflow's start → its result.

DBOS logs at INFO by default: its ``log_level`` is set to CRITICAL, as the other peers' loggers are raised.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

STEPS_PER_RUN = 3
_H = TypeVar("_H")
#: the warm-up before the timed round, in the same process: a workflow of this many steps, or this many workflows
WARMUP = 50
ROOT = Path(__file__).resolve().parent.parent
#: DBOS's system database on the PostgreSQL server, dropped and created again for each measurement
DATABASE = "ckflow_bench_dbos_peer"
#: a peer that takes longer than this is reported as failed, not waited for
LIMIT = 900.0


async def start_all(
    start: Callable[[], Awaitable[_H]], finish: Callable[[_H], Awaitable[None]], n: int
) -> tuple[float, list[float]]:
    """S8's shape, for ckflow and for DBOS alike: ``start()`` ``n`` times one after the other, a task per
    started one awaiting ``finish(handle)`` (created as soon as it has started), then await them all.

    Returns the wall time from the first start to the last end, and each one's latency: from just before its
    ``start()`` to its ``finish`` returning.
    """
    latencies = [0.0] * n
    last_end = 0.0

    async def watch(i: int, handle: _H, started: float) -> None:
        nonlocal last_end
        await finish(handle)
        ended = time.perf_counter()
        latencies[i] = ended - started
        last_end = max(last_end, ended)

    first = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for i in range(n):
            started = time.perf_counter()
            handle = await start()
            tg.create_task(watch(i, handle, started))
    return last_end - first, latencies


async def fresh_database(dsn: str, name: str) -> str:
    """Drop the database ``name`` on the server of ``dsn`` and create it again; returns its URL."""
    import asyncpg

    server = urlunsplit(urlsplit(dsn)._replace(query=""))
    conn = await asyncpg.connect(server, timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return urlunsplit(urlsplit(server)._replace(path=f"/{name}"))


async def once(mode: str, url: str, size: int) -> dict[str, Any]:
    """One measurement of DBOS in a fresh process (its warm-up included): the peer process's JSON."""
    return await asyncio.to_thread(_peer, mode, url, size)


def unavailable() -> str | None:
    """None if DBOS can run here, else why not (for a "skipped" row)."""
    try:
        import dbos  # noqa: F401  (checks that DBOS is there without launching it)
    except ImportError:
        return "DBOS is not installed (pip install -e '.[bench]')"
    return None


def _peer(mode: str, url: str, size: int) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks._dbos_peer", mode, url, str(size)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=LIMIT, check=False)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"the DBOS peer failed (exit {done.returncode}): {tail[0]}")
    got: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return got


def _dbos(url: str) -> Any:
    from dbos import DBOS

    DBOS(config={"name": "ckflow-bench-peer", "system_database_url": url, "log_level": "CRITICAL"})
    return DBOS


def linear(url: str, size: int) -> dict[str, Any]:
    dbos = _dbos(url)

    @dbos.step(name="s5_step")
    def step(x: int) -> int:
        return x + 1

    @dbos.workflow(name="s5_linear")
    def flow(n: int) -> int:
        x = 0
        for _ in range(n):
            x = step(x)
        return x

    dbos.launch()
    assert dbos.start_workflow(flow, WARMUP).get_result() == WARMUP
    t0 = time.perf_counter()
    assert dbos.start_workflow(flow, size).get_result() == size
    wall = time.perf_counter() - t0
    dbos.destroy()
    return {"wall": wall, "latencies": []}


def concurrent(url: str, size: int) -> dict[str, Any]:
    dbos = _dbos(url)

    @dbos.step(name="s8_step")
    async def step(x: int) -> int:
        return x + 1

    @dbos.workflow(name="s8_small")
    async def flow() -> int:
        x = 0
        for _ in range(STEPS_PER_RUN):
            x = await step(x)
        return x

    async def finish(handle: Any) -> None:
        assert await handle.get_result() == STEPS_PER_RUN

    async def one_round(size: int) -> tuple[float, list[float]]:
        return await start_all(lambda: dbos.start_workflow_async(flow), finish, size)

    async def main() -> dict[str, Any]:
        await one_round(WARMUP)
        wall, latencies = await one_round(size)
        return {"wall": wall, "latencies": latencies}

    dbos.launch()
    try:
        return asyncio.run(main())
    finally:
        dbos.destroy()


if __name__ == "__main__":
    mode, url, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    print(json.dumps((linear if mode == "linear" else concurrent)(url, size)), flush=True)
