"""A process that starts a durable run and waits inside its second task, to be killed (``tests/test_recovery.py``).

Usage: ``python -m tests.recovery_worker STORE_URL LEDGER``. The engine holds a lease of a minute; the
process prints ``ready`` once the second task runs, and waits there for its SIGKILL. Every execute appends
``pid task`` to LEDGER, fsynced, so the test sees which process ran what.
"""

from __future__ import annotations

import os
import sys

import anyio

import ckflow
from ckflow import Engine, Linear, task

NAME = "recovery-worker"
#: long enough that only the dead-process check, not a lapse, can let another engine take the run
LEASE_TTL = 60.0


def note(ledger: str, what: str) -> None:
    """Append ``pid what`` to ``ledger`` and fsync it, so that the line outlives a SIGKILL right after."""
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{os.getpid()} {what}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def build(ledger: str, *, block: bool) -> Linear:
    """``first -> second``; with ``block``, ``second`` says ``ready`` and waits forever."""

    @task(provides="a")
    async def first() -> int:
        note(ledger, "first")
        return 1

    @task
    async def second(a: int) -> int:
        note(ledger, "second")
        if block:
            print("ready", flush=True)
            await anyio.sleep_forever()
        return a + 1

    return Linear(NAME, first, second)


async def main(url: str, ledger: str) -> None:
    ckflow.register_flow(NAME, build(ledger, block=True))
    async with Engine(store=url, lease_ttl=LEASE_TTL) as engine:
        await (await engine.start(NAME, run_id="r")).wait()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2])
