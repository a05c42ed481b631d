"""The SQL stores' tables, column by column: how a record becomes a row, and a row a record.

Each table is declared once, as its columns in the order of its rows: a column's name, the PostgreSQL type
of its values, the record's attribute it is written from (and how that is dumped, if it is not written
as is) and how its value is loaded back into that field. Everything else is derived from the declaration:
the column lists of the statements, their parameters (``Table.row``), and the records read back
(``Table.record``, which reads a row by column name, as asyncpg's records and ``sqlite3.Row`` allow).
Adding a column is one line here, and one migration step in ``_schema``.

Scalar fields get a column each, so that fencing, listing and retention never parse JSON; only nested
values (a task's retries and failure, a pass's history and task outlines, a region's members and
failures, an event) are JSON text. JSON is kept as text rather than ``jsonb`` so that what is read back
is exactly what was written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Final, Generic, Protocol, TypeVar, final

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
    from collections.abc import Callable, Sequence

__all__ = [
    "CHECKPOINTS",
    "EVENTS",
    "REGIONS",
    "REQUESTS",
    "RUNS",
    "TASKS",
    "Column",
    "Row",
    "Table",
    "failure_from_event",
]

R = TypeVar("R")


class Row(Protocol):
    """A row read back, by column name: an asyncpg ``Record``, a ``sqlite3.Row`` or a ``dict``."""

    def __getitem__(self, name: str, /) -> Any: ...


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a table."""

    name: str
    #: the PostgreSQL type of its values (``write()``'s one statement binds each column as an array of it)
    pg: str
    #: the record's attribute it is written from and read back into (the column's name if ""); None: it is
    #: written from the whole record (``dump(record)``)
    attr: str | None = ""
    #: the column's value from the attribute's (or the record's); None: the attribute's value as is
    dump: Callable[[Any], Any] | None = None
    #: the attribute's value from the column's; None: the column's value as is
    load: Callable[[Any], Any] | None = None
    #: read back into the record (False: a column only written, for the statements' own use)
    read: bool = True

    @property
    def field(self) -> str:
        """The record's attribute (the column's name, unless declared otherwise)."""
        return self.attr or self.name


@final
class Table(Generic[R]):
    """A table's columns, in the order of its rows, and how its rows map to records of type ``R``."""

    __slots__ = (
        "_build",
        "_loads",
        "_run_at",
        "columns",
        "key",
        "key_of",
        "name",
        "names",
        "read",
        "rest",
        "rest_key_of",
        "row",
    )

    def __init__(self, name: str, key: Sequence[str], build: Callable[[dict[str, Any]], R], *columns: Column) -> None:
        self.name = name
        self.columns = columns
        #: the columns' names, in the order of the rows (``row()``)
        self.names = tuple(c.name for c in columns)
        #: the primary key, and what tells two rows of one run apart: its other columns' values (None if it has none)
        self.key = tuple(key)
        own = [self.names.index(k) for k in key if k != "run_id"]
        self.key_of: Callable[[Sequence[Any]], Any] | None = itemgetter(*own) if own else None
        #: the columns read back into the record (``SELECT`` lists them)
        self.read = tuple(c.name for c in columns if c.read)
        self._build = build
        self._run_at = self.names.index("run_id") if "run_id" in self.names else None
        #: ``row(record, run_id=None, more=())``: the row of ``record``, in the order of ``names`` (under
        #: ``run_id`` if given), then the values ``more``
        self.row: Callable[..., tuple[Any, ...]] = _row_function(columns)
        rest = [c.name for c in columns if c.name != "run_id"]
        #: ``rest(record)``: its row but for ``run_id`` (``flat_without_run`` of its ``row``), built straight away
        self.rest: Callable[..., tuple[Any, ...]] = _row_function([c for c in columns if c.name != "run_id"])
        #: ``key_of`` for the rows of ``rest``
        self.rest_key_of: Callable[[Sequence[Any]], Any] | None = (
            itemgetter(*(rest.index(k) for k in key if k != "run_id")) if own else None
        )
        self._loads = tuple((c.name, c.field, c.load) for c in columns if c.read)

    def part(self, names: Sequence[str]) -> Table[R]:
        """The same table, as only the columns ``names`` (in that order)."""
        by_name = {c.name: c for c in self.columns}
        return Table(self.name, (), self._build, *(by_name[n] for n in names))

    def record(self, row: Row) -> R:
        """The record of a row that has (at least) the columns ``read``, by name."""
        return self._build({field: row[name] if load is None else load(row[name]) for name, field, load in self._loads})

    def without_run(self, rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
        """``rows`` column by column, but for ``run_id``: one list per column of ``names``."""
        return [list(values) for i, values in enumerate(zip(*rows, strict=True)) if i != self._run_at]

    def flat_without_run(self, rows: Sequence[Sequence[Any]]) -> list[Any]:
        """``rows`` value by value, one row after the other, each but for its ``run_id``."""
        at = self._run_at
        if at is None:
            return [value for row in rows for value in row]
        flat: list[Any] = []
        for row in rows:  # slices rather than a test per value: S5 pays it for each task and event
            flat += row[:at]
            flat += row[at + 1 :]
        return flat


def _row_function(columns: Sequence[Column]) -> Callable[..., tuple[Any, ...]]:
    """``Table.row`` for ``columns``: one tuple display, compiled from the declaration.

    A write builds a row per task and event it carries, and every S5 task pays for it: compiled, a row
    costs what a tuple written out by hand costs (a loop over the columns' getters made ``prepare`` a third slower).
    """
    env: dict[str, Any] = {}
    values: list[str] = []
    for i, column in enumerate(columns):
        if column.attr is None:
            value = f"dump_{i}(r)"
        else:
            if not column.field.isidentifier():
                raise ValueError(f"column {column.name!r}: {column.field!r} is not an attribute's name")
            value = f"r.{column.field}"
            if column.name == "run_id":
                value = f"({value} if run_id is None else run_id)"
            if column.dump is not None:
                value = f"dump_{i}({value})"
        if column.dump is not None:
            env[f"dump_{i}"] = column.dump
        values.append(value)
    source = (
        f"def row(r, run_id=None, more=()):\n    row = ({', '.join(values)},)\n    return row + more if more else row\n"
    )
    exec(source, env)
    function: Callable[..., tuple[Any, ...]] = env["row"]
    return function


# -- how values are written and read back ------------------------------------------------------------

_FAILURES: Final = TypeAdapter(list[Failure])
_OUTLINES: Final = TypeAdapter(dict[str, TaskOutline])
_event_json: Final = Event.__pydantic_serializer__.to_json
#: an event's body leaves out what its columns hold, and its defaults: WAL pages, not bytes, make a commit's
#: cost, and a body of about 150 bytes rather than 250 fills the events table's pages half as often
_IN_COLUMNS: Final[set[str]] = {"run_id", "seq", "checkpoint"}


def _failure_json(failure: Failure | None) -> str | None:
    return None if failure is None else failure.model_dump_json()


def _failure(text: str | None) -> Failure | None:
    return None if text is None else Failure.model_validate_json(text)


def _failures_json(failures: list[Failure]) -> str:
    return _FAILURES.dump_json(failures).decode()


def _retries_json(retries: dict[str, int]) -> str:
    return json.dumps(retries) if retries else "{}"


def _failure_kind(failure: Failure | None) -> str | None:
    return None if failure is None else failure.kind


def _body(event: Event) -> str:
    return _event_json(event, exclude=_IN_COLUMNS, exclude_defaults=True).decode()


def _event(fields: dict[str, Any]) -> Event:
    """The event of its columns' fields and its body (whose fields its columns' override)."""
    body = fields.pop("body")
    body.update(fields)
    return Event.model_validate(body)


def failure_from_event(body: str) -> Failure:
    """The failure of the event stored as ``body`` (selected for having one)."""
    return Failure.model_validate(pydantic_core.from_json(body)["failure"])


# -- the tables ---------------------------------------------------------------------------------------

RUNS: Final = Table[RunRecord](
    "ckflow_runs",
    ("run_id",),
    RunRecord.model_validate,
    Column("run_id", "text"),
    Column("flow", "text"),
    Column("state", "text", dump=str),
    Column("inputs", "text"),
    Column("owner", "text"),
    Column("lease_expires", "float8"),
    Column("created_at", "float8"),
    Column("updated_at", "float8"),
    Column("ended_at", "float8"),
    Column("halted", "bool"),
    Column("goto", "text"),
    Column("next_seq", "int8"),
    Column("trace", "text"),
    Column("queue", "text"),
    Column("priority", "int8"),
)
TASKS: Final = Table[TaskRecord](
    "ckflow_tasks",
    ("run_id", "task"),
    TaskRecord.model_validate,
    Column("run_id", "text"),
    Column("task", "text"),
    Column("state", "text", dump=str),
    Column("attempts", "int8"),
    Column("retries", "text", dump=_retries_json, load=json.loads),
    Column("iteration", "int8"),
    Column("result", "text"),
    Column("failure", "text", dump=_failure_json, load=_failure),
    Column("started_at", "float8"),
    Column("ended_at", "float8"),
    Column("revert_started_at", "float8"),
    Column("revert_ended_at", "float8"),
)
CHECKPOINTS: Final = Table[CheckpointRecord](
    "ckflow_checkpoints",
    ("run_id", "checkpoint", "pass_no"),
    CheckpointRecord.model_validate,
    Column("run_id", "text"),
    Column("checkpoint", "text"),
    Column("pass_no", "int8"),
    Column("state", "text"),
    Column("attempts", "int8"),
    Column("history", "text", dump=_failures_json, load=_FAILURES.validate_json),
    Column("first_failure_at", "float8"),
    Column("snapshot", "text"),
    Column("tasks", "text", dump=lambda tasks: _OUTLINES.dump_json(tasks).decode(), load=_OUTLINES.validate_json),
    Column("started_at", "float8"),
    Column("completed_at", "float8"),
    Column("next_at", "float8"),
    Column("first_seq", "int8"),
)
REGIONS: Final = Table[RegionRecord](
    "ckflow_regions",
    ("run_id", "region_id"),
    RegionRecord.model_validate,
    Column("run_id", "text"),
    Column("region_id", "int8"),
    Column("checkpoint", "text"),
    Column("action", "text"),
    Column("members", "text", dump=json.dumps, load=json.loads),
    Column("cause", "text"),
    Column("failures", "text", dump=_failures_json, load=_FAILURES.validate_json),
    Column("auto_resume", "bool", load=bool),
    Column("parked", "bool", load=bool),
)
#: ``failure_kind`` is the kind of the event's failure, so that ``load`` finds failures through an index;
#: ``body`` is the rest of the event, as JSON
EVENTS: Final = Table[Event](
    "ckflow_events",
    ("run_id", "seq"),
    _event,
    Column("run_id", "text"),
    Column("seq", "int8"),
    Column("checkpoint", "text"),
    Column("failure_kind", "text", attr="failure", dump=_failure_kind, read=False),
    Column("body", "text", attr=None, dump=_body, load=pydantic_core.from_json),
)
REQUESTS: Final = Table[ControlRequest](
    "ckflow_requests",
    ("request_id",),
    ControlRequest.model_validate,
    Column("request_id", "text"),
    Column("run_id", "text"),
    Column("op", "text"),
    Column("checkpoint", "text"),
    Column("retry", "bool"),
    Column("requested_at", "float8"),
    Column("requested_by", "text"),
    Column("done_at", "float8"),
    Column("error", "text"),
)
