"""``SQLiteStore``: runs kept in one SQLite file, in WAL mode, through the standard library's ``sqlite3``.

Changes (``write()``, ``create_run``, ``claim``, ``release``, ``request``) commit on the event
loop's own thread, through a connection of their own. Reads, checkpoints, the changes whose size
grows with the number of runs (``renew``, ``delete_runs``) and any change that would have to wait for
a lock go to a thread of the store's own, which owns a second connection (and a third, which only
``_checkpoint`` uses).

Why on the loop: in WAL mode with ``synchronous=NORMAL`` a commit appends a few pages to the WAL and
does not fsync, so the transaction of a task's ``write()`` costs 30 to 70 µs (4 to 7 pages written).
Handing it to a thread and back costs 70 to 90 µs more on a 2-core machine (the thread's wake-up, the
GIL, the loop's wake-up), and the writer's suspension on top; and a Linear waits for each write.

What blocks the loop, and for how long: one transaction, never a lock wait, never an fsync.

- The loop's connection has ``busy_timeout`` 0: if another connection (the thread's, another
  process's) holds the write lock, ``BEGIN IMMEDIATE`` fails at once with SQLITE_BUSY and the group
  goes to the thread, which waits for the lock with its ``busy_timeout``.
- No connection checkpoints by itself (``wal_autocheckpoint = 0``): every ``_CHECKPOINT_EVERY``
  commits the store has its thread run a PASSIVE checkpoint, which waits for no one, fsyncs there,
  and keeps the WAL bounded while the loop goes on committing.
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
"""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import os
import queue
import sqlite3
import sys
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Final, TypeVar, final
from urllib.parse import parse_qsl, unquote

from ckflow._errors import (
    LeaseLostError,
    RunExistsError,
    RunNotFoundError,
    RunOwnedError,
    SchemaVersionError,
    StoreUnavailableError,
)
from ckflow._records import Renewal, StoredRun
from ckflow.stores import _sql
from ckflow.stores._protocol import SCHEMA_VERSION

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterable, Sequence
    from types import TracebackType

    from ckflow._events import Event
    from ckflow._records import Batch, CheckpointRecord, ControlRequest, RunRecord, TaskRecord
    from ckflow._states import FlowState

__all__ = ["SQLiteStore"]

_A = TypeVar("_A")
_R = TypeVar("_R")

#: how long the thread waits for another connection's write lock before failing with "database is locked"
_BUSY_TIMEOUT_MS: Final = 5000
_SYNCHRONOUS: Final = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})
#: the levels at which a commit in WAL mode does not fsync, and so may run on the loop
_COMMIT_WITHOUT_SYNC: Final = frozenset({"OFF", "NORMAL"})
#: commits (on the loop or in the thread) between two checkpoints run by the thread. A task's write()
#: adds 4 to 7 pages to the WAL, which so stays under some 7,000 pages (28 MB); checkpointing four
#: times as often cost S5 7 % more (the checkpoint's copying and fsyncs compete with the loop)
_CHECKPOINT_EVERY: Final = 1000
#: changes that one task may commit at once, without suspending, before the loop goes round: a task that
#: starts 1,000 runs in a row lets the first ones go on meanwhile (S8: p50 latency 50 ms instead of 1 s,
#: and more runs per second), and the loop waits at most some 2 ms for the others; S5 pays some 2 %
_ALONE_MAX: Final = 32
#: runs that ``delete_runs`` deletes per transaction, so that it never holds the write lock for long
_DELETE_CHUNK: Final = 64
_HEADER: Final = b"SQLite format 3\x00"
#: UPSERT needs 3.24; ``json_each`` (lists of ids) needs JSON1, built in since 3.38
_MIN_SQLITE: Final = (3, 24, 0)

# -- migrations (the schema itself is in _sql) --------------------------------------------


def _create_v1(conn: sqlite3.Connection) -> None:
    for statement in _sql.SQLITE_V1:
        conn.execute(statement)


#: ``_MIGRATIONS[n]`` brings a store from schema version ``n`` to ``n + 1``, inside the open transaction;
#: a new version is one more function here (and ``SCHEMA_VERSION`` raised by one).
_MIGRATIONS: Final[tuple[Callable[[sqlite3.Connection], None], ...]] = (_create_v1,)
assert len(_MIGRATIONS) == SCHEMA_VERSION, "one migration step per schema version"

# -- statements ----------------------------------------------------------------------

_q = _sql.qmark
_INSERT_RUN: Final = _q(_sql.INSERT_RUN)
_UPDATE_RUN: Final = _q(_sql.UPDATE_RUN)
_SELECT_RUN: Final = _q(_sql.SELECT_RUN)
_FENCE: Final = "SELECT owner, state, created_at FROM ckflow_runs WHERE run_id = ?1"
#: ``_UPDATE_RUN`` for a run owned by the writer whose state and creation time stay as they are (same
#: parameters): it fences the write too, and ``_FENCE`` runs only if it changed no row
_UPDATE_RUN_SAME_KEYS: Final = (
    "UPDATE ckflow_runs SET flow = ?3, inputs = ?5, updated_at = ?7, ended_at = ?8, halted = ?9, goto = ?10, "
    "next_seq = ?11 WHERE run_id = ?1 AND owner = ?2 AND state = ?4 AND created_at = ?6"
)
_UPSERT_TASK: Final = _q(_sql.UPSERT_TASK)
_UPSERT_CHECKPOINT: Final = _q(_sql.UPSERT_CHECKPOINT)
_UPSERT_REGION: Final = _q(_sql.UPSERT_REGION)
_UPSERT_EVENT: Final = _q(_sql.UPSERT_EVENT)
_UPSERT_REQUEST: Final = _q(_sql.UPSERT_REQUEST)
_DELETE_REGION: Final = _q(_sql.DELETE_REGION)
_RETAIN_CHECKPOINTS: Final = _q(_sql.RETAIN_CHECKPOINTS)
_RETAIN_EVENTS: Final = (
    "DELETE FROM ckflow_events WHERE run_id = ?1 AND seq < ?2 AND checkpoint IN (SELECT value FROM json_each(?3))"
)
_SELECT_LATEST_CHECKPOINTS: Final = _q(_sql.SELECT_LATEST_CHECKPOINTS)
_SELECT_FAILURES: Final = _q(_sql.SELECT_FAILURES)
_ROW_COUNTS: Final = _q(_sql.ROW_COUNTS)
_TASKS: Final = f"SELECT {', '.join(_sql.TASK_COLUMNS)} FROM ckflow_tasks WHERE run_id = ?1 ORDER BY rowid"
_REGIONS: Final = f"SELECT {', '.join(_sql.REGION_COLUMNS)} FROM ckflow_regions WHERE run_id = ?1 ORDER BY rowid"
_CHECKPOINTS: Final = (
    f"SELECT {', '.join(_sql.CHECKPOINT_COLUMNS)} FROM ckflow_checkpoints WHERE run_id = ?1 "
    "ORDER BY checkpoint, pass_no"
)
_CHECKPOINTS_OF: Final = (
    f"SELECT {', '.join(_sql.CHECKPOINT_COLUMNS)} FROM ckflow_checkpoints WHERE run_id = ?1 AND checkpoint = ?2 "
    "ORDER BY pass_no"
)
_EVENTS: Final = (
    "SELECT run_id, seq, checkpoint, body FROM ckflow_events WHERE run_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
)
_REQUESTS: Final = (
    f"SELECT {', '.join(_sql.REQUEST_COLUMNS)} FROM ckflow_requests WHERE run_id = ?1 ORDER BY requested_at, rowid"
)
_PENDING: Final = (
    f"SELECT {', '.join(_sql.REQUEST_COLUMNS)} FROM ckflow_requests "
    "WHERE run_id IN (SELECT value FROM json_each(?1)) AND done_at IS NULL ORDER BY rowid"
)
_OWNED: Final = "SELECT run_id FROM ckflow_runs WHERE run_id IN (SELECT value FROM json_each(?1)) AND owner = ?2"
_RENEW: Final = (
    "UPDATE ckflow_runs SET lease_expires = ?3 WHERE run_id IN (SELECT value FROM json_each(?1)) AND owner = ?2"
)
_CLAIM: Final = "UPDATE ckflow_runs SET owner = ?2, lease_expires = ?3 WHERE run_id = ?1"
_RELEASE: Final = "UPDATE ckflow_runs SET owner = NULL, lease_expires = NULL WHERE run_id = ?1 AND owner = ?2"
_RUN_EXISTS: Final = "SELECT 1 FROM ckflow_runs WHERE run_id = ?1"
_DELETE: Final = tuple(
    f"DELETE FROM ckflow_{table} WHERE run_id IN (SELECT value FROM json_each(?1))" for table in (*_sql.TABLES, "runs")
)
_READ_VERSION: Final = "SELECT value FROM ckflow_meta WHERE key = 'schema_version'"
#: a read that makes a read transaction begin
_PIN: Final = "SELECT 1 FROM ckflow_meta LIMIT 1"
#: a commit that changes a page, whatever the file holds: SQLite skips rows rewritten with equal bytes
_MARK_WAL: Final = (
    "INSERT INTO ckflow_meta (key, value) VALUES ('wal_restarts', '1') "
    "ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1"
)
_SET_VERSION: Final = (
    "INSERT INTO ckflow_meta (key, value) VALUES ('schema_version', ?1) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)


def _names(names: Sequence[str]) -> str:
    """A list bound as one parameter, read back by ``json_each``."""
    return json.dumps(list(names))


def _states_test(n: int) -> str:
    return f"state IN (SELECT value FROM json_each(${n}))"


# -- the connection's thread ------------------------------------------------------------

#: job kinds: open the connections; read in one snapshot; a change (grouped with its neighbours,
#: each in a savepoint); run without a transaction around it (checkpoints, chunks of delete_runs);
#: close the connections and end the thread
_OPEN: Final = 0
_READ: Final = 1
_WRITE: Final = 2
_RAW: Final = 3
_STOP: Final = 4

#: a finished job's future, and its exception or its result
_Outcome = tuple["asyncio.Future[Any]", "BaseException | None", Any]
#: (kind, function run in the thread, its argument, who wakes the awaiting loop, the future to settle)
_Job = tuple[int, "Callable[[Any, Any], Any]", Any, "_Waker | _LoopWaker | None", "asyncio.Future[Any] | None"]
#: (job, exception or None, result)
_Done = tuple[_Job, "BaseException | None", Any]
#: a change: the function that makes it in a transaction (through the connection's cursor), and its argument
_Change = tuple["Callable[[sqlite3.Cursor, Any], Any]", Any]
#: what a change gave: (exception or None, result)
_Result = tuple["BaseException | None", Any]


def _settle(outcomes: Iterable[_Outcome]) -> None:
    """In the event loop: hand each awaiting coroutine its result."""
    for future, exc, value in outcomes:
        if future.done():
            continue  # its caller was cancelled; the job ran to its end all the same
        if exc is None:
            future.set_result(value)
        else:
            future.set_exception(exc)


@final
class _Waker:
    """Hands results to one event loop through a file descriptor that the loop watches.

    On a 2-core VM it saves some 15 to 30 µs per call over ``call_soon_threadsafe``,
    whose socket pair and extra loop iteration weigh on every ``write()`` (an eventfd where there is
    one, else a pipe). Loops without ``add_reader`` (Windows' proactor) use ``_LoopWaker``.
    """

    __slots__ = ("_outcomes", "_read_fd", "_signal", "_write_fd", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._outcomes: collections.deque[_Outcome] = collections.deque()
        if hasattr(os, "eventfd"):
            self._read_fd = self._write_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._signal = (1).to_bytes(8, sys.byteorder)
        else:  # pragma: no cover - platforms without eventfd
            self._read_fd, self._write_fd = os.pipe()
            self._signal = b"\0"
        try:
            if self._write_fd != self._read_fd:  # pragma: no cover
                os.set_blocking(self._read_fd, False)
                os.set_blocking(self._write_fd, False)
            loop.add_reader(self._read_fd, self._drain)
        except BaseException:
            self._close_fds()
            raise

    def deliver(self, outcomes: list[_Outcome]) -> None:
        """From the thread: queue the outcomes, then wake the loop (in this order: see ``_drain``)."""
        self._outcomes.extend(outcomes)
        try:
            os.write(self._write_fd, self._signal)
        except BlockingIOError:  # pragma: no cover - a full pipe is a loop already woken
            pass

    def _drain(self) -> None:
        # Clear the signal before taking the outcomes: outcomes queued after this read signal again.
        try:
            os.read(self._read_fd, 4096)
        except BlockingIOError:
            pass
        outcomes = self._outcomes
        while outcomes:
            _settle((outcomes.popleft(),))

    def close(self) -> None:
        """In the loop, once the thread has ended: stop watching and close the descriptors."""
        if not self.loop.is_closed():
            self.loop.remove_reader(self._read_fd)
        self._close_fds()

    def _close_fds(self) -> None:
        os.close(self._read_fd)
        if self._write_fd != self._read_fd:
            os.close(self._write_fd)


@final
class _LoopWaker:
    """Hands results to an event loop with ``call_soon_threadsafe``."""

    __slots__ = ("loop",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def deliver(self, outcomes: list[_Outcome]) -> None:
        try:
            self.loop.call_soon_threadsafe(_settle, outcomes)
        except RuntimeError:
            pass  # the loop is closed: nobody awaits these any more


def _flush(done: list[_Done]) -> None:
    """From the thread: settle the futures of finished jobs, one wake-up per loop."""
    by_waker: dict[_Waker | _LoopWaker, list[_Outcome]] = {}
    for (_, _, _, waker, future), exc, value in done:
        if waker is not None and future is not None:
            by_waker.setdefault(waker, []).append((future, exc, value))
    done.clear()
    for waker, outcomes in by_waker.items():
        waker.deliver(outcomes)


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # the transaction is gone either way


def _is_busy(exc: BaseException) -> bool:
    """SQLITE_BUSY (and its extended codes): another connection holds the lock that was asked for."""
    return isinstance(exc, sqlite3.OperationalError) and exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY


class _Busy(Exception):
    """The loop connection met another connection's lock; its group was rolled back whole."""


def _read(conn: sqlite3.Connection, job: _Job) -> Any:
    """One read, in one snapshot."""
    conn.execute("BEGIN")
    try:
        result = job[1](conn, job[2])
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise
    return result


def _write_group(cur: sqlite3.Cursor, changes: Sequence[_Change], *, on_loop: bool) -> list[_Result]:
    """Make the changes in one transaction, each in its own savepoint; commit once; return what each gave.

    On the loop (``on_loop``), SQLITE_BUSY anywhere rolls the whole group back and raises ``_Busy``:
    the caller hands the group to the thread, whose connection waits for the lock.
    """
    if len(changes) == 1:
        return [_write_alone(cur, changes[0], on_loop)]
    results: list[_Result] = [(None, None)] * len(changes)
    start = 0
    try:
        while start < len(changes):
            try:
                cur.execute("BEGIN IMMEDIATE")
            except Exception as exc:
                if on_loop and _is_busy(exc):
                    raise _Busy from exc
                results[start:] = [(exc, None)] * (len(changes) - start)
                break
            # A change alone in its transaction needs no savepoint: ROLLBACK undoes it just as well.
            alone = len(changes) - start == 1
            applied: list[int] = []
            index = start
            while index < len(changes):
                fn, arg = changes[index]
                index += 1
                try:
                    if alone:
                        value = fn(cur, arg)
                    else:
                        cur.execute("SAVEPOINT ckflow_batch")
                        value = fn(cur, arg)
                        cur.execute("RELEASE ckflow_batch")
                except Exception as exc:
                    if on_loop and _is_busy(exc):
                        raise _Busy from exc
                    results[index - 1] = (exc, None)
                    if not alone and cur.connection.in_transaction:
                        try:
                            cur.execute("ROLLBACK TO ckflow_batch")
                            cur.execute("RELEASE ckflow_batch")
                        except sqlite3.Error:
                            pass
                        else:
                            continue
                    # SQLite rolled the whole transaction back (disk full, I/O error): the changes made
                    # before this one are lost with it; the ones after it get a transaction of their own.
                    _rollback(cur.connection)
                    for i in applied:
                        results[i] = (exc, None)
                    applied = []
                    break
                results[index - 1] = (None, value)
                applied.append(index - 1)
            if cur.connection.in_transaction:
                try:
                    cur.execute("COMMIT")
                except Exception as exc:
                    if on_loop and _is_busy(exc):
                        raise _Busy from exc
                    _rollback(cur.connection)
                    for i in applied:
                        results[i] = (exc, None)
            start = index
    except BaseException:
        _rollback(cur.connection)  # a _Busy, or a KeyboardInterrupt that hit the loop mid-transaction
        raise
    return results


def _write_alone(cur: sqlite3.Cursor, change: _Change, on_loop: bool) -> _Result:
    """``_write_group`` of one change: no savepoint, as ROLLBACK undoes it just as well."""
    try:
        cur.execute("BEGIN IMMEDIATE")
    except Exception as exc:
        if on_loop and _is_busy(exc):
            raise _Busy from exc
        return exc, None
    try:
        value = change[0](cur, change[1])
        cur.execute("COMMIT")
    except Exception as exc:
        _rollback(cur.connection)
        if on_loop and _is_busy(exc):
            raise _Busy from exc
        return exc, None
    except BaseException:
        _rollback(cur.connection)  # a KeyboardInterrupt that hit the loop mid-transaction
        raise
    return None, value


def _serve(jobs: queue.SimpleQueue[_Job]) -> None:
    """The thread: take every job queued, run them in order, group neighbouring changes; end at ``_STOP``."""
    conn: sqlite3.Connection | None = None
    cur: sqlite3.Cursor | None = None
    side: _LoopSide | None = None
    done: list[_Done] = []
    while True:
        taken = [jobs.get()]
        while True:
            try:
                taken.append(jobs.get_nowait())
            except queue.Empty:
                break
        i = 0
        while i < len(taken):
            job = taken[i]
            kind = job[0]
            if kind == _STOP:
                if side is not None:
                    side.close()
                if conn is not None:
                    try:
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                        conn.execute("PRAGMA optimize")
                    except sqlite3.Error:
                        pass
                    conn.close()
                done.append((job, None, None))
                closed = StoreUnavailableError(str(job[2]), "the store is closed.")
                done.extend((later, closed, None) for later in taken[i + 1 :])
                _flush(done)
                return
            i += 1
            if kind == _OPEN:
                try:
                    conn, side = connected = job[1](None, job[2])
                except BaseException as exc:
                    done.append((job, exc, None))
                else:
                    cur = conn.cursor()
                    done.append((job, None, connected))
            elif conn is None or cur is None:
                done.append((job, StoreUnavailableError("", "the store is not open."), None))
            elif kind == _WRITE:
                j = i
                while j < len(taken) and taken[j][0] == _WRITE:
                    j += 1
                group = taken[i - 1 : j]
                i = j
                _flush(done)  # what finished before the group need not wait for its commit
                try:
                    results = _write_group(cur, [(job[1], job[2]) for job in group], on_loop=False)
                except BaseException as exc:
                    results = [(exc, None)] * len(group)
                done.extend((job, exc, value) for job, (exc, value) in zip(group, results, strict=True))
            else:
                try:
                    done.append((job, None, _read(conn, job) if kind == _READ else job[1](conn, job[2])))
                except BaseException as exc:
                    _rollback(conn)
                    done.append((job, exc, None))
        _flush(done)


@final
class _Worker:
    """The thread that owns a store's connection, and the queue of its jobs."""

    __slots__ = ("_jobs", "_thread", "waker")

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        #: how results reach the loop the store was opened in (other loops use ``_LoopWaker``)
        self.waker: _Waker | None = None
        self._thread = threading.Thread(target=_serve, args=(self._jobs,), name=name, daemon=True)
        self._thread.start()

    def submit(self, kind: int, fn: Callable[[Any, _A], _R], arg: _A) -> asyncio.Future[_R]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_R] = loop.create_future()
        waker = self.waker
        self._jobs.put((kind, fn, arg, waker if waker is not None and waker.loop is loop else _LoopWaker(loop), future))
        return future

    def stop_nowait(self, url: str = "") -> None:
        """Close the connections once the jobs queued before are done; used when nobody can await."""
        self._jobs.put((_STOP, _noop, url, None, None))


def _noop(conn: Any, arg: Any) -> None:
    return None


# -- opening -----------------------------------------------------------------------------


def _parse(url: str) -> tuple[str, str]:
    """(path, synchronous) of a ``sqlite:///path`` URL."""
    scheme, sep, rest = url.partition("://")
    rest, _, query = rest.partition("?")
    if scheme.lower() != "sqlite" or not sep or not rest.startswith("/") or len(rest) < 2:
        raise ValueError(
            f"A SQLite store URL is 'sqlite:///relative/path.db' or 'sqlite:////absolute/path.db', got {url!r}."
        )
    synchronous = "NORMAL"
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key != "synchronous":
            raise ValueError(f"Unknown option {key!r} in SQLite store URL {url!r}; the only one is 'synchronous'.")
        synchronous = value.upper()
        if synchronous not in _SYNCHRONOUS:
            raise ValueError(f"SQLite store URL {url!r}: synchronous={value!r} is not one of {sorted(_SYNCHRONOUS)}.")
    return unquote(rest[1:]), synchronous


def _check_file(url: str, path: str) -> None:
    """Refuse, before SQLite touches it, a file that is not a SQLite database, or a missing directory."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise StoreUnavailableError(url, f"the directory {directory!r} does not exist.")
    try:
        with open(path, "rb") as file:
            head = file.read(len(_HEADER))
    except FileNotFoundError:
        return  # a new store
    except IsADirectoryError:
        raise StoreUnavailableError(url, f"{path!r} is a directory, not a SQLite file.") from None
    except OSError as exc:
        raise StoreUnavailableError(url, f"{path!r} cannot be read ({exc.strerror}).") from exc
    if head and head != _HEADER:
        raise StoreUnavailableError(url, f"{path!r} is not a SQLite database (it lacks the SQLite header).")


def _schema_version(conn: sqlite3.Connection, url: str) -> int:
    """The store's schema version; 0 for a database without ckflow's tables."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'ckflow_meta'").fetchone() is None:
        return 0
    row = conn.execute(_READ_VERSION).fetchone()
    try:
        return int(row[0])
    except (TypeError, ValueError):
        raise StoreUnavailableError(url, "its ckflow_meta table holds no valid schema_version.") from None


def _migrate(conn: sqlite3.Connection, url: str) -> None:
    """Bring the schema to ``SCHEMA_VERSION`` in one transaction, or raise and change nothing."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        # read again under the write lock: another process may have migrated the file meanwhile
        version = _schema_version(conn, url)
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(url, version, SCHEMA_VERSION)
        if version < SCHEMA_VERSION:
            for step in _MIGRATIONS[version:]:
                step(conn)
            conn.execute(_SET_VERSION, (str(SCHEMA_VERSION),))
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise


def _connect(_: None, arg: tuple[str, str, str]) -> tuple[sqlite3.Connection, _LoopSide | None]:
    """In the thread: open the file, refuse what is not a ckflow store, set it up and migrate it.

    Returns the thread's connection and, where commits need no fsync, what lets changes commit on the loop.
    """
    url, path, synchronous = arg
    if sqlite3.sqlite_version_info < _MIN_SQLITE:
        found = sqlite3.sqlite_version
        raise StoreUnavailableError(url, f"ckflow needs SQLite 3.24 or newer; this Python has {found}.")
    if path != ":memory:":
        _check_file(url, path)
    try:
        conn = sqlite3.connect(path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None, cached_statements=256)
    except sqlite3.Error as exc:
        raise StoreUnavailableError(url, f"SQLite cannot open {path!r} ({exc}).") from exc
    side: _LoopSide | None = None
    try:
        # Read before anything is written, so that a file we refuse is left as it was.
        version = _schema_version(conn, url)
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(url, version, SCHEMA_VERSION)
        try:
            conn.execute("SELECT json_valid('[]')")
        except sqlite3.OperationalError:
            raise StoreUnavailableError(
                url, f"this SQLite ({sqlite3.sqlite_version}) was built without JSON functions, which ckflow needs."
            ) from None
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        wal = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower() == "wal"
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        # Rows are tied to their run by the write fence and removed by delete_runs, not by foreign keys,
        # which would cost a lookup of the run per row written.
        conn.execute("PRAGMA foreign_keys = OFF")
        if version < SCHEMA_VERSION:
            _migrate(conn, url)
        if wal and synchronous in _COMMIT_WITHOUT_SYNC and path != ":memory:":
            conn.execute("PRAGMA wal_autocheckpoint = 0")  # the store runs checkpoints itself
            side = _LoopSide(path, synchronous)
            try:
                _mark_wal(conn)
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise  # else another process writes: its commit synced the WAL's header, or the loop's will
    except sqlite3.Error as exc:
        _close(conn, side)
        raise StoreUnavailableError(url, f"{path!r} is not a usable ckflow store ({exc}).") from exc
    except BaseException:
        _close(conn, side)
        raise
    return conn, side


def _close(conn: sqlite3.Connection, side: _LoopSide | None) -> None:
    if side is not None:
        side.close()
    conn.close()


def _mark_wal(conn: sqlite3.Connection) -> None:
    """In the thread: commit a one-row change.

    The first commit into a fresh WAL (an empty one, or one that a checkpoint copied whole into the
    database) writes the WAL's header and fsyncs it, even with ``synchronous=NORMAL``: this makes that
    commit here rather than on the loop.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(_MARK_WAL)
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise


def _checkpoint(conn: sqlite3.Connection, side: _LoopSide) -> tuple[int, int, int]:
    """In the thread: copy the WAL into the database and, if it copied it whole, restart the WAL here.

    The checkpoint is PASSIVE: it waits for no one, and the loop goes on committing meanwhile. The
    first commit after a checkpoint that copied the WAL whole restarts the WAL and syncs its header;
    the pin, a read transaction begun before the checkpoint, keeps every commit from restarting it
    until this thread ends the pin and begins its own write transaction, both while it holds
    ``side.restarting`` (so the loop commits nothing in between, nor waits: it tries again later).
    Returns ``PRAGMA wal_checkpoint``'s (busy, frames in the WAL, frames copied).
    """
    with side.restarting:
        side.pin.execute("BEGIN")
        side.pin.execute(_PIN).fetchall()
    try:
        busy, frames, copied = (int(v) for v in conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone())
    except BaseException:
        with side.restarting:
            _rollback(side.pin)
        raise
    restart = False
    with side.restarting:
        _rollback(side.pin)
        if not busy and frames == copied:  # (else a commit came between the pin and the checkpoint)
            conn.execute("PRAGMA busy_timeout = 0")  # never hold `restarting` while waiting for a lock
            try:
                conn.execute("BEGIN IMMEDIATE")
                restart = True
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise  # else another process writes, and its commit restarts the WAL
            finally:
                conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
    if restart:
        try:
            conn.execute(_MARK_WAL)
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
    return busy, frames, copied


@final
class _LoopSide:
    """What lets changes commit on the loop: the loop's connection, and what keeps a WAL restart off it."""

    __slots__ = ("conn", "cursor", "pin", "restarting")

    def __init__(self, path: str, synchronous: str) -> None:
        #: used on the loop only, between two of its iterations; opened and closed in the thread
        self.conn = sqlite3.connect(
            path, timeout=0, isolation_level=None, cached_statements=256, check_same_thread=False
        )
        try:
            self.conn.execute("PRAGMA wal_autocheckpoint = 0")
            self.conn.execute(f"PRAGMA synchronous = {synchronous}")
            self.conn.execute("PRAGMA foreign_keys = OFF")
            #: one cursor for every change: ``conn.execute`` would make one per statement
            self.cursor = self.conn.cursor()
            #: used in the thread only, by ``_checkpoint``
            self.pin = sqlite3.connect(path, timeout=0, isolation_level=None)
        except BaseException:
            self.conn.close()
            raise
        #: held by the thread, never for a wait, while no commit may begin on the loop
        self.restarting = threading.Lock()

    def close(self) -> None:
        """In the thread (closing a connection may checkpoint)."""
        self.pin.close()
        self.conn.close()


# -- what the thread runs for each call --------------------------------------------------------


def _create_run(cur: sqlite3.Cursor, row: tuple[Any, ...]) -> bool:
    return cur.execute(_INSERT_RUN, row).rowcount == 1


def _get_run(conn: sqlite3.Connection, run_id: str) -> Any:
    return conn.execute(_SELECT_RUN, (run_id,)).fetchone()


def _fetch_all(conn: sqlite3.Connection, arg: tuple[str, Sequence[Any]]) -> list[Any]:
    return conn.execute(arg[0], arg[1]).fetchall()


def _load(conn: sqlite3.Connection, run_id: str) -> tuple[Any, ...] | None:
    run = conn.execute(_SELECT_RUN, (run_id,)).fetchone()
    if run is None:
        return None
    key = (run_id,)
    return (
        run,
        conn.execute(_TASKS, key).fetchall(),
        conn.execute(_SELECT_LATEST_CHECKPOINTS, key).fetchall(),
        conn.execute(_REGIONS, key).fetchall(),
        conn.execute(_SELECT_FAILURES, key).fetchall(),
    )


def _apply(cur: sqlite3.Cursor, arg: tuple[_sql.Writes, str]) -> None:
    """One batch, in the transaction (or savepoint) its group gave it.

    The run's row comes first, fenced by its owner: a lost lease writes nothing.
    """
    w, where = arg
    # SQLite rewrites the entries of every index whose columns are SET, changed or not; most writes keep
    # the run's state and creation time, and then skip the two pages of the runs' indexes (and the fence's
    # SELECT: the UPDATE finds the run, its owner, state and creation time as the batch has them).
    if cur.execute(_UPDATE_RUN_SAME_KEYS, w.run).rowcount != 1:
        fence = cur.execute(_FENCE, (w.run_id,)).fetchone()
        if fence is None:
            raise RunNotFoundError(w.run_id, where)
        if fence[0] != w.owner:
            raise LeaseLostError(w.run_id, w.owner)
        cur.execute(_UPDATE_RUN, w.run)
    if w.tasks:
        cur.executemany(_UPSERT_TASK, w.tasks)
    if w.checkpoints:
        cur.executemany(_UPSERT_CHECKPOINT, w.checkpoints)
    if w.regions:
        cur.executemany(_UPSERT_REGION, w.regions)
    if w.drop_regions:
        cur.executemany(_DELETE_REGION, w.drop_regions)
    if w.events:
        cur.executemany(_UPSERT_EVENT, w.events)
    if w.retain_checkpoints:
        cur.executemany(_RETAIN_CHECKPOINTS, w.retain_checkpoints)
        cur.executemany(_RETAIN_EVENTS, w.retain_events)
    if w.requests:
        cur.executemany(_UPSERT_REQUEST, w.requests)


def _claim(cur: sqlite3.Cursor, arg: tuple[str, str, float]) -> tuple[bool, Any] | None:
    run_id, owner, ttl = arg
    row = cur.execute(_SELECT_RUN, (run_id,)).fetchone()
    if row is None:
        return None
    now = time.time()
    holder, expires = row[4], row[5]
    if holder is not None and holder != owner and (expires or 0.0) > now:
        return False, row
    cur.execute(_CLAIM, (run_id, owner, now + ttl))
    return True, (*row[:4], owner, now + ttl, *row[6:])


def _renew(cur: sqlite3.Cursor, arg: tuple[list[str], str, float]) -> tuple[set[str], list[Any]]:
    run_ids, owner, ttl = arg
    ids = _names(run_ids)
    owned = {row[0] for row in cur.execute(_OWNED, (ids, owner))}
    if not owned:
        return owned, []
    cur.execute(_RENEW, (ids, owner, time.time() + ttl))
    return owned, cur.execute(_PENDING, (_names(sorted(owned)),)).fetchall()


def _release(cur: sqlite3.Cursor, arg: tuple[str, str]) -> None:
    cur.execute(_RELEASE, arg)


def _request(cur: sqlite3.Cursor, row: tuple[Any, ...]) -> bool:
    if cur.execute(_RUN_EXISTS, (row[1],)).fetchone() is None:
        return False
    cur.execute(_UPSERT_REQUEST, row)
    return True


def _row_counts(conn: sqlite3.Connection, run_id: str) -> Any:
    return conn.execute(_ROW_COUNTS, (run_id,)).fetchone()


def _delete_runs(conn: sqlite3.Connection, ids: str) -> int:
    deleted = 0
    for statement in _DELETE:
        deleted = conn.execute(statement, (ids,)).rowcount
    return deleted  # the last statement deletes the runs themselves


def _delete_chunk(conn: sqlite3.Connection, ids: str) -> int:
    """In the thread: one chunk of ``delete_runs`` in a transaction of its own."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        deleted = _delete_runs(conn, ids)
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise
    return deleted


# -- the store ------------------------------------------------------------------------------------


@final
class SQLiteStore:
    """A store in one SQLite file, shared safely by the engines of one machine.

    Args:
        url: ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` (SQLAlchemy's convention),
            optionally with ``?synchronous=FULL`` (default ``NORMAL``: in WAL mode a commit survives a crash
            of the process, and the last commits may be lost if the machine itself loses power).

    Raises:
        ValueError: the URL is not a SQLite store URL, or has an unknown option.
    """

    __slots__ = (
        "__weakref__",
        "_alone",
        "_checkpoint_job",
        "_checkpointing",
        "_commit_handle",
        "_commits",
        "_finalizer",
        "_handed",
        "_lock",
        "_loop",
        "_path",
        "_pending",
        "_side",
        "_synchronous",
        "_url",
        "_where",
        "_worker",
        "_writer",
    )

    def __init__(self, url: str) -> None:
        self._path, self._synchronous = _parse(url)
        self._url = url
        self._where = f"store {url!r}"
        self._lock = asyncio.Lock()
        self._worker: _Worker | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        #: the loop the store was opened in, and its side of the store (None: every change goes to the thread)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._side: _LoopSide | None = None
        #: the task that made a change in this iteration of the loop, if only one did
        self._writer: asyncio.Task[Any] | None = None
        #: how many changes it committed at once since the loop last went round
        self._alone = 0
        #: changes made in this iteration of the loop, and the callback that will commit them
        self._pending: list[tuple[Callable[[sqlite3.Cursor, Any], Any], Any, asyncio.Future[Any]]] = []
        self._commit_handle: asyncio.Handle | None = None
        #: changes handed to the thread and not yet back: while there are any, the next ones follow them
        self._handed = 0
        #: commits since the last checkpoint, and whether the thread runs one now (and the last one)
        self._commits = 0
        self._checkpointing = False
        self._checkpoint_job: asyncio.Future[tuple[int, int, int]] | None = None

    @property
    def url(self) -> str:
        """The URL the store was made with."""
        return self._url

    async def open(self) -> None:
        """Open the file (created if missing) and create or migrate its schema; does nothing if open."""
        async with self._lock:
            if self._worker is not None:
                return
            worker = _Worker(f"ckflow-sqlite {self._path}")
            try:
                _, side = await worker.submit(_OPEN, _connect, (self._url, self._path, self._synchronous))
            except BaseException:
                worker.stop_nowait(self._url)  # closes the connections if they opened after all
                raise
            loop = asyncio.get_running_loop()
            try:
                worker.waker = _Waker(loop)
            except (NotImplementedError, OSError, ValueError):  # pragma: no cover - a loop without add_reader
                pass  # results go through call_soon_threadsafe
            self._worker = worker
            self._loop = loop
            self._side = side
            self._commits = 0
            self._finalizer = weakref.finalize(self, worker.stop_nowait, self._url)

    async def close(self) -> None:
        """Finish the calls already made, then close the connections; does nothing if closed."""
        async with self._lock:
            worker = self._worker
            if worker is None:
                return
            if self._commit_handle is not None:
                self._commit_handle.cancel()
                self._commit(closing=True)  # the changes already made commit (or go to the thread) first
            self._worker = None
            self._side = None  # the thread closes its connections, after the changes handed to it
            if self._finalizer is not None:
                self._finalizer.detach()
            stopped = worker.submit(_STOP, _noop, self._url)
            waker = worker.waker
            if waker is not None:
                # The thread may write to the waker until it has settled _STOP: only then may its descriptor
                # close, even if this close() is cancelled meanwhile (hence the shield).
                stopped.add_done_callback(lambda _: waker.close())
            await asyncio.shield(stopped)

    async def __aenter__(self) -> SQLiteStore:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _open_worker(self) -> _Worker:
        worker = self._worker
        if worker is None:
            raise StoreUnavailableError(
                self._url, "the store is not open; use `async with open_store(url) as store` or `await store.open()`."
            )
        return worker

    def _call(self, kind: int, fn: Callable[[sqlite3.Connection, _A], _R], arg: _A) -> asyncio.Future[_R]:
        """A job for the thread: a read (``_READ``), or ``_RAW``."""
        return self._open_worker().submit(kind, fn, arg)

    # -- changes: committed on the loop when that costs no wait ---------------------

    def _change(self, fn: Callable[[sqlite3.Cursor, _A], _R], arg: _A) -> asyncio.Future[_R]:
        """Make a change in a transaction: at once, or with the others made in this iteration of the loop."""
        worker = self._open_worker()
        loop = asyncio.get_running_loop()
        if self._side is None or loop is not self._loop:
            return worker.submit(_WRITE, fn, arg)  # FULL, no WAL, or another loop: the thread commits
        future: asyncio.Future[_R] = loop.create_future()
        if self._handed:
            self._hand_off(worker, [(fn, arg, future)])
            return future
        self._pending.append((fn, arg, future))
        if self._commit_handle is not None:
            return future  # a group is forming: this change joins it
        task = asyncio.current_task()
        if (self._writer is None or self._writer is task) and self._alone < _ALONE_MAX:
            # No other task has made a change in this iteration: commit now, and the caller finds its future
            # done, so awaiting it does not suspend (a Linear's next task starts without the loop going round).
            if self._writer is None:
                loop.call_soon(self._went_round)
                self._writer = task
            self._alone += 1
            self._commit()
        else:
            # Tasks make changes side by side: group them, and commit in the next iteration.
            self._commit_handle = loop.call_soon(self._commit)
        return future

    def _change_in_thread(self, fn: Callable[[sqlite3.Cursor, _A], _R], arg: _A) -> asyncio.Future[_R]:
        """A change in the thread, grouped with those queued there: for one whose size grows with its argument."""
        worker = self._open_worker()
        self._commits += 1
        return worker.submit(_WRITE, fn, arg)

    def _went_round(self) -> None:
        self._writer = None
        self._alone = 0

    def _commit(self, closing: bool = False) -> None:
        """In the loop: commit the changes made in this iteration, or hand them to the thread if that would wait."""
        self._commit_handle = None
        group, self._pending = self._pending, []
        side, worker = self._side, self._worker
        if not group or side is None or worker is None:  # pragma: no cover - close() commits before it clears them
            return
        if self._handed:
            self._hand_off(worker, group)
            return
        if not side.restarting.acquire(blocking=False):
            if closing:
                self._hand_off(worker, group)
                return
            # The thread is about to restart the WAL (for some microseconds, never a wait): try again in the
            # next iteration. Handing the group to the thread would queue it behind the whole checkpoint.
            self._pending = group
            self._commit_handle = asyncio.get_running_loop().call_soon(self._commit)
            return
        try:
            results = _write_group(side.cursor, [(fn, arg) for fn, arg, _ in group], on_loop=True)
        except _Busy:
            results = None
        except Exception as bug:  # whoever waits hears of it, and the loop goes on
            results = [(bug, None)] * len(group)
        finally:
            side.restarting.release()
        if results is None:
            self._hand_off(worker, group)
            return
        for (_, _, future), (exc, value) in zip(group, results, strict=True):
            if future.done():
                continue  # its caller was cancelled; the change was made all the same
            if exc is None:
                future.set_result(value)
            else:
                future.set_exception(exc)
        self._commits += 1
        self._maybe_checkpoint(worker)

    def _hand_off(
        self, worker: _Worker, group: list[tuple[Callable[[sqlite3.Cursor, Any], Any], Any, asyncio.Future[Any]]]
    ) -> None:
        """Give changes to the thread, in order; the loop commits again once they are all back."""
        for fn, arg, future in group:
            self._handed += 1
            # The thread settles a future of its own: the caller's may be cancelled long before the
            # change is committed, and until then the changes that follow must go the same way.
            worker.submit(_WRITE, fn, arg).add_done_callback(functools.partial(self._handed_back, future))
        self._commits += len(group)
        self._maybe_checkpoint(worker)

    def _handed_back(self, future: asyncio.Future[Any], job: asyncio.Future[Any]) -> None:
        self._handed -= 1
        if job.cancelled():  # pragma: no cover - nobody cancels the thread's futures
            future.cancel()
        elif future.done():
            job.exception()  # retrieved, so that asyncio does not log it
        elif (exc := job.exception()) is not None:
            future.set_exception(exc)
        else:
            future.set_result(job.result())

    def _maybe_checkpoint(self, worker: _Worker) -> None:
        """Every ``_CHECKPOINT_EVERY`` commits, have the thread checkpoint the WAL (the fsyncs happen there)."""
        side = self._side
        if self._commits < _CHECKPOINT_EVERY or self._checkpointing or side is None:
            return
        self._commits = 0
        self._checkpointing = True
        job = self._checkpoint_job = worker.submit(_RAW, _checkpoint, side)
        job.add_done_callback(self._checkpointed)

    def _checkpointed(self, job: asyncio.Future[tuple[int, int, int]]) -> None:
        self._checkpointing = False
        if not job.cancelled():
            job.exception()  # a failed checkpoint (another process's lock, say) is tried again later

    # -- runs --------------------------------------------------------------------

    async def create_run(self, run: RunRecord) -> None:
        if not await self._change(_create_run, _sql.run_row(run)):
            raise RunExistsError(run.run_id, self._where)

    async def get_run(self, run_id: str) -> RunRecord:
        row = await self._call(_READ, _get_run, run_id)
        if row is None:
            raise RunNotFoundError(run_id, self._where)
        return _sql.run_from(row)

    async def list_runs(
        self,
        *,
        states: Collection[FlowState] | None = None,
        flow: str | None = None,
        ended_before: float | None = None,
        limit: int | None = None,
    ) -> list[RunRecord]:
        statement, params, slice_after = _sql.list_runs_where(states, flow, ended_before, limit, _states_test, _names)
        rows = await self._call(_READ, _fetch_all, (_q(statement), params))
        runs = [_sql.run_from(row) for row in rows]
        return runs[:limit] if slice_after else runs

    async def load(self, run_id: str) -> StoredRun:
        found = await self._call(_READ, _load, run_id)
        if found is None:
            raise RunNotFoundError(run_id, self._where)
        run, tasks, checkpoints, regions, failures = found
        return StoredRun(
            run=_sql.run_from(run),
            tasks=[_sql.task_from(row) for row in tasks],
            checkpoints=[_sql.checkpoint_from(row) for row in checkpoints],
            regions=[_sql.region_from(row) for row in regions],
            failures=[_sql.failure_from_event(row[0]) for row in failures],
        )

    async def write(self, batch: Batch) -> None:
        await self._change(_apply, (_sql.prepare(batch, _names), self._where))

    # -- leases ------------------------------------------------------------------

    async def claim(self, run_id: str, owner: str, ttl: float) -> RunRecord:
        found = await self._change(_claim, (run_id, owner, ttl))
        if found is None:
            raise RunNotFoundError(run_id, self._where)
        claimed, row = found
        if not claimed:
            raise RunOwnedError(run_id, row[4], row[5])
        return _sql.run_from(row)

    async def renew(self, owner: str, run_ids: Collection[str], ttl: float) -> Renewal:
        ids = list(run_ids)
        if not ids:
            return Renewal(lost=[], requests=[])
        # Its transaction grows with the engine's runs (some 3 ms for 1,000): the thread's to wait for.
        owned, rows = await self._change_in_thread(_renew, (ids, owner, ttl))
        lost, pending = _sql.order_pending(ids, owned, map(_sql.request_from, rows))
        return Renewal(lost=lost, requests=pending)

    async def release(self, run_id: str, owner: str) -> None:
        await self._change(_release, (run_id, owner))

    # -- control requests --------------------------------------------------------

    async def request(self, request: ControlRequest) -> None:
        if not await self._change(_request, _sql.request_row(request)):
            raise RunNotFoundError(request.run_id, self._where)

    async def requests(self, run_id: str) -> list[ControlRequest]:
        rows = await self._call(_READ, _fetch_all, (_REQUESTS, (run_id,)))
        return [_sql.request_from(row) for row in rows]

    # -- reading -----------------------------------------------------------------

    async def tasks(self, run_id: str) -> list[TaskRecord]:
        rows = await self._call(_READ, _fetch_all, (_TASKS, (run_id,)))
        return [_sql.task_from(row) for row in rows]

    async def checkpoints(self, run_id: str, checkpoint: str | None = None) -> list[CheckpointRecord]:
        query = (_CHECKPOINTS, (run_id,)) if checkpoint is None else (_CHECKPOINTS_OF, (run_id, checkpoint))
        rows = await self._call(_READ, _fetch_all, query)
        return [_sql.checkpoint_from(row) for row in rows]

    async def events(self, run_id: str, *, after: int = -1, limit: int | None = None) -> list[Event]:
        # LIMIT -1 is no limit; a negative limit is applied by slicing, as MemoryStore does
        bound = -1 if limit is None or limit < 0 else limit
        rows = await self._call(_READ, _fetch_all, (_EVENTS, (run_id, after, bound)))
        events = [_sql.event_from(row) for row in rows]
        return events[:limit] if limit is not None and limit < 0 else events

    async def row_counts(self, run_id: str) -> dict[str, int]:
        row = await self._call(_READ, _row_counts, run_id)
        return dict(zip(_sql.TABLES, row, strict=True))

    # -- maintenance -------------------------------------------------------------

    async def delete_runs(self, run_ids: Collection[str]) -> int:
        ids = list(run_ids)
        if not ids:
            return 0
        # A chunk per transaction, one job each: the changes that wait for the lock meanwhile go between them.
        deleted = 0
        for start in range(0, len(ids), _DELETE_CHUNK):
            deleted += await self._call(_RAW, _delete_chunk, _names(ids[start : start + _DELETE_CHUNK]))
            self._commits += 1
        self._maybe_checkpoint(self._open_worker())
        return deleted

    def __repr__(self) -> str:
        state = "open" if self._worker is not None else "closed"
        return f"<ckflow.stores.SQLiteStore {self._url!r} {state}>"
