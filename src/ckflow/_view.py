"""``RunView``: a run as clients read it, a pydantic model with a JSON schema (HTTP handlers, ``ckflow show --json``).

Every time in a view is a wall-clock UTC ``datetime`` (ISO 8601 in JSON), never a monotonic figure; every
duration is seconds ≥ 0, or None while the task has not ended. Inputs and outputs are JSON data, not JSON text:
values go through pydantic (and ``ckflow.register_codec`` codecs), and a value that neither knows is shown as
its ``repr`` rather than failing the view. Every task of the flow is listed when the flow is known; a task that
never started is PENDING with 0 attempts. Tracebacks are left out unless asked for (``tracebacks=True``): they
show the server's code to whoever reads the view.
"""

from __future__ import annotations

import functools
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field

from ckflow._codec import decode_object, to_jsonable
from ckflow._failure import FailureKind
from ckflow._states import FlowState, TaskState

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from ckflow._failure import Failure
    from ckflow._models import RunResult, TaskSummary
    from ckflow._records import RunRecord, StoredRun, TaskRecord

__all__ = ["FailureView", "RunView", "TaskView", "result_view", "stored_view"]

#: states in which a task's last execute has ended (its duration is known)
_ENDED = frozenset(
    {TaskState.SUCCESS, TaskState.FAILURE, TaskState.REVERTING, TaskState.REVERTED, TaskState.REVERT_FAILURE}
)


def _at(wall: float | None) -> datetime | None:
    return None if wall is None else datetime.fromtimestamp(wall, UTC)


class FailureView(BaseModel):
    """One failure of a task: what was raised, and (only when asked for) where."""

    model_config = ConfigDict(frozen=True)

    task: str
    #: what failed: "execute", "revert", "timeout" or "cancelled"
    kind: FailureKind
    #: the exception's qualified name, e.g. "ValueError" or "mymod.DiskFull"
    type: str
    message: str
    attempt: int
    at: datetime | None = None
    #: the formatted traceback, only in a view built with ``tracebacks=True``
    traceback: str | None = None

    @classmethod
    def of(cls, failure: Failure, *, tracebacks: bool = False) -> FailureView:
        """The view of ``failure``; its traceback only with ``tracebacks=True``."""
        return cls(
            task=failure.task,
            kind=failure.kind,
            type=failure.exc_type,
            message=failure.message,
            attempt=failure.attempt,
            at=_at(failure.at),
            traceback=(failure.traceback or None) if tracebacks else None,
        )


class TaskView(BaseModel):
    """One task of a run: its state, how often it executed, and when its last execute ran."""

    model_config = ConfigDict(frozen=True)

    name: str
    state: TaskState
    #: executions of the task in this run, retries included (0: it never started)
    attempts: int = Field(ge=0)
    #: start and end of its last execute (UTC); ``ended_at`` is None while it runs
    started_at: datetime | None = None
    ended_at: datetime | None = None
    #: seconds its last execute took, ≥ 0; None until it has ended
    duration: float | None = Field(default=None, ge=0)
    #: its latest failure, if any
    failure: FailureView | None = None

    @classmethod
    def build(
        cls,
        name: str,
        state: TaskState,
        attempts: int,
        times: tuple[float | None, float | None],
        failure: Failure | None,
        tracebacks: bool,
    ) -> TaskView:
        """A task from its wall-clock start and end (``times``); an end before the start (an earlier attempt's) is
        dropped, so a duration is never negative."""
        started, ended = times
        if started is None or ended is None or ended < started or state not in _ENDED:
            ended = None
        return cls(
            name=name,
            state=state,
            attempts=attempts,
            started_at=_at(started),
            ended_at=_at(ended),
            duration=None if started is None or ended is None else ended - started,
            failure=None if failure is None else FailureView.of(failure, tracebacks=tracebacks),
        )

    @classmethod
    def pending(cls, name: str) -> TaskView:
        """A task that never started (one frozen view per name, shared: most tasks of a young run are these)."""
        return _pending(name)


@functools.lru_cache(maxsize=4096)
def _pending(name: str) -> TaskView:
    return TaskView(name=name, state=TaskState.PENDING, attempts=0)


class RunView(BaseModel):
    """A run as clients read it: return it from an HTTP handler, or dump it as JSON.

    Build one with ``await run.view()`` (any handle: a live run, one attached from a store, one that ended) or
    ``RunView.of(result)`` for what ``ckflow.run`` returned. ``RunView.model_json_schema()`` is its schema.
    """

    model_config = ConfigDict(frozen=True)

    run_id: str
    flow: str
    state: FlowState
    #: the run's inputs as JSON data
    inputs: dict[str, Any] = Field(default_factory=dict)
    #: every value the tasks provided, as JSON data; None unless the run is SUCCESS
    outputs: dict[str, Any] | None = None
    #: when the run was created (for a view of a live run, when this engine started running it), last changed, ended
    created_at: datetime | None = None
    updated_at: datetime | None = None
    ended_at: datetime | None = None
    #: every task of the flow, in the flow's order when it is known here
    tasks: list[TaskView]
    #: every execute and revert failure, oldest first, retried ones included
    failures: list[FailureView] = Field(default_factory=list)

    @classmethod
    def of(cls, result: RunResult, *, tracebacks: bool = False) -> RunView:
        """The view of a ``RunResult`` (what ``ckflow.run`` and ``run.wait()`` return).

        A result's times are on this process's monotonic clock: they become wall-clock times through the offset
        between ``time.time()`` and ``time.monotonic()`` taken once, here. A result knows no creation or end time
        of the run, so those are None.

        Args:
            result: the result to show.
            tracebacks: include each failure's traceback (off: they show the server's code to clients).
        """
        return result_view(result, tracebacks=tracebacks)


def _jsonable_object(values: Any) -> dict[str, Any]:
    data = to_jsonable(values)
    return data if isinstance(data, dict) else {"value": data}


def result_view(
    result: RunResult,
    *,
    tracebacks: bool,
    started: float | None = None,
    ended: float | None = None,
    offset: float | None = None,
    tasks: list[TaskView] | None = None,
) -> RunView:
    """The view of ``result``; ``started``/``ended``: the run's monotonic start and end, where known.

    ``offset``: wall-clock minus monotonic time (taken here if not given); ``tasks``: the task views, when the
    caller builds them from the run itself rather than from ``result.tasks``.
    """
    if offset is None:
        offset = time.time() - time.monotonic()

    def wall(mono: float | None) -> float | None:
        return None if mono is None else mono + offset

    def task(summary: TaskSummary) -> TaskView:
        times = (wall(summary.started), wall(summary.ended))
        return TaskView.build(summary.name, summary.state, summary.attempts, times, summary.failure, tracebacks)

    return RunView(
        run_id=result.run_id,
        flow=result.flow,
        state=result.state,
        inputs=_jsonable_object(result.inputs),
        outputs=_jsonable_object(result.outputs) if result.state is FlowState.SUCCESS else None,
        created_at=_at(wall(started)),
        ended_at=_at(wall(ended)),
        tasks=[task(s) for s in result.tasks.values()] if tasks is None else tasks,
        failures=[FailureView.of(f, tracebacks=tracebacks) for f in result.failures],
    )


def _decoded(text: str) -> dict[str, Any]:
    """A stored JSON object of named values as JSON data (codec values rebuilt, then written as their codec does)."""
    try:
        return _jsonable_object(decode_object(text, {}))
    except Exception:
        # A value of a codec not registered here: its stored JSON, as is.
        return _jsonable_object(pydantic_core.from_json(text))


def _task_views(names: Iterable[str], records: Sequence[TaskRecord], tracebacks: bool) -> list[TaskView]:
    by_name = {t.task: t for t in records}
    order = list(names) + [t.task for t in records]
    views: list[TaskView] = []
    seen: set[str] = set()
    for name in order:
        if name in seen:
            continue
        seen.add(name)
        t = by_name.get(name)
        if t is None:
            views.append(TaskView.pending(name))
        else:
            times = (t.started_at, t.ended_at)
            views.append(TaskView.build(name, t.state, t.attempts, times, t.failure, tracebacks))
    return views


def stored_view(stored: StoredRun, names: Iterable[str], *, tracebacks: bool) -> RunView:
    """The view of a run as its store holds it; ``names``: the flow's tasks in order (empty if the flow is unknown:
    then only the tasks with a record are listed)."""
    record: RunRecord = stored.run
    outputs: dict[str, Any] | None = None
    if record.state is FlowState.SUCCESS:
        root = next((c for c in stored.checkpoints if c.checkpoint == record.flow), None)
        outputs = {} if root is None or root.snapshot is None else _decoded(root.snapshot)
    return RunView(
        run_id=record.run_id,
        flow=record.flow,
        state=record.state,
        inputs=_decoded(record.inputs),
        outputs=outputs,
        created_at=_at(record.created_at),
        updated_at=_at(record.updated_at),
        ended_at=_at(record.ended_at),
        tasks=_task_views(names, stored.tasks, tracebacks),
        failures=[FailureView.of(f, tracebacks=tracebacks) for f in stored.failures],
    )
