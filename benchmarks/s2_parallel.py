"""S2: Parallel of N no-op tasks."""

# The tables print typographic symbols (micro sign, en dash, times sign) on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

import asyncio
import time

import ckflow
from benchmarks._harness import Table, by_logging, measure, measure_async, time_ckflow_run


@ckflow.task
async def _noop() -> int:
    return 0


def build_ckflow(n: int) -> ckflow.Parallel:
    return ckflow.Parallel("s2", *(_noop.with_options(name=f"t{i}", provides=f"v{i}") for i in range(n)))


async def _coro() -> int:
    return 0


async def floor(n: int) -> float:
    """N tasks in one asyncio.TaskGroup."""
    t0 = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for _ in range(n):
            tg.create_task(_coro())
    return time.perf_counter() - t0


def run_taskflow(n: int, engine: str) -> float:
    from taskflow import engines, task
    from taskflow.patterns import unordered_flow

    class Noop(task.Task):
        def execute(self):
            return 0

    flow = unordered_flow.Flow("s2")
    for i in range(n):
        flow.add(Noop(name=f"t{i}", provides=f"v{i}"))
    t0 = time.perf_counter()
    engines.run(flow, engine=engine)
    return time.perf_counter() - t0


async def run_ckflow(n: int) -> float:
    return await time_ckflow_run(build_ckflow(n))


def run(quick: bool = False) -> Table:
    sizes = (100, 1_000) if quick else (100, 1_000, 10_000)
    tf_sizes = (100,) if quick else (100, 1_000)
    table = Table(
        "S2 — Parallel of N no-op tasks (µs per task, median (min–max))",
        [
            "N",
            "ckflow",
            "asyncio floor",
            "ckflow / floor",
            "TaskFlow serial",
            "TaskFlow parallel",
            "TaskFlow parallel / ckflow",
        ],
    )
    for n in sizes:
        ck = asyncio.run(measure_async(lambda n=n: run_ckflow(n))).scaled(1e6 / n)
        fl = asyncio.run(measure_async(lambda n=n: floor(n))).scaled(1e6 / n)
        tf_cells = ["—", "—", "—"]
        if n in tf_sizes:
            tfs = measure(lambda n=n: run_taskflow(n, "serial"), warmup=0).scaled(1e6 / n)
            tfp = measure(lambda n=n: run_taskflow(n, "parallel"), warmup=0).scaled(1e6 / n)
            tf_cells = [tfs.fmt(0), tfp.fmt(0), f"{tfp.median / ck.median:,.0f}×"]
        table.add(f"{n:,}", ck.fmt(2), fl.fmt(2), f"{ck.median / fl.median:.2f}×", *tf_cells)
        if n == 10_000:
            ratio = ck.median / fl.median
            table.target("S2 ≤2× floor at N=10,000", ratio <= 2, f"{ratio:.2f}×")
    table.more.append(by_logging("S2", run_ckflow, floor, quick))
    return table
