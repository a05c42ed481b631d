"""``SQLiteStore``: runs kept in one SQLite file, in WAL mode, through the standard library's ``sqlite3``.

Changes (``write()``, ``create_run``, ``claim``, ``release``, ``request``) commit on the event
loop's own thread, through a connection of their own. Reads, checkpoints, the changes whose size
grows with the number of runs (``renew``, ``delete_runs``) and any change that would have to wait for
a lock go to a thread of the store's own, which owns a second connection (and a third, which only
``_checkpoint`` uses).

Why on the loop: in WAL mode with ``synchronous=NORMAL`` a commit appends a few pages to the WAL and
does not fsync, so the transaction of a task's ``write()`` costs 25 to 40 µs (5 to 8 pages of 1 KiB
written: a batch that changes only the run's progress reads the run's row and leaves it as it is).
Handing it to a thread and back costs 70 to 90 µs more on a 2-core machine (the thread's wake-up, the
GIL, the loop's wake-up), and the writer's suspension on top; and a Linear waits for each write.

What blocks the loop, and for how long: one transaction, never a lock wait, never an fsync.

- The loop's connection has ``busy_timeout`` 0: if another connection (the thread's, another
  process's) holds the write lock, ``BEGIN IMMEDIATE`` fails at once with SQLITE_BUSY and the group
  goes to the thread, which waits for the lock with its ``busy_timeout``.
- No connection checkpoints by itself (``wal_autocheckpoint = 0``): every ``_CHECKPOINT_EVERY``
  commits the store has its thread run a PASSIVE checkpoint, which waits for no one, fsyncs there,
  and keeps the WAL bounded while the loop goes on committing: to restart the WAL it copies the
  frames committed meanwhile with the loop's commits held off (a few milliseconds, once per checkpoint).
- The first commit into a fresh WAL (an empty one, or one that a checkpoint copied whole) writes the
  WAL's header and fsyncs it, even with ``synchronous=NORMAL``. The thread makes that commit itself,
  at ``open()`` and after each checkpoint; ``_checkpoint`` says how no commit on the loop can come
  first. (A checkpoint run on the file by another program, the ``sqlite3`` shell say, may still leave
  that one sync to the loop's next commit.)
- With ``synchronous=FULL`` or ``EXTRA`` every commit fsyncs, so every change commits in the thread,
  as it does for ``:memory:`` and for a file that cannot be put in WAL mode.

Group commit: a change made while no other task has made one in this iteration of the loop commits
at once, before ``write()`` returns, so its caller does not even suspend (up to ``_ALONE_MAX`` in a
row: then the loop goes round first). The changes that other tasks make in the same iteration wait
for a ``loop.call_soon`` callback, which commits them all in one transaction; in the thread, the
changes queued while it was busy commit together. Each change of a group runs in its own SAVEPOINT:
one that fails (its fence, ``LeaseLostError``, or anything else) is rolled back alone and only its
caller gets the error, and a thousand runs that write at once cost a commit or two, not a thousand.

Order: a change is committed after every change its caller awaited before it. Once a change went to
the thread, the later ones follow it there until the thread has committed every one of them, so no
change overtakes an earlier one on its way through the thread.

Cancellation: a change, once made, commits as a unit (or fails as one) even if the coroutine that
awaits it is cancelled (the result is dropped); so does a read or a checkpoint the thread started.
A connection is never left in the middle of a transaction.

Several processes may share a file: WAL lets readers go on while one process writes, and the
thread's ``busy_timeout`` makes a writer wait for the lock instead of failing. Leases are timed by
this process's ``time.time()``, so the engines that share a file should run on one machine.

The code is in five modules, and imports go one way: this one uses the four others, which use only
the ones listed after them (and what the SQL stores share: ``_sql``, ``_columns``, ``_schema``).

- ``sqlite``: the ``SQLiteStore`` façade, which turns each call into a read, a change or a job for the
  thread, and its records into rows and back (by column name, through ``_columns``).
- ``_sqlite_ops``: the SQL statements, and the function that each call runs on a connection or cursor.
- ``_sqlite_commit``: the thread with its job queue and wakers, and ``Session``, the loop's side of an
  open store: group commits, the hand-off to the thread on SQLITE_BUSY, and checkpoints
  (``_ALONE_MAX``, ``_CHECKPOINT_EVERY``, ``_checkpoint``).
- ``_sqlite_tx``: the group commit, each change in a savepoint, that the loop and the thread both run.
- ``_sqlite_conn``: opening: the URL, the checks on the file, the pragmas, the migrations, and the
  loop's own connection (``LoopSide``).
"""

from __future__ import annotations

import asyncio
import weakref
from typing import TYPE_CHECKING, Any, Final, TypeVar, final

from ckflow._errors import RunExistsError, RunNotFoundError, RunOwnedError
from ckflow._records import Renewal, StoredRun
from ckflow.stores import _columns as _c
from ckflow.stores import _sql
from ckflow.stores import _sqlite_ops as _ops
from ckflow.stores._protocol import StoreBase, not_open
from ckflow.stores._sqlite_commit import RAW, READ, open_session
from ckflow.stores._sqlite_conn import parse

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Callable, Collection

    from ckflow._events import Event
    from ckflow._records import Batch, CheckpointRecord, ControlRequest, RunRecord, TaskRecord
    from ckflow._states import FlowState
    from ckflow.stores._sqlite_commit import Session

__all__ = ["SQLiteStore"]

_A = TypeVar("_A")
_R = TypeVar("_R")

#: runs that ``delete_runs`` deletes per transaction, so that it never holds the write lock for long
_DELETE_CHUNK: Final = 64


@final
class SQLiteStore(StoreBase):
    """A store in one SQLite file, shared safely by the engines of one machine.

    Args:
        url: ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` (SQLAlchemy's convention),
            optionally with ``?synchronous=FULL`` (default ``NORMAL``: in WAL mode a commit survives a crash
            of the process, and the last commits may be lost if the machine itself loses power).
        create: create the file and its tables if they are missing (the default); with False, ``open()``
            raises ``StoreNotFoundError`` instead and leaves no file behind (for tools that only read).

    Raises:
        ValueError: the URL is not a SQLite store URL, or has an unknown option.
    """

    __slots__ = (
        "__weakref__",
        "_create",
        "_finalizer",
        "_lock",
        "_path",
        "_session",
        "_synchronous",
        "_url",
        "_where",
    )

    def __init__(self, url: str, *, create: bool = True) -> None:
        self._path, self._synchronous = parse(url)
        self._create = create
        self._url = url
        self._where = f"store {url!r}"
        self._lock = asyncio.Lock()
        #: the thread and the loop's side of the store while it is open
        self._session: Session | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    @property
    def url(self) -> str:
        """The URL the store was made with."""
        return self._url

    async def open(self) -> None:
        """Open the file (created if missing, unless ``create=False``) and create or migrate its schema.

        Does nothing if open.
        """
        async with self._lock:
            if self._session is not None:
                return
            session = await open_session(self._url, self._path, self._synchronous, create=self._create)
            self._session = session
            self._finalizer = weakref.finalize(self, session.worker.stop_nowait, self._url)

    async def close(self) -> None:
        """Finish the calls already made, then close the connections; does nothing if closed."""
        async with self._lock:
            session = self._session
            if session is None:
                return
            stopped = session.stop()
            self._session = None  # calls made from now on find the store closed
            if self._finalizer is not None:
                self._finalizer.detach()
            await stopped  # shielded: the thread ends even if this close() is cancelled

    def _open_session(self) -> Session:
        session = self._session
        if session is None:
            raise not_open(self._url)
        return session

    def _call(self, kind: int, fn: Callable[[sqlite3.Connection, _A], _R], arg: _A) -> asyncio.Future[_R]:
        """A job for the thread: a read (``READ``), or ``RAW``."""
        return self._open_session().worker.submit(kind, fn, arg)

    def _change(self, fn: Callable[[sqlite3.Cursor, _A], _R], arg: _A) -> asyncio.Future[_R]:
        """A change: committed on the loop when that costs no wait, else in the thread (see ``Session.change``)."""
        return self._open_session().change(fn, arg)

    # -- runs --------------------------------------------------------------------

    async def create_run(self, run: RunRecord) -> None:
        if not await self._change(_ops.create_run, _c.RUNS.row(run)):
            raise RunExistsError(run.run_id, self._where)

    async def get_run(self, run_id: str) -> RunRecord:
        row = await self._call(READ, _ops.get_run, run_id)
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
            states, flow, ended_before, limit, _ops.states_test, _ops.names, _ops.RUN_RECORDS, before
        )
        rows = await self._call(READ, _ops.fetch_all, (_sql.qmark(statement), params))
        runs = [_c.RUNS.record(row) for row in rows]
        return runs[:limit] if slice_after else runs

    async def load(self, run_id: str) -> StoredRun:
        found = await self._call(READ, _ops.load, run_id)
        if found is None:
            raise RunNotFoundError(run_id, self._where)
        run, tasks, checkpoints, regions, failures = found
        return StoredRun(
            run=_c.RUNS.record(run),
            tasks=[_c.TASKS.record(row) for row in tasks],
            checkpoints=[_c.CHECKPOINTS.record(row) for row in checkpoints],
            regions=[_c.REGIONS.record(row) for row in regions],
            failures=[_c.failure_from_event(row["body"]) for row in failures],
        )

    async def write(self, batch: Batch) -> None:
        await self._change(_ops.apply, (_sql.prepare(batch, _ops.names, progress=True), self._where))

    # -- leases ------------------------------------------------------------------

    async def claim(self, run_id: str, owner: str, ttl: float, *, replacing: str | None = None) -> RunRecord:
        found = await self._change(_ops.claim, (run_id, owner, ttl, replacing))
        if found is None:
            raise RunNotFoundError(run_id, self._where)
        claimed, row = found
        if not claimed:
            raise RunOwnedError(run_id, row["owner"], row["lease_expires"])
        return _c.RUNS.record(row)

    async def renew(self, owner: str, run_ids: Collection[str], ttl: float) -> Renewal:
        ids = list(run_ids)
        if not ids:
            return Renewal(lost=[], requests=[])
        # Its transaction grows with the engine's runs (some 3 ms for 1,000): the thread's to wait for.
        owned, rows = await self._open_session().change_in_thread(_ops.renew, (ids, owner, ttl))
        lost, pending = _sql.order_pending(ids, owned, map(_c.REQUESTS.record, rows))
        return Renewal(lost=lost, requests=pending)

    async def release(self, run_id: str, owner: str) -> None:
        await self._change(_ops.release, (run_id, owner))

    # -- control requests --------------------------------------------------------

    async def request(self, request: ControlRequest) -> None:
        if not await self._change(_ops.request, (request.run_id, _c.REQUESTS.row(request))):
            raise RunNotFoundError(request.run_id, self._where)

    async def requests(self, run_id: str) -> list[ControlRequest]:
        rows = await self._call(READ, _ops.fetch_all, (_ops.REQUESTS, (run_id,)))
        return [_c.REQUESTS.record(row) for row in rows]

    # -- reading -----------------------------------------------------------------

    async def tasks(self, run_id: str) -> list[TaskRecord]:
        rows = await self._call(READ, _ops.fetch_all, (_ops.TASKS, (run_id,)))
        return [_c.TASKS.record(row) for row in rows]

    async def checkpoints(self, run_id: str, checkpoint: str | None = None) -> list[CheckpointRecord]:
        query = (_ops.CHECKPOINTS, (run_id,)) if checkpoint is None else (_ops.CHECKPOINTS_OF, (run_id, checkpoint))
        rows = await self._call(READ, _ops.fetch_all, query)
        return [_c.CHECKPOINTS.record(row) for row in rows]

    async def events(self, run_id: str, *, after: int = -1, limit: int | None = None) -> list[Event]:
        # LIMIT -1 is no limit; a negative limit is applied by slicing, as MemoryStore does
        bound = -1 if limit is None or limit < 0 else limit
        rows = await self._call(READ, _ops.fetch_all, (_ops.EVENTS, (run_id, after, bound)))
        events = [_c.EVENTS.record(row) for row in rows]
        return events[:limit] if limit is not None and limit < 0 else events

    async def row_counts(self, run_id: str) -> dict[str, int]:
        row = await self._call(READ, _ops.row_counts, run_id)
        return {table: row[table] for table in _sql.TABLES}

    # -- maintenance -------------------------------------------------------------

    async def delete_runs(self, run_ids: Collection[str]) -> int:
        ids = list(run_ids)
        if not ids:
            return 0
        # A chunk per transaction, one job each: the changes that wait for the lock meanwhile go between them.
        deleted = 0
        for start in range(0, len(ids), _DELETE_CHUNK):
            deleted += await self._call(RAW, _ops.delete_chunk, _ops.names(ids[start : start + _DELETE_CHUNK]))
            self._open_session().commits += 1
        self._open_session().maybe_checkpoint()
        return deleted

    def __repr__(self) -> str:
        state = "open" if self._session is not None else "closed"
        return f"<ckflow.stores.SQLiteStore {self._url!r} {state}>"
