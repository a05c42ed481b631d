"""GET /runs/{id}/events: Server-Sent Events, the stored history then live, resumable with Last-Event-ID.

Ended runs are read in process (httpx.ASGITransport, which hands over a response once it is complete). Live
streams are read from a real uvicorn on loopback, in the test's own event loop, so that the test can read part of
a stream, open a task's gate, and read on. The meeting of history and live stream (an event the store has not
committed yet) is tested on ``sse_events`` itself with a store that commits when the test says.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from typing import TYPE_CHECKING, Any

import anyio
import httpx
from fastapi import FastAPI
from tests.test_fastapi import served

import ckflow
import ckflow.fastapi
from ckflow import Checkpoint, Engine, Event, EventsOverflowError, FlowState, Linear, task
from ckflow._fastapi_events import sse_events

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable
    from pathlib import Path

_names = itertools.count()


def gated(started: anyio.Event, gate: anyio.Event) -> Linear:
    """make -> [checkpoint c] hold (sets started, waits for gate) -> last; registered afresh."""

    @task(provides="a")
    async def make() -> int:
        return 1

    @task(provides="b")
    async def hold(a: int) -> int:
        started.set()
        await gate.wait()
        return a + 1

    @task
    async def last(b: int) -> None:
        return None

    flow = Linear(f"sse-{next(_names)}", make, Linear("held", Checkpoint("c"), hold, last))
    ckflow.register_flow(flow.name, flow)
    return flow


def app_on(store: str | None) -> FastAPI:
    app = FastAPI(lifespan=ckflow.fastapi.lifespan(store))
    app.include_router(ckflow.fastapi.router(), prefix="/ckflow")
    return app


def parse(text: str) -> list[dict[str, str]]:
    """The SSE messages of ``text`` as dicts of their fields (comments dropped)."""
    messages = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        if fields:
            messages.append(fields)
    return messages


def seqs(messages: Iterable[dict[str, str]]) -> list[int]:
    return [int(m["id"]) for m in messages if "id" in m]


@contextlib.asynccontextmanager
async def in_process(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Engine]]:
    app = app_on(f"sqlite:///{tmp_path / 'runs.db'}")
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app/ckflow") as client:
            yield client, app.state.ckflow


async def ended_run(engine: Engine) -> str:
    started, gate = anyio.Event(), anyio.Event()
    gate.set()
    run = await engine.start(gated(started, gate), run_id="done")
    assert (await run.wait()).state is FlowState.SUCCESS
    return run.id


class TestEndedRun:
    async def test_the_whole_history_in_order_then_end(self, tmp_path: Path) -> None:
        with anyio.fail_after(10):
            async with in_process(tmp_path) as (client, engine):
                run_id = await ended_run(engine)
                response = await client.get(f"/runs/{run_id}/events")
                assert engine.store is not None
                stored = await engine.store.events(run_id)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        messages = parse(response.text)
        assert seqs(messages) == [e.seq for e in stored] == list(range(len(stored)))
        for message, event in zip(messages, stored, strict=False):
            assert message["event"] == event.name
            assert Event.model_validate_json(message["data"]) == event
        assert messages[-1] == {"event": "end", "data": '{"state":"SUCCESS"}'}

    async def test_last_event_id_and_after_give_only_the_events_after_it(self, tmp_path: Path) -> None:
        with anyio.fail_after(10):
            async with in_process(tmp_path) as (client, engine):
                run_id = await ended_run(engine)
                header = await client.get(f"/runs/{run_id}/events", headers={"Last-Event-ID": "3"})
                query = await client.get(f"/runs/{run_id}/events", params={"after": 3})
                everything = await client.get(f"/runs/{run_id}/events")
        expected = seqs(parse(everything.text))[4:]
        assert expected
        assert seqs(parse(header.text)) == seqs(parse(query.text)) == expected

    async def test_unknown_run_404_and_a_bad_last_event_id_422(self, tmp_path: Path) -> None:
        with anyio.fail_after(10):
            async with in_process(tmp_path) as (client, engine):
                missing = await client.get("/runs/nope/events")
                run_id = await ended_run(engine)
                bad = await client.get(f"/runs/{run_id}/events", headers={"Last-Event-ID": "abc"})
        assert missing.status_code == 404
        assert bad.status_code == 422


async def read_until(lines: AsyncIterator[str], done: Any) -> list[dict[str, str]]:
    """Read SSE messages from ``lines`` until ``done(message)`` is true for one (returned last)."""
    messages: list[dict[str, str]] = []
    fields: dict[str, str] = {}
    async for line in lines:
        if line:
            if not line.startswith(":"):
                key, _, value = line.partition(": ")
                fields[key] = value
            continue
        if fields:
            messages.append(fields)
            if done(fields):
                return messages
            fields = {}
    return messages


def running(task_name: str) -> Any:
    return lambda m: m.get("event") == "ckflow.task.running" and json.loads(m["data"])["task"] == task_name


def is_end(message: dict[str, str]) -> bool:
    return message.get("event") == "end"


@contextlib.asynccontextmanager
async def live(store: str | None) -> AsyncIterator[tuple[httpx.AsyncClient, Engine]]:
    """The router (under /ckflow) on a real uvicorn in this loop, on ``store``: a client and the app's engine."""
    app = app_on(store)
    with anyio.fail_after(15):
        async with served(app) as base, httpx.AsyncClient(base_url=f"{base}/ckflow") as client:
            yield client, app.state.ckflow


class TestLive:
    async def test_history_then_live_without_gap_or_duplicate(self, tmp_path: Path) -> None:
        started, gate = anyio.Event(), anyio.Event()
        flow = gated(started, gate)
        async with live(f"sqlite:///{tmp_path / 'runs.db'}") as (client, engine):
            run = await engine.start(flow, run_id="live")
            await started.wait()  # `make` has ended and `hold` runs: the stream starts with a history
            async with client.stream("GET", "/runs/live/events") as response:
                lines = response.aiter_lines()
                before = await read_until(lines, running("hold"))
                gate.set()
                after = await read_until(lines, is_end)
            assert (await run.wait()).state is FlowState.SUCCESS
            assert engine.store is not None
            stored = [e.seq for e in await engine.store.events("live")]
        assert after[-1] == {"event": "end", "data": '{"state":"SUCCESS"}'}
        assert seqs(before + after) == stored == list(range(len(stored)))

    async def test_a_client_that_reconnects_with_last_event_id_misses_nothing(self, tmp_path: Path) -> None:
        started, gate = anyio.Event(), anyio.Event()
        flow = gated(started, gate)
        async with live(f"sqlite:///{tmp_path / 'runs.db'}") as (client, engine):
            run = await engine.start(flow, run_id="again")
            async with client.stream("GET", "/runs/again/events") as response:
                first = await read_until(response.aiter_lines(), running("hold"))
            last_id = first[-1]["id"]
            gate.set()
            async with client.stream("GET", "/runs/again/events", headers={"Last-Event-ID": last_id}) as response:
                rest = await read_until(response.aiter_lines(), is_end)
            await run.wait()
            assert engine.store is not None
            stored = [e.seq for e in await engine.store.events("again")]
        assert seqs(first + rest) == stored

    async def test_without_a_store_live_events_come_without_ids(self) -> None:
        started, gate = anyio.Event(), anyio.Event()
        flow = gated(started, gate)
        async with live(None) as (client, engine):
            await engine.start(flow, run_id="bare")
            await started.wait()
            async with client.stream("GET", "/runs/bare/events") as response:
                lines = response.aiter_lines()
                gate.set()
                messages = await read_until(lines, is_end)
        assert messages[-1] == {"event": "end", "data": '{"state":"SUCCESS"}'}
        assert [m["event"] for m in messages[:-1]][-1] == "ckflow.run.success"
        assert not seqs(messages)


def event(seq: int, name: str = "ckflow.task.success") -> Event:
    return Event(name=name, run_id="r", flow="f", task="t", monotonic=0.0, wall=0.0, seq=seq)


class LaggingStore:
    """A store whose committed events grow when the test says (``commit``); it notes each read."""

    def __init__(self, committed: list[Event]) -> None:
        self.committed = committed
        self.read = anyio.Event()

    async def events(self, run_id: str, *, after: int = -1, limit: int | None = None) -> list[Event]:
        self.read.set()
        found = [e for e in self.committed if e.seq is not None and e.seq > after]
        return found[:limit]


class FakeRun:
    """A run handle whose live streams are given by the test; it ends SUCCESS."""

    def __init__(self, *streams: Any) -> None:
        self.id = "r"
        self.state = FlowState.RUNNING
        self._streams = list(streams)

    def events(self) -> Any:
        return self._streams.pop(0)

    async def wait(self) -> Any:
        self.state = FlowState.SUCCESS
        return self


class Stream:
    """A live stream that yields ``events`` (then raises ``end`` if given, else ends)."""

    def __init__(self, events: list[Event], end: BaseException | None = None, before: Any = None) -> None:
        self._events = events
        self._end = end
        self._before = before

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def __aiter__(self) -> AsyncIterator[Event]:
        if self._before is not None:
            await self._before()
        for e in self._events:
            yield e
        if self._end is not None:
            raise self._end


async def collect(run: Any, store: Any, after: int = -1) -> list[int]:
    return seqs(parse("".join([chunk async for chunk in sse_events(run, store, after)])))


class TestMeeting:
    async def test_a_live_event_ahead_of_the_store_waits_for_the_commit_of_the_ones_before(self) -> None:
        """History 0-1 is committed, live starts at 4: 2-3 are read once the store has committed them."""
        store = LaggingStore([event(0), event(1)])

        async def commit_later() -> None:
            await store.read.wait()
            store.read = anyio.Event()
            await store.read.wait()  # the stream has looked for 2-3 once and found nothing
            store.committed += [event(2), event(3), event(4)]

        run = FakeRun(Stream([event(1), event(4), event(5)]))
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(commit_later)
                got = await collect(run, store)
        assert got == [0, 1, 2, 3, 4, 5]

    async def test_a_subscriber_cut_off_subscribes_again_and_fills_the_gap(self) -> None:
        store = LaggingStore([event(0), event(1), event(2), event(3), event(4), event(5)])
        run = FakeRun(Stream([event(1)], end=EventsOverflowError("r", 1)), Stream([event(5)]))
        with anyio.fail_after(5):
            got = await collect(run, store, after=0)
        assert got == [1, 2, 3, 4, 5]


class TestTracebacks:
    @staticmethod
    def failing() -> Linear:
        @task
        async def broken() -> None:
            raise RuntimeError("disk on fire")

        flow = Linear(f"sse-fail-{next(_names)}", broken)
        ckflow.register_flow(flow.name, flow)
        return flow

    async def read(self, tmp_path: Path, **router_options: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The failure of each event of an ended failed run, and its view, through a router with these options."""
        app = FastAPI(lifespan=ckflow.fastapi.lifespan(f"sqlite:///{tmp_path / 'runs.db'}"))
        app.include_router(ckflow.fastapi.router(**router_options))
        with anyio.fail_after(10):
            async with app.router.lifespan_context(app):
                engine: Engine = app.state.ckflow
                run = await engine.start(self.failing(), run_id="broken")
                await run.wait()
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                    stream = await client.get("/runs/broken/events")
                    view = (await client.get("/runs/broken")).json()
        failures = [json.loads(m["data"])["failure"] for m in parse(stream.text) if "id" in m]
        return [f for f in failures if f is not None], view

    async def test_events_and_views_carry_type_and_message_without_the_traceback(self, tmp_path: Path) -> None:
        failures, view = await self.read(tmp_path)
        assert failures
        assert all(f["exc_type"] == "RuntimeError" and f["message"] == "disk on fire" for f in failures)
        assert all(f["traceback"] == "" for f in failures)
        assert "Traceback" not in json.dumps(view)

    async def test_an_app_that_opts_in_gets_them(self, tmp_path: Path) -> None:
        failures, view = await self.read(tmp_path, tracebacks=True)
        assert failures
        assert all("disk on fire" in f["traceback"] for f in failures)
        assert "disk on fire" in json.dumps(view["failures"])
        assert "Traceback" in json.dumps(view)
