"""PostgreSQL's group commit across runs (``ckflow.stores._pg_write``): the rules of a group.

A ``GroupWriter`` is driven here through a pool whose statements wait at a gate, so that the test
decides which writes are in flight and which wait in the queue, without sleeping.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import anyio
import asyncpg
import pytest
from tests.stores import (
    OTHER,
    OWNER,
    checkpoint_record,
    event,
    failure,
    region_record,
    run_record,
    task_record,
    without_query,
)

import ckflow
from ckflow._errors import LeaseLostError
from ckflow._records import Batch
from ckflow.stores import _pg_write, _sql
from ckflow.stores.postgres import PostgresStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


class GatedConnection:
    """A pool's connection whose statements its ``GatedPool`` records and may hold."""

    def __init__(self, gated: GatedPool, conn: Any) -> None:
        self.gated = gated
        self.conn = conn

    async def fetchrow(self, query: str, *args: Any) -> Any:
        await self.gated.hold(query)
        return await self.conn.fetchrow(query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        await self.gated.hold(query)
        return await self.conn.fetchval(query, *args)


class GatedPool:
    """A pool that records each statement and, while ``gate`` is set, holds it until the gate opens."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.sent: list[str] = []
        self.gate: anyio.Event | None = None
        self.held = 0
        self.holding = anyio.Event()  # set once ``expect`` statements are held
        self.expect = 0

    async def hold(self, query: str) -> None:
        self.sent.append(query)
        gate = self.gate
        if gate is not None:
            self.held += 1
            if self.held == self.expect:
                self.holding.set()
            await gate.wait()

    async def acquire(self) -> GatedConnection:
        return GatedConnection(self, await self.pool.acquire())

    async def release(self, conn: GatedConnection) -> None:
        await self.pool.release(conn.conn)


@pytest.fixture
async def store(postgres_url: str) -> AsyncIterator[PostgresStore]:
    async with PostgresStore(postgres_url) as opened:
        yield opened


@pytest.fixture
async def gated(store: PostgresStore, postgres_url: str) -> AsyncIterator[GatedPool]:
    pool = await asyncpg.create_pool(
        without_query(postgres_url, "schema"), min_size=1, max_size=4, server_settings={"search_path": store.schema}
    )
    yield GatedPool(pool)
    await pool.close()


@pytest.fixture
async def writer(gated: GatedPool) -> AsyncIterator[_pg_write.GroupWriter]:
    opened = _pg_write.GroupWriter(gated, "store")
    yield opened
    await opened.close()


def batch(run_id: str, *, owner: str = OWNER, task: str = "attach", result: str = "1", release: bool = False) -> Batch:
    return Batch(
        run=run_record(run_id),
        owner=owner,
        tasks=[task_record(run_id, task, result=result)],
        events=[event(run_id, 0 if task == "attach" else 1)],
        release=release,
    )


async def put(writer: _pg_write.GroupWriter, b: Batch) -> None:
    c = _pg_write.common(b)
    assert c is not None
    await writer.write(c)


class Outcomes:
    """Each queued write's outcome: None once committed, or the exception it raised."""

    def __init__(self) -> None:
        self.of: dict[str, BaseException | None] = {}

    async def put(self, writer: _pg_write.GroupWriter, b: Batch, key: str) -> None:
        try:
            await put(writer, b)
        except Exception as exc:
            self.of[key] = exc
        else:
            self.of[key] = None


async def group_of(
    gated: GatedPool, writer: _pg_write.GroupWriter, queued: dict[str, Batch], *, hold_group: bool = False
) -> Outcomes:
    """Write ``queued`` while ``WRITERS`` other runs' writes are in flight, so that they form one group."""
    outcomes = Outcomes()
    gated.gate, gated.expect = anyio.Event(), _pg_write.WRITERS
    async with anyio.create_task_group() as tg:
        for i in range(_pg_write.WRITERS):
            tg.start_soon(put, writer, batch(f"busy-{i}"))
        await gated.holding.wait()  # the writers' slots are taken: what follows waits in the queue
        for key, b in queued.items():
            tg.start_soon(outcomes.put, writer, b, key)
        await anyio.lowlevel.checkpoint()  # the tasks started in order: each queued its batch
        gate, gated.sent = gated.gate, []
        if hold_group:
            gated.holding, gated.held, gated.expect = anyio.Event(), 0, 1
            gated.gate = anyio.Event()
        else:
            gated.gate = None
        gate.set()
        if hold_group:
            await gated.holding.wait()  # the group's statement is sent: nobody in it has returned yet
            assert outcomes.of == {}
            gated.gate.set()
    return outcomes


async def stored(store: PostgresStore, run_id: str) -> list[str | None]:
    return [t.result for t in await store.tasks(run_id)]


async def test_a_group_is_one_statement_and_a_fenced_run_in_it_alone_is_refused(
    store: PostgresStore, gated: GatedPool, writer: _pg_write.GroupWriter
) -> None:
    """Writes queued together share one statement; a run whose lease another engine holds raises
    LeaseLostError and nothing of it is written, while the others of its group are."""
    for run_id in ("busy-0", "busy-1", "a", "b", "c"):
        await store.create_run(run_record(run_id))
    outcomes = await group_of(
        gated, writer, {"a": batch("a"), "b": batch("b", owner=OTHER), "c": batch("c", result="3")}
    )
    assert outcomes.of.keys() == {"a", "b", "c"}
    assert (outcomes.of["a"], outcomes.of["c"]) == (None, None)
    assert isinstance(outcomes.of["b"], LeaseLostError)
    group = [q for q in gated.sent if q.startswith("WITH w AS")]
    assert len(group) == 1  # a, b and c in one statement, then b alone to learn its error
    assert gated.sent.index(group[0]) == 0
    assert (await stored(store, "a"), await stored(store, "b"), await stored(store, "c")) == (["1"], [], ["3"])


async def test_a_run_has_one_batch_per_group_in_order(
    store: PostgresStore, gated: GatedPool, writer: _pg_write.GroupWriter
) -> None:
    """A run's second batch queued behind its first goes in the next statement, so the last one wins."""
    for run_id in ("busy-0", "busy-1", "a", "b"):
        await store.create_run(run_record(run_id))
    outcomes = await group_of(
        gated,
        writer,
        {"a1": batch("a", result="1"), "b": batch("b"), "a2": batch("a", result="2")},
    )
    assert outcomes.of == {"a1": None, "b": None, "a2": None}
    assert len(gated.sent) == 2  # (a1, b), then a2 (alone: a group of one is the one-run statement)
    assert await stored(store, "a") == ["2"]


async def test_a_failed_group_loses_nobody_elses_write(
    store: PostgresStore, gated: GatedPool, writer: _pg_write.GroupWriter
) -> None:
    """A value the database refuses fails the group's statement: each run is then written alone, and only the
    run at fault gets the error."""
    for run_id in ("busy-0", "busy-1", "a", "bad", "c"):
        await store.create_run(run_record(run_id))
    outcomes = await group_of(
        gated, writer, {"a": batch("a"), "bad": batch("bad", result="nul \x00 byte"), "c": batch("c")}
    )
    assert (outcomes.of["a"], outcomes.of["c"]) == (None, None)
    assert isinstance(outcomes.of["bad"], asyncpg.PostgresError)
    assert (await stored(store, "a"), await stored(store, "bad"), await stored(store, "c")) == (["1"], [], ["1"])


async def test_a_writer_returns_only_once_its_group_is_committed(
    store: PostgresStore, gated: GatedPool, writer: _pg_write.GroupWriter
) -> None:
    """While the statement that holds their batches has not been answered, no writer of the group has returned
    (``group_of`` checks it with the statement held at the gate)."""
    for run_id in ("busy-0", "busy-1", "a", "b"):
        await store.create_run(run_record(run_id))
    outcomes = await group_of(gated, writer, {"a": batch("a"), "b": batch("b")}, hold_group=True)
    assert outcomes.of == {"a": None, "b": None}


async def test_a_consumer_starts_only_once_its_producer_is_in_the_store(postgres_url: str) -> None:
    """Many concurrent runs of a Linear, whose writes are grouped: each consumer, when it starts, finds its
    producer's result in the store (read through another store on the same schema)."""
    seen: dict[str, list[str | None]] = {}
    async with PostgresStore(postgres_url) as reader:

        @ckflow.task(provides="a")
        async def a() -> int:
            return 1

        @ckflow.task(provides="b")
        async def b(a: int) -> int:
            run_id = ckflow.current().run_id
            seen[run_id] = [t.result for t in await reader.tasks(run_id) if t.task == "a"]
            return a + 1

        async with ckflow.Engine(store=postgres_url) as engine:
            runs = [await engine.start(ckflow.Linear("pair", a, b)) for _ in range(40)]
            results = [await run.wait() for run in runs]
    assert {r.state for r in results} == {ckflow.FlowState.SUCCESS}
    assert seen == {run.id: ["1"] for run in runs}


async def test_a_group_releases_only_the_runs_that_ask(
    store: PostgresStore, gated: GatedPool, writer: _pg_write.GroupWriter
) -> None:
    """In one group, a run whose batch releases its lease is left with no owner, the others keep theirs, and a
    stale owner's releasing batch is refused without touching the owner's lease."""
    for run_id in ("busy-0", "busy-1", "a", "b", "c"):
        await store.create_run(run_record(run_id))
    outcomes = await group_of(
        gated,
        writer,
        {"a": batch("a", release=True), "b": batch("b"), "c": batch("c", owner=OTHER, release=True)},
    )
    assert (outcomes.of["a"], outcomes.of["b"]) == (None, None)
    assert isinstance(outcomes.of["c"], LeaseLostError)
    assert len([q for q in gated.sent if q.startswith("WITH w AS")]) == 1
    owners = [(await store.get_run(run_id)).owner for run_id in ("a", "b", "c")]
    assert owners == [None, OWNER, OWNER]
    assert (await stored(store, "a"), await stored(store, "b"), await stored(store, "c")) == (["1"], ["1"], [])


async def test_a_releasing_batch_written_again_after_its_commit_is_done(
    store: PostgresStore, writer: _pg_write.GroupWriter
) -> None:
    """A group whose commit's answer was lost writes its runs again alone: a run whose batch released its lease
    finds its own batch in the store and is done, not LeaseLostError; a different batch of that owner is refused."""
    await store.create_run(run_record("a"))
    last = batch("a", release=True)
    await put(writer, last)
    await put(writer, last)  # the same batch again: already there, released
    assert (await store.get_run("a")).owner is None
    later = batch("a", release=True, result="2")
    later.run = later.run.model_copy(update={"updated_at": last.run.updated_at + 1})
    with pytest.raises(LeaseLostError):
        await put(writer, later)
    assert await stored(store, "a") == ["1"]


@pytest.mark.parametrize(
    "b",
    [
        batch("a"),
        batch("a", release=True),
        Batch(
            run=run_record("a"),
            owner=OWNER,
            tasks=[task_record("other", "t1", result="2"), task_record("a", "t2")],  # rows keyed by the batch's run
            checkpoints=[checkpoint_record("a", "c", 0), checkpoint_record("a", "c", 1)],
            regions=[region_record("a", 1)],
            events=[event("a", 3), event("a", 4, failure=failure())],
        ),
        Batch(run=run_record("a"), owner=OWNER, events=[event("a", i) for i in range(_pg_write._SCALAR_ROWS + 1)]),
        Batch(run=run_record("a"), owner=OWNER),
    ],
)
def test_a_common_batch_s_rows_are_those_of_its_writes(b: Batch) -> None:
    """``common`` builds each row as ``_sql.prepare`` does (keyed by the batch's run), without its ``run_id``."""
    c = _pg_write.common(b)
    w = _sql.prepare(b, list)
    assert c is not None
    assert c.run == list(w.run)
    assert c.release == w.release
    tables = (("tasks", w.tasks), ("checkpoints", w.checkpoints), ("regions", w.regions), ("events", w.events))
    assert all(row[0] == "a" for _, rows in tables for row in rows)  # ``run_id`` is every table's first column
    assert c.rows == [(name, [row[1:] for row in rows]) for name, rows in tables if rows]


@pytest.mark.parametrize(
    "b",
    [
        Batch(run=run_record("a"), owner=OWNER, tasks=[task_record("a", "t"), task_record("a", "t")]),  # a key twice
        Batch(run=run_record("a"), owner=OWNER, drop_regions=[1]),
    ],
)
def test_a_batch_that_is_not_common_goes_through_its_writes(b: Batch) -> None:
    """A key twice, or a batch that deletes rows or carries requests: ``common`` leaves it to ``Writes``."""
    assert _pg_write.common(b) is None


BOOM = failure()


def every_table(run_id: str) -> Batch:
    """A batch with rows in every table, and values that JSON text must carry exactly: floats of many digits,
    tiny and huge, text with quotes, backslashes and characters beyond ASCII, None, booleans, a failure."""
    odd = 'é "q" \\ \U0001f600 \n'
    return Batch(
        run=run_record(run_id, updated_at=0.1 + 0.2, ended_at=None),
        owner=OWNER,
        tasks=[
            task_record(run_id, "t1", result=f'"{odd}"', started_at=1e-7, ended_at=1.7e300, retries={"x": 2}),
            task_record(run_id, odd, state="FAILURE", failure=BOOM, iteration=2**40),
        ],
        checkpoints=[checkpoint_record(run_id, odd, 0, history=[BOOM], next_at=123456789.123456789)],
        regions=[region_record(run_id, 1, auto_resume=True, parked=False, cause=None, failures=[BOOM])],
        events=[event(run_id, i, failure=BOOM if i == 3 else None, detail={"k": odd}) for i in range(12)],
    )


async def test_a_group_s_rows_read_back_as_a_run_s_alone(
    store: PostgresStore, gated: GatedPool, writer: _pg_write.GroupWriter
) -> None:
    """Rows bound as a group's JSON text read back equal to the same rows bound by a run's own statement."""
    for run_id in ("busy-0", "busy-1", "alone", "g1", "g2"):
        await store.create_run(run_record(run_id))
    await put(writer, every_table("alone"))
    outcomes = await group_of(gated, writer, {"g1": every_table("g1"), "g2": every_table("g2")})
    assert outcomes.of == {"g1": None, "g2": None}
    assert len([q for q in gated.sent if q.startswith("WITH w AS")]) == 1

    async def read(run_id: str) -> list[Any]:
        loaded = await store.load(run_id)
        got: list[Any] = [loaded.run.model_dump(exclude={"run_id", "lease_expires"})]
        for records in (loaded.tasks, loaded.checkpoints, loaded.regions, await store.events(run_id)):
            got.append([r.model_dump(exclude={"run_id"}) for r in records])
        return got

    alone = await read("alone")
    assert len(alone[1]) == 2
    assert len(alone[4]) == 12
    for run_id in ("g1", "g2"):
        got = await read(run_id)
        for i, part in enumerate(alone):
            assert got[i] == part, (run_id, i)


async def test_a_float_json_cannot_carry_fails_the_group_and_is_written_alone(
    store: PostgresStore, gated: GatedPool, writer: _pg_write.GroupWriter
) -> None:
    """NaN cannot be JSON: the group's statement fails and its runs are written alone, where NaN is a float8
    like any other, as if they had never been grouped."""
    for run_id in ("busy-0", "busy-1", "a", "nan"):
        await store.create_run(run_record(run_id))
    nan = batch("nan")
    nan.tasks = [task_record("nan", "attach", result="1", started_at=float("nan"))]
    outcomes = await group_of(gated, writer, {"a": batch("a"), "nan": nan})
    assert outcomes.of == {"a": None, "nan": None}
    assert [q.split(" ", 2)[1] for q in gated.sent] == ["w", "fence", "fence"]  # the group, then each run alone
    (task,) = await store.tasks("nan")
    assert task.started_at is not None
    assert math.isnan(task.started_at)
    assert await stored(store, "a") == ["1"]
