"""The tasks an engine runs its runs in: closing waits for them, cancellation reaches them, what they raise comes
out of the engine's block, and nothing of them is left behind (DESIGN §4; ``_engine/_spawn.py``)."""

from __future__ import annotations

import asyncio
import contextvars
import gc
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from ckflow import Engine, FlowState, Linear, Run, task
from ckflow._engine._handles import _Local
from ckflow.stores import MemoryStore

REQUEST: contextvars.ContextVar[str] = contextvars.ContextVar("request", default="none")


def blocking(name: str, started: anyio.Event, reverted: list[str]) -> Linear:
    """A flow whose one task blocks until cancelled, and records its revert."""

    @task(name=name)
    async def block() -> None:
        started.set()
        await anyio.sleep_forever()

    @block.revert
    async def _(result: Any) -> None:
        reverted.append(name)

    return Linear(f"{name}-flow", block)


class TestRunTasks:
    async def test_closing_waits_for_a_run_in_flight(self) -> None:
        """Leaving the block normally waits for a run whose task is still running; it ends SUCCESS."""
        gate, started, left = anyio.Event(), anyio.Event(), anyio.Event()
        done: list[str] = []

        @task
        async def slow() -> None:
            started.set()
            await gate.wait()
            done.append("slow")

        async def open_gate() -> None:
            await left.wait()
            gate.set()

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(open_gate)
                async with Engine() as engine:
                    run = await engine.start(Linear("l", slow))
                    await started.wait()
                    left.set()  # the gate opens once the block's exit waits for the run
                assert done == ["slow"]
                assert run.state is FlowState.SUCCESS

    async def test_a_cancelled_block_cancels_runs_whose_task_never_ran(self) -> None:
        """A run started just after an enclosing scope was cancelled (the engine's cancellation reaches its runs
        before the run's task has taken a step) is still run and cancelled at its first wait, as a task group's
        child would be: everything that ran is reverted, rather than the run never starting nor ending."""
        started, reverted = anyio.Event(), []
        with anyio.fail_after(5):
            with anyio.CancelScope() as outer:
                async with Engine() as engine:
                    await anyio.lowlevel.checkpoint()  # the engine's tasks are under way
                    outer.cancel()
                    with anyio.CancelScope(shield=True):
                        run = await engine.start(blocking("a", started, reverted))
            assert started.is_set()
            assert run.state is FlowState.REVERTED
            assert reverted == ["a"]

    async def test_a_cancelled_block_stops_durable_runs(self) -> None:
        """An enclosing scope cancelled while a durable run waits stops the run (nothing reverted): it stays in
        its store, RUNNING, for another engine to resume."""
        store = MemoryStore()
        started, reverted = anyio.Event(), []
        with anyio.fail_after(5):
            with anyio.CancelScope() as outer:
                async with Engine(store=store) as engine:
                    await engine.start(blocking("d", started, reverted), run_id="d")
                    await started.wait()
                    outer.cancel()
            assert reverted == []
            assert (await store.get_run("d")).state is FlowState.RUNNING

    async def test_a_run_started_after_the_block_was_cancelled_is_cancelled(self) -> None:
        """A run started (in a shielded scope) after the engine's block was cancelled and its runs were
        cancelled is cancelled too, and the engine waits for it."""
        first, second, reverted = anyio.Event(), anyio.Event(), []
        with anyio.fail_after(5):
            with anyio.CancelScope() as outer:
                async with Engine() as engine:
                    run_a = await engine.start(blocking("a", first, reverted))
                    await first.wait()
                    outer.cancel()
                    with anyio.CancelScope(shield=True):
                        assert (await run_a.wait()).state is FlowState.REVERTED
                        run_b = await engine.start(blocking("b", second, reverted))
                        assert (await run_b.wait()).state is FlowState.REVERTED
            assert reverted == ["a", "b"]

    async def test_a_plain_asyncio_cancel_of_the_block_reverts_its_runs(self) -> None:
        """The block's task cancelled by ``Task.cancel()`` (a server shutting down) cancels and reverts the runs,
        then the cancellation goes on."""
        started, reverted = anyio.Event(), []
        runs = []

        async def use_engine() -> None:
            async with Engine() as engine:
                runs.append(await engine.start(blocking("a", started, reverted)))
                await anyio.sleep_forever()

        with anyio.fail_after(5):
            user = asyncio.ensure_future(use_engine())
            await started.wait()
            user.cancel()
            with pytest.raises(asyncio.CancelledError):
                await user
        assert runs[0].state is FlowState.REVERTED
        assert reverted == ["a"]

    async def test_an_exception_escaping_a_run_task_is_raised_by_the_block(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An exception that escapes a run's task (a bug in ckflow) is not lost: the block is cancelled, the
        other runs are cancelled and reverted, and the block raises it in an ExceptionGroup; asyncio reports
        nothing (no exception never retrieved, no task destroyed pending)."""
        original = _Local.main
        fail = anyio.Event()

        async def main(self: _Local, *, stop_on_suspend: bool = False) -> Any:
            if self.run_id == "bad":
                await fail.wait()
                raise RuntimeError("a bug")
            return await original(self, stop_on_suspend=stop_on_suspend)

        monkeypatch.setattr(_Local, "main", main)
        loop = asyncio.get_running_loop()
        reported: list[dict[str, Any]] = []
        handler = loop.get_exception_handler()
        loop.set_exception_handler(lambda _, context: reported.append(context))
        started, reverted = anyio.Event(), []
        runs: list[Run] = []

        async def use_engine() -> None:
            async with Engine() as engine:
                runs.append(await engine.start(blocking("good", started, reverted)))
                runs.append(await engine.start(Linear("l", blocking("x", anyio.Event(), [])), run_id="bad"))
                await started.wait()
                fail.set()
                await anyio.sleep_forever()  # cancelled once the run's task has raised

        try:
            with anyio.fail_after(5), pytest.raises(ExceptionGroup) as info:
                await use_engine()
            gc.collect()
        finally:
            loop.set_exception_handler(handler)
        [error] = info.value.exceptions
        assert isinstance(error, RuntimeError)
        assert str(error) == "a bug"
        good, bad = runs
        assert good.state is FlowState.REVERTED
        assert reverted == ["good"]
        assert bad.state is FlowState.PENDING  # its task raised before it ran
        assert reported == []

    async def test_a_run_sees_the_context_of_its_start(self) -> None:
        """A run's tasks see the context variables as they were when ``start`` was called, not later changes."""
        seen: list[str] = []

        @task
        async def read() -> None:
            seen.append(REQUEST.get())

        with anyio.fail_after(5):
            async with Engine() as engine:
                token = REQUEST.set("first")
                try:
                    run = await engine.start(Linear("l", read))
                finally:
                    REQUEST.reset(token)
                REQUEST.set("later")
                await run.wait()
        assert seen == ["first"]
