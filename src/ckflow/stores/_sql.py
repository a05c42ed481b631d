"""What the SQL stores share: the statements both dialects run, and a batch as their parameters.

The tables' columns, and how rows map to records, are declared in ``_columns``; the schema's steps are
in ``_schema``. Statements are written once, with PostgreSQL's ``$n`` placeholders; ``qmark()``
rewrites them with SQLite's ``?n``, which binds the same positional parameters. The few statements
that differ (lease clock, lists of ids, insertion order, SQLite's keys of tasks and events) live in the
backend modules.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from ckflow.stores._columns import CHECKPOINTS, EVENTS, REGIONS, REQUESTS, RUNS, TASKS, Table

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterable, Sequence

    from ckflow._records import Batch, ControlRequest

__all__ = [
    "DELETE_REGION",
    "FENCE_PARAMS",
    "INSERT_RUN",
    "RETAIN_CHECKPOINTS",
    "ROW_COUNTS",
    "SELECT_FAILURES",
    "SELECT_LATEST_CHECKPOINTS",
    "SELECT_OWNER",
    "SELECT_RUN",
    "TABLES",
    "UPDATE_RUN",
    "UPDATE_RUN_RELEASE",
    "UPSERT_CHECKPOINT",
    "UPSERT_EVENT",
    "UPSERT_REGION",
    "UPSERT_REQUEST",
    "UPSERT_TASK",
    "Writes",
    "columns",
    "fenced_row",
    "list_runs_where",
    "order_pending",
    "prepare",
    "qmark",
]

#: The tables that hold a run's rows, as ``row_counts`` names them (``ckflow_runs`` aside).
TABLES: Final = ("tasks", "checkpoints", "regions", "events", "requests")

_PLACEHOLDER: Final = re.compile(r"\$(\d+)")


def qmark(statement: str) -> str:
    """``statement`` with SQLite's numbered placeholders (``?3``) for PostgreSQL's (``$3``)."""
    return _PLACEHOLDER.sub(r"?\1", statement)


def columns(names: Sequence[str], prefix: str = "") -> str:
    """``names`` as a statement's list of columns, each with ``prefix``."""
    return ", ".join(prefix + c for c in names)


def _insert(table: Table[Any]) -> str:
    values = ", ".join(f"${i}" for i in range(1, len(table.names) + 1))
    return f"INSERT INTO {table.name} ({columns(table.names)}) VALUES ({values})"


def _upsert(table: Table[Any]) -> str:
    update = ", ".join(f"{c} = excluded.{c}" for c in table.names if c not in table.key)
    return f"{_insert(table)} ON CONFLICT ({columns(table.key)}) DO UPDATE SET {update}"


# -- statements both dialects run ------------------------------------------------

#: what the fence's ``UPDATE_RUN`` writes of the run's row (its owner, lease and trace stay as they are)
_FENCED: Final = ("flow", "state", "inputs", "created_at", "updated_at", "ended_at", "halted", "goto", "next_seq")
#: the run's values that ``UPDATE_RUN`` binds after its id and owner (``Writes.run[2:]``)
fenced_row: Final = RUNS.part(_FENCED).row
#: the parameter of ``UPDATE_RUN`` (``Writes.run``) that holds each column, by name: ``$1`` is the run's id
#: and ``$2`` its owner, the writer
FENCE_PARAMS: Final = {name: n for n, name in enumerate(("run_id", "owner", *_FENCED), start=1)}

INSERT_RUN: Final = _insert(RUNS) + " ON CONFLICT (run_id) DO NOTHING"


#: the fence: the run's row changes only while ``$2`` owns it (parameters: ``Writes.run``)
def _update_run(*, release: bool) -> str:
    sets = [f"{c} = ${FENCE_PARAMS[c]}" for c in _FENCED]
    if release:
        sets += ["owner = NULL", "lease_expires = NULL"]
    return (
        f"UPDATE {RUNS.name} SET {', '.join(sets)} "
        f"WHERE run_id = ${FENCE_PARAMS['run_id']} AND owner = ${FENCE_PARAMS['owner']}"
    )


UPDATE_RUN: Final = _update_run(release=False)
#: the fence of a batch that also gives up the writer's lease (``Batch.release``; same parameters)
UPDATE_RUN_RELEASE: Final = _update_run(release=True)
SELECT_RUN: Final = f"SELECT {columns(RUNS.read)} FROM ckflow_runs WHERE run_id = $1"
SELECT_OWNER: Final = "SELECT owner, lease_expires FROM ckflow_runs WHERE run_id = $1"
UPSERT_TASK: Final = _upsert(TASKS)
UPSERT_CHECKPOINT: Final = _upsert(CHECKPOINTS)
UPSERT_REGION: Final = _upsert(REGIONS)
UPSERT_EVENT: Final = _upsert(EVENTS)
UPSERT_REQUEST: Final = _upsert(REQUESTS)
DELETE_REGION: Final = "DELETE FROM ckflow_regions WHERE run_id = $1 AND region_id = $2"
RETAIN_CHECKPOINTS: Final = "DELETE FROM ckflow_checkpoints WHERE run_id = $1 AND checkpoint = $2 AND pass_no < $3"
#: the latest pass of every checkpoint, by checkpoint name (the primary key answers the subquery)
SELECT_LATEST_CHECKPOINTS: Final = (
    f"SELECT {columns(CHECKPOINTS.read, 'c.')} FROM ckflow_checkpoints AS c WHERE c.run_id = $1 AND c.pass_no = "
    "(SELECT max(pass_no) FROM ckflow_checkpoints WHERE run_id = c.run_id AND checkpoint = c.checkpoint) "
    "ORDER BY c.checkpoint"
)
#: failures of execute and revert (not cancellations), through the events' partial index
SELECT_FAILURES: Final = (
    "SELECT body FROM ckflow_events WHERE run_id = $1 AND failure_kind IS NOT NULL "
    "AND failure_kind <> 'cancelled' ORDER BY seq"
)
#: each count is named after its table (``TABLES``)
ROW_COUNTS: Final = "SELECT " + ", ".join(
    f"(SELECT count(*) FROM ckflow_{table} WHERE run_id = $1) AS {table}" for table in TABLES
)


def list_runs_where(
    states: Collection[str] | None,
    flow: str | None,
    ended_before: float | None,
    limit: int | None,
    states_test: Callable[[int], str],
    names: Callable[[Sequence[str]], Any],
    source: str = "ckflow_runs",
    before: tuple[float, str] | None = None,
) -> tuple[str, list[Any], bool]:
    """``list_runs``'s query: (statement, parameters, whether ``limit`` must still be applied by slicing).

    ``states_test(n)`` is the dialect's test of ``state`` against the list bound as parameter ``n`` (bound
    with ``names``); ``source`` is the table or view the runs are read from. Built from only the filters
    given, so that each query can use the runs' indexes.
    """
    where: list[str] = []
    params: list[Any] = []
    if states is not None:
        params.append(names([str(s) for s in states]))
        where.append(states_test(len(params)))
    if flow is not None:
        params.append(flow)
        where.append(f"flow = ${len(params)}")
    if ended_before is not None:
        params.append(ended_before)
        where.append(f"ended_at IS NOT NULL AND ended_at < ${len(params)}")
    if before is not None:
        params.extend(before)
        # (created_at, run_id) < before, said so that the index on created_at bounds the scan
        at, run_id = f"${len(params) - 1}", f"${len(params)}"
        where.append(f"created_at <= {at} AND (created_at < {at} OR run_id < {run_id})")
    statement = f"SELECT {columns(RUNS.read)} FROM {source}"
    if where:
        statement += " WHERE " + " AND ".join(where)
    statement += " ORDER BY created_at DESC, run_id DESC"
    # MemoryStore slices with ``[:limit]``: a negative limit drops runs from the end, which LIMIT cannot say
    slice_after = limit is not None and limit < 0
    if limit is not None and limit >= 0:
        params.append(limit)
        statement += f" LIMIT ${len(params)}"
    return statement, params, slice_after


# -- a batch -> the statements' parameters ----------------------------------------------------------


class Writes(NamedTuple):
    """A ``Batch`` as the parameters of the statements that apply it, built before the database is touched.

    Rows are in the order of their table's columns (``_columns``).
    """

    run_id: str
    owner: str
    #: parameters of ``UPDATE_RUN`` (``FENCE_PARAMS`` says which is which)
    run: tuple[Any, ...]
    #: the run's ``next_seq``
    next_seq: int
    #: with ``prepare(progress=True)``, the run's ``updated_at`` if the last event carries it, else None
    progress: float | None
    tasks: list[tuple[Any, ...]]
    checkpoints: list[tuple[Any, ...]]
    regions: list[tuple[Any, ...]]
    drop_regions: list[tuple[str, int]]
    events: list[tuple[Any, ...]]
    #: parameters of ``RETAIN_CHECKPOINTS``
    retain_checkpoints: list[tuple[str, str, int]]
    #: (run_id, before_seq, checkpoint names) for the dialect's retention of events
    retain_events: list[tuple[str, int, Any]]
    requests: list[tuple[Any, ...]]
    #: the batch gives up the writer's lease (``Batch.release``)
    release: bool


def _progress(batch: Batch) -> float | None:
    """The run's ``updated_at`` if the batch's last event has its highest seq and the run's ``next_seq`` follows it."""
    events = batch.events
    last = batch.run.next_seq - 1
    if events and events[-1].seq == last and all(e.seq is not None and e.seq < last for e in events[:-1]):
        return batch.run.updated_at
    return None


def prepare(batch: Batch, names: Callable[[Sequence[str]], Any], *, progress: bool = False) -> Writes:
    """The statements' parameters for ``batch``; ``names`` binds a list of names the dialect's way.

    Rows are keyed by the batch's run, as ``MemoryStore`` keys them. With ``progress`` (SQLite's events,
    ``_schema.SQLITE_V1``), each event's row ends with one more value, its ``run_updated_at``: None, but
    for the last event when it carries the run's progress (``Writes.progress``).
    """
    run = batch.run
    run_id = run.run_id
    event_row = EVENTS.row
    carried = None
    if progress and batch.events:
        carried = _progress(batch)
        *before, last = batch.events
        events = [event_row(e, run_id, (None,)) for e in before]
        events.append(event_row(last, run_id, (carried,)))
    else:
        events = [event_row(e, run_id) for e in batch.events]
    task_row, checkpoint_row, region_row, request_row = TASKS.row, CHECKPOINTS.row, REGIONS.row, REQUESTS.row
    return Writes(
        run_id,
        batch.owner,
        (run_id, batch.owner, *fenced_row(run)),
        run.next_seq,
        carried,
        [task_row(t, run_id) for t in batch.tasks],
        [checkpoint_row(c, run_id) for c in batch.checkpoints],
        [region_row(r, run_id) for r in batch.regions],
        [(run_id, region_id) for region_id in batch.drop_regions],
        events,
        [(run_id, rule.checkpoint, rule.keep_from_pass) for rule in batch.retention],
        [(run_id, rule.before_seq, names(rule.event_checkpoints)) for rule in batch.retention],
        [request_row(req, run_id) for req in batch.requests],
        batch.release,
    )


def order_pending(
    run_ids: Iterable[str], owned: Collection[str], pending: Iterable[ControlRequest]
) -> tuple[list[str], list[ControlRequest]]:
    """``renew``'s answer as ``MemoryStore`` orders it: (lost runs, pending requests oldest first).

    ``pending`` are the requests not done of the ``owned`` runs, in the order they were first recorded;
    ties of ``requested_at`` keep the order of ``run_ids``, then that order.
    """
    by_run: dict[str, list[ControlRequest]] = {}
    for req in pending:
        by_run.setdefault(req.run_id, []).append(req)
    lost: list[str] = []
    found: list[ControlRequest] = []
    for run_id in run_ids:
        if run_id in owned:
            found.extend(by_run.get(run_id, ()))
        else:
            lost.append(run_id)
    found.sort(key=lambda r: r.requested_at)
    return lost, found
