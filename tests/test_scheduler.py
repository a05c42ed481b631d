"""The scheduler: who starts when, data flow, timeouts, and what a result reports (DESIGN §3, §10, §11)."""

from __future__ import annotations

import threading
import time
from typing import Any

import anyio
import pytest

import ckflow
from ckflow import FlowState, Graph, Linear, Parallel, TaskState, task


class TestStarting:
    async def test_every_ready_task_starts_at_once(self) -> None:
        """All ready tasks of a Parallel start before any of them finishes."""
        gate = anyio.Event()
        started = {i: anyio.Event() for i in range(5)}

        def make(i: int) -> ckflow.Task:
            @task(name=f"t{i}")
            async def t() -> None:
                started[i].set()
                await gate.wait()

            return t

        flow = Parallel("p", *(make(i) for i in range(5)))
        result: list[ckflow.RunResult] = []

        async def runner() -> None:
            result.append(await ckflow.run(flow))

        async with anyio.create_task_group() as tg:
            tg.start_soon(runner)
            with anyio.fail_after(5):
                for ev in started.values():
                    await ev.wait()
            gate.set()
        assert result[0].state is FlowState.SUCCESS

    async def test_max_concurrency_bounds_executing_tasks(self) -> None:
        """With max_concurrency=2 never more than 2 tasks execute at once, and all still run."""
        gate = anyio.Event()
        current = 0
        peak = 0

        def make(i: int) -> ckflow.Task:
            @task(name=f"t{i}")
            async def t() -> None:
                nonlocal current, peak
                current += 1
                peak = max(peak, current)
                await gate.wait()
                current -= 1

            return t

        flow = Parallel("p", *(make(i) for i in range(6)))
        result: list[ckflow.RunResult] = []

        async def runner() -> None:
            result.append(await ckflow.run(flow, max_concurrency=2))

        async with anyio.create_task_group() as tg:
            tg.start_soon(runner)
            await anyio.wait_all_tasks_blocked()
            assert current == 2
            gate.set()
        assert peak == 2
        assert result[0].state is FlowState.SUCCESS
        assert all(s.attempts == 1 for s in result[0].tasks.values())

    async def test_max_concurrency_must_be_positive(self) -> None:
        """max_concurrency=0 is rejected before anything runs."""

        @task
        async def a() -> None: ...

        with pytest.raises(ValueError, match="max_concurrency"):
            await ckflow.run(Linear("l", a), max_concurrency=0)


class TestOrdering:
    async def test_linear_runs_in_order(self) -> None:
        """A Linear runs its items one after the other, each after the previous has finished."""
        log: list[str] = []

        def make(name: str) -> ckflow.Task:
            @task(name=name)
            async def t() -> None:
                log.append(f"{name}>")
                await anyio.lowlevel.checkpoint()
                log.append(f"<{name}")

            return t

        result = await ckflow.run(Linear("l", make("a"), make("b"), make("c")))
        assert result.state is FlowState.SUCCESS
        assert log == ["a>", "<a", "b>", "<b", "c>", "<c"]

    async def test_graph_orders_by_data(self) -> None:
        """A Graph runs a consumer after its provider, whatever the order the items are listed in."""
        log: list[str] = []

        @task(provides="x")
        async def make_x(seed: int) -> int:
            log.append("make_x")
            return seed + 1

        @task(provides="y")
        async def make_y(x: int) -> int:
            log.append("make_y")
            return x * 10

        @task(provides="z")
        async def make_z(x: int, y: int) -> int:
            log.append("make_z")
            return x + y

        result = await ckflow.run(Graph("g", make_z, make_y, make_x), inputs={"seed": 1})
        assert result.state is FlowState.SUCCESS
        assert log == ["make_x", "make_y", "make_z"]
        assert result.outputs == {"x": 2, "y": 20, "z": 22}


class TestData:
    async def test_outputs_hold_every_provided_value(self) -> None:
        """result.outputs maps every provides name to the value its task returned."""

        @task(provides="volume")
        async def create(size: int) -> str:
            return f"vol-{size}"

        @task(provides="attachment")
        async def attach(volume: str) -> str:
            return f"{volume}@host"

        result = await ckflow.run(Linear("boot", create, attach), inputs={"size": 10})
        assert result.outputs == {"volume": "vol-10", "attachment": "vol-10@host"}

    async def test_tuple_provides_unpacks_a_tuple(self) -> None:
        """A task with several provides names has its returned tuple unpacked in order."""

        @task(provides=("a", "b"))
        async def pair() -> tuple[int, int]:
            return 1, 2

        result = await ckflow.run(Linear("l", pair))
        assert result.outputs == {"a": 1, "b": 2}

    async def test_tuple_provides_with_wrong_arity_fails_the_task(self) -> None:
        """A return value that cannot be unpacked into the provides names fails the task with a TypeError naming it."""

        @task(provides=("a", "b"))
        async def pair() -> tuple[int, int, int]:
            return 1, 2, 3

        result = await ckflow.run(Linear("l", pair))
        assert result.state is FlowState.REVERTED
        assert result.tasks["pair"].state is TaskState.REVERTED
        [failure] = result.failures
        assert failure.task == "pair"
        assert failure.exc_type == "TypeError"
        assert "'pair'" in failure.message
        assert isinstance(failure.exception, TypeError)

    async def test_tuple_provides_with_non_sequence_fails_the_task(self) -> None:
        """A task with several provides names that returns a scalar fails with a TypeError naming it."""

        @task(provides=("a", "b"))
        async def scalar() -> int:
            return 7

        result = await ckflow.run(Linear("l", scalar))
        assert result.state is FlowState.REVERTED
        [failure] = result.failures
        assert failure.exc_type == "TypeError"
        assert "'scalar'" in failure.message

    async def test_plain_def_task_runs_off_the_loop_thread(self) -> None:
        """A plain def task runs in a worker thread, not on the event loop's thread."""
        loop_thread = threading.get_ident()

        @task(provides="tid")
        def where() -> int:
            return threading.get_ident()

        result = await ckflow.run(Linear("l", where))
        assert result.state is FlowState.SUCCESS
        assert result.outputs["tid"] != loop_thread


class TestTaskScopes:
    async def test_task_may_use_a_cancel_scope(self) -> None:
        """A task may open its own cancel scope (fail_after) around its awaits."""

        @task(provides="v")
        async def scoped() -> int:
            with anyio.fail_after(5):
                await anyio.lowlevel.checkpoint()
            return 1

        result = await ckflow.run(Linear("l", scoped))
        assert result.state is FlowState.SUCCESS
        assert result.outputs == {"v": 1}

    async def test_task_may_use_a_task_group(self) -> None:
        """A task may run its own anyio task group."""
        hits: list[int] = []

        @task
        async def fan_out() -> None:
            async def one(i: int) -> None:
                await anyio.lowlevel.checkpoint()
                hits.append(i)

            async with anyio.create_task_group() as tg:
                for i in range(3):
                    tg.start_soon(one, i)

        result = await ckflow.run(Linear("l", fan_out))
        assert result.state is FlowState.SUCCESS
        assert sorted(hits) == [0, 1, 2]


class TestTimeout:
    async def test_timeout_fails_the_task_and_reverts_the_flow(self) -> None:
        """A task past its timeout= fails with TimeoutError (kind 'timeout') and the flow ends REVERTED."""
        reverted: list[str] = []

        @task
        async def first() -> None: ...

        @first.revert
        async def _(result: Any) -> None:
            reverted.append("first")

        @task(timeout=0.05)
        async def slow() -> None:
            await anyio.sleep_forever()

        result = await ckflow.run(Linear("l", first, slow))
        assert result.state is FlowState.REVERTED
        [failure] = result.failures
        assert failure.task == "slow"
        assert failure.kind == "timeout"
        assert failure.exc_type == "TimeoutError"
        assert not failure.cancelled
        assert result.tasks["slow"].state is TaskState.REVERTED
        assert reverted == ["first"]

    async def test_timeout_applies_to_plain_def_task(self) -> None:
        """A plain def task that runs past its timeout= fails with TimeoutError, even though its thread can't stop."""

        @task(timeout=0.01)
        def slow() -> None:
            time.sleep(0.2)  # the behaviour under test is the deadline itself, not ordering

        result = await ckflow.run(Linear("l", slow))
        assert result.state is FlowState.REVERTED
        [failure] = result.failures
        assert failure.kind == "timeout"
        assert failure.exc_type == "TimeoutError"


class TestResult:
    async def test_task_summaries(self) -> None:
        """result.tasks reports each task's state, attempts and start/end times."""

        @task
        async def a() -> None:
            await anyio.lowlevel.checkpoint()

        @task
        async def b() -> None: ...

        result = await ckflow.run(Linear("l", a, b))
        for name in ("a", "b"):
            summary = result.tasks[name]
            assert summary.state is TaskState.SUCCESS
            assert summary.attempts == 1
            assert summary.started is not None
            assert summary.ended is not None
            assert summary.started <= summary.ended
        assert result.tasks["a"].ended <= result.tasks["b"].started  # type: ignore[operator]

    async def test_unstarted_task_summary(self) -> None:
        """A task that never ran has zero attempts, no start time and stays PENDING."""

        @task
        async def boom() -> None:
            raise ValueError("no")

        @task
        async def after() -> None: ...

        result = await ckflow.run(Linear("l", boom, after))
        summary = result.tasks["after"]
        assert summary.state is TaskState.PENDING
        assert summary.attempts == 0
        assert summary.started is None

    async def test_failures_content(self) -> None:
        """result.failures records the task, exception type, message and traceback of each failure."""

        @task
        async def explode() -> None:
            raise ValueError("disk on fire")

        result = await ckflow.run(Linear("l", explode))
        [failure] = result.failures
        assert isinstance(failure, ckflow.Failure)
        assert failure.task == "explode"
        assert failure.kind == "execute"
        assert failure.exc_type == "ValueError"
        assert failure.message == "disk on fire"
        assert "explode" in failure.traceback
        assert "ValueError: disk on fire" in failure.traceback
        assert result.tasks["explode"].failure == failure

    async def test_raise_for_state_raises_run_failed_error(self) -> None:
        """raise_for_state raises RunFailedError, an ExceptionGroup and a CkflowError holding the original exception."""
        original = ValueError("disk on fire")

        @task
        async def explode() -> None:
            raise original

        result = await ckflow.run(Linear("l", explode))
        with pytest.raises(ckflow.RunFailedError) as info:
            result.raise_for_state()
        assert isinstance(info.value, ExceptionGroup)
        assert isinstance(info.value, ckflow.CkflowError)
        assert info.value.exceptions == (original,)

    async def test_raise_for_state_is_noop_on_success(self) -> None:
        """raise_for_state does nothing when the run succeeded."""

        @task
        async def fine() -> None: ...

        result = await ckflow.run(Linear("l", fine))
        assert result.state is FlowState.SUCCESS
        assert result.failures == []
        result.raise_for_state()


class TestEagerExecution:
    async def test_tasks_that_never_suspend_run_in_the_callers_task(self) -> None:
        """ckflow.run drives tasks that finish without suspending in the calling task: no task per task."""
        import asyncio

        seen: list[object] = []

        @ckflow.task(provides="one")
        async def first() -> int:
            seen.append(asyncio.current_task())
            return 1

        @ckflow.task(provides="two")
        async def second(one: int) -> int:
            seen.append(asyncio.current_task())
            return one + 1

        result = await ckflow.run(ckflow.Linear("eager", first, second))
        assert result.outputs["two"] == 2
        assert seen == [asyncio.current_task()] * 2
