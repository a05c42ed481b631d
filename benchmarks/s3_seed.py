"""S3: the seed case — A; then in parallel (i) Checkpoint(Retry 3) over B failing once, (ii) C sleeping 0.5 s."""

# The tables print typographic symbols (micro sign, en dash, times sign) on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

import asyncio
import time
from typing import Any

import ckflow
from benchmarks._harness import Stat, Table
from ckflow.testing import BenchReport, bench

C_SLEEP = 0.5


class _Probe:
    """Times written by the tasks themselves with time.monotonic()."""

    def __init__(self) -> None:
        self.attempts = 0
        self.fail_at: float | None = None
        self.revert_at: float | None = None
        self.retry_at: float | None = None

    def execute_b(self) -> None:
        self.attempts += 1
        now = time.monotonic()
        if self.attempts == 1:
            self.fail_at = now
            raise RuntimeError("B fails on its first attempt")
        if self.retry_at is None:
            self.retry_at = now

    def revert_b(self) -> None:
        if self.revert_at is None:
            self.revert_at = time.monotonic()


def build_ckflow(probe: _Probe | None = None) -> ckflow.Linear:
    """The seed case. With a probe, B fails its first attempt by itself and times itself; without one, B never
    fails by itself (``ckflow.testing.bench`` fails it, by ``inject_failures``)."""

    @ckflow.task(provides="a")
    async def a() -> int:
        return 1

    @ckflow.task(provides="b")
    async def b(a: int) -> int:
        if probe is not None:
            probe.execute_b()
        return a

    @b.revert
    async def _(result: object) -> None:
        if probe is not None:
            probe.revert_b()

    @ckflow.task(provides="c")
    async def c(a: int) -> int:
        await asyncio.sleep(C_SLEEP)
        return a

    return ckflow.Linear(
        "s3",
        a,
        ckflow.Parallel("p", ckflow.Linear("i", ckflow.Checkpoint("b", retry=ckflow.Retry(attempts=3)), b), c),
    )


async def bench_ckflow(runs: int) -> BenchReport:
    """ckflow's side, measured by ``ckflow.testing.bench``: ``runs`` runs without failures, then ``runs`` with
    B's first execution failed by injection, one at a time (the first phase warms up the second)."""
    report = await bench(build_ckflow(), runs=runs, concurrency=1, fail={"b": "first"})
    assert report.with_failures is not None
    assert report.with_failures.states == {"SUCCESS": runs}, report.with_failures.states
    assert report.touched_outside_region == []
    return report


async def run_ckflow_in_task() -> dict[str, float]:
    """The cross-check: B raises by itself, and the times are taken inside the tasks with time.monotonic()."""
    probe = _Probe()
    result = await ckflow.run(build_ckflow(probe))
    assert result.state == ckflow.FlowState.SUCCESS, result.state
    assert probe.fail_at is not None
    assert probe.revert_at is not None
    assert probe.retry_at is not None
    return {"revert_in_task": probe.revert_at - probe.fail_at, "retry_in_task": probe.retry_at - probe.fail_at}


def run_taskflow() -> dict[str, float]:
    from taskflow import engines, retry, task
    from taskflow.patterns import linear_flow, unordered_flow

    probe = _Probe()

    class A(task.Task):
        def execute(self):
            return 1

    class B(task.Task):
        def execute(self, a):
            probe.execute_b()
            return a

        def revert(self, *args: Any, **kwargs: Any) -> None:
            probe.revert_b()

    class C(task.Task):
        def execute(self, a):
            time.sleep(C_SLEEP)
            return a

    branch = linear_flow.Flow("i", retry=retry.Times(3, name="b_retry"))
    branch.add(B(name="b", provides="b"))
    flow = linear_flow.Flow("s3")
    flow.add(A(name="a", provides="a"), unordered_flow.Flow("p").add(branch, C(name="c", provides="c")))
    t0 = time.perf_counter()
    engines.run(flow, engine="parallel")
    makespan = time.perf_counter() - t0
    assert probe.fail_at is not None
    assert probe.revert_at is not None
    assert probe.retry_at is not None
    return {
        "revert": probe.revert_at - probe.fail_at,
        "retry": probe.retry_at - probe.fail_at,
        "makespan": makespan,
    }


async def run_sagaz() -> dict[str, float | None]:
    """sagaz has no checkpoint retry: B's failure waits for its level, then compensates the saga."""
    from sagaz import Saga

    fail_at: list[float] = []
    comp_at: list[float] = []

    async def a(ctx: dict) -> dict:
        return {"a": 1}

    async def comp_a(ctx: dict) -> None:
        comp_at.append(time.monotonic())

    async def b(ctx: dict) -> dict:
        fail_at.append(time.monotonic())
        raise RuntimeError("B fails on its first attempt")

    async def c(ctx: dict) -> dict:
        await asyncio.sleep(C_SLEEP)
        return {"c": 1}

    saga = Saga(name="s3")
    saga.add_step("a", a, comp_a)
    saga.add_step("b", b, comp_a, depends_on=["a"], max_retries=3)
    saga.add_step("c", c, depends_on=["a"])
    t0 = time.perf_counter()
    try:
        await saga.run({})
    except RuntimeError:
        pass
    makespan = time.perf_counter() - t0
    return {"revert": (comp_at[0] - fail_at[0]) if comp_at else None, "retry": None, "makespan": makespan}


def _stat(samples: list[dict[str, Any]], key: str) -> Stat | None:
    values = [s[key] for s in samples if s.get(key) is not None]
    return Stat(values) if values else None


def _ms(stat: Stat | None, digits: int = 3) -> str:
    return "—" if stat is None else stat.scaled(1e3).fmt(digits)


def run(quick: bool = False) -> Table:
    repeat = 3 if quick else 5
    table = Table(
        "S3 — seed case (milliseconds, median (min–max))",
        ["engine", "revert latency", "retry latency", "makespan"],
    )

    async def ck_all() -> tuple[BenchReport, list[dict[str, float]]]:
        report = await bench_ckflow(repeat)
        await run_ckflow_in_task()  # warm-up
        return report, [await run_ckflow_in_task() for _ in range(repeat)]

    report, ck = asyncio.run(ck_all())
    assert report.with_failures is not None
    revert = Stat(report.revert_latencies)
    makespan = Stat(report.with_failures.makespans)
    table.add(
        "ckflow (ckflow.testing.bench: B failed by inject_failures)",
        _ms(revert),
        _ms(Stat(report.retry_latencies)),
        _ms(makespan, 1),
    )
    table.add(
        "ckflow (B raises by itself; times taken in the tasks)",
        _ms(_stat(ck, "revert_in_task")),
        _ms(_stat(ck, "retry_in_task")),
        "—",
    )
    table.notes.append(
        f"ckflow's first row is `ckflow.testing.bench(flow, runs={repeat}, concurrency=1, fail={{'b': 'first'}})`: "
        "its latencies are RunResult.regions' (the clock points of the OpenTelemetry histograms) and its "
        "makespan each run's RunResult.duration; the same runs without the failure take "
        f"{_ms(Stat(report.without.makespans), 1)} ms. The second row times the same flow with B failing by "
        "itself, from inside B and its revert."
    )
    tf = [run_taskflow() for _ in range(repeat)]
    table.add(
        "TaskFlow parallel + retry.Times(3)",
        _ms(_stat(tf, "revert")),
        _ms(_stat(tf, "retry")),
        _ms(_stat(tf, "makespan"), 1),
    )
    try:
        import sagaz  # noqa: F401
    except ImportError:
        table.notes.append("sagaz not installed: skipped.")
    else:
        sg = [asyncio.run(run_sagaz()) for _ in range(repeat)]
        table.add(
            "sagaz 1.5 (no retry: fails and compensates)",
            _ms(_stat(sg, "revert")),
            "— (no region retry)",
            _ms(_stat(sg, "makespan"), 1),
        )
        table.notes.append(
            "sagaz runs steps level by level with asyncio.gather and has no checkpoint/region retry "
            "(max_retries applies to compensations): B's failure waits for C's level to finish, then the "
            "whole saga is compensated and fails. Its 'revert latency' is B's failure → first compensation."
        )
    table.target("S3 revert latency median ≤0.10 ms", revert.median <= 0.10e-3, f"{revert.median * 1e3:.3f} ms")
    in_task = _stat(ck, "revert_in_task")
    assert in_task is not None
    table.target(
        "S3 revert latency ≤0.10 ms, measured inside the tasks (B raises → B's revert body runs)",
        in_task.median <= 0.10e-3,
        f"{in_task.median * 1e3:.3f} ms; both clocks start when B raises; B's failure is logged at WARNING "
        "(a JSON line) once its revert has started",
    )
    table.target("S3 makespan ≤0.51 s", makespan.median <= 0.51, f"{makespan.median:.4f} s (median)")
    return table
