"""What the SQL stores share: columns, the statements both dialects run, and row <-> record conversion.

The schema's steps, which never change once released, are in ``_schema``.

Scalar fields get a column each, so that fencing, listing and retention never
parse JSON; only nested values (a task's retries and failure, a pass's history
and task outlines, a region's members and failures, an event) are JSON text.
JSON is kept as text rather than ``jsonb`` so that what is read back is
exactly what was written.

Statements are written once, with PostgreSQL's ``$n`` placeholders;
``qmark()`` rewrites them with SQLite's ``?n``, which binds the same
positional parameters. The few statements that differ (lease clock, lists of
ids, insertion order, SQLite's keys of tasks and events) live in the backend
modules.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import pydantic_core
from pydantic import TypeAdapter

from ckflow._events import Event
from ckflow._failure import Failure
from ckflow._records import (
    CheckpointRecord,
    ControlRequest,
    RegionRecord,
    RunRecord,
    TaskOutline,
    TaskRecord,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterable, Sequence

    from ckflow._records import Batch

__all__ = [
    "CHECKPOINT_COLUMNS",
    "DELETE_REGION",
    "EVENT_COLUMNS",
    "INSERT_RUN",
    "REGION_COLUMNS",
    "REQUEST_COLUMNS",
    "RETAIN_CHECKPOINTS",
    "ROW_COUNTS",
    "RUN_COLUMNS",
    "SELECT_FAILURES",
    "SELECT_LATEST_CHECKPOINTS",
    "SELECT_OWNER",
    "SELECT_RUN",
    "TABLES",
    "TASK_COLUMNS",
    "UPDATE_RUN",
    "UPSERT_CHECKPOINT",
    "UPSERT_EVENT",
    "UPSERT_REGION",
    "UPSERT_REQUEST",
    "UPSERT_TASK",
    "Writes",
    "checkpoint_from",
    "event_from",
    "failure_from_event",
    "list_runs_where",
    "order_pending",
    "prepare",
    "qmark",
    "region_from",
    "request_from",
    "request_row",
    "run_from",
    "run_row",
    "task_from",
]

#: The tables that hold a run's rows, as ``row_counts`` names them (``ckflow_runs`` aside).
TABLES: Final = ("tasks", "checkpoints", "regions", "events", "requests")

RUN_COLUMNS: Final = (
    "run_id",
    "flow",
    "state",
    "inputs",
    "owner",
    "lease_expires",
    "created_at",
    "updated_at",
    "ended_at",
    "halted",
    "goto",
    "next_seq",
    "trace",
)
TASK_COLUMNS: Final = (
    "run_id",
    "task",
    "state",
    "attempts",
    "retries",
    "iteration",
    "result",
    "failure",
    "started_at",
    "ended_at",
    "revert_started_at",
    "revert_ended_at",
)
CHECKPOINT_COLUMNS: Final = (
    "run_id",
    "checkpoint",
    "pass_no",
    "state",
    "attempts",
    "history",
    "first_failure_at",
    "snapshot",
    "tasks",
    "started_at",
    "completed_at",
    "next_at",
    "first_seq",
)
REGION_COLUMNS: Final = (
    "run_id",
    "region_id",
    "checkpoint",
    "action",
    "members",
    "cause",
    "failures",
    "auto_resume",
    "parked",
)
#: ``failure_kind`` is the kind of the event's failure, so that ``load`` finds failures through an index
EVENT_COLUMNS: Final = ("run_id", "seq", "checkpoint", "failure_kind", "body")
REQUEST_COLUMNS: Final = (
    "request_id",
    "run_id",
    "op",
    "checkpoint",
    "retry",
    "requested_at",
    "requested_by",
    "done_at",
    "error",
)

_FAILURES: Final = TypeAdapter(list[Failure])
_event_json: Final = Event.__pydantic_serializer__.to_json
#: an event's body leaves out what its columns hold, and its defaults: WAL pages, not bytes, make a commit's
#: cost, and a body of about 150 bytes rather than 250 fills the events table's pages half as often
_IN_COLUMNS: Final[set[str]] = {"run_id", "seq", "checkpoint"}
_OUTLINES: Final = TypeAdapter(dict[str, TaskOutline])
_PLACEHOLDER: Final = re.compile(r"\$(\d+)")


def qmark(statement: str) -> str:
    """``statement`` with SQLite's numbered placeholders (``?3``) for PostgreSQL's (``$3``)."""
    return _PLACEHOLDER.sub(r"?\1", statement)


def _columns(columns: Sequence[str], prefix: str = "") -> str:
    return ", ".join(prefix + c for c in columns)


def _insert(table: str, columns: Sequence[str]) -> str:
    values = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    return f"INSERT INTO {table} ({_columns(columns)}) VALUES ({values})"


def _upsert(table: str, columns: Sequence[str], key: Sequence[str]) -> str:
    update = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
    return f"{_insert(table, columns)} ON CONFLICT ({_columns(key)}) DO UPDATE SET {update}"


# -- statements both dialects run ------------------------------------------------

INSERT_RUN: Final = _insert("ckflow_runs", RUN_COLUMNS) + " ON CONFLICT (run_id) DO NOTHING"
#: the fence: the run's row changes only while ``$2`` owns it (parameters: ``update_row``)
UPDATE_RUN: Final = (
    "UPDATE ckflow_runs SET flow = $3, state = $4, inputs = $5, created_at = $6, updated_at = $7, "
    "ended_at = $8, halted = $9, goto = $10, next_seq = $11 WHERE run_id = $1 AND owner = $2"
)
SELECT_RUN: Final = f"SELECT {_columns(RUN_COLUMNS)} FROM ckflow_runs WHERE run_id = $1"
SELECT_OWNER: Final = "SELECT owner, lease_expires FROM ckflow_runs WHERE run_id = $1"
UPSERT_TASK: Final = _upsert("ckflow_tasks", TASK_COLUMNS, ("run_id", "task"))
UPSERT_CHECKPOINT: Final = _upsert("ckflow_checkpoints", CHECKPOINT_COLUMNS, ("run_id", "checkpoint", "pass_no"))
UPSERT_REGION: Final = _upsert("ckflow_regions", REGION_COLUMNS, ("run_id", "region_id"))
UPSERT_EVENT: Final = _upsert("ckflow_events", EVENT_COLUMNS, ("run_id", "seq"))
UPSERT_REQUEST: Final = _upsert("ckflow_requests", REQUEST_COLUMNS, ("request_id",))
DELETE_REGION: Final = "DELETE FROM ckflow_regions WHERE run_id = $1 AND region_id = $2"
RETAIN_CHECKPOINTS: Final = "DELETE FROM ckflow_checkpoints WHERE run_id = $1 AND checkpoint = $2 AND pass_no < $3"
#: the latest pass of every checkpoint, by checkpoint name (the primary key answers the subquery)
SELECT_LATEST_CHECKPOINTS: Final = (
    f"SELECT {_columns(CHECKPOINT_COLUMNS, 'c.')} FROM ckflow_checkpoints AS c WHERE c.run_id = $1 AND c.pass_no = "
    "(SELECT max(pass_no) FROM ckflow_checkpoints WHERE run_id = c.run_id AND checkpoint = c.checkpoint) "
    "ORDER BY c.checkpoint"
)
#: failures of execute and revert (not cancellations), through the events' partial index
SELECT_FAILURES: Final = (
    "SELECT body FROM ckflow_events WHERE run_id = $1 AND failure_kind IS NOT NULL "
    "AND failure_kind <> 'cancelled' ORDER BY seq"
)
ROW_COUNTS: Final = "SELECT " + ", ".join(
    f"(SELECT count(*) FROM ckflow_{table} WHERE run_id = $1)" for table in TABLES
)


def list_runs_where(
    states: Collection[str] | None,
    flow: str | None,
    ended_before: float | None,
    limit: int | None,
    states_test: Callable[[int], str],
    names: Callable[[Sequence[str]], Any],
    source: str = "ckflow_runs",
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
    statement = f"SELECT {_columns(RUN_COLUMNS)} FROM {source}"
    if where:
        statement += " WHERE " + " AND ".join(where)
    statement += " ORDER BY created_at DESC, run_id DESC"
    # MemoryStore slices with ``[:limit]``: a negative limit drops runs from the end, which LIMIT cannot say
    slice_after = limit is not None and limit < 0
    if limit is not None and limit >= 0:
        params.append(limit)
        statement += f" LIMIT ${len(params)}"
    return statement, params, slice_after


# -- records -> rows ---------------------------------------------------------------


def run_row(run: RunRecord) -> tuple[Any, ...]:
    """``run`` in the order of ``RUN_COLUMNS``."""
    return (
        run.run_id,
        run.flow,
        str(run.state),
        run.inputs,
        run.owner,
        run.lease_expires,
        run.created_at,
        run.updated_at,
        run.ended_at,
        run.halted,
        run.goto,
        run.next_seq,
        run.trace,
    )


def _failure_json(failure: Failure | None) -> str | None:
    return None if failure is None else failure.model_dump_json()


def request_row(request: ControlRequest, run_id: str | None = None) -> tuple[Any, ...]:
    """``request`` in the order of ``REQUEST_COLUMNS`` (kept under ``run_id`` if given)."""
    return (
        request.request_id,
        request.run_id if run_id is None else run_id,
        request.op,
        request.checkpoint,
        request.retry,
        request.requested_at,
        request.requested_by,
        request.done_at,
        request.error,
    )


class Writes(NamedTuple):
    """A ``Batch`` as the parameters of the statements that apply it, built before the database is touched."""

    run_id: str
    owner: str
    #: parameters of ``UPDATE_RUN``
    run: tuple[Any, ...]
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


def prepare(batch: Batch, names: Callable[[Sequence[str]], Any], *, progress: bool = False) -> Writes:
    """The statements' parameters for ``batch``; ``names`` binds a list of names the dialect's way.

    Rows are keyed by the batch's run, as ``MemoryStore`` keys them. With ``progress`` (SQLite's events,
    ``SQLITE_V1``), each event's row ends with ``run_updated_at``: None, but for the last event when it has
    the batch's highest seq and the run's ``next_seq`` follows it, which carries the run's ``updated_at``.
    """
    run = batch.run
    run_id = run.run_id
    tail = (None,) if progress else ()
    events = [
        (
            run_id,
            e.seq,
            e.checkpoint,
            None if e.failure is None else e.failure.kind,
            _event_json(e, exclude=_IN_COLUMNS, exclude_defaults=True).decode(),
            *tail,
        )
        for e in batch.events
    ]
    if progress and events and events[-1][1] == run.next_seq - 1 and all(e[1] < run.next_seq - 1 for e in events[:-1]):
        events[-1] = (*events[-1][:5], run.updated_at)
    return Writes(
        run_id,
        batch.owner,
        (
            run_id,
            batch.owner,
            run.flow,
            str(run.state),
            run.inputs,
            run.created_at,
            run.updated_at,
            run.ended_at,
            run.halted,
            run.goto,
            run.next_seq,
        ),
        [
            (
                run_id,
                t.task,
                str(t.state),
                t.attempts,
                json.dumps(t.retries) if t.retries else "{}",
                t.iteration,
                t.result,
                _failure_json(t.failure),
                t.started_at,
                t.ended_at,
                t.revert_started_at,
                t.revert_ended_at,
            )
            for t in batch.tasks
        ],
        [
            (
                run_id,
                c.checkpoint,
                c.pass_no,
                c.state,
                c.attempts,
                _FAILURES.dump_json(c.history).decode(),
                c.first_failure_at,
                c.snapshot,
                _OUTLINES.dump_json(c.tasks).decode(),
                c.started_at,
                c.completed_at,
                c.next_at,
                c.first_seq,
            )
            for c in batch.checkpoints
        ],
        [
            (
                run_id,
                r.region_id,
                r.checkpoint,
                r.action,
                json.dumps(r.members),
                r.cause,
                _FAILURES.dump_json(r.failures).decode(),
                r.auto_resume,
                r.parked,
            )
            for r in batch.regions
        ],
        [(run_id, region_id) for region_id in batch.drop_regions],
        events,
        [(run_id, rule.checkpoint, rule.keep_from_pass) for rule in batch.retention],
        [(run_id, rule.before_seq, names(rule.event_checkpoints)) for rule in batch.retention],
        [request_row(req, run_id) for req in batch.requests],
    )


# -- rows -> records ---------------------------------------------------------------


def run_from(row: Sequence[Any]) -> RunRecord:
    """The run of a row of ``RUN_COLUMNS``."""
    return RunRecord.model_validate(dict(zip(RUN_COLUMNS, row, strict=True)))


def task_from(row: Sequence[Any]) -> TaskRecord:
    """The task record of a row of ``TASK_COLUMNS``."""
    return TaskRecord(
        run_id=row[0],
        task=row[1],
        state=row[2],
        attempts=row[3],
        retries=json.loads(row[4]),
        iteration=row[5],
        result=row[6],
        failure=None if row[7] is None else Failure.model_validate_json(row[7]),
        started_at=row[8],
        ended_at=row[9],
        revert_started_at=row[10],
        revert_ended_at=row[11],
    )


def checkpoint_from(row: Sequence[Any]) -> CheckpointRecord:
    """The pass record of a row of ``CHECKPOINT_COLUMNS``."""
    return CheckpointRecord(
        run_id=row[0],
        checkpoint=row[1],
        pass_no=row[2],
        state=row[3],
        attempts=row[4],
        history=_FAILURES.validate_json(row[5]),
        first_failure_at=row[6],
        snapshot=row[7],
        tasks=_OUTLINES.validate_json(row[8]),
        started_at=row[9],
        completed_at=row[10],
        next_at=row[11],
        first_seq=row[12],
    )


def region_from(row: Sequence[Any]) -> RegionRecord:
    """The region of a row of ``REGION_COLUMNS``."""
    return RegionRecord(
        run_id=row[0],
        region_id=row[1],
        checkpoint=row[2],
        action=row[3],
        members=json.loads(row[4]),
        cause=row[5],
        failures=_FAILURES.validate_json(row[6]),
        auto_resume=bool(row[7]),
        parked=bool(row[8]),
    )


def request_from(row: Sequence[Any]) -> ControlRequest:
    """The control request of a row of ``REQUEST_COLUMNS``."""
    return ControlRequest.model_validate(dict(zip(REQUEST_COLUMNS, row, strict=True)))


def event_from(row: Sequence[Any]) -> Event:
    """The event of a row of ``SELECT run_id, seq, checkpoint, body``."""
    run_id, seq, checkpoint, body = row
    fields = pydantic_core.from_json(body)
    fields.update(run_id=run_id, seq=seq, checkpoint=checkpoint)
    return Event.model_validate(fields)


def failure_from_event(body: str) -> Failure:
    """The failure of the event stored as ``body`` (selected for having one)."""
    return Failure.model_validate(pydantic_core.from_json(body)["failure"])


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
