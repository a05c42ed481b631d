"""What only the PostgreSQL store does: its URL, its connection errors, its schema and its clock."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import anyio
import asyncpg
import pytest
from tests.stores import OWNER, run_record, with_query, without_query

from ckflow._errors import SchemaVersionError, StoreUnavailableError
from ckflow.stores import SCHEMA_VERSION, open_store
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
