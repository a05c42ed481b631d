"""Failure injection (DESIGN §14): ``ckflow.testing.inject_failures`` fails named tasks of runs started inside it."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import anyio
import pytest

import ckflow
from ckflow import Checkpoint, FlowState, Linear, Parallel, Retry, TaskState, task
from ckflow._faults import draw
from ckflow.testing import EventRecorder, InjectedFailure, InjectedFault, inject_failures

if TYPE_CHECKING:
    from pathlib import Path

INJECTED = "ckflow.testing.InjectedFailure"


def seed_flow(calls: list[str] | None = None, attempts: int = 3) -> Linear:
    """a; then in parallel b under a retrying checkpoint, and c. ``calls`` gets each body that ran."""
    log = [] if calls is None else calls

    @task(provides="x")
    async def a() -> int:
        log.append("a")
        return 1

    @task
    async def b(x: int) -> None:
        log.append("b")

    @b.revert
    async def _(x: int, result: object) -> None:
        log.append("undo b")

    @task
    def c(x: int) -> None:  # a plain def: its execute runs in a thread
        log.append("c")

    return Linear("seed", a, Parallel("p", Linear("lb", Checkpoint("cp", retry=Retry(attempts=attempts)), b), c))


def wide_flow(width: int = 6, attempts: int = 10) -> Parallel:
    """``width`` independent tasks t0..t{width-1}, each under a checkpoint that retries it."""
    branches = []
    for i in range(width):

        @task(name=f"t{i}")
        async def t() -> None:
            pass

        branches.append(Linear(f"l{i}", Checkpoint(f"cp{i}", retry=Retry(attempts=attempts)), t))
    return Parallel("wide", *branches)


def predicted(seed: int, runs: int, tasks: list[str], p: float) -> set[tuple[int, str, int]]:
    """The executions that ``draw`` says fail, as (run number, task, execution): each task executes again
    (its checkpoint retries it) until a draw lets it through."""
    out = set()
    for i in range(runs):
        for t in tasks:
            attempt = 1
            while draw(seed, i, t, attempt) < p:
                out.add((i, t, attempt))
                attempt += 1
    return out


def fault_set(faults: list[InjectedFault]) -> set[tuple[int, str, int]]:
    return {(f.run_index, f.task, f.attempt) for f in faults}


class TestRules:
    """What a rule may be, and the errors for what it may not."""

    @pytest.mark.parametrize("rule", [1.5, -0.1, float("nan"), "sometimes", "first:0", "first:x", "last", True, None])
    def test_bad_rule_names_the_task(self, rule: object) -> None:
        """A rule that is no probability from 0 to 1, 'first' or 'first:N' is a ValueError naming its task."""
        with pytest.raises(ValueError, match=r"task 'charge'") as info:
            inject_failures({"charge": rule}).__enter__()  # type: ignore[dict-item]
        assert "first:N" in str(info.value)

    def test_bad_seed_and_mapping(self) -> None:
        """A seed that is not an int, and failures that are not a mapping, are TypeErrors."""
        with pytest.raises(TypeError, match="seed"):
            inject_failures({"a": 0.5}, seed="7").__enter__()  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="mapping"):
            inject_failures(["a"]).__enter__()  # type: ignore[arg-type]

    def test_draw_is_pure_and_uniform(self) -> None:
        """draw() depends only on its arguments, and its values spread evenly over [0, 1)."""
        assert draw(7, 3, "charge", 1) == draw(7, 3, "charge", 1)
        values = [draw(7, i, "charge", 1) for i in range(10_000)]
        assert all(0.0 <= v < 1.0 for v in values)
        for p in (0.05, 0.2, 0.5, 0.9):
            share = sum(v < p for v in values) / len(values)
            assert p - 0.02 <= share <= p + 0.02, (p, share)
        assert draw(7, 3, "charge", 1) != draw(8, 3, "charge", 1)


class TestFirstAttempts:
    """'first' and 'first:N' with a retrying checkpoint."""

    async def test_first_fails_once_then_the_retry_runs(self) -> None:
        """'first' fails the task's first execution before its body; the checkpoint reverts and retries it."""
        calls: list[str] = []
        with inject_failures({"b": "first"}) as plan:
            result = await ckflow.run(seed_flow(calls))
        assert result.state is FlowState.SUCCESS
        assert calls.count("b") == 1  # the injected execution never ran the body; the retry did
        assert "undo b" in calls
        assert result.tasks["b"].attempts == 2
        [failure] = result.failures
        assert (failure.task, failure.exc_type, failure.kind) == ("b", INJECTED, "execute")
        assert isinstance(failure.exception, InjectedFailure)
        assert failure.exception.task == "b"
        [region] = result.regions
        assert (region.cause, region.members, region.action) == ("b", ["b"], "retry")
        assert plan.injected == [InjectedFault(result.run_id, 0, "b", 1)]

    async def test_first_n_within_the_budget_succeeds(self) -> None:
        """'first:2' under Retry(attempts=3): two injected failures, then the third execution succeeds."""
        with inject_failures({"b": "first:2"}) as plan:
            result = await ckflow.run(seed_flow())
        assert result.state is FlowState.SUCCESS
        assert [f.attempt for f in result.failures] == [1, 2]
        assert [f.attempt for f in plan.injected] == [1, 2]

    async def test_first_n_beyond_the_budget_reverts_the_run(self) -> None:
        """'first:3' under Retry(attempts=3) exhausts the checkpoint: the run reverts everything that ran."""
        with inject_failures({"b": "first:3"}):
            result = await ckflow.run(seed_flow())
        assert result.state is FlowState.REVERTED
        assert {f.exc_type for f in result.failures} == {INJECTED}

    async def test_a_plain_def_task_fails_without_its_thread(self) -> None:
        """A plain def task is failed before its thread starts."""
        calls: list[str] = []
        with inject_failures({"c": 1.0}):
            result = await ckflow.run(seed_flow(calls))
        assert result.state is FlowState.REVERTED
        assert "c" not in calls
        assert result.tasks["c"].failure is not None
        assert result.tasks["c"].failure.exc_type == INJECTED

    async def test_failure_events_carry_the_type(self) -> None:
        """The failure event of an injected failure carries its Failure, typed InjectedFailure."""
        events = EventRecorder()
        with inject_failures({"b": "first"}):
            await ckflow.run(seed_flow(), on_event=events)
        [failed] = events.of("ckflow.task.failure")
        assert failed.task == "b"
        assert failed.failure is not None
        assert failed.failure.exc_type == INJECTED


class TestDeterminism:
    """The same seed fails the same executions, whatever the order, the engine or the store."""

    async def test_injected_set_is_the_predicted_one(self) -> None:
        """Each run's failed executions are exactly those draw(seed, run number, task, execution) puts under p."""
        tasks = [f"t{i}" for i in range(6)]
        with inject_failures(dict.fromkeys(tasks, 0.4), seed=11) as plan:
            results = [await ckflow.run(wide_flow()) for _ in range(12)]
        assert fault_set(plan.injected) == predicted(11, 12, tasks, 0.4)
        for i, result in enumerate(results):
            assert result.state is FlowState.SUCCESS
            failed = {(f.task, f.attempt) for f in result.failures}
            assert failed == {(t, k) for (run, t, k) in predicted(11, 12, tasks, 0.4) if run == i}
        assert any(k > 1 for (_, _, k) in fault_set(plan.injected))  # retries drew again, and some failed

    async def test_same_seed_same_set_on_memory_and_sqlite(self, tmp_path: Path) -> None:
        """Two blocks with one seed fail the same executions, on an engine without a store and one on SQLite,
        with runs at once (tasks interleaved) or one after the other."""
        tasks = [f"t{i}" for i in range(6)]
        rules = dict.fromkeys(tasks, 0.3)
        with inject_failures(rules, seed=5) as first:
            for _ in range(8):
                await ckflow.run(wide_flow())
        async with ckflow.Engine(store=f"sqlite:///{tmp_path / 'runs.db'}") as engine:
            with inject_failures(rules, seed=5) as second:
                runs = [await engine.start(wide_flow(), max_concurrency=1) for _ in range(8)]
            states = {(await run.wait()).state for run in runs}
        assert states == {FlowState.SUCCESS}
        assert fault_set(first.injected) == fault_set(second.injected)
        assert fault_set(first.injected)  # the seed does fail some
        with inject_failures(rules, seed=6) as other:
            for _ in range(8):
                await ckflow.run(wide_flow())
        assert fault_set(other.injected) != fault_set(first.injected)

    async def test_probability_bounds_over_runs(self) -> None:
        """p = 0.25 over 400 runs fails close to a quarter of the first executions, and 0 and 1 are exact."""
        flow = wide_flow(1, attempts=2)
        with inject_failures({"t0": 0.25}, seed=3) as plan:
            for _ in range(400):
                await ckflow.run(flow)
        firsts = [f for f in plan.injected if f.attempt == 1]
        assert 80 <= len(firsts) <= 120, len(firsts)
        with inject_failures({"t0": 0.0}) as never:
            for _ in range(20):
                await ckflow.run(flow)
        with inject_failures({"t0": 1}) as always:
            result = await ckflow.run(flow)
        assert never.injected == []
        assert result.state is FlowState.REVERTED
        assert [f.attempt for f in always.injected] == [1, 2]


class TestScope:
    """Which runs a block's failures reach: the runs started inside it, for their whole life, and no other."""

    async def test_nested_blocks_add_up_and_number_their_own_runs(self) -> None:
        """A run started inside two blocks gets the failures of both; each block numbers its runs itself."""
        with inject_failures({"a": 0.0}) as outer:
            await ckflow.run(seed_flow())  # outer's run 0
            with inject_failures({"b": "first"}) as inner:
                result = await ckflow.run(seed_flow(attempts=2))
            with inject_failures({"b": "first:2"}) as again:
                doomed = await ckflow.run(seed_flow(attempts=2))
        assert result.state is FlowState.SUCCESS
        assert [(f.run_index, f.task) for f in inner.injected] == [(0, "b")]
        assert doomed.state is FlowState.REVERTED
        assert [f.attempt for f in again.injected] == [1, 2]
        assert outer.injected == []
        with inject_failures({"b": "first"}) as one, inject_failures({"b": "first:2"}) as two:
            both = await ckflow.run(seed_flow())
        assert both.state is FlowState.SUCCESS
        assert [f.attempt for f in one.injected] == [1]  # both fail execution 1; only the second fails 2
        assert [f.attempt for f in two.injected] == [1, 2]

    async def test_overlapping_blocks_each_take_only_their_own(self) -> None:
        """Blocks left in another order than entered: the one left first stops, the other goes on."""
        stack_a, stack_b = contextlib.ExitStack(), contextlib.ExitStack()
        plan_a = stack_a.enter_context(inject_failures({"b": "first"}))
        plan_b = stack_b.enter_context(inject_failures({"c": "first"}))
        stack_a.close()  # a is left while b is still in force
        result = await ckflow.run(seed_flow())
        stack_b.close()
        clean = await ckflow.run(seed_flow())
        assert plan_a.injected == []
        assert [f.task for f in plan_b.injected] == ["c"]
        assert result.tasks["c"].attempts == 1  # c is under the root: its failure reverts the run
        assert result.state is FlowState.REVERTED
        assert (clean.state, clean.failures) == (FlowState.SUCCESS, [])

    async def test_runs_started_outside_are_untouched(self) -> None:
        """A run started before the block, whose task executes while the block is in force, is not failed;
        nor is a run started, while the block is in force, by a task spawned before it."""
        gate = anyio.Event()

        @task
        async def wait() -> None:
            await gate.wait()

        @task
        async def b() -> None:
            pass

        spawned: list[ckflow.RunResult] = []
        go, done = anyio.Event(), anyio.Event()

        async def run_later() -> None:
            await go.wait()
            spawned.append(await ckflow.run(Linear("later", b)))
            done.set()

        async with ckflow.Engine() as engine, anyio.create_task_group() as tg:
            tg.start_soon(run_later)
            before = await engine.start(Linear("outside", wait, b))
            with inject_failures({"b": 1.0}) as plan:
                gate.set()
                assert (await before.wait()).state is FlowState.SUCCESS
                go.set()
                await done.wait()
                inside = await ckflow.run(Linear("inside", b))
        assert [r.state for r in spawned] == [FlowState.SUCCESS]
        assert inside.state is FlowState.REVERTED  # the block was in force all along
        assert [(f.run_id, f.task) for f in plan.injected] == [(inside.run_id, "b")]

    async def test_a_run_keeps_its_failures_after_the_block_and_across_suspend(self) -> None:
        """A run started inside keeps its failures once the block has ended, also after suspend and resume."""

        @task(provides="x")
        async def first() -> int:
            return 1

        @task
        async def second(x: int) -> None:
            pass

        flow = Linear("later", first, Linear("l", Checkpoint("cp", retry=Retry(attempts=2)), second))
        async with ckflow.Engine() as engine:
            with inject_failures({"second": "first"}) as plan:
                run = await engine.start(flow)
            await run.goto("cp")  # parked before anything of cp's scope started: second has not run
            assert run.state is FlowState.SUSPENDED
            assert plan.injected == []
            await run.resume()
            result = await run.wait()
        assert result.state is FlowState.SUCCESS
        assert [(f.task, f.attempt) for f in plan.injected] == [("second", 1)]
        assert result.tasks["second"].attempts == 2

    async def test_a_run_rebuilt_from_its_store_runs_without_them(self, tmp_path: Path) -> None:
        """A durable run stopped with its engine and resumed by a new engine inside a block gets no failures:
        injected failures are never stored, and a resume is not a start."""
        url = f"sqlite:///{tmp_path / 'runs.db'}"
        started = anyio.Event()
        calls = {"slow": 0}

        @task(provides="x")
        async def slow() -> int:
            calls["slow"] += 1
            if calls["slow"] == 1:
                started.set()
                await anyio.sleep_forever()
            return 1

        @task
        async def after(x: int) -> None:
            pass

        flow = Linear("durable", slow, after)
        with inject_failures({"after": 1.0}) as plan:
            with anyio.CancelScope() as scope:
                async with ckflow.Engine(store=url) as engine:
                    await engine.start(flow, run_id="d1")
                    await started.wait()
                    scope.cancel()
            async with ckflow.Engine(store=url) as engine:
                run = await engine.resume("d1", flow=flow)
                result = await run.wait()
        assert result.state is FlowState.SUCCESS
        assert result.tasks["after"].state is TaskState.SUCCESS
        assert plan.injected == []
