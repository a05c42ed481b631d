"""``ckflow.current()``: what a running task may know of itself."""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, Protocol, final

from ckflow._errors import CkflowError

if TYPE_CHECKING:
    from ckflow._failure import Failure

__all__ = ["CURRENT", "ContextSource", "TaskContext", "current"]


class ContextSource(Protocol):
    """What answers ``ckflow.current()`` for the tasks of a run (the run)."""

    def task_context(self, n: int) -> TaskContext:
        """The view of task ``n`` of the run."""
        ...


#: (run, node id) of the task whose execute or revert runs in this context
CURRENT: ContextVar[tuple[ContextSource, int] | None] = ContextVar("ckflow_current", default=None)


@final
class TaskContext:
    """The running task's view of its run; returned by ``ckflow.current()``."""

    __slots__ = ("attempt", "checkpoint", "history", "iteration", "run_id", "task")

    def __init__(
        self,
        run_id: str,
        task: str,
        attempt: int,
        checkpoint: str,
        history: tuple[Failure, ...],
        iteration: int = 0,
    ) -> None:
        #: the run's id
        self.run_id = run_id
        #: the task's name
        self.task = task
        #: 1 on the first try, counted under the task's innermost checkpoint
        self.attempt = attempt
        #: the name of that checkpoint (the flow's name for the implicit root)
        self.checkpoint = checkpoint
        #: the failures of earlier attempts under that checkpoint, oldest first
        self.history = history
        #: the iteration (from 1) of the innermost ``Periodic`` holding the task; 0 outside any
        self.iteration = iteration

    def __repr__(self) -> str:
        return f"<ckflow.TaskContext run={self.run_id!r} task={self.task!r} attempt={self.attempt}>"


def current() -> TaskContext:
    """Inside a task's execute or revert: its run id, name, attempt and earlier failures.

    Raises:
        CkflowError: called outside a task.
    """
    here = CURRENT.get()
    if here is None:
        raise CkflowError("ckflow.current() was called outside a task; call it inside execute or revert.")
    core, node = here
    return core.task_context(node)
