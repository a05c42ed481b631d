"""``PostgresStore``: runs kept in PostgreSQL, shared by engines on many machines, through asyncpg.

Every table lives in one schema (``?schema=``, default ``public``), reached
through the connections' ``search_path``. Opening creates or migrates that
schema under a transaction-scoped advisory lock, so that processes that open
the same store at once neither race nor fail.

Leases are timed by the database's clock (``clock_timestamp()``), never by
the engines', so that engines on several machines agree on when a lease
lapses. ``claim`` is one atomic ``UPDATE``. ``write`` starts with the owner
fence, so a batch whose engine lost the run writes nothing: the usual batch
(the run's row, tasks, passes, regions, events) is one statement, whose first
CTE is the fence, and so one round trip; a batch that also deletes rows or
carries requests is one transaction, statement after statement. While a
usual batch is being written, the next runs' batches share one statement
(group commit across runs, each run fenced on its own: ``_pg_write``); those
writes, ``create_run`` and ``release`` run on connections the store holds
between calls. The pool's connections are handed back without asyncpg's reset
query (one round trip less per call).
"""

from __future__ import annotations

import asyncio
import math
import zlib
from typing import TYPE_CHECKING, Any, Final, final

import asyncpg

from ckflow._errors import (
    LeaseLostError,
    RunExistsError,
    RunNotFoundError,
    RunOwnedError,
    SchemaVersionError,
    StoreNotFoundError,
    StoreUnavailableError,
)
from ckflow._records import Renewal, StoredRun
from ckflow._states import FlowState
from ckflow.stores import _columns as _c
from ckflow.stores import _pg_queue, _pg_write, _schema, _sql
from ckflow.stores._pg_url import parse_url as _parse
from ckflow.stores._pg_url import reason as _reason
from ckflow.stores._protocol import SCHEMA_VERSION, StoreBase, not_open

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Collection, Sequence

    from ckflow._events import Event
    from ckflow._records import Batch, CheckpointRecord, ControlRequest, RunRecord, TaskRecord

__all__ = ["PostgresStore"]

_POOL_SIZE: Final = 10
#: first key of the advisory lock taken while a schema is created or migrated ("ckf")
_LOCK_CLASS: Final = 0x636B66
#: what asyncpg raises when the server cannot be reached or refuses us
_UNREACHABLE: Final = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)

# -- migrations (the schema itself is in _schema) --------------------------------------------


async def _create_v1(conn: Any) -> None:
    for statement in _schema.POSTGRES_V1:
        await conn.execute(statement)


#: ``_MIGRATIONS[n]`` brings a store from schema version ``n`` to ``n + 1``, inside the open transaction;
#: a new version is one more function here (and ``SCHEMA_VERSION`` raised by one).
async def _to_v2(conn: Any) -> None:
    for statement in _schema.POSTGRES_V2:
        await conn.execute(statement)


async def _to_v3(conn: Any) -> None:
    for statement in _schema.POSTGRES_V3:
        await conn.execute(statement)


_MIGRATIONS: Final[tuple[Callable[[Any], Awaitable[None]], ...]] = (_create_v1, _to_v2, _to_v3)
assert len(_MIGRATIONS) == SCHEMA_VERSION, "one migration step per schema version"

# -- statements ----------------------------------------------------------------------

_NOW: Final = "extract(epoch from clock_timestamp())::float8"
_RUN_COLUMNS: Final = _sql.columns(_c.RUNS.read, "r.")
#: take the run if it is free, ours, held by ``$4`` (a dead owner being replaced; NULL matches nothing),
#: or its lease has lapsed by the database's clock
_CLAIM: Final = (
    f"WITH now AS (SELECT {_NOW} AS t) "
    "UPDATE ckflow_runs AS r SET owner = $2, lease_expires = now.t + $3 FROM now "
    "WHERE r.run_id = $1 AND (r.owner IS NULL OR r.owner = $2 OR r.owner = $4 "
    "OR coalesce(r.lease_expires, 0) <= now.t) "
    f"RETURNING {_RUN_COLUMNS}"
)
_CLAIMABLE: Final = (
    "SELECT owner, lease_expires, owner IS NULL OR owner IS NOT DISTINCT FROM $2 "
    f"OR coalesce(lease_expires, 0) <= {_NOW} AS claimable FROM ckflow_runs WHERE run_id = $1"
)
#: one statement, not a transaction of two: a heartbeat cut off from the server between two statements would
#: keep its runs' rows locked until the server noticed, and another engine's take-over would skip them meanwhile.
#: Each renewed run is a row (``renewed``), with its pending requests' columns, or NULLs if it has none.
_RENEW: Final = (
    f"WITH now AS (SELECT {_NOW} AS t), renewed AS (UPDATE ckflow_runs AS r SET lease_expires = now.t + $3 FROM now "
    "WHERE r.run_id = ANY($1::text[]) AND r.owner = $2 RETURNING r.run_id) "
    f"SELECT renewed.run_id AS renewed, {_sql.columns(_c.REQUESTS.read, 'q.')} FROM renewed "
    "LEFT JOIN ckflow_requests AS q ON q.run_id = renewed.run_id AND q.done_at IS NULL ORDER BY q.pos"
)
_RELEASE: Final = "UPDATE ckflow_runs SET owner = NULL, lease_expires = NULL WHERE run_id = $1 AND owner = $2"
_RUN_EXISTS: Final = "SELECT 1 FROM ckflow_runs WHERE run_id = $1 FOR KEY SHARE"
_RETAIN_EVENTS: Final = "DELETE FROM ckflow_events WHERE run_id = $1 AND seq < $2 AND checkpoint = ANY($3::text[])"
_TASKS: Final = f"SELECT {_sql.columns(_c.TASKS.read)} FROM ckflow_tasks WHERE run_id = $1 ORDER BY pos"
_REGIONS: Final = f"SELECT {_sql.columns(_c.REGIONS.read)} FROM ckflow_regions WHERE run_id = $1 ORDER BY pos"
_CHECKPOINTS: Final = (
    f"SELECT {_sql.columns(_c.CHECKPOINTS.read)} FROM ckflow_checkpoints WHERE run_id = $1 ORDER BY checkpoint, pass_no"
)
_CHECKPOINTS_OF: Final = (
    f"SELECT {_sql.columns(_c.CHECKPOINTS.read)} FROM ckflow_checkpoints WHERE run_id = $1 AND checkpoint = $2 "
    "ORDER BY pass_no"
)
_EVENTS: Final = (
    f"SELECT {_sql.columns(_c.EVENTS.read)} FROM ckflow_events WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
)
_REQUESTS: Final = (
    f"SELECT {_sql.columns(_c.REQUESTS.read)} FROM ckflow_requests WHERE run_id = $1 ORDER BY requested_at, pos"
)
_DELETE: Final = tuple(f"DELETE FROM ckflow_{table} WHERE run_id = ANY($1::text[])" for table in (*_sql.TABLES, "runs"))
_SET_VERSION: Final = (
    "INSERT INTO ckflow_meta (key, value) VALUES ('schema_version', $1) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)


async def _no_reset(conn: Any) -> None:
    """What a released connection needs before the next call takes it: nothing (see ``PostgresStore.open``)."""


def _names(names: Sequence[str]) -> list[str]:
    return list(names)


def _states_test(n: int) -> str:
    return f"state = ANY(${n}::text[])"


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _lock_key(schema: str) -> int:
    """The advisory lock's second key for ``schema``: a stable signed 32-bit hash of its name."""
    key = zlib.crc32(schema.encode())
    return key - (1 << 32) if key >= 1 << 31 else key


def _count(status: str) -> int:
    """The row count of a command's status, ``'UPDATE 1'`` or ``'INSERT 0 1'``."""
    return int(status.rsplit(" ", 1)[-1])


# -- opening -----------------------------------------------------------------------------


async def _schema_version(conn: Any, schema: str) -> int:
    """The schema's version; 0 if it holds no ckflow store (or does not exist)."""
    present = await conn.fetchval(
        "SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = $1 AND tablename = 'ckflow_meta'", schema
    )
    if present is None:
        return 0
    value = await conn.fetchval(f"SELECT value FROM {_quote(schema)}.ckflow_meta WHERE key = 'schema_version'")
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


async def _migrate(conn: Any, url: str, schema: str, *, create: bool = True) -> None:
    """Create or migrate the store's schema, or raise and change nothing.

    Without ``create``, a schema with no ckflow store is ``StoreNotFoundError``, and nothing is created.
    """
    version = await _schema_version(conn, schema)
    if version == SCHEMA_VERSION:
        return  # the common case: no lock taken
    if version == 0 and not create:
        raise StoreNotFoundError(url, f"schema {schema!r} holds no ckflow tables")
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(url, version, SCHEMA_VERSION)
    async with conn.transaction():
        # Processes that open the store at once wait here for each other; the lock ends with the transaction.
        await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", _LOCK_CLASS, _lock_key(schema))
        if await conn.fetchval("SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1", schema) is None:
            await conn.execute(f"CREATE SCHEMA {_quote(schema)}")
        version = await _schema_version(conn, schema)
        if version < 0:
            raise StoreUnavailableError(url, f"schema {schema!r} has a ckflow_meta table without a valid version.")
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(url, version, SCHEMA_VERSION)
        for step in _MIGRATIONS[version:]:
            await step(conn)
        await conn.execute(_SET_VERSION, str(SCHEMA_VERSION))


# -- the store ------------------------------------------------------------------------------------


@final
class PostgresStore(StoreBase):
    """A store in a PostgreSQL database, shared by the engines of many processes and machines.

    Args:
        url: ``postgresql://user:password@host:5432/db`` (or ``postgres://``), optionally with
            ``?schema=NAME`` (default ``public``; created if missing) and ``?connect_timeout=SECONDS``
            (default 10). Other query parameters go to asyncpg (``sslmode=``, ...).
        create: create the schema and its tables if they are missing (the default); with False, ``open()``
            raises ``StoreNotFoundError`` instead and creates nothing (for tools that only read).

    Raises:
        ValueError: the URL is not a PostgreSQL URL, or an option has a wrong value.
    """

    __slots__ = ("_create", "_dsn", "_lock", "_pool", "_schema", "_timeout", "_url", "_where", "_writer")

    def __init__(self, url: str, *, create: bool = True) -> None:
        self._dsn, self._url, self._schema, self._timeout = _parse(url)
        self._create = create
        self._where = f"store {self._url!r}"
        self._lock = asyncio.Lock()
        self._pool: Any = None
        self._writer: _pg_write.GroupWriter | None = None

    @property
    def url(self) -> str:
        """The URL the store was made with, without its password."""
        return self._url

    @property
    def schema(self) -> str:
        """The PostgreSQL schema that holds the store's tables."""
        return self._schema

    async def open(self) -> None:
        """Connect, and create (unless ``create=False``) or migrate the schema; does nothing if open."""
        async with self._lock:
            if self._pool is not None:
                return
            try:
                pool = await asyncpg.create_pool(
                    self._dsn,
                    min_size=1,
                    max_size=_POOL_SIZE,
                    timeout=self._timeout,
                    server_settings={"search_path": _quote(self._schema), "application_name": "ckflow"},
                    # asyncpg resets a released connection with one more round trip (RESET ALL, UNLISTEN *,
                    # ...). The store sets nothing on its connections but what they were opened with, listens
                    # to nothing and takes only transaction-scoped locks; an open transaction is still rolled
                    # back. Without it a call costs one round trip less.
                    reset=_no_reset,
                )
            except _UNREACHABLE as exc:
                raise StoreUnavailableError(self._url, _reason(exc, self._timeout)) from exc
            except (ValueError, OverflowError) as exc:  # asyncpg refuses an option of the URL
                raise StoreUnavailableError(self._url, f"the URL's options are not valid ({exc}).") from exc
            try:
                async with pool.acquire() as conn:
                    await _migrate(conn, self._url, self._schema, create=self._create)
            except BaseException as exc:
                pool.terminate()
                if isinstance(exc, _UNREACHABLE):
                    raise StoreUnavailableError(self._url, _reason(exc, self._timeout)) from exc
                raise
            self._pool = pool
            self._writer = _pg_write.GroupWriter(pool, self._where)

    async def close(self) -> None:
        """Close the pool once the calls in progress are done; does nothing if closed."""
        async with self._lock:
            pool, self._pool = self._pool, None
            writer, self._writer = self._writer, None
            if writer is not None:
                await writer.close()
            if pool is not None:
                await pool.close()

    def _open_pool(self) -> Any:
        pool = self._pool
        if pool is None:
            raise not_open(self._url)
        return pool

    # -- runs --------------------------------------------------------------------

    def _open_writer(self) -> _pg_write.GroupWriter:
        writer = self._writer
        if writer is None:
            raise not_open(self._url)
        return writer

    async def create_run(self, run: RunRecord) -> None:
        pool = self._open_pool()
        if run.state is FlowState.QUEUED:  # submitted: the workers listening are told of its queue
            created = await pool.fetch(_pg_queue.INSERT_QUEUED, *_c.RUNS.row(run), _pg_queue.channel(self._schema))
        else:
            created = _count(await self._open_writer().call("execute", _sql.INSERT_RUN, _c.RUNS.row(run)))
        if not created:
            raise RunExistsError(run.run_id, self._where)

    async def get_run(self, run_id: str) -> RunRecord:
        row = await self._open_pool().fetchrow(_sql.SELECT_RUN, run_id)
        if row is None:
            raise RunNotFoundError(run_id, self._where)
        return _c.RUNS.record(row)

    async def list_runs(
        self,
        *,
        states: Collection[FlowState] | None = None,
        flow: str | None = None,
        ended_before: float | None = None,
        limit: int | None = None,
        before: tuple[float, str] | None = None,
    ) -> list[RunRecord]:
        statement, params, slice_after = _sql.list_runs_where(
            states, flow, ended_before, limit, _states_test, _names, before=before
        )
        runs = [_c.RUNS.record(row) for row in await self._open_pool().fetch(statement, *params)]
        return runs[:limit] if slice_after else runs

    async def load(self, run_id: str) -> StoredRun:
        async with self._open_pool().acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            run = await conn.fetchrow(_sql.SELECT_RUN, run_id)
            if run is None:
                raise RunNotFoundError(run_id, self._where)
            tasks = await conn.fetch(_TASKS, run_id)
            checkpoints = await conn.fetch(_sql.SELECT_LATEST_CHECKPOINTS, run_id)
            regions = await conn.fetch(_REGIONS, run_id)
            failures = await conn.fetch(_sql.SELECT_FAILURES, run_id)
        return StoredRun(
            run=_c.RUNS.record(run),
            tasks=[_c.TASKS.record(row) for row in tasks],
            checkpoints=[_c.CHECKPOINTS.record(row) for row in checkpoints],
            regions=[_c.REGIONS.record(row) for row in regions],
            failures=[_c.failure_from_event(row["body"]) for row in failures],
        )

    async def write(self, batch: Batch) -> None:
        writer = self._open_writer()
        c = _pg_write.common(batch)
        if c is not None:
            # The common batch (a run's rows, tasks, passes, regions, events): one statement, one round trip,
            # shared with other runs' batches while writes are in flight (group commit, see ``_pg_write``).
            await writer.write(c)
            return
        w = _sql.prepare(batch, _names)
        # Deletions (retention, dropped regions) must see the rows this batch adds, and requests may repeat:
        # statement after statement, in one transaction.
        async with self._open_pool().acquire() as conn, conn.transaction():
            # The fence first: the row lock it takes also orders this write after a concurrent claim.
            if _count(await conn.execute(_sql.UPDATE_RUN, *w.run)) != 1:
                if await conn.fetchrow(_sql.SELECT_OWNER, w.run_id) is None:
                    raise RunNotFoundError(w.run_id, self._where)
                raise LeaseLostError(w.run_id, w.owner)
            if w.tasks:
                await conn.executemany(_sql.UPSERT_TASK, w.tasks)
            if w.checkpoints:
                await conn.executemany(_sql.UPSERT_CHECKPOINT, w.checkpoints)
            if w.regions:
                await conn.executemany(_sql.UPSERT_REGION, w.regions)
            if w.drop_regions:
                await conn.executemany(_sql.DELETE_REGION, w.drop_regions)
            if w.events:
                await conn.executemany(_sql.UPSERT_EVENT, w.events)
            if w.retain_checkpoints:
                await conn.executemany(_sql.RETAIN_CHECKPOINTS, w.retain_checkpoints)
                await conn.executemany(_RETAIN_EVENTS, w.retain_events)
            if w.requests:
                await conn.executemany(_sql.UPSERT_REQUEST, w.requests)
            if w.release:
                await conn.execute(_RELEASE, w.run_id, w.owner)

    # -- leases ------------------------------------------------------------------

    async def claim(self, run_id: str, owner: str, ttl: float, *, replacing: str | None = None) -> RunRecord:
        pool = self._open_pool()
        holder: tuple[str, float | None] = ("", None)
        for _ in range(3):
            row = await pool.fetchrow(_CLAIM, run_id, owner, ttl, replacing)
            if row is not None:
                return _c.RUNS.record(row)
            found = await pool.fetchrow(_CLAIMABLE, run_id, replacing)
            if found is None:
                raise RunNotFoundError(run_id, self._where)
            holder = (found["owner"], found["lease_expires"])
            if not found["claimable"]:
                break
            # released or lapsed between the two statements: try again
        raise RunOwnedError(run_id, holder[0], holder[1])

    async def renew(self, owner: str, run_ids: Collection[str], ttl: float) -> Renewal:
        ids = list(run_ids)
        if not ids:
            return Renewal(lost=[], requests=[])
        rows = await self._open_pool().fetch(_RENEW, ids, owner, ttl)
        owned = {row["renewed"] for row in rows}
        requests = [_c.REQUESTS.record(row) for row in rows if row["run_id"] is not None]
        lost, pending = _sql.order_pending(ids, owned, requests)
        return Renewal(lost=lost, requests=pending)

    async def release(self, run_id: str, owner: str) -> None:
        await self._open_writer().call("execute", _RELEASE, (run_id, owner))

    # -- control requests --------------------------------------------------------

    async def request(self, request: ControlRequest) -> None:
        async with self._open_pool().acquire() as conn, conn.transaction():
            if await conn.fetchval(_RUN_EXISTS, request.run_id) is None:
                raise RunNotFoundError(request.run_id, self._where)
            await conn.execute(_sql.UPSERT_REQUEST, *_c.REQUESTS.row(request))

    async def requests(self, run_id: str) -> list[ControlRequest]:
        return [_c.REQUESTS.record(row) for row in await self._open_pool().fetch(_REQUESTS, run_id)]

    # -- reading -----------------------------------------------------------------

    async def tasks(self, run_id: str) -> list[TaskRecord]:
        return [_c.TASKS.record(row) for row in await self._open_pool().fetch(_TASKS, run_id)]

    async def checkpoints(self, run_id: str, checkpoint: str | None = None) -> list[CheckpointRecord]:
        pool = self._open_pool()
        if checkpoint is None:
            rows = await pool.fetch(_CHECKPOINTS, run_id)
        else:
            rows = await pool.fetch(_CHECKPOINTS_OF, run_id, checkpoint)
        return [_c.CHECKPOINTS.record(row) for row in rows]

    async def events(self, run_id: str, *, after: int = -1, limit: int | None = None) -> list[Event]:
        # LIMIT NULL is no limit; a negative limit is applied by slicing, as MemoryStore does
        bound = None if limit is None or limit < 0 else limit
        rows = await self._open_pool().fetch(_EVENTS, run_id, after, bound)
        events = [_c.EVENTS.record(row) for row in rows]
        return events[:limit] if limit is not None and limit < 0 else events

    async def row_counts(self, run_id: str) -> dict[str, int]:
        row = await self._open_pool().fetchrow(_sql.ROW_COUNTS, run_id)
        return {table: row[table] for table in _sql.TABLES}

    # -- maintenance -------------------------------------------------------------

    async def delete_runs(self, run_ids: Collection[str]) -> int:
        ids = list(run_ids)
        if not ids:
            return 0
        async with self._open_pool().acquire() as conn, conn.transaction():
            deleted = 0
            for statement in _DELETE:
                deleted = _count(await conn.execute(statement, ids))
        return deleted  # the last statement deletes the runs themselves

    # -- queues (``ckflow.Worker``; see ``_pg_queue``) -------------------------------

    async def claim_queued(
        self, owner: str, queues: Sequence[str], n: int, ttl: float, *, flows: Sequence[str], skip: Sequence[str] = ()
    ) -> list[RunRecord]:
        """Claim up to ``n`` runs of ``queues`` (taken in that order) for ``owner`` for ``ttl`` seconds: runs under
        way that nobody holds any more, then QUEUED ones by priority and age (made PENDING); only runs of the
        flows named ``flows``, never those of ``skip``. A queue's limit holds across all claimers."""
        claimed: list[RunRecord] = []
        async with self._open_pool().acquire() as conn:
            for queue in queues:
                if len(claimed) >= n:
                    break
                claimed += await _pg_queue.claim_queue(conn, queue, owner, ttl, n - len(claimed), flows, skip)
        return claimed

    async def set_queue_limit(self, queue: str, concurrency: int | None) -> None:
        """At most ``concurrency`` runs of ``queue`` under way at once, across all workers (None: no limit)."""
        await self._open_pool().execute(_pg_queue.SET_LIMIT, queue, concurrency)

    async def live_owners(self, queues: Sequence[str], owner: str, flows: Sequence[str]) -> list[tuple[str, str]]:
        """(run id, owner) of the runs of ``queues`` under way that another owner than ``owner`` holds a live
        lease on, for the flows ``flows``."""
        rows = await self._open_pool().fetch(_pg_queue.LIVE_OWNERS, list(queues), owner, list(flows))
        return [(row["run_id"], row["owner"]) for row in rows]

    async def notify(self, queues: Sequence[str]) -> None:
        """Wake the workers of ``queues`` (runs there became claimable)."""
        async with self._open_pool().acquire() as conn:
            for queue in queues:
                await conn.execute("SELECT pg_notify($1, $2)", _pg_queue.channel(self._schema), queue)

    async def listen(self, callback: Callable[[str], object]) -> Callable[[], Awaitable[None]]:
        """Call ``callback(queue)`` whenever a run is submitted to (or released in) a queue of this store, until
        the returned coroutine function is called; through a connection of its own.

        Raises:
            StoreUnavailableError: the database cannot be reached.
        """
        self._open_pool()
        try:
            conn = await asyncpg.connect(self._dsn, timeout=math.ceil(self._timeout))
            await conn.add_listener(_pg_queue.channel(self._schema), lambda *args: callback(args[3]))
        except _UNREACHABLE as exc:
            raise StoreUnavailableError(self._url, _reason(exc, self._timeout)) from exc

        async def stop() -> None:
            await conn.close()

        return stop

    def __repr__(self) -> str:
        state = "open" if self._pool is not None else "closed"
        return f"<ckflow.stores.PostgresStore {self._url!r} schema={self._schema!r} {state}>"
