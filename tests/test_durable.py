"""Durable runs: what a store records, and when (DESIGN §7)."""

from __future__ import annotations

import datetime
import functools
import sqlite3
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import pydantic
import pytest
from tests.support import WatchedStore

import ckflow
from ckflow import Checkpoint, Engine, FlowState, Linear, Parallel, Retry, TaskState, task
from ckflow.stores import SCHEMA_VERSION, MemoryStore, open_store
from ckflow.testing import EventRecorder

if TYPE_CHECKING:
    from pathlib import Path


def chain(log: list[str]) -> ckflow.Linear:
    @task(provides="a")
    async def a(x: int) -> int:
        log.append("a")
        return x + 1

    @task(provides="b")
    async def b(a: int) -> int:
        log.append("b")
        return a * 10

    return Linear("chain", a, b)


def flaky_disk(log: list[object]) -> ckflow.Linear:
    """create -> [checkpoint disk, Retry(3)] attach (fails on attempt 1), with net in parallel."""

    @task(provides="volume")
    async def create() -> str:
        log.append("create")
        return "vol"

    @task(provides="attachment")
    async def attach(volume: str) -> str:
        attempt = ckflow.current().attempt
        log.append(("attach", attempt))
        if attempt == 1:
            raise RuntimeError("storage busy")
        return f"{volume}@vdb"

    @attach.revert
    async def _(volume: str, result: object) -> None:
        log.append("undo attach")

    @task(provides="net")
    async def net() -> str:
        log.append("net")
        return "10.0.0.1"

    return Linear(
        "boot",
        create,
        Parallel("prepare", Linear("disk", Checkpoint("disk", retry=Retry(attempts=3)), attach), net),
    )


class TestRecords:
    """A durable run leaves a faithful record of itself in its store."""

    async def test_run_and_task_records(self) -> None:
        """The run record ends SUCCESS with no owner; each task record holds its state, attempts and result."""
        store = MemoryStore()
        async with Engine(store=store) as engine:
            run = await engine.start(chain([]), {"x": 1}, run_id="r")
            result = await run.wait()
        assert result.outputs == {"a": 2, "b": 20}
        record = await store.get_run("r")
        assert record.state is FlowState.SUCCESS
        assert record.owner is None
        assert record.ended_at is not None
        assert record.inputs == '{"x":1}'
        tasks = {t.task: t for t in await store.tasks("r")}
        assert {n: (t.state, t.attempts, t.result) for n, t in tasks.items()} == {
            "a": (TaskState.SUCCESS, 1, "2"),
            "b": (TaskState.SUCCESS, 1, "20"),
        }
        assert tasks["a"].started_at is not None
        assert tasks["a"].ended_at is not None

    async def test_every_event_is_stored_in_order_with_its_seq(self) -> None:
        """Every event is stored, numbered 0, 1, 2...; live subscribers see the same numbers."""
        store = MemoryStore()
        recorder = EventRecorder()
        async with Engine(store=store) as engine:
            run = await engine.start(chain([]), {"x": 1}, run_id="r", on_event=recorder)
            await run.wait()
        stored = await store.events("r")
        assert [e.seq for e in stored] == list(range(len(stored)))
        assert [e.name for e in stored] == [
            "ckflow.run.running",
            "ckflow.task.running",
            "ckflow.task.success",
            "ckflow.task.running",
            "ckflow.task.success",
            "ckflow.run.success",
        ]
        assert [(e.seq, e.name) for e in recorder.events] == [(e.seq, e.name) for e in stored]

    async def test_checkpoint_pass_holds_attempts_history_and_snapshot(self) -> None:
        """A completed scope's pass record holds its attempts, the failures retried, and the values it produced."""
        store = MemoryStore()
        async with Engine(store=store) as engine:
            await (await engine.start(flaky_disk([]), run_id="r")).wait()
        (disk,) = await store.checkpoints("r", "disk")
        assert disk.state == "completed"
        assert disk.pass_no == 1
        assert disk.attempts == 2
        assert [f.message for f in disk.history] == ["storage busy"]
        assert disk.snapshot == '{"attachment":"vol@vdb"}'
        assert disk.tasks["attach"].state is TaskState.SUCCESS
        assert disk.tasks["attach"].attempts == 2

    async def test_root_pass_snapshot_holds_the_outputs(self) -> None:
        """When the run succeeds, the root checkpoint (named after the flow) records every output."""
        store = MemoryStore()
        async with Engine(store=store) as engine:
            await (await engine.start(chain([]), {"x": 1}, run_id="r")).wait()
        (root,) = await store.checkpoints("r", "chain")
        assert root.state == "completed"
        assert root.snapshot == '{"a":2,"b":20}'

    async def test_retries_are_recorded_per_checkpoint(self) -> None:
        """A task record counts its retries under each checkpoint, and its executions overall."""
        store = MemoryStore()
        async with Engine(store=store) as engine:
            await (await engine.start(flaky_disk([]), run_id="r")).wait()
        attach = next(t for t in await store.tasks("r") if t.task == "attach")
        assert attach.retries == {"disk": 1}
        assert attach.attempts == 2
        assert attach.failure is None

    async def test_failures_are_stored_as_events(self) -> None:
        """Execute failures are stored with the failure events; a resumed run reports them in result.failures."""
        store = MemoryStore()
        async with Engine(store=store) as engine:
            await (await engine.start(flaky_disk([]), run_id="r")).wait()
        stored = await store.load("r")
        assert [(f.task, f.message) for f in stored.failures] == [("attach", "storage busy")]


class TestDurability:
    """What must be in the store before what follows it may happen."""

    async def test_consumer_starts_after_its_provider_is_stored(self) -> None:
        """A task's result is in the store before any task that consumes it starts."""
        store = MemoryStore()
        seen: list[TaskState] = []

        @task(provides="a")
        async def a() -> int:
            return 1

        @task
        async def b(a: int) -> None:
            record = next(t for t in await store.tasks(ckflow.current().run_id) if t.task == "a")
            seen.append(record.state)

        async with Engine(store=store) as engine:
            await (await engine.start(Linear("l", a, b))).wait()
        assert seen == [TaskState.SUCCESS]

    async def test_concurrent_completions_share_a_write(self) -> None:
        """Tasks that complete together are written in one transaction (group commit), not one each."""
        store = WatchedStore()

        def t(i: int) -> ckflow.Task:
            @task(name=f"t{i}")
            async def run() -> int:
                return i

            return run

        async with Engine(store=store) as engine:
            await (await engine.start(Parallel("p", *(t(i) for i in range(50))))).wait()
        assert len(store.batches) <= 3
        assert sum(len(b.tasks) for b in store.batches) >= 50

    async def test_region_is_stored_before_its_first_revert(self) -> None:
        """The walker's decision (region record and the failure) is in the store before a revert starts."""
        store = MemoryStore()
        seen: list[Any] = []

        @task(provides="v")
        async def a() -> int:
            return 1

        @a.revert
        async def _(result: object) -> None:
            stored = await store.load(ckflow.current().run_id)
            seen.append(([r.checkpoint for r in stored.regions], [f.message for f in stored.failures]))

        @task
        async def b(v: int) -> None:
            raise RuntimeError("no")

        async with Engine(store=store) as engine:
            result = await (await engine.start(Linear("l", a, b))).wait()
        assert result.state is FlowState.REVERTED
        assert seen == [(["l"], ["no"])]

    async def test_suspended_state_is_stored_before_suspend_returns(self) -> None:
        """When run.suspend() returns, the store says SUSPENDED."""
        store = MemoryStore()
        gate = anyio.Event()

        @task
        async def slow() -> None:
            await gate.wait()

        @task
        async def after() -> None: ...

        async with Engine(store=store) as engine:
            run = await engine.start(Linear("l", slow, after))
            async with anyio.create_task_group() as tg:
                tg.start_soon(run.suspend)
                await anyio.lowlevel.checkpoint()
                gate.set()
            assert (await store.get_run(run.id)).state is FlowState.SUSPENDED
            await run.resume()
            assert (await run.wait()).state is FlowState.SUCCESS

    async def test_the_end_is_stored_before_wait_returns(self) -> None:
        """When run.wait() returns, the store has the run's final state and end time."""
        store = MemoryStore()
        async with Engine(store=store) as engine:
            run = await engine.start(chain([]), {"x": 1})
            await run.wait()
            record = await store.get_run(run.id)
            assert record.state is FlowState.SUCCESS
            assert record.ended_at is not None


class Opaque:
    """A type neither pydantic nor JSON knows."""


@dataclass(frozen=True)
class Money:
    cents: int
    currency: str


@dataclass(frozen=True)
class Coupon:
    code: str


class Volume(pydantic.BaseModel):
    name: str
    size: int


class TestValues:
    """What can be stored, and how it comes back after a resume."""

    async def test_unserialisable_result_fails_the_task_and_goes_through_the_walker(self) -> None:
        """A result that cannot be stored fails its task with an error naming it and the type; the walker reverts."""
        log: list[object] = []

        @task(provides="v")
        async def first() -> int:
            return 1

        @first.revert
        async def _(result: object) -> None:
            log.append("undo first")

        @task(provides="o")
        async def opaque(v: int) -> Opaque:
            return Opaque()

        @opaque.revert
        async def _(v: int, result: object) -> None:
            assert isinstance(result, ckflow.Failure)
            log.append(("undo opaque", result.exc_type))

        store = MemoryStore()
        async with Engine(store=store) as engine:
            result = await (await engine.start(Linear("l", first, opaque), run_id="r")).wait()
        assert result.state is FlowState.REVERTED
        (failure,) = result.failures
        error = failure.exception
        assert isinstance(error, ckflow.ResultNotSerializableError)
        assert error.task == "opaque"
        assert error.type_name == "Opaque"
        assert isinstance(error.value, Opaque)
        assert "opaque" in str(error)
        assert "returned an Opaque, which cannot be stored as JSON" in str(error)
        assert log == [("undo opaque", "ckflow.ResultNotSerializableError"), "undo first"]

    async def test_unserialisable_input_is_refused_at_start(self) -> None:
        """An input that cannot be stored is refused by engine.start, naming it; nothing is stored."""

        @task
        async def use(thing: object) -> None: ...

        store = MemoryStore()
        async with Engine(store=store) as engine:
            with pytest.raises(ckflow.ResultNotSerializableError, match="'thing'") as info:
                await engine.start(Linear("l", use), {"thing": Opaque()}, run_id="r")
        assert info.value.input == "thing"
        assert "Run input 'thing' is an Opaque" in str(info.value)
        assert await store.list_runs() == []

    async def test_results_come_back_as_their_annotated_types(self) -> None:
        """After a resume, results are rebuilt through the return annotations: models, tuples, datetimes."""
        store = MemoryStore()
        gate, started = anyio.Event(), anyio.Event()
        seen: list[object] = []

        @task(provides="volume")
        async def make() -> Volume:
            return Volume(name="v", size=3)

        @task(provides="pair")
        async def pair() -> tuple[str, datetime.date]:
            return ("x", datetime.date(2026, 12, 2))

        @task
        async def use(volume: Volume, pair: tuple[str, datetime.date]) -> None:
            started.set()
            await gate.wait()
            seen.append((volume, pair))

        flow = Linear("typed", make, pair, use)
        with anyio.CancelScope() as scope:
            async with Engine(store=store) as engine:
                await engine.start(flow, run_id="r")
                await started.wait()
                scope.cancel()
        gate.set()
        async with Engine(store=store) as engine:
            await (await engine.resume("r", flow=flow)).wait()
        assert seen == [(Volume(name="v", size=3), ("x", datetime.date(2026, 12, 2)))]

    async def test_codec_round_trip(self) -> None:
        """A registered codec stores a type pydantic does not know, and rebuilds it on resume."""
        ckflow.register_codec(Money, encode=lambda m: [m.cents, m.currency], decode=lambda d: Money(*d))
        store = MemoryStore()
        gate, started = anyio.Event(), anyio.Event()
        seen: list[object] = []

        @task(provides="price")
        async def price() -> Money:
            return Money(1999, "EUR")

        @task
        async def pay(price: Money) -> None:
            started.set()
            await gate.wait()
            seen.append(price)

        flow = Linear("shop", price, pay)
        with anyio.CancelScope() as scope:
            async with Engine(store=store) as engine:
                await engine.start(flow, run_id="r")
                await started.wait()
                scope.cancel()
        stored = next(t.result for t in await store.tasks("r") if t.task == "price")
        assert stored == f'{{"__ckflow_codec__":"{Money.__module__}.Money","value":[1999,"EUR"]}}'
        gate.set()
        async with Engine(store=store) as engine:
            await (await engine.resume("r", flow=flow)).wait()
        assert seen == [Money(1999, "EUR")]

    def test_codec_arguments_are_checked(self) -> None:
        """register_codec refuses what is not a class, and a name taken by another class."""
        with pytest.raises(TypeError, match="needs a class"):
            ckflow.register_codec("Money", encode=str, decode=str)  # type: ignore[arg-type]
        ckflow.register_codec(Coupon, encode=lambda c: c.code, decode=Coupon, name="coupon-v1")
        with pytest.raises(ValueError, match="coupon-v1"):
            ckflow.register_codec(Volume, encode=str, decode=str, name="coupon-v1")


class TestBadStores:
    """A store that cannot be used is a clear, typed error when the engine opens, and nothing stored is lost."""

    async def test_corrupt_sqlite_file(self, tmp_path: Path) -> None:
        """A file that is not a SQLite database: StoreUnavailableError naming it, the file untouched."""
        path = tmp_path / "runs.db"
        path.write_bytes(b"this is not a database" * 100)
        with pytest.raises(ckflow.StoreUnavailableError, match=r"runs\.db"):
            async with Engine(store=f"sqlite:///{path}"):
                pass
        assert path.read_bytes() == b"this is not a database" * 100

    async def test_newer_schema(self, tmp_path: Path) -> None:
        """A store written by a newer ckflow: SchemaVersionError saying to upgrade, the runs in it kept."""
        path = tmp_path / "runs.db"
        async with Engine(store=f"sqlite:///{path}") as engine:
            await (await engine.start(chain([]), {"x": 1}, run_id="kept")).wait()
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE ckflow_meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
        conn.close()
        with pytest.raises(ckflow.SchemaVersionError, match="upgrade ckflow"):
            async with Engine(store=f"sqlite:///{path}"):
                pass
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE ckflow_meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
        conn.close()
        async with Engine(store=f"sqlite:///{path}") as engine:
            assert (await (await engine.attach("kept")).wait()).outputs == {"a": 2, "b": 20}

    async def test_unreachable_database(self) -> None:
        """A PostgreSQL server that is not there: StoreUnavailableError, quickly."""
        with anyio.fail_after(30):
            with pytest.raises(ckflow.StoreUnavailableError, match=r"127\.0\.0\.1"):
                async with Engine(store="postgresql://postgres@127.0.0.1:1/test?connect_timeout=2"):
                    pass

    def test_missing_driver_gives_the_pip_command(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without asyncpg, asking for a PostgreSQL store says which extra to install."""
        monkeypatch.setitem(sys.modules, "asyncpg", None)
        monkeypatch.delitem(sys.modules, "ckflow.stores.postgres", raising=False)
        with pytest.raises(ImportError, match=r"pip install 'ckflow\[postgres\]'"):
            open_store("postgresql://host/db")

    def test_unknown_scheme_lists_the_known_ones(self) -> None:
        """A URL of an unknown scheme is a ValueError that lists the schemes ckflow knows."""
        with pytest.raises(ValueError, match=r"'mysql'.*sqlite://.*postgresql://"):
            open_store("mysql://host/db")

    def test_engine_refuses_what_is_not_a_store(self) -> None:
        """Engine(store=...) takes a URL or a Store, and says so."""
        with pytest.raises(TypeError, match=r"URL or a ckflow\.stores\.Store"):
            Engine(store=42)  # type: ignore[arg-type]


class TestHeldWork:
    """Work held until a commit still counts: the run is not idle while a region's reverts wait for its record."""

    async def test_revert_to_returns_once_the_revert_is_done(self) -> None:
        """revert_to(cp, retry=False) on a durable run returns SUSPENDED with the scope reverted, not reverting."""
        store = WatchedStore()
        started = anyio.Event()
        gate = anyio.Event()

        @task(provides="a")
        async def a() -> int:
            return 1

        @task
        async def b(a: int) -> None:
            started.set()
            await anyio.sleep_forever()

        @b.revert
        async def _(a: int, result: object) -> None: ...

        async def slow_region_write(batch: Any) -> None:
            if batch.regions:
                await gate.wait()  # the region's record takes a while to reach the store

        store.on_write = slow_region_write
        flow = Linear("f", a, Linear("inner", Checkpoint("cp"), b))
        async with Engine(store=store) as engine:
            run = await engine.start(flow)
            await started.wait()
            async with anyio.create_task_group() as tg:
                tg.start_soon(functools.partial(run.revert_to, "cp", retry=False))
                await anyio.wait_all_tasks_blocked()
                held = run.state
                gate.set()
            assert held is FlowState.RUNNING
            assert run.state is FlowState.SUSPENDED
            assert run.tasks["b"].state is TaskState.REVERTED
            await run.cancel()
