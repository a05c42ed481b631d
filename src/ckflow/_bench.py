"""``ckflow.testing.bench``: run a flow N times, C at once, with and without injected failures, and measure them.

Every figure comes from the runs' own ``RunResult``: latencies from ``result.regions`` (the clock points that the
OpenTelemetry histograms ``ckflow.revert.latency`` and ``ckflow.retry.latency`` record too), makespans from
``result.duration``, and what a failure touched from ``result.tasks``. Nothing here takes a time of its own but
the wall time of each phase.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import anyio

from ckflow._bench_report import BenchPhase, BenchReport, touched_outside_region
from ckflow._checkpoint import _is_positive_int
from ckflow._engine import Engine
from ckflow._faults import inject_failures, parse_rule
from ckflow._patterns import Flow
from ckflow._registry import registered_flow
from ckflow._states import FlowState
from ckflow.stores import open_store

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping

    from ckflow._engine import Run
    from ckflow._models import RunResult
    from ckflow.stores import Store

__all__ = ["bench"]


async def bench(
    flow: Flow | str,
    *,
    runs: int = 100,
    concurrency: int = 10,
    fail: Mapping[str, float | str] | None = None,
    seed: int = 0,
    store: str | Store | None = None,
    inputs: Mapping[str, Any] | None = None,
    on_progress: Callable[[int, int], object] | None = None,
) -> BenchReport:
    """Measure what failures cost in ``flow``: ``runs`` runs without injected failures, then ``runs`` with them.

    Each phase starts its runs one after the other, at most ``concurrency`` running at once, in one ``Engine``
    on ``store``. The second runs inside ``inject_failures(fail, seed=seed)``, so the same seed fails the same
    executions every time. A run parked SUSPENDED is counted as such, then cancelled.

    Args:
        flow: the flow, or the name it was registered under.
        runs: how many runs in each phase.
        concurrency: how many runs at once.
        fail: task name -> rule, as ``inject_failures`` takes them; without it only the first phase runs
            (and the report measures the flow's own failures).
        seed: the seed of the injected failures.
        store: the engine's store (a URL or a store); None keeps the runs in memory.
        inputs: every run's inputs.
        on_progress: called with (runs ended, runs in all) each time a run ends.

    Returns:
        A ``BenchReport``: latencies, region sizes, makespans, tasks touched outside their region.

    Raises:
        ValueError: ``runs`` or ``concurrency`` is not a positive int, a rule is not one ``inject_failures``
            takes, or ``fail`` names a task that the flow does not have.
        FlowNotRegisteredError: no flow is registered under that name.
        FlowDefinitionError: the flow does not compile, or ``inputs`` lack a required value.
    """
    flow, rules = _checked(flow, runs, concurrency, fail)
    progress = _Progress(runs * (2 if rules else 1), on_progress)
    async with _engine(store) as (engine, store_name):
        without = await _phase(engine, flow, inputs, runs, concurrency, progress)
        injected: dict[str, int] = {}
        with_failures: BenchPhase | None = None
        if rules:
            with inject_failures(rules, seed=seed) as plan:
                with_failures = await _phase(engine, flow, inputs, runs, concurrency, progress)
            injected = dict(sorted(Counter(fault.task for fault in plan.injected).items()))
    return BenchReport(
        flow=flow.name,
        runs=runs,
        concurrency=concurrency,
        seed=seed,
        store=store_name,
        fail={task: str(rule) for task, rule in rules.items()},
        injected=injected,
        without=without,
        with_failures=with_failures,
    )


@contextlib.asynccontextmanager
async def _engine(store: str | Store | None) -> AsyncIterator[tuple[Engine, str]]:
    """An engine on ``store``, and the store's name as it gives it (a URL without its password)."""
    if store is None:
        async with Engine() as engine:
            yield engine, "memory (no store)"
        return
    opened = open_store(store) if isinstance(store, str) else store
    async with contextlib.AsyncExitStack() as stack:
        if opened is not store:
            await stack.enter_async_context(opened)  # opened here from its URL: closed here too
        yield await stack.enter_async_context(Engine(store=opened)), opened.url


class _Progress:
    """Counts the runs that ended and tells ``on_progress``."""

    __slots__ = ("callback", "done", "total")

    def __init__(self, total: int, callback: Callable[[int, int], object] | None) -> None:
        self.total = total
        self.done = 0
        self.callback = callback

    def __call__(self) -> None:
        self.done += 1
        if self.callback is not None:
            self.callback(self.done, self.total)


def _checked(
    flow: Flow | str, runs: int, concurrency: int, fail: Mapping[str, float | str] | None
) -> tuple[Flow, dict[str, float | str]]:
    """The flow (looked up by name) and the rules, or the error that says what is wrong with them."""
    if isinstance(flow, str):
        flow = registered_flow(flow)
    if not isinstance(flow, Flow):
        raise TypeError(f"bench() measures a flow (Linear, Parallel, Graph or Periodic), got {flow!r}.")
    for name, value in (("runs", runs), ("concurrency", concurrency)):
        if not _is_positive_int(value):
            raise ValueError(f"bench({name}={value!r}) must be a positive int.")
    rules = dict(fail or {})
    _check_tasks(flow, rules)
    return flow, rules


def _check_tasks(flow: Flow, rules: Mapping[str, object]) -> None:
    """Each rule is one inject_failures takes, for a task of ``flow`` (a typo would measure nothing)."""
    for task, rule in rules.items():
        parse_rule(task, rule)
    known = flow.compile().index
    unknown = sorted(task for task in rules if task not in known)
    if unknown:
        raise ValueError(
            f"bench: flow {flow.name!r} has no task {', '.join(map(repr, unknown))} to fail; "
            f"its tasks are {', '.join(sorted(known))}."
        )


async def _phase(
    engine: Engine,
    flow: Flow,
    inputs: Mapping[str, Any] | None,
    runs: int,
    concurrency: int,
    ended: Callable[[], None],
) -> BenchPhase:
    """``runs`` runs, started in order from this task (so that inject_failures numbers them in that order)."""
    results: list[RunResult] = []
    states: Counter[str] = Counter()
    slots = anyio.Semaphore(concurrency)

    async def settle(run: Run) -> None:
        try:
            result = await run.wait_suspended()
            states[str(result.state)] += 1
            if result.state is FlowState.SUSPENDED:
                await run.cancel()  # parked: counted, then reverted, so that the engine can close
                await run.wait()
            else:
                results.append(result)
        finally:
            slots.release()
        ended()

    t0 = time.monotonic()
    async with anyio.create_task_group() as tg:
        for _ in range(runs):
            await slots.acquire()
            tg.start_soon(settle, await engine.start(flow, inputs))
    wall = time.monotonic() - t0
    return BenchPhase(results=results, states=dict(states), wall=wall, touched=touched_outside_region(results))
