"""S6: peak RSS per task for a Parallel of N no-op tasks, each size in a fresh process."""

# The tables print typographic symbols (micro sign, en dash, times sign) on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

from benchmarks._harness import Stat, Table

TARGET = 1024  # bytes per task


def _peak_kib() -> int:
    """This process's peak RSS in KiB.

    VmHWM from /proc where there is one: on Linux ``ru_maxrss`` survives fork and
    exec, so a child of a benchmark process that has grown to hundreds of MB
    starts with the parent's peak and would report nothing.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _child(kind: str, n: int) -> dict[str, float]:
    """Runs in the fresh process: baseline after imports, then build and run, then peak."""
    import ckflow

    if kind == "taskflow":
        from taskflow import engines, task
        from taskflow.patterns import unordered_flow

        class Noop(task.Task):
            def execute(self):
                return 0

    @ckflow.task
    async def noop() -> int:
        return 0

    async def coro() -> int:
        return 0

    async def floor() -> None:
        async with asyncio.TaskGroup() as tg:
            for _ in range(n):
                tg.create_task(coro())

    base = _peak_kib()
    if kind == "ckflow":
        flow = ckflow.Parallel("s6", *(noop.with_options(name=f"t{i}", provides=f"v{i}") for i in range(n)))
        result = asyncio.run(ckflow.run(flow))
        assert result.state == ckflow.FlowState.SUCCESS
    elif kind == "floor":
        asyncio.run(floor())
    else:
        tf = unordered_flow.Flow("s6")
        for i in range(n):
            tf.add(Noop(name=f"t{i}", provides=f"v{i}"))
        engines.run(tf, engine="serial")
    peak = _peak_kib()
    return {"base_kib": base, "peak_kib": peak, "per_task": (peak - base) * 1024 / n}


def measure(kind: str, n: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.s6_memory", kind, str(n)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> Table:
    repeat = 3 if quick else 5
    sizes = (10_000,) if quick else (10_000, 100_000)
    table = Table(
        "S6 — peak RSS per task, Parallel of N no-op tasks, fresh process each (bytes per task, median (min–max))",
        ["N", "ckflow", "asyncio floor (N tasks in a TaskGroup)", "ckflow − floor", "TaskFlow serial"],
    )
    verdict: list[tuple[int, float]] = []
    for n in sizes:
        ck = Stat([measure("ckflow", n)["per_task"] for _ in range(repeat)])
        fl = Stat([measure("floor", n)["per_task"] for _ in range(repeat)])
        table.add(f"{n:,}", ck.fmt(0), fl.fmt(0), f"{ck.median - fl.median:,.0f}", "—")
        verdict.append((n, ck.median))
    if not quick:
        # TaskFlow builds 10,000 tasks in ~20 s; 1,000 keeps the run short.
        tf = Stat([measure("taskflow", 1_000)["per_task"] for _ in range(2)])
        table.add("1,000", "—", "—", "—", tf.fmt(0) + " (2 runs)")
    worst = max(v for _, v in verdict)
    table.target("S6 ≤1 KiB per task", worst <= TARGET, ", ".join(f"N={n:,}: {v:,.0f} B" for n, v in verdict))
    table.notes.append(
        "Baseline = peak RSS (VmHWM) after imports, before the flow is built; peak includes building the flow. "
        "ru_maxrss is not used: on Linux it carries the parent's peak across fork/exec."
    )
    return table


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1], int(sys.argv[2]))))
