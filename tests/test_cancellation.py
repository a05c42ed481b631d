"""A cancelled caller of ``ckflow.run``: the result is returned, or every executed task is reverted exactly once."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ckflow
from ckflow import FlowState, Linear, Parallel, task


@dataclass
class Ledger:
    """What the tasks of a run did: executes started, reverts started and finished."""

    executed: list[str] = field(default_factory=list)
    reverting: list[str] = field(default_factory=list)
    reverted: list[str] = field(default_factory=list)
    first_revert: asyncio.Event = field(default_factory=asyncio.Event)


def chains(ledger: Ledger, lengths: list[int], steps: list[int]) -> Parallel:
    """Parallel chains of tasks; each execute and revert awaits the loop ``steps[i]`` times."""
    branches = []
    i = 0
    for b, length in enumerate(lengths):
        items = []
        for k in range(length):
            name = f"t{b}_{k}"
            pause = steps[i % len(steps)]
            i += 1

            async def execute(name: str = name, pause: int = pause) -> None:
                ledger.executed.append(name)  # started: a started execute is owed its revert (DESIGN §11)
                for _ in range(pause):
                    await asyncio.sleep(0)

            async def revert(name: str = name, pause: int = pause) -> None:
                ledger.reverting.append(name)
                ledger.first_revert.set()
                for _ in range(pause + 1):
                    await asyncio.sleep(0)
                ledger.reverted.append(name)

            t = task(execute, name=name)
            t.revert(revert)
            items.append(t)
        branches.append(Linear(f"b{b}", *items))
    return Parallel("chains", *branches)


async def scenario(lengths: list[int], steps: list[int], first: int, second: int | None) -> tuple[Ledger, object]:
    """Run the chains in a task; cancel it after ``first`` loop turns, and again ``second`` turns after the first
    revert started (None: once only). Returns the ledger and the run's result (None if cancelled)."""
    ledger = Ledger()
    flow = chains(ledger, lengths, steps)
    caller = asyncio.create_task(ckflow.run(flow))
    for _ in range(first):
        await asyncio.sleep(0)
    caller.cancel()
    if second is not None:
        waiter = asyncio.create_task(ledger.first_revert.wait())
        await asyncio.wait([waiter, caller], return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        for _ in range(second):
            await asyncio.sleep(0)
        caller.cancel()
    try:
        result: object = await caller
    except asyncio.CancelledError:
        result = None
    return ledger, result


def check(ledger: Ledger, result: object) -> None:
    """The invariant: the result is returned (and nothing was undone), or every executed task is reverted exactly
    once, each revert finished, and nothing that did not execute is reverted."""
    if isinstance(result, ckflow.RunResult) and result.state is FlowState.SUCCESS:
        assert ledger.reverting == []
        return
    assert sorted(ledger.reverting) == sorted(ledger.executed)
    assert sorted(ledger.reverted) == sorted(ledger.executed)
    assert len(set(ledger.reverted)) == len(ledger.reverted)


class TestCancelledCaller:
    async def test_a_second_cancel_does_not_cut_the_revert_short(self) -> None:
        """A native task.cancel() sent again while the run reverts (uvicorn's shutdown, asyncio.run's clean-up)
        lets every revert start and finish; then the cancellation propagates."""
        ledger, result = await scenario([3, 2], [5], first=8, second=1)
        assert result is None
        assert ledger.executed
        check(ledger, result)

    async def test_many_cancels_while_reverting(self) -> None:
        """Cancels sent at every loop turn of the revert do not cut it short either."""
        ledger = Ledger()
        flow = chains(ledger, [4], [3])
        caller = asyncio.create_task(ckflow.run(flow))
        while len(ledger.executed) < 2:  # noqa: ASYNC110  (counting loop turns is the point here)
            await asyncio.sleep(0)
        caller.cancel()
        while not caller.done():
            caller.cancel()
            await asyncio.sleep(0)
        with pytest.raises(asyncio.CancelledError):
            await caller
        check(ledger, None)
        assert ledger.reverted == ["t0_1", "t0_0"]

    async def test_a_cancel_that_lands_as_the_run_ends_returns_the_result(self) -> None:
        """A cancel that arrives once every task has succeeded (here: sent by the run's own success event) does not
        lose the work: the caller gets the result, nothing is reverted."""
        ledger = Ledger()
        flow = chains(ledger, [2], [1])
        me: list[asyncio.Task[object]] = []

        def on_event(event: ckflow.Event) -> None:
            if event.name == "ckflow.run.success":
                me[0].cancel()

        async def call() -> object:
            return await ckflow.run(flow, on_event=on_event)

        caller = asyncio.create_task(call())
        me.append(caller)
        result = await caller
        assert isinstance(result, ckflow.RunResult)
        assert result.state is FlowState.SUCCESS
        assert ledger.reverting == []

    @given(
        lengths=st.lists(st.integers(1, 3), min_size=1, max_size=3),
        steps=st.lists(st.integers(0, 3), min_size=1, max_size=4),
        first=st.integers(0, 20),
        second=st.none() | st.integers(0, 6),
    )
    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    def test_property_result_or_everything_reverted_once(
        self, lengths: list[int], steps: list[int], first: int, second: int | None
    ) -> None:
        """Random flows, a cancel at a random moment and maybe a second one during the revert: the caller gets the
        result, or every executed task was reverted exactly once, each revert to its end."""
        ledger, result = asyncio.run(scenario(lengths, steps, first, second))
        check(ledger, result)


class TestCallbacks:
    @pytest.mark.parametrize("on", ["ckflow.run.running", "ckflow.task.success", "ckflow.run.success"])
    async def test_a_callback_raising_cancelled_error_is_dropped(self, on: str) -> None:
        """A callback that raises CancelledError, on any event, is logged and dropped like any other: the run
        neither hangs nor breaks."""
        calls: list[str] = []

        def bad(event: ckflow.Event) -> None:
            if event.name == on:
                calls.append(event.name)
                raise asyncio.CancelledError

        @task
        async def one() -> None:
            await anyio.lowlevel.checkpoint()

        with anyio.fail_after(5):
            result = await ckflow.run(Linear("l", one), on_event=bad)
        assert result.state is FlowState.SUCCESS
        assert calls == [on]
