"""``ckflow.RunView``: a run as clients read it (DESIGN §12, "the run view"), whatever the handle."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import ckflow
from ckflow import Checkpoint, Engine, FlowState, Linear, Retry, RunView, TaskState, TaskView, task

if TYPE_CHECKING:
    from pathlib import Path


class Gated:
    """first (blocks on `gate` once `entered` is set) -> second -> third: a run held mid-flight."""

    def __init__(self) -> None:
        self.gate = anyio.Event()
        self.entered = anyio.Event()
        gate, entered = self.gate, self.entered

        @task(provides="volume")
        async def first(size: int) -> dict[str, int]:
            entered.set()
            await gate.wait()
            return {"size": size}

        @task(provides="disk")
        async def second(volume: dict[str, int]) -> str:
            return f"disk-{volume['size']}"

        @task(provides="done")
        async def third(disk: str) -> bool:
            return bool(disk)

        self.flow = Linear("view-gated", first, second, third)


def assert_utc(moment: datetime | None) -> None:
    assert moment is not None
    assert moment.utcoffset() == timedelta(0)


def assert_json_times(doc: dict[str, Any]) -> None:
    """Every task time in a JSON dump parses as ISO 8601 in UTC; every duration is >= 0."""
    for t in doc["tasks"]:
        for key in ("started_at", "ended_at"):
            if t[key] is not None:
                assert datetime.fromisoformat(t[key]).utcoffset() == timedelta(0)
        if t["duration"] is not None:
            assert t["duration"] >= 0


class TestLiveRun:
    """A run this engine holds, read mid-flight and once it has ended."""

    async def test_mid_flight_lists_every_task(self) -> None:
        """Mid-run: the running task is RUNNING with a start and no end; tasks not started are PENDING, 0 attempts."""
        g = Gated()
        async with Engine() as engine:
            run = await engine.start(g.flow, inputs={"size": 3})
            await g.entered.wait()
            view = await run.view()
            g.gate.set()
            await run.wait()
        assert view.state is FlowState.RUNNING
        assert [t.name for t in view.tasks] == ["first", "second", "third"]
        first, second, third = view.tasks
        assert (first.state, first.attempts, first.ended_at, first.duration) == (TaskState.RUNNING, 1, None, None)
        assert_utc(first.started_at)
        for t in (second, third):
            assert (t.state, t.attempts, t.started_at, t.duration) == (TaskState.PENDING, 0, None, None)
        assert view.outputs is None
        assert view.inputs == {"size": 3}

    async def test_ended_run(self) -> None:
        """An ended run: every task SUCCESS with UTC times that parse, durations >= 0, outputs as JSON data."""
        g = Gated()
        g.gate.set()
        async with Engine() as engine:
            run = await engine.start(g.flow, inputs={"size": 3})
            await run.wait()
            view = await run.view()
        assert view.state is FlowState.SUCCESS
        assert all(t.state is TaskState.SUCCESS and t.attempts == 1 for t in view.tasks)
        for t in view.tasks:
            assert_utc(t.started_at)
            assert_utc(t.ended_at)
            assert t.duration is not None
            assert t.duration >= 0
        assert_utc(view.created_at)
        assert_utc(view.ended_at)
        doc = view.model_dump(mode="json")
        assert_json_times(doc)
        assert doc["outputs"] == {"volume": {"size": 3}, "disk": "disk-3", "done": True}
        assert doc["inputs"] == {"size": 3}

    async def test_retried_task_duration_is_never_negative(self) -> None:
        """A task on its second attempt has no end and no duration (not the first attempt's); once done, >= 0."""
        second_try = anyio.Event()
        gate = anyio.Event()
        calls = 0

        @task(provides="x")
        async def flaky() -> int:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise ValueError("first try fails")
            second_try.set()
            await gate.wait()
            return calls

        flow = Linear("retried", Checkpoint("c", retry=Retry(attempts=3, delay=0)), flaky)
        async with Engine() as engine:
            run = await engine.start(flow)
            await second_try.wait()
            during = (await run.view()).tasks[0]
            gate.set()
            await run.wait()
            after = (await run.view()).tasks[0]
        assert (during.state, during.attempts, during.ended_at, during.duration) == (TaskState.RUNNING, 2, None, None)
        assert after.attempts == 2
        assert after.duration is not None
        assert after.duration >= 0
        assert after.started_at is not None
        assert after.ended_at is not None
        assert after.ended_at >= after.started_at


class TestFailures:
    """Failures show type and message; tracebacks only when asked for."""

    @staticmethod
    async def failed_view(*, tracebacks: bool) -> RunView:
        @task
        async def boom() -> None:
            raise ValueError("disk full")

        async with Engine() as engine:
            run = await engine.start(Linear("failing", boom))
            await run.wait()
            return await run.view(tracebacks=tracebacks)

    async def test_tracebacks_off_by_default(self) -> None:
        """By default a failure has its type and message and no traceback, in the model and its JSON."""
        view = await self.failed_view(tracebacks=False)
        assert view.state is not FlowState.SUCCESS
        failure = view.tasks[0].failure
        assert failure is not None
        assert (failure.type, failure.message, failure.traceback) == ("ValueError", "disk full", None)
        assert [f.traceback for f in view.failures] == [None]
        assert "Traceback" not in view.model_dump_json()

    async def test_tracebacks_when_asked(self) -> None:
        """view(tracebacks=True) includes each failure's formatted traceback."""
        view = await self.failed_view(tracebacks=True)
        assert [f.type for f in view.failures] == ["ValueError"]
        assert view.failures[0].traceback is not None
        assert "Traceback" in view.failures[0].traceback
        assert "disk full" in view.failures[0].traceback


class TestFromResult:
    """RunView.of(result), for what ckflow.run returns."""

    async def test_of_result(self) -> None:
        """The view of a RunResult: every task, wall-clock UTC times, inputs and outputs as JSON objects."""
        g = Gated()
        g.gate.set()
        result = await ckflow.run(g.flow, inputs={"size": 5})
        view = RunView.of(result)
        doc = json.loads(view.model_dump_json())
        assert doc["state"] == "SUCCESS"
        assert doc["inputs"] == {"size": 5}
        assert doc["outputs"] == {"volume": {"size": 5}, "disk": "disk-5", "done": True}
        assert_json_times(doc)
        now = datetime.now(UTC)
        for t in view.tasks:
            assert t.started_at is not None
            assert now - timedelta(minutes=5) < t.started_at <= now

    async def test_odd_output_does_not_break_the_view(self) -> None:
        """An output pydantic cannot serialise is shown as its repr; bytes as base64; the view still dumps."""

        class Odd:
            def __repr__(self) -> str:
                return "<Odd>"

        @task(provides="odd")
        async def make() -> Odd:
            return Odd()

        @task(provides="raw")
        async def raw() -> bytes:
            return b"\x00\x01"

        result = await ckflow.run(Linear("odd", make, raw))
        doc = json.loads(RunView.of(result).model_dump_json())
        assert doc["outputs"] == {"odd": "<Odd>", "raw": "AAE="}


class TestStored:
    """A handle through the store (engine.attach from a second engine) and `ckflow show --json`."""

    async def test_attached_lists_every_task(self, tmp_path: Path) -> None:
        """A second engine's attached handle lists every task of the flow mid-run, then the ended run's outputs."""
        url = f"sqlite:///{tmp_path / 'runs.db'}"
        g = Gated()
        async with Engine(store=url, id="owner") as owner, Engine(store=url, id="reader") as reader:
            run = await owner.start(g.flow, inputs={"size": 4}, run_id="v1")
            await g.entered.wait()
            attached = await reader.attach("v1", flow=g.flow)
            assert not attached.local
            mid = await attached.view()
            bare = await (await reader.attach("v1")).view()
            g.gate.set()
            await run.wait()
            ended = await attached.view()
        assert [(t.name, t.state, t.attempts) for t in mid.tasks] == [
            ("first", TaskState.RUNNING, 1),
            ("second", TaskState.PENDING, 0),
            ("third", TaskState.PENDING, 0),
        ]
        # without the flow (not passed, not registered) only the recorded tasks are known
        assert [t.name for t in bare.tasks] == ["first"]
        assert mid.inputs == {"size": 4}
        assert mid.outputs is None
        doc = ended.model_dump(mode="json")
        assert doc["state"] == "SUCCESS"
        assert doc["inputs"] == {"size": 4}
        assert doc["outputs"] == {"volume": {"size": 4}, "disk": "disk-4", "done": True}
        assert_json_times(doc)
        assert all(t["duration"] is not None for t in doc["tasks"])
        assert datetime.fromisoformat(doc["created_at"]) <= datetime.fromisoformat(doc["ended_at"])


class Money:
    """A type pydantic cannot serialise, given a codec in the test below."""

    def __init__(self, cents: int) -> None:
        self.cents = cents


class TestCodec:
    """A value of a registered codec's type is shown as its codec writes it, live and from the store."""

    async def test_codec_value_live_and_stored(self, tmp_path: Path) -> None:
        """Live and stored views show the codec's data, not a repr and not the store's tagged form."""
        ckflow.register_codec(Money, encode=lambda m: {"cents": m.cents}, decode=lambda d: Money(d["cents"]),
                              name="tests.view.Money")  # fmt: skip

        @task(provides="price")
        async def price() -> Money:
            return Money(250)

        flow = Linear("view-codec", price)
        async with Engine(store=f"sqlite:///{tmp_path / 'runs.db'}") as engine:
            run = await engine.start(flow, run_id="c1")
            await run.wait()
            live = (await run.view()).model_dump(mode="json")
        async with Engine(store=f"sqlite:///{tmp_path / 'runs.db'}") as other:
            stored = (await (await other.attach("c1")).view()).model_dump(mode="json")
        assert live["outputs"] == stored["outputs"] == {"price": {"cents": 250}}


class TestSchema:
    """RunView has a JSON schema, for OpenAPI."""

    def test_json_schema(self) -> None:
        """model_json_schema() names every field, the nested task and failure views, and the state enums."""
        schema = RunView.model_json_schema()
        assert {"run_id", "flow", "state", "inputs", "outputs", "tasks", "failures"} <= set(schema["properties"])
        assert {"TaskView", "FailureView", "FlowState", "TaskState"} <= set(schema["$defs"])
        task_props = schema["$defs"]["TaskView"]["properties"]
        assert task_props["started_at"]["anyOf"][0] == {"format": "date-time", "type": "string"}


@pytest.mark.parametrize("tracebacks", [False, True])
def test_failure_view_of_keeps_type_and_message(tracebacks: bool) -> None:
    """FailureView.of keeps type and message, and the traceback only when asked."""
    try:
        raise KeyError("k")
    except KeyError as exc:
        failure = ckflow.Failure.from_exception("t", "execute", exc)
    view = ckflow.FailureView.of(failure, tracebacks=tracebacks)
    assert (view.type, view.message, view.kind) == ("KeyError", "'k'", "execute")
    assert (view.traceback is not None) is tracebacks


class TestTaskTimes:
    """A task's end and duration come only from its current execute."""

    @pytest.mark.parametrize("state", [TaskState.RUNNING, TaskState.PENDING, TaskState.SUCCESS])
    def test_an_earlier_end_is_dropped(self, state: TaskState) -> None:
        """An end before the start (an earlier attempt's), or any end while not ended, gives no end, no duration."""
        running = TaskView.build("t", state, 2, (100.0, 99.9), None, False)
        assert (running.ended_at, running.duration) == (None, None)
        assert running.started_at == datetime.fromtimestamp(100.0, UTC)

    def test_end_while_running_is_dropped(self) -> None:
        """A RUNNING task shows no end even if a later end is recorded (a stale record)."""
        view = TaskView.build("t", TaskState.RUNNING, 1, (100.0, 101.0), None, False)
        assert (view.ended_at, view.duration) == (None, None)

    def test_ended_task_has_its_duration(self) -> None:
        """An ended task's duration is its end minus its start."""
        view = TaskView.build("t", TaskState.SUCCESS, 1, (100.0, 101.5), None, False)
        assert view.duration == pytest.approx(1.5)
