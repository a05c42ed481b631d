"""``PostgresStore.write``'s common batches, and the group commit of several runs' batches.

The common batch (a run's row, tasks, passes, regions, events) is one statement, whose first CTE
is the owner fence, and so one round trip (``one_statement``). While ``WRITERS`` such writes are in
flight, the next ones wait in a queue, and the queue is written as one statement for all its runs
(``group_statement``), so one round trip and one commit for many runs: group commit across runs.
Either way a batch's rows are built once from its records (``common``); a group binds them as one
JSON text per table.

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

import pydantic_core

from ckflow._errors import LeaseLostError, RunNotFoundError
from ckflow.stores import _columns as _c
from ckflow.stores import _sql

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ckflow._records import Batch

__all__ = [
    "WRITERS",
    "Common",
    "GroupWriter",
    "Shape",
    "common",
    "group_statement",
    "one_statement",
    "one_statement_args",
]

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
#: the run's columns that the fence binds, in ``_sql.FENCE_PARAMS``' order, then whether the batch releases the run
_RUN_REL: Final = (*_c.RUNS.part(list(_sql.FENCE_PARAMS)).columns, _c.Column("rel", "bool"))


def _json(rows: object) -> str:
    """A group's rows as JSON text (a row's values are str, int, float, bool or None): pydantic's encoder, as
    ``json``'s builds its encoder anew on each call, which made it some 70 K instructions a table. NaN and the
    infinities come out as ``NaN`` and ``Infinity``, which the server refuses: the group is then written run by
    run, where each run learns its own outcome."""
    return pydantic_core.to_json(rows, inf_nan_mode="constants").decode()


def _on_conflict(table: _c.Table[Any]) -> str:
    update = ", ".join(f"{c} = excluded.{c}" for c in table.names if c not in table.key)
    return f"ON CONFLICT ({_sql.columns(table.key)}) DO UPDATE SET {update}"


def _put(name: str, first: int) -> str:
    """The CTE that upserts the rows of table ``name`` of a run's batch, bound column by column as arrays from
    ``$first`` (the run's id is ``$1``), each only if the run passed the fence."""
    table = _TABLES[name]
    bound = [c for c in table.columns if c.name != "run_id"]
    arrays = ", ".join(f"${first + i}::{c.pg}[]" for i, c in enumerate(bound))
    return (
        f"put_{name} AS (INSERT INTO {table.name} ({_sql.columns(table.names)}) "
        f"SELECT {', '.join(_run_is_one(c) for c in table.columns)} "
        f"FROM unnest({arrays}) WITH ORDINALITY AS u({_sql.columns([c.name for c in bound])}, ord) "
        f"WHERE EXISTS (SELECT 1 FROM fence) ORDER BY ord {_on_conflict(table)})"
    )


def _from_json(columns: Sequence[_c.Column]) -> str:
    """The values of ``columns`` in a row bound as a JSON array ``v`` (one element per column, in order)."""
    return ", ".join(f"(v->>{i})::{c.pg} AS {c.name}" for i, c in enumerate(columns))


def _put_json(name: str, n: int) -> str:
    """The CTE that upserts the rows of table ``name`` of several runs, bound as ``$n``: one JSON array of rows,
    each an array of the row's values, in order; a row only if its run passed the fence."""
    table = _TABLES[name]
    return (
        f"put_{name} AS (INSERT INTO {table.name} ({_sql.columns(table.names)}) "
        f"SELECT {_sql.columns(table.names)} FROM (SELECT {_from_json(table.columns)}, ord "
        f"FROM jsonb_array_elements(${n}::jsonb) WITH ORDINALITY AS e(v, ord)) AS u "
        f"WHERE u.run_id IN (SELECT run_id FROM fence) ORDER BY ord {_on_conflict(table)})"
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
            ctes.append(_put(name, n + 1))
        n += (len(_TABLES[name].columns) - 1) * max(rows, 1)
    # ``found`` and ``applied`` matter only when the fence did not pass: the server looks the run up only then
    # (an uncorrelated sub-select is evaluated when first needed), not on every write of a Linear's tasks
    fenced = "EXISTS (SELECT 1 FROM fence)"
    found = "EXISTS (SELECT 1 FROM ckflow_runs WHERE run_id = $1)"
    result = f"{fenced} AS fenced, CASE WHEN {fenced} THEN true ELSE {found} END AS found"
    if release:
        p = _sql.FENCE_PARAMS
        result += (
            f", CASE WHEN {fenced} THEN false ELSE EXISTS (SELECT 1 FROM ckflow_runs WHERE run_id = $1 "
            f"AND owner IS NULL AND state = ${p['state']} AND updated_at = ${p['updated_at']} "
            f"AND next_seq = ${p['next_seq']}) END AS applied"
        )
    return f"WITH {', '.join(ctes)} SELECT {result}"


@functools.cache
def group_statement(tables: tuple[str, ...]) -> str:
    """The common batches of several runs (with rows for ``tables``) as one statement; it returns the ids of
    the runs whose fence passed, and whose rows it wrote. Each table's rows are one parameter, a JSON array of
    rows (``_group_args``), rather than an array per column: asyncpg checks every element of an array against
    ``collections.abc`` in Python, some 300 checks a run of S8. ``$1`` holds the runs' fences: each run's
    ``UPDATE_RUN`` parameters then its ``rel``, which gives up its writer's lease as well (``Batch.release``)."""
    fenced = [f"{c} = w.{c}" for c in _sql.FENCE_PARAMS if c not in ("run_id", "owner")]
    fenced += [f"{c} = CASE WHEN w.rel THEN NULL ELSE r.{c} END" for c in ("owner", "lease_expires")]
    ctes = [
        f"w AS (SELECT {_from_json(_RUN_REL)} FROM jsonb_array_elements($1::jsonb) AS e(v))",
        f"fence AS (UPDATE {_c.RUNS.name} AS r SET {', '.join(fenced)} FROM w "
        "WHERE r.run_id = w.run_id AND r.owner = w.owner RETURNING r.run_id)",
    ]
    ctes += [_put_json(name, n) for n, name in enumerate(tables, start=2)]
    return f"WITH {', '.join(ctes)} SELECT array(SELECT run_id FROM fence)"


def _distinct(key_of: Callable[[Sequence[Any]], Any] | None, rows: Sequence[tuple[Any, ...]]) -> bool:
    """No two rows of the run share a key, ``key_of`` a row (one statement cannot insert, or update, a row twice)."""
    return len(rows) < 2 or key_of is None or len({key_of(row) for row in rows}) == len(rows)


@final
class Common:
    """A run's common batch as the rows its statement binds: built once from the batch's records, whether the
    batch is written alone (``one_statement_args``) or in a group (``group_statement``)."""

    __slots__ = ("owner", "release", "rows", "run", "run_id")

    def __init__(self, run: list[Any], rows: list[tuple[str, list[tuple[Any, ...]]]], release: bool) -> None:
        #: the fence's parameters (``UPDATE_RUN``'s): the run's id, the writer, the run's row
        self.run = run
        self.run_id: str = run[0]
        self.owner: str = run[1]
        #: (table, its rows, each without ``run_id``) for each table the batch has rows for, in ``_TABLES``' order
        self.rows = rows
        #: the batch gives up the writer's lease (``Batch.release``)
        self.release = release


def common(batch: Batch) -> Common | None:
    """``batch``'s rows, each keyed by its run; None if it is not a common batch (it deletes rows or carries
    requests) or one statement cannot write it (a key twice): ``PostgresStore.write`` writes it another way."""
    if batch.drop_regions or batch.retention or batch.requests:
        return None
    run = batch.run
    rows: list[tuple[str, list[tuple[Any, ...]]]] = []
    for name, records in (
        ("tasks", batch.tasks),
        ("checkpoints", batch.checkpoints),
        ("regions", batch.regions),
        ("events", batch.events),
    ):
        if records:
            table = _TABLES[name]
            rest = table.rest
            built = [rest(record) for record in records]
            if not _distinct(table.rest_key_of, built):
                return None
            rows.append((name, built))
    return Common([run.run_id, batch.owner, *_sql.fenced_row(run)], rows, batch.release)


def one_statement_args(c: Common) -> tuple[Shape, list[Any]]:
    """The shape of ``c``'s rows and the parameters of their ``one_statement``: a table's rows value by value up
    to ``_SCALAR_ROWS`` of them, column by column as arrays beyond."""
    args = list(c.run)
    shape: list[tuple[str, int]] = []
    for name, rows in c.rows:
        if len(rows) <= _SCALAR_ROWS:
            shape.append((name, len(rows)))
            for row in rows:
                args += row
        else:
            shape.append((name, 0))
            args += [list(column) for column in zip(*rows, strict=True)]
    return tuple(shape), args


def _group_args(group: Sequence[Common]) -> tuple[tuple[str, ...], list[str]]:
    """The tables of ``group``'s rows and the parameters of their ``group_statement``: JSON texts."""
    by_table: dict[str, list[tuple[Any, ...]]] = {}
    for c in group:
        run_id = (c.run_id,)
        for name, rows in c.rows:
            table = by_table.get(name)
            if table is None:
                table = by_table[name] = []
            table += [run_id + row for row in rows]
    tables = tuple(name for name in _TABLES if name in by_table)
    args = [_json([[*c.run, c.release] for c in group])]
    args += [_json(by_table[name]) for name in tables]
    return tables, args


_Queued = tuple[Common, "asyncio.Future[None]"]


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

    async def write(self, c: Common) -> None:
        """Write ``c`` and return once it is committed.

        Raises:
            LeaseLostError: ``c``'s writer does not own its run (nothing of it was written).
            RunNotFoundError: the run does not exist.
        """
        run_id = c.run_id
        if self._active < WRITERS and not self._queue and run_id not in self._inflight:
            # alone (in a statement of its own, a Linear's every write), with no coroutine between
            self._active += 1
            self._inflight.add(run_id)
            try:
                shape, args = one_statement_args(c)
                found = await self.call("fetchrow", one_statement(shape, c.release), args)
            finally:
                self._inflight.discard(run_id)
                self._active -= 1
                self._drain_soon()
            self._outcome(c, found)
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((c, done))
        self._drain_soon()  # if a writer's slot is free (the queue holds only runs with a write in flight)
        await done

    def _outcome(self, c: Common, found: Any) -> None:
        """Raise what ``found`` (the row of ``c``'s ``one_statement``) says, if the batch was refused."""
        if not found["fenced"]:
            if not found["found"]:
                raise RunNotFoundError(c.run_id, self._where)
            if c.release and found["applied"]:
                return  # a group's write again, after a commit whose answer was lost: the lease went with it
            raise LeaseLostError(c.run_id, c.owner)

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
        for c, _ in group:
            self._inflight.discard(c.run_id)

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
                tables, args = _group_args([c for c, _ in group])
                fenced = set(await self.call("fetchval", group_statement(tables), args))
            except Exception:  # each run is written again alone, and learns its own error
                fenced = set()
            for c, done in group:
                if c.run_id in fenced and not done.done():
                    done.set_result(None)
            again = [item for item in group if item[0].run_id not in fenced]
        for c, done in again:
            try:
                shape, args = one_statement_args(c)
                found = await self.call("fetchrow", one_statement(shape, c.release), args)
                self._outcome(c, found)
            except Exception as exc:
                if not done.done():
                    done.set_exception(exc)
            else:
                if not done.done():
                    done.set_result(None)
