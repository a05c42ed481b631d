"""Events: one pydantic model per transition, to subscribers (DESIGN §8, STYLE 35); logging is in test_logging."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import pytest

import ckflow
import ckflow._events
from ckflow import Engine, FlowState, Linear, task
from ckflow.testing import EventRecorder

SUCCESS_LOG = [
    ("ckflow.run.running", None),
    ("ckflow.task.running", "a"),
    ("ckflow.task.success", "a"),
    ("ckflow.task.running", "b"),
    ("ckflow.task.success", "b"),
    ("ckflow.run.success", None),
]


def two_tasks() -> Linear:
    @task(provides="x")
    async def a() -> int:
        await anyio.lowlevel.checkpoint()
        return 1

    @task
    async def b(x: int) -> None: ...

    return Linear("l", a, b)


def failing_flow() -> Linear:
    @task
    async def a() -> None: ...

    @task
    async def boom() -> None:
        raise ValueError("boom")

    return Linear("l", a, boom)


class TestSubscribers:
    async def test_events_iterator_yields_events_in_order_and_ends(self) -> None:
        """run.events() yields ckflow.Event models in transition order and ends with the run."""
        async with Engine() as engine:
            run = await engine.start(two_tasks(), run_id="r")
            stream = run.events()
            with anyio.fail_after(5):
                got = [event async for event in stream]
        assert all(isinstance(e, ckflow.Event) for e in got)
        assert [(e.name, e.task) for e in got] == SUCCESS_LOG
        assert {e.run_id for e in got} == {"r"}

    async def test_events_after_end_is_refused(self) -> None:
        """run.events() on a run that has ended raises RunStateError."""
        async with Engine() as engine:
            run = await engine.start(two_tasks())
            await run.wait()
            with pytest.raises(ckflow.RunStateError):
                run.events()

    async def test_on_event_callback_sees_every_transition(self) -> None:
        """on_event= gets every transition of a run, in order."""
        events = EventRecorder()
        result = await ckflow.run(two_tasks(), on_event=events)
        assert result.state is FlowState.SUCCESS
        assert [(e.name, e.task) for e in events.events] == SUCCESS_LOG

    async def test_run_subscribe_callback_and_unsubscribe(self) -> None:
        """run.subscribe(callback) delivers events until the returned function is called."""
        gate = anyio.Event()
        seen: list[str] = []

        @task
        async def hold() -> None:
            await gate.wait()

        @task
        async def after() -> None: ...

        async with Engine() as engine:
            run = await engine.start(Linear("l", hold, after))
            unsubscribe = run.subscribe(lambda e: seen.append(e.name))
            await anyio.wait_all_tasks_blocked()
            unsubscribe()
            gate.set()
            await run.wait()
        assert seen == ["ckflow.run.running", "ckflow.task.running"]

    async def test_event_fields(self) -> None:
        """An event carries run_id, task, old and new state, attempt, checkpoint and a monotonic time."""
        events = EventRecorder()
        result = await ckflow.run(failing_flow(), run_id="r-7", on_event=events)
        assert result.state is FlowState.REVERTED
        [failed] = events.of("ckflow.task.failure")
        assert failed.run_id == "r-7"
        assert failed.flow == "l"
        assert failed.task == "boom"
        assert failed.old == "RUNNING"
        assert failed.new == "FAILURE"
        assert failed.attempt == 1
        assert failed.checkpoint == "l"
        assert failed.failure is not None
        assert failed.failure.exc_type == "ValueError"
        times = [e.monotonic for e in events.events]
        assert times == sorted(times)
        [end] = events.of("ckflow.run.reverted")
        assert (end.old, end.new, end.task) == ("RUNNING", "REVERTED", None)
        assert events.tasks("ckflow.task.reverted") == ["boom", "a"]

    async def test_events_are_frozen(self) -> None:
        """Events are immutable pydantic models."""
        events = EventRecorder()
        await ckflow.run(two_tasks(), on_event=events)
        with pytest.raises(Exception, match="frozen"):
            events.events[0].task = "x"


class TestBackpressure:
    async def test_slow_subscriber_is_cut_off_and_run_finishes(self) -> None:
        """A subscriber whose buffer fills gets what was buffered, then EventsOverflowError; the run is unaffected."""
        async with Engine() as engine:
            run = await engine.start(two_tasks())
            stream = run.events(buffer=2)
            with anyio.fail_after(5):
                result = await run.wait()  # the engine never waited for the reader
            got = [(await anext(stream)).name, (await anext(stream)).name]
            with pytest.raises(ckflow.EventsOverflowError):
                await anext(stream)
        assert result.state is FlowState.SUCCESS
        assert got == ["ckflow.run.running", "ckflow.task.running"]

    async def test_other_subscriber_unaffected_by_overflow(self) -> None:
        """Cutting off one full subscriber leaves the others receiving every event."""
        async with Engine() as engine:
            run = await engine.start(two_tasks())
            slow = run.events(buffer=1)
            fast = run.events()
            await run.wait()
            with pytest.raises(ckflow.EventsOverflowError):
                async for _ in slow:
                    pass
            assert [(e.name, e.task) async for e in fast] == SUCCESS_LOG

    async def test_raising_callback_is_dropped(self, caplog: pytest.LogCaptureFixture) -> None:
        """A callback that raises is called once, then dropped; the run goes on and is unaffected."""
        calls: list[str] = []
        events = EventRecorder()

        def bad(event: ckflow.Event) -> None:
            calls.append(event.name)
            raise RuntimeError("bad subscriber")

        with caplog.at_level(logging.DEBUG, "ckflow.events"):
            async with Engine() as engine:
                run = await engine.start(two_tasks(), on_event=bad)
                run.subscribe(events)
                result = await run.wait()
        assert result.state is FlowState.SUCCESS
        assert calls == ["ckflow.run.running"]
        assert [(e.name, e.task) for e in events.events] == SUCCESS_LOG
        assert [r.event for r in caplog.records] == ["ckflow.events.callback_failed"]  # type: ignore[attr-defined]

    async def test_a_callback_failing_on_a_failure_is_logged_with_its_exception(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A callback that raises on a task's failure event is logged with its own exception, even though its
        line waits behind the failure's (written once the revert has started)."""

        def bad(event: ckflow.Event) -> None:
            if event.name == "ckflow.task.failure":
                raise RuntimeError("bad subscriber")

        with caplog.at_level(logging.DEBUG, "ckflow"):
            result = await ckflow.run(failing_flow(), on_event=bad)
        assert result.state is FlowState.REVERTED
        [record] = [r for r in caplog.records if r.getMessage().startswith("ckflow.events.callback_failed")]
        assert record.exc_info is not None
        assert isinstance(record.exc_info[1], RuntimeError)
        assert str(record.exc_info[1]) == "bad subscriber"
        assert "RuntimeError: bad subscriber" in caplog.text


class TestZeroCost:
    async def test_no_event_built_when_nobody_listens(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """With no subscriber and logging as a fresh install leaves it, a successful run builds no Event."""
        built: list[str] = []
        real = ckflow._events.Event

        def counting(**fields: Any) -> ckflow.Event:
            built.append(fields["name"])
            return real(**fields)

        monkeypatch.setattr(ckflow._events, "Event", counting)

        result = await ckflow.run(two_tasks())
        assert result.state is FlowState.SUCCESS
        assert built == []

        # the counter does see events when someone listens
        await ckflow.run(two_tasks(), on_event=EventRecorder())
        assert len(built) == len(SUCCESS_LOG)
