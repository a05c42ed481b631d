"""S1: Linear of N no-op tasks, each consuming the previous output."""

# The tables print typographic symbols (micro sign, en dash, times sign) on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

import asyncio
import time

import ckflow
from benchmarks._harness import Stat, Table, by_logging, measure, measure_async, time_ckflow_run


@ckflow.task(provides="v0")
async def _first() -> int:
    return 0


@ckflow.task
async def _step(x: int) -> int:
    return x


def build_ckflow(n: int) -> ckflow.Linear:
    tasks = [_first.with_options(name="t0")]
    tasks += [_step.with_options(name=f"t{i}", provides=f"v{i}", rebind={"x": f"v{i - 1}"}) for i in range(1, n)]
    return ckflow.Linear("s1", *tasks)


async def _noop(x: int) -> int:
    return x


async def floor(n: int) -> float:
    """Await N trivial coroutines in turn, each wrapped in a task."""
    t0 = time.perf_counter()
    x = 0
    for _ in range(n):
        x = await asyncio.create_task(_noop(x))
    return time.perf_counter() - t0


def build_taskflow(n: int):
    from taskflow import task
    from taskflow.patterns import linear_flow

    class Step(task.Task):
        def execute(self, x):
            return x

    flow = linear_flow.Flow("s1")
    for i in range(n):
        flow.add(Step(name=f"t{i}", provides=f"v{i}", rebind={"x": f"v{i - 1}" if i else "start"}))
    return flow


def run_taskflow(n: int, engine: str) -> float:
    from taskflow import engines

    flow = build_taskflow(n)
    t0 = time.perf_counter()
    engines.run(flow, engine=engine, store={"start": 0})
    return time.perf_counter() - t0


async def run_ckflow(n: int, precompiled: bool = False) -> float:
    flow = build_ckflow(n)
    if precompiled:
        flow.compile()
    return await time_ckflow_run(flow)


def run(quick: bool = False) -> Table:
    sizes = (100, 1_000) if quick else (100, 1_000, 10_000)
    tf_sizes = (100,) if quick else (100, 1_000)
    table = Table(
        "S1 — Linear of N no-op tasks (µs per task, median (min–max))",
        [
            "N",
            "ckflow",
            "asyncio floor",
            "ckflow / floor",
            "ckflow, compiled beforehand",
            "TaskFlow serial",
            "TaskFlow parallel",
            "TaskFlow serial / ckflow",
        ],
    )
    results: dict[int, tuple[Stat, Stat]] = {}
    for n in sizes:
        ck = asyncio.run(measure_async(lambda n=n: run_ckflow(n))).scaled(1e6 / n)
        fl = asyncio.run(measure_async(lambda n=n: floor(n))).scaled(1e6 / n)
        pre = asyncio.run(measure_async(lambda n=n: run_ckflow(n, precompiled=True))).scaled(1e6 / n)
        results[n] = (ck, fl)
        tf_cells = ["—", "—", "—"]
        if n in tf_sizes:
            # TaskFlow costs ~15 ms per task at N = 1,000: 3 repeats there keep the run short.
            rep = 5 if n <= 100 else 3
            tfs = measure(lambda n=n: run_taskflow(n, "serial"), repeat=rep, warmup=0).scaled(1e6 / n)
            tfp = measure(lambda n=n: run_taskflow(n, "parallel"), repeat=rep, warmup=0).scaled(1e6 / n)
            tf_cells = [tfs.fmt(0), tfp.fmt(0), f"{tfs.median / ck.median:,.0f}×"]
            if n == 1_000:
                best = min(tfs.median, tfp.median)
                table.target(
                    "S1 ≥500× faster than TaskFlow at N=1,000",
                    best / ck.median >= 500,
                    f"{best / ck.median:,.0f}× (best TaskFlow engine, {rep} repeats)",
                )
        table.add(
            f"{n:,}",
            ck.fmt(2),
            fl.fmt(2),
            f"{ck.median / fl.median:.2f}×",
            f"{pre.fmt(2)} = {pre.median / fl.median:.2f}× floor",
            *tf_cells,
        )
    if 10_000 in results:
        ck, fl = results[10_000]
        ratio = ck.median / fl.median
        table.target(
            "S1 ≤2× floor at N=10,000", ratio <= 2, f"{ratio:.2f}× (compile included in the run, as for TaskFlow)"
        )
    table.notes.append(
        "'ckflow' times ckflow.run(flow) on a freshly built flow, so compile is included (TaskFlow's "
        "engines.run compiles too); 'compiled beforehand' calls flow.compile() outside the timer."
    )
    table.more.append(by_logging("S1", run_ckflow, floor, quick))
    return table
