"""What a SQLite store runs for each of its calls: the SQLite statements, and one function per call.

Each function runs its statements on the connection (a read) or the cursor (a change) that the store's
thread or the loop hands it (see ``_sqlite_commit``), inside a transaction it neither begins nor ends:
a read gets a snapshot of its own, and a change may share one transaction with others, in a savepoint
of its own. ``delete_chunk`` alone makes its own transaction, so that ``delete_runs`` commits a chunk
at a time. The statements the SQL stores share come from ``_sql``, rewritten with SQLite's ``?n``
placeholders; those spelled out here are SQLite's own (a list of ids is bound as one JSON parameter
and read back by ``json_each``).
"""

from __future__ import annotations

import json
import time
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Final

from ckflow._errors import LeaseLostError, RunNotFoundError
from ckflow.stores import _columns as _c
from ckflow.stores import _sql
from ckflow.stores._sqlite_conn import rollback

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Callable, Collection, Sequence

    from ckflow.stores._columns import Table

__all__ = [
    "CHECKPOINTS",
    "CHECKPOINTS_OF",
    "EVENTS",
    "REQUESTS",
    "RUN_RECORDS",
    "TASKS",
    "apply",
    "claim",
    "create_run",
    "delete_chunk",
    "fetch_all",
    "get_run",
    "load",
    "names",
    "release",
    "renew",
    "request",
    "row_counts",
    "states_test",
]

# -- statements ----------------------------------------------------------------------

_q = _sql.qmark
_P: Final = {name: f"?{n}" for name, n in _sql.FENCE_PARAMS.items()}
_INSERT_RUN: Final = _q(_sql.INSERT_RUN)
_UPDATE_RUN: Final = _q(_sql.UPDATE_RUN)
#: a run as the store reads it (its row, with the progress its last events carry: ``ckflow_run_records``)
RUN_RECORDS: Final = "ckflow_run_records"
_SELECT_RUN: Final = f"SELECT {_sql.columns(_c.RUNS.read)} FROM {RUN_RECORDS} WHERE run_id = ?1"
_FENCE: Final = "SELECT owner, state, created_at FROM ckflow_runs WHERE run_id = ?1"
#: ``_UPDATE_RUN`` for a run owned by the writer whose state and creation time stay as they are (same
#: parameters): it fences the write too, and ``_FENCE`` runs only if it changed no row
_UPDATE_RUN_SAME_KEYS: Final = (
    f"UPDATE ckflow_runs SET flow = {_P['flow']}, inputs = {_P['inputs']}, updated_at = {_P['updated_at']}, "
    f"ended_at = {_P['ended_at']}, halted = {_P['halted']}, goto = {_P['goto']}, next_seq = {_P['next_seq']} "
    f"WHERE run_id = {_P['run_id']} AND owner = {_P['owner']} AND state = {_P['state']} "
    f"AND created_at = {_P['created_at']}"
)
#: the run's key if its row, owned by the writer, holds what the batch's run holds but for its progress, and no
#: event stored comes after the batch's (same parameters; ``updated_at`` goes on the batch's last event)
_SAME_RUN: Final = (
    f"SELECT r.run_key FROM ckflow_runs AS r WHERE run_id = {_P['run_id']} AND owner = {_P['owner']} "
    f"AND flow = {_P['flow']} AND state = {_P['state']} AND inputs = {_P['inputs']} "
    f"AND created_at = {_P['created_at']} AND ended_at IS {_P['ended_at']} AND halted = {_P['halted']} "
    f"AND goto IS {_P['goto']} AND next_seq < {_P['next_seq']} "
    f"AND NOT EXISTS (SELECT 1 FROM ckflow_events WHERE run_key = r.run_key AND seq >= {_P['next_seq']})"
)
#: ``_SAME_RUN`` of a run under way (not ended, not halted, no goto), whose parameters are the first six of
#: ``_SAME_RUN``'s, then ``next_seq``: sqlite3 binds None and bools through its adapters (a failed attribute
#: lookup, an exception made and cleared, some 3,000 instructions each), ints, floats and strings directly
_SAME_RUN_UNDER_WAY: Final = (
    "SELECT r.run_key FROM ckflow_runs AS r WHERE run_id = ?1 AND owner = ?2 AND flow = ?3 AND state = ?4 "
    "AND inputs = ?5 AND created_at = ?6 AND ended_at IS NULL AND halted = 0 AND goto IS NULL AND next_seq < ?7 "
    "AND NOT EXISTS (SELECT 1 FROM ckflow_events WHERE run_key = r.run_key AND seq >= ?7)"
)
_UNDER_WAY: Final = tuple(_sql.FENCE_PARAMS[name] - 1 for name in ("ended_at", "halted", "goto"))
_NEXT_SEQ: Final = _sql.FENCE_PARAMS["next_seq"] - 1
#: a write of the run's row makes the progress that events at or after its ``next_seq`` carry stale (only a
#: writer whose ``next_seq`` goes back has such events: an index probe finds none otherwise)
_DROP_PROGRESS: Final = (
    "UPDATE ckflow_events SET run_updated_at = NULL "
    "WHERE run_key = (SELECT run_key FROM ckflow_runs WHERE run_id = ?1) AND seq >= ?2 AND run_updated_at IS NOT NULL"
)


def _run_key(n: int) -> str:
    """The run's integer key, by which its tasks and events are kept (``_schema.SQLITE_V1``), from its id ``?n``."""
    return f"(SELECT run_key FROM ckflow_runs WHERE run_id = ?{n})"


_RUN_KEY: Final = _run_key(1)
#: the column of SQLite's events that carries the run's progress (``_sql.prepare(progress=True)``)
_PROGRESS: Final = "run_updated_at"


def _by_run_key(names: Sequence[str]) -> str:
    """``names`` with the run's integer key for its id."""
    return _sql.columns(["run_key" if name == "run_id" else name for name in names])


def _upsert_by_run_key(table: Table[Any], *more: str) -> str:
    """Insert or replace a row of ``table`` by (run key, its key); its parameters are its row, then ``more``."""
    names = (*table.names, *more)
    values = ", ".join(_run_key(n) if name == "run_id" else f"?{n}" for n, name in enumerate(names, start=1))
    return f"INSERT INTO {table.name} ({_by_run_key(names)}) VALUES ({values}) {_on_conflict(table, names)}"


def _on_conflict(table: Table[Any], names: Sequence[str]) -> str:
    update = ", ".join(f"{c} = excluded.{c}" for c in names if c not in table.key)
    return f"ON CONFLICT ({_by_run_key(table.key)}) DO UPDATE SET {update}"


def _upsert_keyed(table: Table[Any], nulls: Sequence[Collection[str]], *more: str) -> str:
    """``_upsert_by_run_key`` of ``len(nulls)`` rows in one statement, the run's key bound as ``?1``.

    Each row's columns named in its item of ``nulls`` are spelled NULL rather than bound: sqlite3 binds
    ints, floats and strings directly, but None (and bools) through its adapters, a failed attribute
    lookup that makes and clears an exception (some 3,000 instructions a value). The parameters are the
    run's key, then each row's other columns but its ``run_id`` (``_bound``), row after row.
    """
    names = (*table.names, *more)
    n = 1
    rows = []
    for row_nulls in nulls:
        values = []
        for name in names:
            if name == "run_id":
                values.append("?1")
            elif name in row_nulls:
                values.append("NULL")
            else:
                n += 1
                values.append(f"?{n}")
        rows.append(f"({', '.join(values)})")
    return f"INSERT INTO {table.name} ({_by_run_key(names)}) VALUES {', '.join(rows)} {_on_conflict(table, names)}"


def _bound(table: Table[Any], nulls: Collection[str], *more: str) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
    """What ``_upsert_keyed`` binds of a row (with ``more``) whose columns ``nulls`` are spelled NULL."""
    names = (*table.names, *more)
    at = [i for i, name in enumerate(names) if name != "run_id" and name not in nulls]
    get: Callable[[Sequence[Any]], tuple[Any, ...]] = itemgetter(*at)  # (of several columns: a tuple)
    return get


def _select_by_run_key(table: Table[Any]) -> str:
    """The rows of run ``?1`` in ``table``, as its columns read back (the run's id is ``?1`` itself)."""
    names = _sql.columns(["?1 AS run_id" if name == "run_id" else name for name in table.read])
    return f"SELECT {names} FROM {table.name} WHERE run_key = {_RUN_KEY}"


_UPSERT_TASK: Final = _upsert_by_run_key(_c.TASKS)
_UPSERT_CHECKPOINT: Final = _q(_sql.UPSERT_CHECKPOINT)
_UPSERT_REGION: Final = _q(_sql.UPSERT_REGION)
#: an event, with ``run_updated_at`` last (``_sql.prepare(progress=True)``)
_UPSERT_EVENT: Final = _upsert_by_run_key(_c.EVENTS, _PROGRESS)
#: ``_UPSERT_TASK`` and ``_UPSERT_EVENT`` of a batch whose fence found the run's key (``_upsert_keyed``)
_UPSERT_TASK_KEYED: Final = _upsert_keyed(_c.TASKS, [()])
_UPSERT_EVENT_KEYED: Final = _upsert_keyed(_c.EVENTS, [()], _PROGRESS)
_task_values: Final = _bound(_c.TASKS, ())
_event_values: Final = _bound(_c.EVENTS, (), _PROGRESS)
#: the columns of a task that ran and did not fail nor revert, NULL: where they are in its row, its statement
#: and the values it binds
_TASK_NULLS: Final = ("failure", "revert_started_at", "revert_ended_at")
_TASK_NULL_AT: Final = tuple(_c.TASKS.names.index(name) for name in _TASK_NULLS)
_UPSERT_TASK_CLEAN: Final = _upsert_keyed(_c.TASKS, [_TASK_NULLS])
_clean_task: Final = _bound(_c.TASKS, _TASK_NULLS)
#: a batch's events that are not failures, its last one carrying the run's progress (``prepare``): each batch
#: of a Linear's task (two events, three at its ends) is one statement binding no NULL
_FAILURE_KIND_AT: Final = _c.EVENTS.names.index("failure_kind")
_UPSERT_EVENTS_CLEAN: Final = {
    n: _upsert_keyed(_c.EVENTS, [("failure_kind", _PROGRESS)] * (n - 1) + [("failure_kind",)], _PROGRESS)
    for n in (1, 2, 3)
}
_clean_event: Final = _bound(_c.EVENTS, ("failure_kind", _PROGRESS), _PROGRESS)
_clean_last_event: Final = _bound(_c.EVENTS, ("failure_kind",), _PROGRESS)
_UPSERT_REQUEST: Final = _q(_sql.UPSERT_REQUEST)
_DELETE_REGION: Final = _q(_sql.DELETE_REGION)
_RETAIN_CHECKPOINTS: Final = _q(_sql.RETAIN_CHECKPOINTS)
_RETAIN_EVENTS: Final = (
    f"DELETE FROM ckflow_events WHERE run_key = {_RUN_KEY} AND seq < ?2 "
    "AND checkpoint IN (SELECT value FROM json_each(?3))"
)
_SELECT_LATEST_CHECKPOINTS: Final = _q(_sql.SELECT_LATEST_CHECKPOINTS)
#: failures of execute and revert (not cancellations), through the events' partial index
_SELECT_FAILURES: Final = (
    f"SELECT body FROM ckflow_events WHERE run_key = {_RUN_KEY} AND failure_kind IS NOT NULL "
    "AND failure_kind <> 'cancelled' ORDER BY seq"
)
#: each count is named after its table (``_sql.TABLES``)
_ROW_COUNTS: Final = "SELECT " + ", ".join(
    f"(SELECT count(*) FROM ckflow_{table} WHERE "
    + (f"run_key = {_RUN_KEY})" if table in ("tasks", "events") else "run_id = ?1)")
    + f" AS {table}"
    for table in _sql.TABLES
)
TASKS: Final = _select_by_run_key(_c.TASKS) + " ORDER BY rowid"
_REGIONS: Final = f"SELECT {_sql.columns(_c.REGIONS.read)} FROM ckflow_regions WHERE run_id = ?1 ORDER BY rowid"
CHECKPOINTS: Final = (
    f"SELECT {_sql.columns(_c.CHECKPOINTS.read)} FROM ckflow_checkpoints WHERE run_id = ?1 ORDER BY checkpoint, pass_no"
)
CHECKPOINTS_OF: Final = (
    f"SELECT {_sql.columns(_c.CHECKPOINTS.read)} FROM ckflow_checkpoints WHERE run_id = ?1 AND checkpoint = ?2 "
    "ORDER BY pass_no"
)
EVENTS: Final = _select_by_run_key(_c.EVENTS) + " AND seq > ?2 ORDER BY seq LIMIT ?3"
REQUESTS: Final = (
    f"SELECT {_sql.columns(_c.REQUESTS.read)} FROM ckflow_requests WHERE run_id = ?1 ORDER BY requested_at, rowid"
)
_PENDING: Final = (
    f"SELECT {_sql.columns(_c.REQUESTS.read)} FROM ckflow_requests "
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
    f"DELETE FROM ckflow_{table} WHERE "
    + (
        "run_key IN (SELECT run_key FROM ckflow_runs WHERE run_id IN (SELECT value FROM json_each(?1)))"
        if table in ("tasks", "events")
        else "run_id IN (SELECT value FROM json_each(?1))"
    )
    for table in (*_sql.TABLES, "runs")
)


def names(values: Sequence[str]) -> str:
    """A list bound as one parameter, read back by ``json_each``."""
    return json.dumps(list(values))


def states_test(n: int) -> str:
    return f"state IN (SELECT value FROM json_each(${n}))"


# -- what each call runs ---------------------------------------------------------------------


def create_run(cur: sqlite3.Cursor, row: tuple[Any, ...]) -> bool:
    return cur.execute(_INSERT_RUN, row).rowcount == 1


def get_run(conn: sqlite3.Connection, run_id: str) -> Any:
    return conn.execute(_SELECT_RUN, (run_id,)).fetchone()


def fetch_all(conn: sqlite3.Connection, arg: tuple[str, Sequence[Any]]) -> list[Any]:
    statement, params = arg
    return conn.execute(statement, params).fetchall()


def load(conn: sqlite3.Connection, run_id: str) -> tuple[Any, ...] | None:
    run = conn.execute(_SELECT_RUN, (run_id,)).fetchone()
    if run is None:
        return None
    key = (run_id,)
    return (
        run,
        conn.execute(TASKS, key).fetchall(),
        conn.execute(_SELECT_LATEST_CHECKPOINTS, key).fetchall(),
        conn.execute(_REGIONS, key).fetchall(),
        conn.execute(_SELECT_FAILURES, key).fetchall(),
    )


def _progress_only(cur: sqlite3.Cursor, w: _sql.Writes) -> int | None:
    """The run's key if the batch, by the run's owner, changes nothing but the progress its last event carries.

    A commit writes every page it changed to the WAL, whole, at some 2.5 µs a page. Most batches (a task
    done, the next one started) change nothing of the run but its progress, which their last event carries
    (``prepare``; read back through ``ckflow_run_records``): then the run's row is only read, to fence the
    write. A batch that deletes events (retention) writes the row, so that no progress goes with them.
    """
    if w.progress is None or w.retain_events:
        return None
    run = w.run
    ended, halted, goto = _UNDER_WAY
    if run[ended] is None and run[halted] is False and run[goto] is None:
        found = cur.execute(_SAME_RUN_UNDER_WAY, (*run[:6], run[_NEXT_SEQ])).fetchone()
    else:
        found = cur.execute(_SAME_RUN, run).fetchone()
    return None if found is None else int(found[0])


def _update_run(cur: sqlite3.Cursor, w: _sql.Writes, where: str) -> None:
    """Write the run's row if the batch's owner owns it, else raise."""
    # SQLite rewrites the entries of every index whose columns are SET, changed or not; most writes keep
    # the run's state and creation time, and then skip the two pages of the runs' indexes (and the fence's
    # SELECT: the UPDATE finds the run, its owner, state and creation time as the batch has them).
    if cur.execute(_UPDATE_RUN_SAME_KEYS, w.run).rowcount != 1:
        fence = cur.execute(_FENCE, (w.run_id,)).fetchone()
        if fence is None:
            raise RunNotFoundError(w.run_id, where)
        if fence["owner"] != w.owner:
            raise LeaseLostError(w.run_id, w.owner)
        cur.execute(_UPDATE_RUN, w.run)
    cur.execute(_DROP_PROGRESS, (w.run_id, w.next_seq))


def _write_keyed(cur: sqlite3.Cursor, w: _sql.Writes, key: int) -> None:
    """The batch's tasks and events, the run's key (found by its fence) bound rather than looked up per row."""
    failure, revert_started, revert_ended = _TASK_NULL_AT
    for task in w.tasks:
        if task[failure] is None and task[revert_started] is None and task[revert_ended] is None:
            cur.execute(_UPSERT_TASK_CLEAN, (key, *_clean_task(task)))
        else:
            cur.execute(_UPSERT_TASK_KEYED, (key, *_task_values(task)))
    *before, last = w.events  # a batch with progress has events
    statement = _UPSERT_EVENTS_CLEAN.get(len(w.events))
    if statement is not None and all(event[_FAILURE_KIND_AT] is None for event in w.events):
        params: tuple[Any, ...] = (key,)
        for event in before:
            params += _clean_event(event)
        cur.execute(statement, params + _clean_last_event(last))
    else:
        cur.executemany(_UPSERT_EVENT_KEYED, [(key, *_event_values(event)) for event in w.events])


def apply(cur: sqlite3.Cursor, arg: tuple[_sql.Writes, str]) -> None:
    """One batch, in the transaction (or savepoint) its group gave it.

    The run's row comes first, fenced by its owner: a lost lease writes nothing.
    """
    w, where = arg
    key = _progress_only(cur, w)
    if key is None:
        _update_run(cur, w, where)
        if w.tasks:
            cur.executemany(_UPSERT_TASK, w.tasks)
    else:
        _write_keyed(cur, w, key)
    if w.checkpoints:
        cur.executemany(_UPSERT_CHECKPOINT, w.checkpoints)
    if w.regions:
        cur.executemany(_UPSERT_REGION, w.regions)
    if w.drop_regions:
        cur.executemany(_DELETE_REGION, w.drop_regions)
    if w.events and key is None:
        cur.executemany(_UPSERT_EVENT, w.events)
    if w.retain_checkpoints:
        cur.executemany(_RETAIN_CHECKPOINTS, w.retain_checkpoints)
        cur.executemany(_RETAIN_EVENTS, w.retain_events)
    if w.requests:
        cur.executemany(_UPSERT_REQUEST, w.requests)
    if w.release:
        cur.execute(_RELEASE, (w.run_id, w.owner))


def claim(cur: sqlite3.Cursor, arg: tuple[str, str, float, str | None]) -> tuple[bool, Any] | None:
    run_id, owner, ttl, replacing = arg
    row = cur.execute(_SELECT_RUN, (run_id,)).fetchone()
    if row is None:
        return None
    now = time.time()
    holder = row["owner"]
    if holder is not None and holder not in (owner, replacing) and (row["lease_expires"] or 0.0) > now:
        return False, row
    cur.execute(_CLAIM, (run_id, owner, now + ttl))
    return True, {**dict(row), "owner": owner, "lease_expires": now + ttl}


def renew(cur: sqlite3.Cursor, arg: tuple[list[str], str, float]) -> tuple[set[str], list[Any]]:
    run_ids, owner, ttl = arg
    ids = names(run_ids)
    owned = {row["run_id"] for row in cur.execute(_OWNED, (ids, owner))}
    if not owned:
        return owned, []
    cur.execute(_RENEW, (ids, owner, time.time() + ttl))
    return owned, cur.execute(_PENDING, (names(sorted(owned)),)).fetchall()


def release(cur: sqlite3.Cursor, arg: tuple[str, str]) -> None:
    cur.execute(_RELEASE, arg)


def request(cur: sqlite3.Cursor, arg: tuple[str, tuple[Any, ...]]) -> bool:
    """Record a control request of run ``arg[0]``, whose row is ``arg[1]``, if the run exists."""
    run_id, row = arg
    if cur.execute(_RUN_EXISTS, (run_id,)).fetchone() is None:
        return False
    cur.execute(_UPSERT_REQUEST, row)
    return True


def row_counts(conn: sqlite3.Connection, run_id: str) -> Any:
    return conn.execute(_ROW_COUNTS, (run_id,)).fetchone()


def _delete_runs(conn: sqlite3.Connection, ids: str) -> int:
    deleted = 0
    for statement in _DELETE:
        deleted = conn.execute(statement, (ids,)).rowcount
    return deleted  # the last statement deletes the runs themselves


def delete_chunk(conn: sqlite3.Connection, ids: str) -> int:
    """In the thread: one chunk of ``delete_runs`` in a transaction of its own."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        deleted = _delete_runs(conn, ids)
        conn.execute("COMMIT")
    except BaseException:
        rollback(conn)
        raise
    return deleted
