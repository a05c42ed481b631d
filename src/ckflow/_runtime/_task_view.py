"""One task of a run in its three forms, mapped in one place: the run's arrays, its stored record, its summary.

``RunState`` keeps a task as per-node arrays (monotonic times); a store keeps
a ``TaskRecord`` (wall-clock times, the result as JSON); users read a
``TaskSummary``. Every translation between them is here, so that a field is
added, renamed or reread in one module.
"""

from __future__ import annotations

from math import isnan
from typing import TYPE_CHECKING

from ckflow._failure import Failure
from ckflow._models import TaskSummary
from ckflow._records import TaskRecord, construct
from ckflow._states import PENDING, TaskState
from ckflow._view import TaskView

if TYPE_CHECKING:
    from collections.abc import Callable

    from ckflow._runtime._state import RunState

__all__ = ["load", "record", "summary", "summary_of_record", "views"]

#: what a stored state becomes when the run is loaded (RUNNING: interrupted, it runs again)
_LOADED = {
    TaskState.PENDING: TaskState.PENDING,
    TaskState.RUNNING: TaskState.PENDING,
    TaskState.SUCCESS: TaskState.SUCCESS,
    TaskState.FAILURE: TaskState.FAILURE,
    TaskState.REVERTED: TaskState.REVERTED,
    TaskState.REVERT_FAILURE: TaskState.REVERT_FAILURE,
    TaskState.SKIPPED: TaskState.SKIPPED,
}


def _failure(run: RunState, n: int) -> Failure | None:
    result = run.results[n]
    return result if isinstance(result, Failure) else None


def summary(run: RunState, n: int) -> TaskSummary:
    """Task ``n`` of a live run, as users read it."""
    return TaskSummary(
        name=run.nodes[n].name,
        state=run.state[n],
        attempts=run.executions[n],
        started=run.started_at(n),
        ended=run.ended_at(n),
        revert_started=run.rev_started.get(n),
        revert_ended=run.rev_ended.get(n),
        failure=_failure(run, n),
    )


def views(run: RunState, offset: float, *, tracebacks: bool) -> list[TaskView]:
    """Every task of a live run as clients read it, in the flow's order (``offset``: wall-clock minus monotonic).

    Built straight from the run's arrays: a view of a run is asked for on every HTTP call about it.
    """

    def wall(mono: float | None) -> float | None:
        return None if mono is None else mono + offset

    state, executions = run.state, run.executions
    return [
        TaskView.pending(name)
        if state[n] is PENDING and not executions[n]
        else TaskView.build(
            name,
            state[n],
            executions[n],
            (wall(run.started_at(n)), wall(run.ended_at(n))),
            _failure(run, n),
            tracebacks,
        )
        for name, n in run.graph.index.items()
    ]


def record(
    run: RunState, n: int, *, wall: Callable[[float | None], float | None], result: str | None, iteration: int
) -> TaskRecord:
    """Task ``n`` of a live run as its store keeps it (``result``: its value as JSON; ``iteration``: its Periodic's).

    On the path of every write of a durable run (a record per task it changed): the times are read from the arrays
    here, and ``wall`` is asked only for the times taken.
    """
    started, ended = run.started[n], run.ended[n]
    rev_started, rev_ended = run.rev_started.get(n), run.rev_ended.get(n)
    result_or_failure = run.results[n]
    return construct(
        TaskRecord,
        run_id=run.run_id,
        task=run.nodes[n].name,
        state=run.state[n],
        attempts=run.executions[n],
        retries=run.retries_of(n),
        iteration=iteration,
        result=result,
        failure=result_or_failure if isinstance(result_or_failure, Failure) else None,
        started_at=None if isnan(started) else wall(started),
        ended_at=None if isnan(ended) else wall(ended),
        revert_started_at=None if rev_started is None else wall(rev_started),
        revert_ended_at=None if rev_ended is None else wall(rev_ended),
    )


def summary_of_record(task: TaskRecord, mono: Callable[[float | None], float | None]) -> TaskSummary:
    """A stored task as users read it (``mono`` turns wall-clock times into this process's monotonic clock)."""
    return TaskSummary(
        name=task.task,
        state=task.state,
        attempts=task.attempts,
        started=mono(task.started_at),
        ended=mono(task.ended_at),
        revert_started=mono(task.revert_started_at),
        revert_ended=mono(task.revert_ended_at),
        failure=task.failure,
    )


def load(run: RunState, n: int, task: TaskRecord, mono: Callable[[float | None], float | None]) -> TaskState:
    """Set task ``n`` of a run being resumed from its stored record (all but its result); returns its state.

    A task RUNNING at the crash is PENDING again (it runs again); one REVERTING is back in the state it was
    reverted from, so that its revert is called again.
    """
    run.executions[n] = task.attempts
    run.set_times(n, mono(task.started_at), mono(task.ended_at))
    started, ended = mono(task.revert_started_at), mono(task.revert_ended_at)
    if started is not None:
        run.rev_started[n] = started
    if ended is not None:
        run.rev_ended[n] = ended
    index = run.graph.scope_index
    for name, count in task.retries.items():
        s = index.get(name)
        if s is not None and count:
            run.retries[(n, s)] = count
    if task.state is TaskState.REVERTING:
        loaded = TaskState.SUCCESS if task.failure is None else TaskState.FAILURE
    else:
        loaded = _LOADED[task.state]
    run.state[n] = loaded
    if task.failure is not None:
        run.results[n] = task.failure
    return loaded
