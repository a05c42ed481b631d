"""The flow of the worker chaos test (tests/test_worker_chaos.py), registered as ``chaos`` on import.

``ckflow worker --import tests.chaos_flow`` processes run it. Every execute and revert appends a line to
a ledger file of its own process (``$CKFLOW_CHAOS_LEDGER/<pid>.log``):
``wall-time kind run task attempt pid``, kind ``start``, ``end`` (returned), ``fail`` (raised) or
``revert``. Lines are written with one ``os.write`` on an ``O_APPEND`` descriptor, so a SIGKILL never
loses a line that was written nor tears one.

A run's input ``k`` decides its fate, deterministically by attempt under checkpoint ``cp`` (``Retry(3)``):
``b`` fails on its first attempt when k % 3 == 0, on its first two when k % 5 == 0 (so it succeeds on the
third: a retry counted twice would exhaust it), and on every attempt when k % 7 == 0 (the run ends
REVERTED, ``a`` reverted).
"""

from __future__ import annotations

import os
import time

import anyio

import ckflow
from ckflow import Checkpoint, Linear, Retry, task

__all__ = ["expected", "fails", "flow"]


def _note(kind: str, name: str) -> None:
    ctx = ckflow.current()
    line = f"{time.time():.6f} {kind} {ctx.run_id} {name} {ctx.attempt} {os.getpid()}\n"
    fd = os.open(
        os.path.join(os.environ["CKFLOW_CHAOS_LEDGER"], f"{os.getpid()}.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT
    )
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def fails(k: int, attempt: int) -> bool:
    """Whether ``b`` fails on ``attempt`` for a run of input ``k``."""
    return k % 7 == 0 or (k % 5 == 0 and attempt <= 2) or (k % 3 == 0 and attempt == 1)


def expected(k: int) -> str:
    """The state a run of input ``k`` ends in."""
    return "REVERTED" if k % 7 == 0 else "SUCCESS"


async def _work(k: int) -> None:
    await anyio.sleep(0.05 + (k % 4) * 0.02)


@task(provides="x")
async def a(k: int) -> int:
    _note("start", "a")
    await _work(k)
    _note("end", "a")
    return k


@a.revert
async def _(k: int, result: object) -> None:
    _note("revert", "a")


@task(provides="y")
async def b(x: int) -> int:
    _note("start", "b")
    await _work(x)
    if fails(x, ckflow.current().attempt):
        _note("fail", "b")
        raise RuntimeError(f"b fails for k={x} on attempt {ckflow.current().attempt}")
    _note("end", "b")
    return x


@task
async def c(y: int) -> int:
    _note("start", "c")
    await _work(y)
    _note("end", "c")
    return y


def flow() -> Linear:
    """``a``, then under checkpoint ``cp`` (three attempts) ``b`` and ``c``."""
    return Linear("chaos", a, Checkpoint("cp", retry=Retry(attempts=3)), b, c)


ckflow.register_flow("chaos", flow)
