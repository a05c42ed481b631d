"""Records at the edges of the engine: what a finished (or parked) run reports."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, final

from pydantic import BaseModel, ConfigDict

from ckflow._errors import RunFailedError
from ckflow._failure import Failure
from ckflow._states import FlowState, TaskState

__all__ = ["RegionReport", "RunResult", "TaskSummary"]


class TaskSummary(BaseModel):
    """One task of a run: its state, how often it executed, when, and its last failure."""

    model_config = ConfigDict(frozen=True)

    name: str
    state: TaskState
    #: every execution of the task in this run, retries included
    attempts: int
    #: time.monotonic() of the start and end of the last execute (None if it never ran)
    started: float | None = None
    ended: float | None = None
    #: time.monotonic() of the start and end of the last revert
    revert_started: float | None = None
    revert_ended: float | None = None
    failure: Failure | None = None

    @property
    def duration(self) -> float | None:
        """Seconds the last execute took."""
        if self.started is None or self.ended is None:
            return None
        return self.ended - self.started


class RegionReport(BaseModel):
    """One pass of the revert walker: a failure, the region it undid, and how fast.

    Latencies are measured with ``time.monotonic()`` from the moment the
    failure arrived: ``revert_latency`` to the first revert start,
    ``retry_latency`` to the first re-execution, ``revert_duration`` from the
    first revert start to the last revert end.
    """

    checkpoint: str
    action: str
    #: the task whose failure opened the region (None for a cancel)
    cause: str | None
    members: list[str]
    failure_at: float
    first_revert_at: float | None = None
    reverts_done_at: float | None = None
    retry_at: float | None = None

    @property
    def revert_latency(self) -> float | None:
        """Seconds from the failure to the first revert start."""
        return None if self.first_revert_at is None else self.first_revert_at - self.failure_at

    @property
    def retry_latency(self) -> float | None:
        """Seconds from the failure to the first re-execution of the region."""
        return None if self.retry_at is None else self.retry_at - self.failure_at

    @property
    def revert_duration(self) -> float | None:
        """Seconds from the first revert start to the end of the region's last revert."""
        if self.first_revert_at is None or self.reverts_done_at is None:
            return None
        return self.reverts_done_at - self.first_revert_at


@final
class _LazyTasks(Mapping[str, TaskSummary]):
    """Task summaries built on first access, so a 100,000-task result costs nothing until read."""

    __slots__ = ("_build", "_cache", "_names")

    def __init__(self, names: Mapping[str, int], build: Callable[[int], TaskSummary]) -> None:
        self._names = names
        self._build = build
        self._cache: dict[str, TaskSummary] = {}

    def __getitem__(self, name: str) -> TaskSummary:
        summary = self._cache.get(name)
        if summary is None:
            summary = self._cache[name] = self._build(self._names[name])
        return summary

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


@final
class RunResult:
    """What a run ended with. Built by the engine; read it, never construct it."""

    __slots__ = ("duration", "failures", "flow", "inputs", "outputs", "regions", "run_id", "state", "tasks")

    def __init__(
        self,
        *,
        run_id: str,
        flow: str,
        state: FlowState,
        outputs: dict[str, Any],
        tasks: Mapping[str, TaskSummary],
        failures: list[Failure],
        regions: list[RegionReport],
        duration: float,
        inputs: Mapping[str, Any] | None = None,
    ) -> None:
        self.run_id = run_id
        self.flow = flow
        #: SUCCESS, REVERTED, FAILURE, or SUSPENDED for a run parked by ``ckflow.run()``
        self.state = state
        #: the run's inputs
        self.inputs: Mapping[str, Any] = {} if inputs is None else inputs
        #: every value the tasks provided (empty unless SUCCESS)
        self.outputs = outputs
        #: task name -> TaskSummary
        self.tasks = tasks
        #: every execute and revert failure, in order, retried ones included; no cancellations
        self.failures = failures
        #: one report per pass of the revert walker
        self.regions = regions
        #: seconds from start to end
        self.duration = duration

    def raise_for_state(self) -> None:
        """Raise the run's causes as a ``RunFailedError`` (an ExceptionGroup) unless it succeeded."""
        if self.state is FlowState.SUCCESS:
            return
        causes: list[Exception] = []
        for failure in self.failures:
            exc = failure.exception
            causes.append(exc if isinstance(exc, Exception) else RuntimeError(str(failure)))
        if not causes:
            causes.append(RuntimeError(f"run {self.run_id!r} ended {self.state} without a task failure"))
        raise RunFailedError(f"Run {self.run_id!r} of flow {self.flow!r} ended {self.state}", causes)

    def __repr__(self) -> str:
        return f"<ckflow.RunResult {self.flow!r} {self.run_id} {self.state}>"
