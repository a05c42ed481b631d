"""``Run``: the handle of a run started by an ``Engine`` (no public constructor)."""

from __future__ import annotations

from typing import TYPE_CHECKING, final

from ckflow._errors import RunStateError
from ckflow._events import DEFAULT_BUFFER, Event, EventStream

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from ckflow._models import RunResult, TaskSummary
    from ckflow._runtime import RunCore
    from ckflow._states import FlowState

__all__ = ["Run"]


@final
class Run:
    """A run owned by an engine. Control it from any task of the same event loop.

    Cancelling a task that awaits ``wait()`` never cancels the run: the run
    belongs to the engine. Every control method is idempotent.
    """

    __slots__ = ("_core",)

    def __init__(self, core: RunCore) -> None:
        self._core = core

    @property
    def id(self) -> str:
        """The run's id."""
        return self._core.run_id

    @property
    def flow(self) -> str:
        """The name of the flow being run."""
        return self._core.flow

    @property
    def state(self) -> FlowState:
        """The run's state now."""
        return self._core.flow_state

    @property
    def tasks(self) -> Mapping[str, TaskSummary]:
        """Task name -> a summary of that task now (built on access)."""
        return self._core.task_summaries()

    def events(self, *, buffer: int = DEFAULT_BUFFER) -> EventStream:
        """Every event of the run from now on, as an async iterator that ends with the run.

        Subscribe before the first ``await`` after ``engine.start()`` to see
        every event. A subscriber more than ``buffer`` events behind is cut
        off (its iterator raises ``EventsOverflowError``); the engine never waits.
        """
        if self._core.terminal.is_set():
            raise RunStateError(f"Run {self.id!r} has ended ({self.state}); it has no more events.")
        return self._core.hub.subscribe(buffer)

    def subscribe(self, callback: Callable[[Event], object]) -> Callable[[], None]:
        """Call ``callback(event)`` for every event from now on; returns a function that unsubscribes."""
        return self._core.hub.add_callback(callback)

    async def wait(self) -> RunResult:
        """Wait until the run has ended (SUCCESS, REVERTED or FAILURE) and return its result."""
        await self._core.terminal.wait()
        return self._core.result()

    async def wait_suspended(self) -> RunResult:
        """Wait until the run is SUSPENDED (or has ended); returns its result so far."""
        await self._core.suspended.wait()
        return self._core.result()

    async def cancel(self) -> None:
        """Revert everything that ran; the run ends REVERTED. Returns once the revert has started."""
        self._core.request_cancel()

    async def suspend(self) -> None:
        """Let running tasks finish, start nothing new; returns once the run is SUSPENDED (or ended)."""
        self._core.request_suspend()
        await self._core.suspended.wait()

    async def goto(self, checkpoint: str) -> None:
        """Run forward until ``checkpoint`` is reached, or revert back to it if the run is past it.

        Returns once the run is SUSPENDED there (or has ended); ``resume()`` goes on.

        Raises:
            RunStateError: the flow has no such checkpoint, or the run has ended.
        """
        self._core.request_goto(checkpoint)
        await self._core.suspended.wait()

    async def revert_to(self, checkpoint: str, *, retry: bool = True) -> None:
        """Revert everything of ``checkpoint``'s scope that ran, other branches untouched.

        With ``retry=True`` the scope then runs again with a fresh budget, and
        this returns once its reverts are done; with ``retry=False`` the run
        is parked SUSPENDED at the checkpoint and this returns once it is.

        Raises:
            RunStateError: the flow has no such checkpoint, or the run has ended.
        """
        region = self._core.request_revert_to(checkpoint, retry=retry)
        if retry:
            await region.settled.wait()
        else:
            await self._core.suspended.wait()

    async def resume(self) -> None:
        """Go on after a suspension; a checkpoint that parked the run starts with a fresh budget."""
        self._core.request_resume()

    def __repr__(self) -> str:
        core = self._core
        done = sum(1 for n in core.graph.index.values() if core.state[n] == "SUCCESS")
        return f"<ckflow.Run {core.flow!r} {core.run_id} {core.flow_state} {done}/{core.graph.task_count} done>"
