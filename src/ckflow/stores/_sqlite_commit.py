"""Where a SQLite store's calls run, and how its changes commit: the store's thread, and the loop's side.

The thread (``_Worker``, which runs ``_serve``) owns the store's connection and takes its jobs from a
queue, in order: it opens the file (``_sqlite_conn.connect``), runs each read in a snapshot of its
own, commits the changes queued side by side in one transaction (``_sqlite_tx``), runs checkpoints
and the chunks of ``delete_runs``, and at last closes the connections. It hands the results back to
the loop through a ``_Waker`` (one wake-up per batch of results), or ``call_soon_threadsafe`` on a
loop without ``add_reader``.

``Session`` is the loop's side of an open store. It commits each change on the loop's connection
(``_sqlite_conn.LoopSide``), at once or grouped with the others made in the same iteration of the
loop; hands a group that meets another connection's lock to the thread, and the changes after it,
so that none overtakes another; and every ``_CHECKPOINT_EVERY`` commits has the thread checkpoint
the WAL (``_checkpoint``). The docstring of ``ckflow.stores.sqlite`` says why, and what each of
these costs the loop.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import os
import queue
import sqlite3
import sys
import threading
from typing import TYPE_CHECKING, Any, Final, TypeVar, final

from ckflow._errors import StoreUnavailableError
from ckflow.stores._sqlite_conn import BUSY_TIMEOUT_MS, commit_mark, connect, damaged, is_busy, rollback
from ckflow.stores._sqlite_tx import Busy as _Busy
from ckflow.stores._sqlite_tx import write_group as _write_group

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from ckflow.stores._sqlite_conn import LoopSide

__all__ = ["RAW", "READ", "Session", "open_session"]

_A = TypeVar("_A")
_R = TypeVar("_R")

#: commits (on the loop or in the thread) between two checkpoints run by the thread. A task's write()
#: adds 5 to 8 pages of 1 KiB to the WAL, which so stays under some 9,000 pages (9 MB); checkpointing four
#: times as often cost S5 7 % more (the checkpoint's copying and fsyncs compete with the loop)
_CHECKPOINT_EVERY: Final = 1000
#: changes that one task may commit at once, without suspending, before the loop goes round: a task that
#: starts 1,000 runs in a row lets the first ones go on meanwhile (S8: p50 latency 50 ms instead of 1 s,
#: and more runs per second), and the loop waits at most some 2 ms for the others; S5 pays some 2 %
_ALONE_MAX: Final = 32

# -- the connection's thread ------------------------------------------------------------

#: job kinds: open the connections; read in one snapshot; a change (grouped with its neighbours,
#: each in a savepoint); run without a transaction around it (checkpoints, chunks of delete_runs);
#: close the connections and end the thread
_OPEN: Final = 0
READ: Final = 1
_WRITE: Final = 2
RAW: Final = 3
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


def _read(conn: sqlite3.Connection, job: _Job) -> Any:
    """One read, in one snapshot."""
    conn.execute("BEGIN")
    try:
        result = job[1](conn, job[2])
        conn.execute("COMMIT")
    except BaseException:
        rollback(conn)
        raise
    return result


def _serve(jobs: queue.SimpleQueue[_Job]) -> None:
    """The thread: take every job queued, run them in order, group neighbouring changes; end at ``_STOP``."""
    conn: sqlite3.Connection | None = None
    cur: sqlite3.Cursor | None = None
    side: LoopSide | None = None
    done: list[_Done] = []
    #: (url, path) of the store, for the error that says its file is damaged
    where = ("", "")
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
                _stop(conn, side)
                done.append((job, None, None))
                closed = StoreUnavailableError(str(job[2]), "the store is closed.")
                done.extend((later, closed, None) for later in taken[i + 1 :])
                _flush(done)
                return
            i += 1
            if kind == _OPEN:
                where = job[2][0], job[2][1]
                try:
                    opened, side = connected = job[1](None, job[2])
                except BaseException as exc:
                    done.append((job, exc, None))
                else:
                    conn, cur = opened, opened.cursor()
                    done.append((job, None, connected))
            elif conn is None or cur is None:
                done.append((job, StoreUnavailableError("", "the store is not open."), None))
            elif kind == _WRITE:
                i = _write_jobs(cur, taken, i - 1, done, where)
            else:
                try:
                    done.append((job, None, _read(conn, job) if kind == READ else job[1](conn, job[2])))
                except BaseException as exc:
                    rollback(conn)
                    done.append((job, damaged(exc, *where), None))
        _flush(done)


def _stop(conn: sqlite3.Connection | None, side: LoopSide | None) -> None:
    """In the thread, at ``_STOP``: close the loop's connections, then checkpoint and close the thread's."""
    if side is not None:
        side.close()
    if conn is not None:
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            conn.execute("PRAGMA optimize")
        except sqlite3.Error:
            pass
        conn.close()


def _write_jobs(cur: sqlite3.Cursor, taken: list[_Job], first: int, done: list[_Done], where: tuple[str, str]) -> int:
    """In the thread: commit the changes queued side by side from ``taken[first]`` on; the index of the next job."""
    end = first + 1
    while end < len(taken) and taken[end][0] == _WRITE:
        end += 1
    group = taken[first:end]
    _flush(done)  # what finished before the group need not wait for its commit
    try:
        results = _write_group(cur, [(job[1], job[2]) for job in group], on_loop=False)
    except BaseException as exc:
        results = [(exc, None)] * len(group)
    done.extend(
        (job, None if exc is None else damaged(exc, *where), value)
        for job, (exc, value) in zip(group, results, strict=True)
    )
    return end


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


# -- checkpoints -----------------------------------------------------------------------------

#: a read that makes a read transaction begin
_PIN: Final = "SELECT 1 FROM ckflow_meta LIMIT 1"


def _checkpoint(conn: sqlite3.Connection, side: LoopSide) -> tuple[int, int, int]:
    """In the thread: copy the WAL into the database and, if it copied it whole, restart the WAL here.

    The checkpoint is PASSIVE: it waits for no one, and the loop goes on committing meanwhile. The
    first commit after a checkpoint that copied the WAL whole restarts the WAL and syncs its header;
    the pin, a read transaction begun before the checkpoint, keeps every commit from restarting it
    until this thread ends the pin, copies the frames committed during the checkpoint and begins its
    own write transaction, all while it holds ``side.restarting`` (so the loop commits nothing in
    between, nor waits: it tries again later).
    Returns ``PRAGMA wal_checkpoint``'s (busy, frames in the WAL, frames copied).
    """
    with side.restarting:
        side.pin.execute("BEGIN")
        side.pin.execute(_PIN).fetchall()
    try:
        busy, frames, copied = (int(v) for v in conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone())
    except BaseException:
        with side.restarting:
            rollback(side.pin)
        raise
    restart = False
    with side.restarting:
        rollback(side.pin)
        if not busy and frames == copied:  # (else a commit came between the pin and the checkpoint)
            conn.execute("PRAGMA busy_timeout = 0")  # never hold `restarting` while waiting for a lock
            try:
                # The loop went on committing while the checkpoint copied (it takes milliseconds), and a WAL
                # restarts only if it is copied whole when the restarting commit begins: copy those last
                # frames too, now that the loop cannot add more. Without this a store that commits without
                # a pause never restarted its WAL: S12 found it at 2.7 GB after 50,000 runs, and the WAL
                # index (-shm, mapped by each of the three connections) growing RSS by 0.3 MB per 1,000 runs.
                # It copies the few hundred frames of one checkpoint's duration (none when the loop was idle,
                # and then it neither copies nor syncs), so the loop is held off some milliseconds per
                # checkpoint, with its two fsyncs (WAL, database), instead of the WAL growing without bound.
                tail = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                if not tail[0] and tail[1] == tail[2]:
                    conn.execute("BEGIN IMMEDIATE")
                    restart = True
            except sqlite3.OperationalError as exc:
                if not is_busy(exc):
                    raise  # else another process writes, and its commit restarts the WAL
            finally:
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    if restart:
        commit_mark(conn)
    return busy, frames, copied


# -- the loop's side --------------------------------------------------------------------------


async def open_session(url: str, path: str, synchronous: str, *, create: bool = True) -> Session:
    """Start the store's thread and open the file in it; if that fails (or is cancelled), end the thread.

    Without ``create``, only an existing store is opened (``StoreNotFoundError`` otherwise).
    """
    worker = _Worker(f"ckflow-sqlite {path}")
    try:
        _, side = await worker.submit(_OPEN, connect, (url, path, synchronous, create))
    except BaseException:
        worker.stop_nowait(url)  # closes the connections if they opened after all
        raise
    loop = asyncio.get_running_loop()
    try:
        worker.waker = _Waker(loop)
    except (NotImplementedError, OSError, ValueError):  # pragma: no cover - a loop without add_reader
        pass  # results go through call_soon_threadsafe
    return Session(url, worker, loop, side)


@final
class Session:
    """An open store: its thread, the loop's connection if changes may commit there, and the changes on their way.

    ``SQLiteStore.open()`` makes one (``open_session``) and ``close()`` stops it (``stop``).
    """

    __slots__ = (
        "_alone",
        "_checkpointing",
        "_commit_handle",
        "_handed",
        "_loop",
        "_pending",
        "_url",
        "_writer",
        "checkpoint_job",
        "commits",
        "side",
        "worker",
    )

    def __init__(self, url: str, worker: _Worker, loop: asyncio.AbstractEventLoop, side: LoopSide | None) -> None:
        self._url = url
        self.worker = worker
        #: the loop the store was opened in, and its side of the store (None: every change goes to the thread)
        self._loop = loop
        self.side = side
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
        self.commits = 0
        self._checkpointing = False
        self.checkpoint_job: asyncio.Future[tuple[int, int, int]] | None = None

    def stop(self) -> asyncio.Future[None]:
        """Commit the changes already made, then have the thread close the connections and end; await the result."""
        if self._commit_handle is not None:
            self._commit_handle.cancel()
            self._commit(closing=True)  # the changes already made commit (or go to the thread) first
        self.side = None  # the thread closes its connections, after the changes handed to it
        stopped = self.worker.submit(_STOP, _noop, self._url)
        waker = self.worker.waker
        if waker is not None:
            # The thread may write to the waker until it has settled _STOP: only then may its descriptor
            # close, even if ``SQLiteStore.close()`` is cancelled meanwhile (hence the shield).
            stopped.add_done_callback(lambda _: waker.close())
        return asyncio.shield(stopped)

    # -- changes: committed on the loop when that costs no wait ---------------------

    def change(self, fn: Callable[[sqlite3.Cursor, _A], _R], arg: _A) -> asyncio.Future[_R]:
        """Make a change in a transaction: at once, or with the others made in this iteration of the loop."""
        worker = self.worker
        loop = asyncio.get_running_loop()
        if self.side is None or loop is not self._loop:
            return worker.submit(_WRITE, fn, arg)  # FULL, no WAL, or another loop: the thread commits
        future: asyncio.Future[_R] = loop.create_future()
        if self._handed:
            self._hand_off([(fn, arg, future)])
            return future
        self._pending.append((fn, arg, future))
        if self._commit_handle is not None:
            return future  # a group is forming: this change joins it
        task = asyncio.current_task(loop)  # the loop given: on Python 3.11 finding it costs a getpid() system call
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

    def change_in_thread(self, fn: Callable[[sqlite3.Cursor, _A], _R], arg: _A) -> asyncio.Future[_R]:
        """A change in the thread, grouped with those queued there: for one whose size grows with its argument."""
        self.commits += 1
        return self.worker.submit(_WRITE, fn, arg)

    def _went_round(self) -> None:
        self._writer = None
        self._alone = 0

    def _commit(self, closing: bool = False) -> None:
        """In the loop: commit the changes made in this iteration, or hand them to the thread if that would wait."""
        self._commit_handle = None
        group, self._pending = self._pending, []
        side = self.side
        if not group or side is None:  # pragma: no cover - stop() commits before it clears it
            return
        if self._handed:
            self._hand_off(group)
            return
        if not side.restarting.acquire(blocking=False):
            if closing:
                self._hand_off(group)
                return
            # The thread copies the WAL's last frames and restarts it (some microseconds; a few milliseconds,
            # its fsyncs, when commits came during the checkpoint): try again in the next iteration. Handing the
            # group to the thread would queue it behind the whole checkpoint.
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
            self._hand_off(group)
            return
        for (_, _, future), (exc, value) in zip(group, results, strict=True):
            if future.done():
                continue  # its caller was cancelled; the change was made all the same
            if exc is None:
                future.set_result(value)
            else:
                future.set_exception(damaged(exc, self._url, side.path))
        self.commits += 1
        self.maybe_checkpoint()

    def _hand_off(self, group: list[tuple[Callable[[sqlite3.Cursor, Any], Any], Any, asyncio.Future[Any]]]) -> None:
        """Give changes to the thread, in order; the loop commits again once they are all back."""
        for fn, arg, future in group:
            self._handed += 1
            # The thread settles a future of its own: the caller's may be cancelled long before the
            # change is committed, and until then the changes that follow must go the same way.
            self.worker.submit(_WRITE, fn, arg).add_done_callback(functools.partial(self._handed_back, future))
        self.commits += len(group)
        self.maybe_checkpoint()

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

    def maybe_checkpoint(self) -> None:
        """Every ``_CHECKPOINT_EVERY`` commits, have the thread checkpoint the WAL (the fsyncs happen there)."""
        side = self.side
        if self.commits < _CHECKPOINT_EVERY or self._checkpointing or side is None:
            return
        self.commits = 0
        self._checkpointing = True
        job = self.checkpoint_job = self.worker.submit(RAW, _checkpoint, side)
        job.add_done_callback(self._checkpointed)

    def _checkpointed(self, job: asyncio.Future[tuple[int, int, int]]) -> None:
        self._checkpointing = False
        if not job.cancelled():
            job.exception()  # a failed checkpoint (another process's lock, say) is tried again later
