"""The scheduler of a run with injected failures (``ckflow.testing.inject_failures``).

Only a run started inside an ``inject_failures`` block gets this scheduler (``RunCore`` picks the class once,
when the run is made): every other run keeps the plain ``Scheduler`` and asks nothing per task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ckflow._runtime._scheduler import Scheduler

if TYPE_CHECKING:
    from ckflow._faults import RunFaults
    from ckflow._runtime._passes import Passes
    from ckflow._runtime._ports import RunPort
    from ckflow._runtime._state import RunState
    from ckflow._runtime._walker import RevertWalker
    from ckflow._task import Task

__all__ = ["FaultyScheduler"]


class FaultyScheduler(Scheduler):
    """A ``Scheduler`` that raises ``InjectedFailure`` in place of the executes its run's plans fail."""

    __slots__ = ("faults",)

    def __init__(
        self,
        run: RunState,
        walker: RevertWalker,
        passes: Passes,
        owner: RunPort,
        max_concurrency: int,
        faults: RunFaults,
    ) -> None:
        super().__init__(run, walker, passes, owner, max_concurrency)
        self.faults = faults

    def start_execute(self, n: int, task: Task, kw: dict[str, Any], is_async: bool) -> Any:
        """Raise the injected failure before the task's body runs (the execute has begun: it is RUNNING, counted
        as an execution, and ``ckflow.current()`` is set), or call its execute."""
        failure = self.faults.fails(n, self.run.nodes[n].name, self.run.executions[n])
        if failure is not None:
            raise failure
        return super().start_execute(n, task, kw, is_async)
