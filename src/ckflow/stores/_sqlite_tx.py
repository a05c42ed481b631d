"""How a SQLite store's changes commit: side by side in one transaction, each in a savepoint of its own.

``write_group`` is what both the loop (``_sqlite_commit.Session``) and the store's thread run to
commit the changes queued together; on the loop, a lock held by another connection rolls the group
back whole (``Busy``), and the loop hands it to the thread, whose connection waits for the lock.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

from ckflow.stores._sqlite_conn import is_busy, rollback

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["Busy", "Change", "Result", "write_group"]

#: a change: the function that makes it in a transaction (through the connection's cursor), and its argument
Change = tuple["Callable[[sqlite3.Cursor, Any], Any]", Any]
#: what a change gave: (exception or None, result)
Result = tuple["BaseException | None", Any]


class Busy(Exception):
    """The loop connection met another connection's lock; its group was rolled back whole."""


def write_group(cur: sqlite3.Cursor, changes: Sequence[Change], *, on_loop: bool) -> list[Result]:
    """Make the changes in one transaction, each in its own savepoint; commit once; return what each gave.

    On the loop (``on_loop``), SQLITE_BUSY anywhere rolls the whole group back and raises ``Busy``:
    the caller hands the group to the thread, whose connection waits for the lock.
    """
    if len(changes) == 1:
        return [_write_alone(cur, changes[0], on_loop)]
    results: list[Result] = [(None, None)] * len(changes)
    start = 0
    try:
        while start < len(changes):
            try:
                cur.execute("BEGIN IMMEDIATE")
            except Exception as exc:
                if on_loop and is_busy(exc):
                    raise Busy from exc
                results[start:] = [(exc, None)] * (len(changes) - start)
                break
            start = _transaction(cur, changes, start, results, on_loop)
    except BaseException:
        rollback(cur.connection)  # a Busy, or a KeyboardInterrupt that hit the loop mid-transaction
        raise
    return results


def _transaction(
    cur: sqlite3.Cursor, changes: Sequence[Change], start: int, results: list[Result], on_loop: bool
) -> int:
    """In the transaction just begun: the changes from ``start`` on, until one breaks it; commit. The next to make."""
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
            if on_loop and is_busy(exc):
                raise Busy from exc
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
            rollback(cur.connection)
            for i in applied:
                results[i] = (exc, None)
            return index
        results[index - 1] = (None, value)
        applied.append(index - 1)
    if cur.connection.in_transaction:
        try:
            cur.execute("COMMIT")
        except Exception as exc:
            if on_loop and is_busy(exc):
                raise Busy from exc
            rollback(cur.connection)
            for i in applied:
                results[i] = (exc, None)
    return index


def _write_alone(cur: sqlite3.Cursor, change: Change, on_loop: bool) -> Result:
    """``_write_group`` of one change: no savepoint, as ROLLBACK undoes it just as well."""
    try:
        cur.execute("BEGIN IMMEDIATE")
    except Exception as exc:
        if on_loop and is_busy(exc):
            raise Busy from exc
        return exc, None
    try:
        value = change[0](cur, change[1])
        cur.execute("COMMIT")
    except Exception as exc:
        rollback(cur.connection)
        if on_loop and is_busy(exc):
            raise Busy from exc
        return exc, None
    except BaseException:
        rollback(cur.connection)  # a KeyboardInterrupt that hit the loop mid-transaction
        raise
    return None, value
