"""``PostgresStore.write``'s common batches, and the group commit of several runs' batches.

The common batch (a run's row, tasks, passes, regions, events) is one statement, whose first CTE
is the owner fence, and so one round trip (``one_statement``). While ``WRITERS`` such writes are in
flight, the next ones wait in a queue, and the queue is written as one statement for all its runs
(``group_statement``), so one round trip and one commit for many runs: group commit across runs.

The rules of a group, which each run's writer sees as if it had written alone:

- each run's fence holds on its own: the fence CTE updates the row of every run still owned by its
  writer, and the rows of a run are written only if its fence passed. A run whose fence failed is
  written again alone, which raises ``LeaseLostError`` (or ``RunNotFoundError``) for that run only;
- a write of the group that fails (a value the database refuses, a lost connection) is written
  again run by run, so that each run gets its own outcome and no run loses its write to another
  run's fault. Every row is an upsert, so writing again what a lost commit may have stored is harmless;
- a writer's ``write()`` returns only once the statement that holds its batch is committed, so a
  consumer still starts only after its producer's result is durable (DESIGN §7);
- one statement holds one batch of a run at most (a run's later batch waits for the next group).
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from typing import TYPE_CHECKING, Any, Final, final

from ckflow._errors import LeaseLostError, RunNotFoundError
from ckflow.stores import _columns as _c
from ckflow.stores import _sql

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ckflow._records import Batch

__all__ = ["WRITERS", "GroupWriter", "Shape", "batch_args", "one_statement", "one_statement_args"]

#: what ``one_statement`` binds: (table, rows) for each table a batch has rows for, in ``_TABLES``' order; 0 rows
#: stands for a table whose rows are bound as arrays, column by column
Shape = tuple[tuple[str, int], ...]

#: writes in flight at once before the next ones are grouped (and connections held between calls); 1 and 2
#: measured alike on S8 within the machine's noise, and one leaves the larger groups
WRITERS: Final = 1
#: connections held between calls at most (others go back to the pool, which keeps the rest of its 10 for
#: reads, leases and queues): 3 measured about 10 % more runs/s on S8 than 1
HELD: Final = 3
#: the most runs one group statement writes
_MAX_GROUP: Final = 512
#: a run's statement binds a table's rows value by value (``VALUES``) up to this many rows, as arrays beyond: an
#: array parameter costs the server a type lookup and a ``unnest`` and asyncpg a check per element, and one
#: batch of a Linear (a task, two events) went from about 150 to 70 µs a round trip without its commit
_SCALAR_ROWS: Final = 8

#: the tables that a common batch fills, by the name ``row_counts`` gives them
_TABLES: Final[dict[str, _c.Table[Any]]] = {
    "tasks": _c.TASKS,
    "checkpoints": _c.CHECKPOINTS,
    "regions": _c.REGIONS,
    "events": _c.EVENTS,
}
#: the run's columns that the fence binds, in ``Writes.run``'s order
_RUN: Final = _c.RUNS.part(list(_sql.FENCE_PARAMS))


def _on_conflict(table: _c.Table[Any]) -> str:
    update = ", ".join(f"{c} = excluded.{c}" for c in table.names if c not in table.key)
    return f"ON CONFLICT ({_sql.columns(table.key)}) DO UPDATE SET {update}"


def _put(name: str, first: int, values: Callable[[_c.Column], str], fenced: str) -> str:
    """The CTE that upserts the rows of table ``name`` bound column by column as arrays from ``$first``,
    each row only if ``fenced`` (its run passed the fence); ``values(column)`` is the column's value in
    the ``SELECT``, which binds the columns whose value is their own name."""
    table = _TABLES[name]
    bound = [c for c in table.columns if values(c) == c.name]
    arrays = ", ".join(f"${first + i}::{c.pg}[]" for i, c in enumerate(bound))
    return (
        f"put_{name} AS (INSERT INTO {table.name} ({_sql.columns(table.names)}) "
        f"SELECT {', '.join(values(c) for c in table.columns)} "
        f"FROM unnest({arrays}) WITH ORDINALITY AS u({_sql.columns([c.name for c in bound])}, ord) "
        f"WHERE {fenced} ORDER BY ord {_on_conflict(table)})"
    )


def _put_rows(name: str, first: int, rows: int, fenced: str) -> str:
    """The CTE that upserts ``rows`` rows of table ``name`` of one run (``$1``), bound value by value from
    ``$first`` (each row's columns but ``run_id``, a row after the other), in that order, if ``fenced``."""
    table = _TABLES[name]
    bound = [c for c in table.columns if c.name != "run_id"]
    width = len(bound)
    values = [
        f"({r}, {', '.join(f'${first + r * width + i}::{c.pg}' for i, c in enumerate(bound))})" for r in range(rows)
    ]
    return (
        f"put_{name} AS (INSERT INTO {table.name} ({_sql.columns(table.names)}) "
        f"SELECT {', '.join(_run_is_one(c) for c in table.columns)} "
        f"FROM (VALUES {', '.join(values)}) AS u(ord, {_sql.columns([c.name for c in bound])}) "
        f"WHERE {fenced} {'ORDER BY ord ' if rows > 1 else ''}{_on_conflict(table)})"
    )


def _run_is_one(column: _c.Column) -> str:
    """One run's statement: its id is ``$1``, every other column is bound."""
    return "$1" if column.name == "run_id" else column.name


def _bound(column: _c.Column) -> str:
    return column.name


@functools.cache
def one_statement(shape: Shape, release: bool = False) -> str:
    """A whole common batch of one run with rows as ``shape`` says, as one statement (which gives up the
    writer's lease too, with ``release``).

    The fence is the first CTE: the ``UPDATE`` of the run's row, which changes it only while the
    writer owns the run (and takes the row lock that orders this write after a concurrent claim).
    Every other CTE upserts its rows (``$1`` and, value by value or column by column as arrays ``unnest``-ed,
    the rest of each row, in order) only if the fence changed the row. The result row says whether the fence
    passed and, if not, whether the run exists at all; with ``release``, also whether the run's row is already
    this batch's, released (``applied``: this very batch was committed before, by a write whose answer was lost).
    """
    ctes = [f"fence AS ({_sql.UPDATE_RUN_RELEASE if release else _sql.UPDATE_RUN} RETURNING 1)"]
    n = len(_sql.FENCE_PARAMS)
    for name, rows in shape:
        if rows:
            ctes.append(_put_rows(name, n + 1, rows, "EXISTS (SELECT 1 FROM fence)"))
        else:
            ctes.append(_put(name, n + 1, _run_is_one, "EXISTS (SELECT 1 FROM fence)"))
        n += (len(_TABLES[name].columns) - 1) * max(rows, 1)
    result = "EXISTS (SELECT 1 FROM fence) AS fenced, EXISTS (SELECT 1 FROM ckflow_runs WHERE run_id = $1) AS found"
    if release:
        p = _sql.FENCE_PARAMS
        result += (
            f", EXISTS (SELECT 1 FROM ckflow_runs WHERE run_id = $1 AND owner IS NULL AND state = ${p['state']} "
            f"AND updated_at = ${p['updated_at']} AND next_seq = ${p['next_seq']}) AS applied"
        )
    return f"WITH {', '.join(ctes)} SELECT {result}"


@functools.cache
def group_statement(tables: tuple[str, ...]) -> str:
    """The common batches of several runs (with rows for ``tables``) as one statement; it returns the ids of
    the runs whose fence passed, and whose rows it wrote. A run's ``rel`` (bound after its row's columns) gives
    up its writer's lease as well (``Batch.release``)."""
    arrays = ", ".join(f"${i}::{c.pg}[]" for i, c in enumerate(_RUN.columns, start=1))
    fenced = [f"{c} = w.{c}" for c in _sql.FENCE_PARAMS if c not in ("run_id", "owner")]
    fenced += [f"{c} = CASE WHEN w.rel THEN NULL ELSE r.{c} END" for c in ("owner", "lease_expires")]
    n = len(_RUN.columns) + 1
    ctes = [
        f"w AS (SELECT * FROM unnest({arrays}, ${n}::boolean[]) AS w({_sql.columns(_RUN.names)}, rel))",
        f"fence AS (UPDATE {_c.RUNS.name} AS r SET {', '.join(fenced)} FROM w "
        "WHERE r.run_id = w.run_id AND r.owner = w.owner RETURNING r.run_id)",
    ]
    for name in tables:
        ctes.append(_put(name, n + 1, _bound, "u.run_id IN (SELECT run_id FROM fence)"))
        n += len(_TABLES[name].columns)
    return f"WITH {', '.join(ctes)} SELECT array(SELECT run_id FROM fence)"


def _distinct(key_of: Callable[[Sequence[Any]], Any] | None, rows: Sequence[tuple[Any, ...]]) -> bool:
    """No two rows of the run share a key, ``key_of`` a row (one statement cannot insert, or update, a row twice)."""
    return len(rows) < 2 or key_of is None or len({key_of(row) for row in rows}) == len(rows)


def _rows(w: _sql.Writes) -> tuple[tuple[str, list[tuple[Any, ...]]], ...]:
    return (("tasks", w.tasks), ("checkpoints", w.checkpoints), ("regions", w.regions), ("events", w.events))


def one_statement_args(w: _sql.Writes) -> tuple[Shape, list[Any]] | None:
    """The shape of ``w``'s rows and the parameters of their ``one_statement``; None if ``w`` is not a common
    batch (it deletes rows or carries requests) or one statement cannot write it (a key twice)."""
    if w.drop_regions or w.retain_checkpoints or w.requests:
        return None
    shape: list[tuple[str, int]] = []
    args = list(w.run)
    for name, rows in _rows(w):
        if rows:
            table = _TABLES[name]
            if not _distinct(table.key_of, rows):
                return None
            if len(rows) <= _SCALAR_ROWS:
                shape.append((name, len(rows)))
                args.extend(table.flat_without_run(rows))
            else:
                shape.append((name, 0))
                args.extend(table.without_run(rows))
    return tuple(shape), args


def batch_args(batch: Batch) -> tuple[Shape, list[Any]] | None:
    """``one_statement_args(_sql.prepare(batch, ...))`` built from ``batch`` straight away, for a common batch
    whose tables have ``_SCALAR_ROWS`` rows at most, else None (``one_statement_args`` tells the rest apart):
    a Linear's task writes one such batch alone, and building each row once, without its ``run_id``, saves
    the intermediate rows and lists of ``Writes``."""
    if batch.drop_regions or batch.retention or batch.requests:
        return None
    run = batch.run
    args = [run.run_id, batch.owner, *_sql.fenced_row(run)]
    shape: list[tuple[str, int]] = []
    for name, records in (
        ("tasks", batch.tasks),
        ("checkpoints", batch.checkpoints),
        ("regions", batch.regions),
        ("events", batch.events),
    ):
        if records:
            if len(records) > _SCALAR_ROWS:
                return None
            rest = _TABLES[name].rest
            rows = [rest(record) for record in records]
            if not _distinct(_TABLES[name].rest_key_of, rows):
                return None
            shape.append((name, len(rows)))
            for row in rows:
                args += row
    return tuple(shape), args


def _group_args(group: Sequence[_sql.Writes]) -> tuple[tuple[str, ...], list[Any]]:
    """The tables of ``group``'s rows and the parameters of their ``group_statement``."""
    args: list[Any] = [list(column) for column in zip(*(w.run for w in group), strict=True)]
    args.append([w.release for w in group])
    tables: list[str] = []
    for i, name in enumerate(_TABLES):
        rows = [row for w in group for row in _rows(w)[i][1]]
        if rows:
            tables.append(name)
            args.extend(list(column) for column in zip(*rows, strict=True))
    return tuple(tables), args


_Queued = tuple[_sql.Writes, "asyncio.Future[None]"]


@final
class GroupWriter:
    """Writes the common batches of a store's runs: alone while few are in flight, else grouped."""

    __slots__ = ("_active", "_closed", "_idle", "_inflight", "_pool", "_queue", "_tasks", "_where")

    def __init__(self, pool: Any, where: str) -> None:
        #: the store's pool, open as long as this writer
        self._pool = pool
        self._where = where
        #: writes in flight: a writer's own, or a task's writing the queue
        self._active = 0
        self._queue: deque[_Queued] = deque()
        #: the runs a write is in flight for: a run's next batch waits for it, so as not to overtake it
        self._inflight: set[str] = set()
        #: the tasks writing the queue (referenced until done)
        self._tasks: set[asyncio.Task[None]] = set()
        #: connections taken from the pool for the writes, idle between them (at most ``HELD``)
        self._idle: list[Any] = []
        self._closed = False

    async def close(self) -> None:
        """Hand the connections back to the pool, before it closes (one in use goes back once its write is done)."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            await self._pool.release(conn)

    async def call(self, fetch: str, query: str, args: Sequence[Any]) -> Any:
        """``fetch`` (``"fetchrow"``, ``"fetchval"`` or ``"execute"``) on a connection this writer holds between
        calls (``HELD`` of them at most; others go back to the pool): a call through the pool costs a task
        more (asyncpg shields each release) and a turn of the event loop."""
        pool = self._pool
        conn = self._idle.pop() if self._idle else await pool.acquire()
        try:
            result = await getattr(conn, fetch)(query, *args)
        except BaseException:
            await pool.release(conn)  # the pool checks it, as after a call of its own
            raise
        if self._closed or len(self._idle) >= HELD:
            await pool.release(conn)
        else:
            self._idle.append(conn)
        return result

    async def write(self, w: _sql.Writes, shape: Shape, args: list[Any]) -> None:
        """Write ``w`` (whose ``one_statement_args`` are ``shape`` and ``args``) and return once it is committed.

        Raises:
            LeaseLostError: ``w``'s writer does not own its run (nothing of it was written).
            RunNotFoundError: the run does not exist.
        """
        if self.free(w.run_id):
            await self.alone(w.run_id, w.owner, w.release, shape, args)
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((w, done))
        self._drain_soon()  # if a writer's slot is free (the queue holds only runs with a write in flight)
        await done

    def free(self, run_id: str) -> bool:
        """Whether a write of ``run_id`` would go ``alone`` now (rather than wait in the queue)."""
        return self._active < WRITERS and not self._queue and run_id not in self._inflight

    async def alone(self, run_id: str, owner: str, release: bool, shape: Shape, args: list[Any]) -> None:
        """Write a batch of ``run_id`` (by ``owner``, giving up its lease with ``release``) whose
        ``one_statement_args`` are ``shape`` and ``args``, in a statement of its own; only if ``free(run_id)``
        (said with no await since). Raises as ``write`` does."""
        self._active += 1
        self._inflight.add(run_id)
        try:
            found = await self.call("fetchrow", one_statement(shape, release), args)
        finally:
            self._inflight.discard(run_id)
            self._active -= 1
            self._drain_soon()
        self._outcome(run_id, owner, release, found)

    def _outcome(self, run_id: str, owner: str, release: bool, found: Any) -> None:
        """Raise what ``found`` (the row of a batch's ``one_statement``) says, if the batch was refused."""
        if not found["fenced"]:
            if not found["found"]:
                raise RunNotFoundError(run_id, self._where)
            if release and found["applied"]:
                return  # a group's write again, after a commit whose answer was lost: the lease went with it
            raise LeaseLostError(run_id, owner)

    def _drain_soon(self) -> None:
        if self._queue and self._active < WRITERS:
            self._active += 1
            task = asyncio.get_running_loop().create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[_Queued]:
        """The next group: queued writes of distinct runs with no write in flight, oldest first (a writer that
        gave up is left out); the runs' writes are in flight from now on."""
        group: list[_Queued] = []
        runs = self._inflight
        later: list[_Queued] = []
        queue = self._queue
        while queue and len(group) < _MAX_GROUP:
            item = queue.popleft()
            if item[1].done():
                continue
            if item[0].run_id in runs:
                later.append(item)
            else:
                runs.add(item[0].run_id)
                group.append(item)
        queue.extendleft(reversed(later))
        return group

    def _written(self, group: list[_Queued]) -> None:
        for w, _ in group:
            self._inflight.discard(w.run_id)

    async def _drain(self) -> None:
        try:
            while group := self._take():
                try:
                    await self._group(group)
                except BaseException as exc:  # this task was cancelled: its writers must not wait forever
                    for _, done in group:
                        if not done.done():
                            done.set_exception(exc)
                    raise
                finally:
                    self._written(group)
        finally:
            self._active -= 1

    async def _group(self, group: list[_Queued]) -> None:
        """Write ``group`` in one statement; each writer gets its own outcome (see the module's rules)."""
        again = group
        if len(group) > 1:
            try:
                tables, args = _group_args([w for w, _ in group])
                fenced = set(await self.call("fetchval", group_statement(tables), args))
            except Exception:  # each run is written again alone, and learns its own error
                fenced = set()
            for w, done in group:
                if w.run_id in fenced and not done.done():
                    done.set_result(None)
            again = [item for item in group if item[0].run_id not in fenced]
        for w, done in again:
            try:
                one = one_statement_args(w)
                assert one is not None, "only common batches are queued"
                shape, args = one
                found = await self.call("fetchrow", one_statement(shape, w.release), args)
                self._outcome(w.run_id, w.owner, w.release, found)
            except Exception as exc:
                if not done.done():
                    done.set_exception(exc)
            else:
                if not done.done():
                    done.set_result(None)
