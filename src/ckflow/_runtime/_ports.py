"""Small protocols between a run's parts, so that no part imports the one above it.

``SchedulerPort``: what the revert walker and the pass tracker need of the
scheduler (it calls into them, they call back through this). ``TelemetryPort``:
what the run's state tells OpenTelemetry. ``RegionView``: what telemetry reads
of a region.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from ckflow._runtime._context import ContextSource

if TYPE_CHECKING:
    from collections.abc import Callable

    import anyio
    from anyio.abc import TaskGroup

    from ckflow._models import RegionReport
    from ckflow._states import FlowState, TaskState

__all__ = ["RegionView", "RunPort", "SchedulerPort", "TelemetryPort"]


class RunPort(ContextSource, Protocol):
    """The run, as its parts call back into it."""

    def maybe_finish(self) -> None:
        """The run may have become idle: end it or suspend it if it has."""
        ...

    def reach_barrier(self, n: int) -> None:
        """A task of a goto's checkpoint is ready: the checkpoint is reached."""
        ...

    def caller_gone(self) -> None:
        """The caller of ckflow.run was cancelled while a shielded task ran."""
        ...


class RegionView(Protocol):
    """A region being reverted, as telemetry reads it."""

    @property
    def id(self) -> int: ...
    @property
    def report(self) -> RegionReport: ...


class TelemetryPort(Protocol):
    """The run's OpenTelemetry spans and metrics, as the run's state feeds them."""

    def transition(self, n: int, old: TaskState, new: TaskState) -> None:
        """Task ``n`` went from ``old`` to ``new``."""
        ...

    def run_transition(self, old: FlowState, new: FlowState) -> None:
        """The run went from ``old`` to ``new``."""
        ...

    def event(self, name: str, fields: dict[str, Any]) -> None:
        """A walker decision, control request or run event."""
        ...

    def attach(self, n: int, reverting: bool = False) -> object | None:
        """Make task ``n``'s span current while its code runs; the token for ``detach``."""
        ...

    def detach(self, token: object | None) -> None:
        """Undo ``attach``."""
        ...

    def revert_latency(self, report: RegionReport) -> None:
        """A region's first revert started."""
        ...

    def retry_latency(self, report: RegionReport) -> None:
        """A region's retry started."""
        ...

    def run_ended(self, state: FlowState, why: BaseException | None = None) -> None:
        """The run ended, or stopped running in this engine."""
        ...


class SchedulerPort(Protocol):
    """The scheduler as the walker and the passes see it."""

    #: node -> how many of its predecessors have not succeeded (durably, for a durable run)
    waiting: list[int]
    #: how many nodes are SUCCESS now
    n_success: int
    #: the run's task group while it is driven (None between drives)
    tg: TaskGroup | None
    #: node -> the cancel scope of its execute, while it is suspended in it
    exec_scopes: dict[int, anyio.CancelScope]
    #: nodes whose execute the walker cancelled
    cancel_requested: dict[int, None]
    #: the running async library's CancelScope class (``anyio.CancelScope`` asks for it on every call)
    scope_class: type[anyio.CancelScope]

    def make_ready(self, n: int) -> None:
        """``n`` has no unfinished predecessor: queue it (or pass through a join)."""
        ...

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once what the run changed is in its store (at once for a run without one)."""
        ...

    def kick(self) -> None:
        """Start a worker for jobs that appeared outside any worker."""
        ...

    def spawn_helpers(self) -> None:
        """A worker's job suspended: make sure every ready job has a worker."""
        ...

    async def worker(self) -> None:
        """Run ready jobs until none is left."""
        ...

    def start_call(self, call: Callable[[dict[str, Any]], Any], kw: dict[str, Any], is_async: bool) -> Any:
        """The coroutine of a task's call (a plain ``def`` runs in a worker thread)."""
        ...

    def task_inputs(self, n: int) -> dict[str, Any]:
        """The inputs of node ``n``'s execute, from inject, upstream values and the run's inputs."""
        ...
