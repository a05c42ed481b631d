"""What only the PostgreSQL store does: its URL, its connection errors, its schema, its clock, its writes."""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

import anyio
import asyncpg
import pytest
from tests.stores import (
    OTHER,
    OWNER,
    checkpoint_record,
    event,
    region_record,
    run_record,
    task_record,
    with_query,
    without_query,
)

from ckflow._errors import LeaseLostError, RunNotFoundError, SchemaVersionError, StoreUnavailableError
from ckflow._records import Batch
from ckflow._states import FlowState, TaskState
from ckflow.stores import SCHEMA_VERSION, _sql, open_store
from ckflow.stores.postgres import PostgresStore, _parse

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@pytest.fixture
async def conn(postgres_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection to the test database, to look at what the store did."""
    connection = await asyncpg.connect(postgres_dsn)
    yield connection
    await connection.close()


def schema_of(url: str) -> str:
    return PostgresStore(url).schema


async def tables(conn: asyncpg.Connection, schema: str) -> list[str]:
    rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY tablename", schema)
    return [row[0] for row in rows]


class TestUrl:
    """The URL names the server, the schema and the connect timeout."""

    def test_options_are_read_and_kept_from_asyncpg(self) -> None:
        """schema= and connect_timeout= are the store's; other parameters go to asyncpg."""
        dsn, public, schema, timeout = _parse(
            "postgres://u:secret@db:6543/app?schema=runs&connect_timeout=2.5&sslmode=off"
        )
        assert (schema, timeout) == ("runs", 2.5)
        assert dsn == "postgresql://u:secret@db:6543/app?sslmode=off"
        assert public == "postgres://u@db:6543/app?schema=runs&connect_timeout=2.5&sslmode=off"

    def test_url_has_no_password(self) -> None:
        """store.url leaves the password out, wherever it was written."""
        assert PostgresStore("postgresql://u:pw@h/db").url == "postgresql://u@h/db"
        assert PostgresStore("postgresql://u@h/db?password=pw").url == "postgresql://u@h/db"

    def test_defaults(self) -> None:
        """Without options the schema is public and the connect timeout 10 s."""
        assert _parse("postgresql://h/db")[2:] == ("public", 10.0)

    @pytest.mark.parametrize(
        "url", ["postgresql:///db", "postgresql://h/db?schema=", "postgresql://h/db?connect_timeout=soon"]
    )
    def test_bad_url_raises_value_error(self, url: str) -> None:
        """A URL without a host, with an empty schema or a wrong timeout is refused where it is written."""
        with pytest.raises(ValueError, match="PostgreSQL"):
            PostgresStore(url)

    def test_open_store_picks_postgres(self) -> None:
        """Both postgresql:// and postgres:// make a PostgresStore."""
        assert isinstance(open_store("postgresql://h/db"), PostgresStore)
        assert isinstance(open_store("postgres://h/db"), PostgresStore)


class TestOpen:
    """open(): connecting, and creating or migrating the schema."""

    async def test_unreachable_server_is_unavailable(self) -> None:
        """A server that refuses connections raises StoreUnavailableError at once, with the reason."""
        store = PostgresStore("postgresql://postgres@127.0.0.1:1/test?connect_timeout=5")
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError) as info:
            await store.open()
        assert time.monotonic() - started < 5
        assert "127.0.0.1" in info.value.problem or "refused" in info.value.problem.lower()
        assert info.value.url == "postgresql://postgres@127.0.0.1:1/test?connect_timeout=5"

    async def test_unknown_database_is_unavailable(self, postgres_dsn: str) -> None:
        """A database that does not exist raises StoreUnavailableError naming the server's reason."""
        url = postgres_dsn.rsplit("/", 1)[0] + "/ckflow_no_such_database"
        with pytest.raises(StoreUnavailableError, match="does not exist"):
            await PostgresStore(url).open()

    async def test_schema_is_created(self, postgres_url: str, conn: asyncpg.Connection) -> None:
        """Opening creates the schema, ckflow's tables in it and the schema version."""
        async with PostgresStore(postgres_url):
            pass
        schema = schema_of(postgres_url)
        assert await tables(conn, schema) == [
            "ckflow_checkpoints",
            "ckflow_events",
            "ckflow_meta",
            "ckflow_queues",
            "ckflow_regions",
            "ckflow_requests",
            "ckflow_runs",
            "ckflow_tasks",
        ]
        version = await conn.fetchval(f'SELECT value FROM "{schema}".ckflow_meta WHERE key = $1', "schema_version")
        assert version == str(SCHEMA_VERSION)

    async def test_newer_schema_is_refused_and_untouched(self, postgres_url: str, conn: asyncpg.Connection) -> None:
        """A schema written by a newer ckflow raises SchemaVersionError, and nothing is created in it."""
        schema = schema_of(postgres_url)
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(f'CREATE TABLE "{schema}".ckflow_meta (key text PRIMARY KEY, value text NOT NULL)')
        await conn.execute(f"INSERT INTO \"{schema}\".ckflow_meta VALUES ('schema_version', '{SCHEMA_VERSION + 1}')")
        with pytest.raises(SchemaVersionError) as info:
            await PostgresStore(postgres_url).open()
        assert (info.value.found, info.value.supported) == (SCHEMA_VERSION + 1, SCHEMA_VERSION)
        assert await tables(conn, schema) == ["ckflow_meta"]
        assert await conn.fetchval(f'SELECT value FROM "{schema}".ckflow_meta') == str(SCHEMA_VERSION + 1)

    async def test_concurrent_opens_of_a_fresh_schema_succeed(self, postgres_url: str) -> None:
        """Several stores opening one new schema at once all succeed and share one set of tables."""
        stores = [PostgresStore(postgres_url) for _ in range(4)]
        async with anyio.create_task_group() as tg:
            for store in stores:
                tg.start_soon(store.open)
        try:
            await stores[0].create_run(run_record())
            for store in stores:
                assert (await store.get_run("run-1")).run_id == "run-1"
        finally:
            for store in stores:
                await store.close()

    async def test_tables_stay_in_their_schema(self, postgres_dsn: str, conn: asyncpg.Connection) -> None:
        """Two schemas of one database are two separate stores."""
        first = with_query(postgres_dsn, schema="ckflow_test_iso_a")
        second = with_query(postgres_dsn, schema="ckflow_test_iso_b")
        try:
            async with PostgresStore(first) as a, PostgresStore(second) as b:
                await a.create_run(run_record())
                assert await b.list_runs() == []
        finally:
            for url in (first, second):
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema_of(url)}" CASCADE')

    async def test_closed_store_refuses_calls(self, postgres_url: str) -> None:
        """A store not opened, or closed, raises StoreUnavailableError; closing twice is no error."""
        store = PostgresStore(postgres_url)
        with pytest.raises(StoreUnavailableError, match="not open"):
            await store.get_run("run-1")
        await store.open()
        await store.close()
        await store.close()
        with pytest.raises(StoreUnavailableError, match="not open"):
            await store.list_runs()


class TestClock:
    """Leases are timed by the database's clock."""

    async def test_lease_uses_the_database_clock(
        self, postgres_url: str, conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """claim and renew set lease_expires from clock_timestamp(), not from this process's time.time()."""
        async with PostgresStore(postgres_url) as store:
            await store.create_run(run_record(owner=None, lease_expires=None))
            clock = "SELECT extract(epoch from clock_timestamp())::float8"
            monkeypatch.setattr(time, "time", lambda: 0.0)  # a process clock far off the database's
            before = await conn.fetchval(clock)
            claimed = await store.claim("run-1", OWNER, 30)
            await store.renew(OWNER, ["run-1"], 60)
            after = await conn.fetchval(clock)
            monkeypatch.undo()
            assert claimed.lease_expires is not None
            assert before + 30 <= claimed.lease_expires <= after + 30
            renewed = (await store.get_run("run-1")).lease_expires
            assert renewed is not None
            assert before + 60 <= renewed <= after + 60


def test_dsn_helpers_round_trip() -> None:
    """with_query and without_query (test helpers) add and remove the schema parameter."""
    url = with_query("postgresql://u@h:1/db", schema="s")
    assert url == "postgresql://u@h:1/db?schema=s"
    assert without_query(url, "schema") == "postgresql://u@h:1/db"


class Queries:
    """Records the statements that the store's connections send (asyncpg's query loggers)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sent: list[str] = []
        create_pool = asyncpg.create_pool

        async def init(connection: asyncpg.Connection) -> None:
            connection.add_query_logger(lambda logged: self.sent.append(logged.query))

        def logging_pool(*args: Any, **kwargs: Any) -> Any:
            return create_pool(*args, init=init, **kwargs)

        monkeypatch.setattr(asyncpg, "create_pool", logging_pool)


class TestWrite:
    """A write of the usual rows is one statement, so one round trip; the others are one transaction."""

    async def test_usual_write_is_one_statement(self, postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
        """A batch of a run's row, tasks, passes, regions and events is one statement; no reset query follows."""
        queries = Queries(monkeypatch)
        async with PostgresStore(postgres_url) as store:
            run = run_record()
            await store.create_run(run)
            for seq in (0, 2):  # the first time, asyncpg also reads the types of the statement's arrays
                queries.sent.clear()
                await store.write(
                    Batch(
                        run=run,
                        owner=OWNER,
                        tasks=[task_record("run-1", "attach")],
                        checkpoints=[checkpoint_record("run-1", "cp", 1)],
                        regions=[region_record("run-1", 1)],
                        events=[event("run-1", seq), event("run-1", seq + 1)],
                    )
                )
            assert len(queries.sent) == 1
            assert queries.sent[0].startswith("WITH fence AS (UPDATE ckflow_runs ")
            queries.sent.clear()
            assert (await store.get_run("run-1")).run_id == "run-1"
            # and no RESET ALL after it (the write's own statement may be logged only now, on a held connection)
            assert [q for q in queries.sent if not q.startswith("WITH fence AS")] == [_sql.SELECT_RUN]
            assert [t.task for t in await store.tasks("run-1")] == ["attach"]
            assert [(c.checkpoint, c.pass_no) for c in await store.checkpoints("run-1")] == [("cp", 1)]
            assert [e.seq for e in await store.events("run-1")] == [0, 1, 2, 3]

    async def test_lost_fence_in_one_statement_writes_nothing(self, postgres_url: str) -> None:
        """In the one statement too, a batch of another owner raises LeaseLostError and changes nothing."""
        async with PostgresStore(postgres_url) as store:
            run = run_record()
            await store.create_run(run)
            await store.write(Batch(run=run, owner=OWNER, tasks=[task_record("run-1", "attach")]))
            before = await store.load("run-1"), await store.events("run-1"), await store.checkpoints("run-1")
            stale = Batch(
                run=run.model_copy(update={"state": FlowState.FAILURE}),
                owner=OTHER,
                tasks=[task_record("run-1", "attach", state=TaskState.FAILURE), task_record("run-1", "new")],
                checkpoints=[checkpoint_record("run-1", "cp", 1)],
                regions=[region_record("run-1", 5)],
                events=[event("run-1", 0)],
            )
            with pytest.raises(LeaseLostError):
                await store.write(stale)
            assert (await store.load("run-1"), await store.events("run-1"), await store.checkpoints("run-1")) == before
            with pytest.raises(RunNotFoundError):
                await store.write(dataclasses.replace(stale, run=run_record("ghost")))

    async def test_rows_keep_the_batch_order(self, postgres_url: str) -> None:
        """Tasks and regions are read back in the order the batch listed them when first written."""
        async with PostgresStore(postgres_url) as store:
            run = run_record()
            await store.create_run(run)
            names = ["mount", "attach", "zap", "boot"]
            await store.write(
                Batch(
                    run=run,
                    owner=OWNER,
                    tasks=[task_record("run-1", name) for name in names],
                    regions=[region_record("run-1", region_id) for region_id in (3, 1, 2)],
                )
            )
            assert [t.task for t in await store.tasks("run-1")] == names
            assert [r.region_id for r in (await store.load("run-1")).regions] == [3, 1, 2]

    async def test_a_row_twice_in_a_batch_keeps_the_last(
        self, postgres_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A batch that lists a row twice is written statement by statement, and the last one wins."""
        queries = Queries(monkeypatch)
        async with PostgresStore(postgres_url) as store:
            run = run_record()
            await store.create_run(run)
            queries.sent.clear()
            await store.write(
                Batch(
                    run=run,
                    owner=OWNER,
                    tasks=[task_record("run-1", "t", state=TaskState.RUNNING), task_record("run-1", "t")],
                )
            )
            assert not any(query.startswith("WITH fence") for query in queries.sent)
            assert [(t.task, t.state) for t in await store.tasks("run-1")] == [("t", TaskState.SUCCESS)]
