"""A flow for tests/test_cli_bench.py, registered by name so that `ckflow bench --import tests.bench_flows` finds it.

``bench-seed`` is the seed case: ``a``; then, in parallel, ``b`` under a checkpoint that retries it twice more,
and ``c`` directly under the root (a failure of ``c`` reverts the whole run).
"""

from __future__ import annotations

import anyio

import ckflow
from ckflow import Checkpoint, Linear, Parallel, Retry, task


def build_seed() -> ckflow.Linear:
    """a -> (checkpoint "cp" with Retry(3): b) beside c."""

    @task(provides="x")
    async def a(start: int = 0) -> int:
        return start + 1

    @task
    async def b(x: int) -> None:
        await anyio.lowlevel.checkpoint()

    @b.revert
    async def _(x: int, result: object) -> None:
        pass

    @task
    async def c(x: int) -> None:
        await anyio.lowlevel.checkpoint()

    return Linear("bench-seed", a, Parallel("p", Linear("lb", Checkpoint("cp", retry=Retry(attempts=3)), b), c))


ckflow.register_flow("bench-seed", build_seed)
