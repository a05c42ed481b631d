"""``SQLiteStore``: runs kept in one SQLite file, in WAL mode, through the standard library's ``sqlite3``.

One thread per store owns the connection, and every call of the store is one
job for it: the coroutine puts the job on a queue and awaits a future, which
the thread settles through an eventfd that the event loop watches (or
``loop.call_soon_threadsafe`` where a loop cannot watch one). A whole
``write()`` (fence, upserts, events, retention) is therefore one thread hop,
where aiosqlite's API would cost one hop per statement; this is why ckflow
needs no SQLite driver beyond the standard library.

Group commit: ``write()`` calls that arrive while the thread is busy wait in
the queue, and the thread applies all of them in one transaction, each batch
inside its own SAVEPOINT. A batch that fails (its fence, ``LeaseLostError``,
or anything else) is rolled back to its savepoint alone and only its caller
gets the error; the others commit together, so a thousand runs that write at
once cost one commit, not a thousand.

Cancellation: a job that was queued runs to its end even if the coroutine
that awaits it is cancelled (the result is dropped). The connection is never
left in the middle of a transaction, and a cancelled ``write()`` may or may
not have been applied, as with any database.

Several processes may share a file: WAL lets readers go on while one process
writes, and ``busy_timeout`` makes a writer wait for the lock instead of
failing. Leases are timed by this process's ``time.time()``, so the engines
that share a file should run on one machine.
"""

from __future__ import annotations

import asyncio
import collections
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

#: how long a writer waits for another process's write lock before failing with "database is locked"
_BUSY_TIMEOUT_MS: Final = 5000
_SYNCHRONOUS: Final = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})
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
#: ``_UPDATE_RUN`` for a run whose state and creation time stay as they are (same parameters)
_UPDATE_RUN_SAME_KEYS: Final = (
    "UPDATE ckflow_runs SET flow = ?3, inputs = ?5, updated_at = ?7, ended_at = ?8, halted = ?9, goto = ?10, "
    "next_seq = ?11 WHERE run_id = ?1 AND owner = ?2"
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
_EVENTS: Final = "SELECT body FROM ckflow_events WHERE run_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
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

#: job kinds: open the connection; read in one snapshot; change in one write transaction;
#: a write() batch (grouped with its neighbours); close the connection and end the thread
_OPEN: Final = 0
_READ: Final = 1
_CHANGE: Final = 2
_WRITE: Final = 3
_STOP: Final = 4

#: a finished job's future, and its exception or its result
_Outcome = tuple["asyncio.Future[Any]", "BaseException | None", Any]
#: (kind, function run in the thread, its argument, who wakes the awaiting loop, the future to settle)
_Job = tuple[int, "Callable[[Any, Any], Any]", Any, "_Waker | _LoopWaker | None", "asyncio.Future[Any] | None"]
#: (job, exception or None, result)
_Done = tuple[_Job, "BaseException | None", Any]


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


def _run_job(conn: sqlite3.Connection, job: _Job) -> Any:
    """One read or change, in its own transaction."""
    conn.execute("BEGIN IMMEDIATE" if job[0] == _CHANGE else "BEGIN")
    try:
        result = job[1](conn, job[2])
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise
    return result


def _write_group(conn: sqlite3.Connection, group: list[_Job], done: list[_Done]) -> None:
    """Apply ``write()`` batches in one transaction, each in its own savepoint; commit once."""
    pending = group
    while pending:
        rest: list[_Job] = []
        applied: list[_Job] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
        except Exception as exc:
            done.extend((job, exc, None) for job in pending)
            return
        # A batch alone in its transaction needs no savepoint: ROLLBACK undoes it just as well.
        alone = len(pending) == 1
        for index, job in enumerate(pending):
            try:
                if alone:
                    job[1](conn, job[2])
                else:
                    conn.execute("SAVEPOINT ckflow_batch")
                    job[1](conn, job[2])
                    conn.execute("RELEASE ckflow_batch")
            except Exception as exc:
                if alone:
                    _rollback(conn)
                    done.append((job, exc, None))
                    return
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK TO ckflow_batch")
                        conn.execute("RELEASE ckflow_batch")
                    except sqlite3.Error:
                        pass
                    else:
                        done.append((job, exc, None))
                        continue
                # SQLite rolled the whole transaction back (disk full, I/O error): the batches applied
                # before this one are lost with it; the ones after it get a transaction of their own.
                _rollback(conn)
                done.extend((j, exc, None) for j in (*applied, job))
                applied = []
                rest = pending[index + 1 :]
                break
            applied.append(job)
        if conn.in_transaction:
            try:
                conn.execute("COMMIT")
            except Exception as exc:
                _rollback(conn)
                done.extend((job, exc, None) for job in applied)
                applied = []
        done.extend((job, None, None) for job in applied)
        pending = rest


def _serve(jobs: queue.SimpleQueue[_Job]) -> None:
    """The thread: take every job queued, run them in order, group neighbouring writes; end at ``_STOP``."""
    conn: sqlite3.Connection | None = None
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
                if conn is not None:
                    try:
                        conn.execute("PRAGMA optimize")
                    except sqlite3.Error:
                        pass
                    conn.close()
                done.append((job, None, None))
                closed = StoreUnavailableError(str(job[2]), "the store is closed.")
                done.extend((later, closed, None) for later in taken[i + 1 :])
                _flush(done)
                return
            if kind == _OPEN:
                i += 1
                try:
                    conn = job[1](None, job[2])
                except BaseException as exc:
                    done.append((job, exc, None))
                else:
                    done.append((job, None, None))
            elif conn is None:
                i += 1
                done.append((job, StoreUnavailableError("", "the store is not open."), None))
            elif kind == _WRITE:
                j = i + 1
                while j < len(taken) and taken[j][0] == _WRITE:
                    j += 1
                _flush(done)  # what finished before the group need not wait for its commit
                _write_group(conn, taken[i:j], done)
                i = j
            else:
                i += 1
                try:
                    done.append((job, None, _run_job(conn, job)))
                except BaseException as exc:
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
        """Close the connection once the jobs queued before are done; used when nobody can await."""
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


def _connect(_: None, arg: tuple[str, str, str]) -> sqlite3.Connection:
    """In the thread: open the file, refuse what is not a ckflow store, set it up and migrate it."""
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
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        # Rows are tied to their run by the write fence and removed by delete_runs, not by foreign keys,
        # which would cost a lookup of the run per row written.
        conn.execute("PRAGMA foreign_keys = OFF")
        if version < SCHEMA_VERSION:
            _migrate(conn, url)
    except sqlite3.Error as exc:
        conn.close()
        raise StoreUnavailableError(url, f"{path!r} is not a usable ckflow store ({exc}).") from exc
    except BaseException:
        conn.close()
        raise
    return conn


# -- what the thread runs for each call --------------------------------------------------------


def _create_run(conn: sqlite3.Connection, row: tuple[Any, ...]) -> bool:
    return conn.execute(_INSERT_RUN, row).rowcount == 1


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


def _apply(conn: sqlite3.Connection, arg: tuple[_sql.Writes, str]) -> None:
    """One batch, inside the savepoint its group gave it. The fence comes first: a lost lease writes nothing."""
    w, where = arg
    fence = conn.execute(_FENCE, (w.run_id,)).fetchone()
    if fence is None:
        raise RunNotFoundError(w.run_id, where)
    if fence[0] != w.owner:
        raise LeaseLostError(w.run_id, w.owner)
    # SQLite rewrites the entries of every index whose columns are SET, changed or not; most writes keep
    # the run's state and creation time, and then skip the two pages of the runs' indexes.
    same = fence[1] == w.run[3] and fence[2] == w.run[5]
    conn.execute(_UPDATE_RUN_SAME_KEYS if same else _UPDATE_RUN, w.run)
    if w.tasks:
        conn.executemany(_UPSERT_TASK, w.tasks)
    if w.checkpoints:
        conn.executemany(_UPSERT_CHECKPOINT, w.checkpoints)
    if w.regions:
        conn.executemany(_UPSERT_REGION, w.regions)
    if w.drop_regions:
        conn.executemany(_DELETE_REGION, w.drop_regions)
    if w.events:
        conn.executemany(_UPSERT_EVENT, w.events)
    if w.retain_checkpoints:
        conn.executemany(_RETAIN_CHECKPOINTS, w.retain_checkpoints)
        conn.executemany(_RETAIN_EVENTS, w.retain_events)
    if w.requests:
        conn.executemany(_UPSERT_REQUEST, w.requests)


def _claim(conn: sqlite3.Connection, arg: tuple[str, str, float]) -> tuple[bool, Any] | None:
    run_id, owner, ttl = arg
    row = conn.execute(_SELECT_RUN, (run_id,)).fetchone()
    if row is None:
        return None
    now = time.time()
    holder, expires = row[4], row[5]
    if holder is not None and holder != owner and (expires or 0.0) > now:
        return False, row
    conn.execute(_CLAIM, (run_id, owner, now + ttl))
    return True, (*row[:4], owner, now + ttl, *row[6:])


def _renew(conn: sqlite3.Connection, arg: tuple[list[str], str, float]) -> tuple[set[str], list[Any]]:
    run_ids, owner, ttl = arg
    ids = _names(run_ids)
    owned = {row[0] for row in conn.execute(_OWNED, (ids, owner))}
    if not owned:
        return owned, []
    conn.execute(_RENEW, (ids, owner, time.time() + ttl))
    return owned, conn.execute(_PENDING, (_names(sorted(owned)),)).fetchall()


def _release(conn: sqlite3.Connection, arg: tuple[str, str]) -> None:
    conn.execute(_RELEASE, arg)


def _request(conn: sqlite3.Connection, row: tuple[Any, ...]) -> bool:
    if conn.execute(_RUN_EXISTS, (row[1],)).fetchone() is None:
        return False
    conn.execute(_UPSERT_REQUEST, row)
    return True


def _row_counts(conn: sqlite3.Connection, run_id: str) -> Any:
    return conn.execute(_ROW_COUNTS, (run_id,)).fetchone()


def _delete_runs(conn: sqlite3.Connection, ids: str) -> int:
    deleted = 0
    for statement in _DELETE:
        deleted = conn.execute(statement, (ids,)).rowcount
    return deleted  # the last statement deletes the runs themselves


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

    __slots__ = ("__weakref__", "_finalizer", "_lock", "_path", "_synchronous", "_url", "_where", "_worker")

    def __init__(self, url: str) -> None:
        self._path, self._synchronous = _parse(url)
        self._url = url
        self._where = f"store {url!r}"
        self._lock = asyncio.Lock()
        self._worker: _Worker | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

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
                await worker.submit(_OPEN, _connect, (self._url, self._path, self._synchronous))
            except BaseException:
                worker.stop_nowait(self._url)  # closes the connection if it opened after all
                raise
            try:
                worker.waker = _Waker(asyncio.get_running_loop())
            except (NotImplementedError, OSError, ValueError):  # pragma: no cover - a loop without add_reader
                pass  # results go through call_soon_threadsafe
            self._worker = worker
            self._finalizer = weakref.finalize(self, worker.stop_nowait, self._url)

    async def close(self) -> None:
        """Finish the calls already made, then close the connection; does nothing if closed."""
        async with self._lock:
            worker, self._worker = self._worker, None
            if worker is None:
                return
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

    def _call(self, kind: int, fn: Callable[[sqlite3.Connection, _A], _R], arg: _A) -> asyncio.Future[_R]:
        worker = self._worker
        if worker is None:
            raise StoreUnavailableError(
                self._url, "the store is not open; use `async with open_store(url) as store` or `await store.open()`."
            )
        return worker.submit(kind, fn, arg)

    # -- runs --------------------------------------------------------------------

    async def create_run(self, run: RunRecord) -> None:
        if not await self._call(_CHANGE, _create_run, _sql.run_row(run)):
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
        await self._call(_WRITE, _apply, (_sql.prepare(batch, _names), self._where))

    # -- leases ------------------------------------------------------------------

    async def claim(self, run_id: str, owner: str, ttl: float) -> RunRecord:
        found = await self._call(_CHANGE, _claim, (run_id, owner, ttl))
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
        owned, rows = await self._call(_CHANGE, _renew, (ids, owner, ttl))
        lost, pending = _sql.order_pending(ids, owned, map(_sql.request_from, rows))
        return Renewal(lost=lost, requests=pending)

    async def release(self, run_id: str, owner: str) -> None:
        await self._call(_CHANGE, _release, (run_id, owner))

    # -- control requests --------------------------------------------------------

    async def request(self, request: ControlRequest) -> None:
        if not await self._call(_CHANGE, _request, _sql.request_row(request)):
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
        events = [_sql.event_from(row[0]) for row in rows]
        return events[:limit] if limit is not None and limit < 0 else events

    async def row_counts(self, run_id: str) -> dict[str, int]:
        row = await self._call(_READ, _row_counts, run_id)
        return dict(zip(_sql.TABLES, row, strict=True))

    # -- maintenance -------------------------------------------------------------

    async def delete_runs(self, run_ids: Collection[str]) -> int:
        ids = list(run_ids)
        if not ids:
            return 0
        return await self._call(_CHANGE, _delete_runs, _names(ids))

    def __repr__(self) -> str:
        state = "open" if self._worker is not None else "closed"
        return f"<ckflow.stores.SQLiteStore {self._url!r} {state}>"
