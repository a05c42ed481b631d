"""Events: one pydantic model per transition, to subscribers and to structlog (DESIGN §8, STYLE 35-36)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import anyio
import pytest
import structlog
from structlog.testing import capture_logs

import ckflow
import ckflow._events
from ckflow import Engine, FlowState, Linear, task
from ckflow.testing import EventRecorder

if TYPE_CHECKING:
    from collections.abc import Iterator

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


@pytest.fixture
def debug_logging() -> Iterator[None]:
    """Let ckflow's debug events through structlog for one test."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    yield
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


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

    async def test_raising_callback_is_dropped(self) -> None:
        """A callback that raises is called once, then dropped; the run goes on and is unaffected."""
        calls: list[str] = []
        events = EventRecorder()

        def bad(event: ckflow.Event) -> None:
            calls.append(event.name)
            raise RuntimeError("bad subscriber")

        async with Engine() as engine:
            run = await engine.start(two_tasks(), on_event=bad)
            run.subscribe(events)
            with capture_logs() as logs:
                result = await run.wait()
        assert result.state is FlowState.SUCCESS
        assert calls == ["ckflow.run.running"]
        assert [(e.name, e.task) for e in events.events] == SUCCESS_LOG
        assert [entry["event"] for entry in logs] == ["ckflow.events.callback_failed"]

    async def test_a_callback_failing_on_a_failure_is_logged_with_its_exception(self) -> None:
        """A callback that raises on a task's failure event is logged with its own exception, even though its
        line waits behind the failure's (written once the revert has started)."""

        def bad(event: ckflow.Event) -> None:
            if event.name == "ckflow.task.failure":
                raise RuntimeError("bad subscriber")

        with capture_logs() as logs:
            result = await ckflow.run(failing_flow(), on_event=bad)
        assert result.state is FlowState.REVERTED
        [entry] = [entry for entry in logs if entry["event"] == "ckflow.events.callback_failed"]
        assert isinstance(entry["exc_info"], RuntimeError)
        assert str(entry["exc_info"]) == "bad subscriber"


class TestStructlog:
    async def test_transitions_logged_with_run_id(self, debug_logging: None, monkeypatch: pytest.MonkeyPatch) -> None:
        """Transitions are logged to the 'ckflow' structlog logger with run_id bound and old/new/attempt keys."""
        names: list[Any] = []
        real = structlog.get_logger

        def spy(*args: Any, **kwargs: Any) -> Any:
            names.append(args[0] if args else None)
            return real(*args, **kwargs)

        monkeypatch.setattr(structlog, "get_logger", spy)
        with capture_logs() as logs:
            result = await ckflow.run(failing_flow(), run_id="r-9")
        assert result.state is FlowState.REVERTED
        assert set(names) == {"ckflow"}
        assert logs
        assert {entry["run_id"] for entry in logs} == {"r-9"}
        [failure] = [entry for entry in logs if entry["event"] == "ckflow.task.failure"]
        assert failure["log_level"] == "warning"
        assert failure["task"] == "boom"
        assert (failure["old"], failure["new"], failure["attempt"]) == ("RUNNING", "FAILURE", 1)
        assert failure["checkpoint"] == "l"
        assert "ValueError" in failure["error"]
        reverted = [entry["task"] for entry in logs if entry["event"] == "ckflow.task.reverted"]
        assert reverted == ["boom", "a"]
        assert logs[-1]["event"] == "ckflow.run.reverted"

    async def test_levels_filter_early(self) -> None:
        """At WARNING level only the failure and its consequences are logged, not the routine transitions."""
        with capture_logs() as logs:
            await ckflow.run(two_tasks())
            await ckflow.run(failing_flow())
        assert [entry["event"] for entry in logs] == ["ckflow.task.failure"]

    async def test_failure_line_waits_for_the_revert_and_keeps_its_place(self, debug_logging: None) -> None:
        """A task's failure reaches subscribers at once but the log only once its revert has started (a log
        write never delays a revert); the log lines come in the order of the events all the same."""
        names: list[str] = []
        at_revert: dict[str, list[str]] = {}

        @task
        async def boom() -> None:
            raise ValueError("boom")

        @boom.revert
        async def _(result: object) -> None:
            at_revert["events"] = list(names)
            at_revert["log"] = [entry["event"] for entry in logs]

        with capture_logs() as logs:
            result = await ckflow.run(Linear("l", boom), on_event=lambda e: names.append(e.name))
        assert result.state is FlowState.REVERTED
        assert "ckflow.task.failure" in at_revert["events"]
        assert "ckflow.task.failure" not in at_revert["log"]
        assert [entry["event"] for entry in logs] == names

    async def test_held_lines_are_written_when_the_loop_goes_round_or_the_run_ends(self) -> None:
        """Lines held behind a failure are written, in order, once the loop goes round, or at close()."""
        for finish in ("loop", "close"):
            hub = ckflow._events.EventHub("r", "f")
            with capture_logs() as logs:
                hub.emit(ckflow._events.WARNING, "ckflow.task.failure", task="t", defer_log=True)
                hub.emit(ckflow._events.WARNING, "ckflow.walker.exhausted", task="t")
                assert logs == []
                if finish == "loop":
                    await anyio.lowlevel.checkpoint()
                else:
                    hub.close()
                assert [entry["event"] for entry in logs] == ["ckflow.task.failure", "ckflow.walker.exhausted"]


class TestZeroCost:
    async def test_no_event_built_when_nobody_listens(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """With no subscriber and structlog filtered at WARNING, a successful run builds no Event."""
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
