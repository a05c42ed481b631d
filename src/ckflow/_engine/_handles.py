"""``Run``: the handle of a run, wherever it runs (no public constructor: engines make them, ``new_run``).

A handle is backed either by the run's live state in this engine (``_Local``)
or by its store (``_Stored``): a run that another engine runs, or one that
has ended. A stored handle controls its run through the store: a request
that the owning engine carries out at its next heartbeat, or, when no live
engine owns the run, by taking the run over into this engine (the handle
then becomes local).

``_Local`` is the engine's one view of a running ``RunCore``: every read of
the core's state, and every ``_control.request_*`` call, of this package is
in it (the other contact with the run's internals, building a core, is
``_cores``). ``_Stored`` reaches its engine only through ``EngineServices``;
this module imports no other module of the package.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, NoReturn, Protocol, final

import anyio

from ckflow._errors import RunOwnedError, RunStateError
from ckflow._events import DEFAULT_BUFFER, Event, EventStream
from ckflow._records import ControlRequest
from ckflow._runtime import _task_view as task_view
from ckflow._states import TERMINAL, FlowState
from ckflow._view import result_view

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from ckflow._errors import LeaseLostError
    from ckflow._models import RunResult, TaskSummary
    from ckflow._patterns import Flow
    from ckflow._records import ControlOp, RunRecord
    from ckflow._runtime._core import RunCore
    from ckflow._view import RunView
    from ckflow.stores import Store

__all__ = ["EngineServices", "Run", "new_run"]


class EngineServices(Protocol):
    """All that a handle of a run in its store (``_Stored``) may ask of the engine that made it."""

    @property
    def id(self) -> str:
        """The engine's id: who asks, in a control request."""
        ...

    @property
    def poll_interval(self) -> float:
        """Seconds between looks at the store while waiting for another engine."""
        ...

    @property
    def store(self) -> Store:
        """The engine's store (RunStateError if it has none, or has closed)."""
        ...

    async def take_over(self, record: RunRecord, flow: Flow | None, op: ControlOp) -> _Local | None:
        """Claim a run that no live engine owns and carry out ``op`` here (see ``Engine`` ownership).

        Returns the run's local handle, or None for a suspend, done in the store alone.

        Raises:
            RunOwnedError: a live engine owns the run.
        """
        ...

    async def summaries(self, run_id: str) -> dict[str, TaskSummary]:
        """The run's tasks as its store recorded them."""
        ...

    async def stored_result(self, record: RunRecord, flow: Flow | None) -> RunResult:
        """The run's result as its store recorded it."""
        ...

    async def view(self, record: RunRecord, flow: Flow | None, tracebacks: bool) -> RunView:
        """The run's view as its store recorded it, every task of its flow listed when the flow is known."""
        ...

    def tail_events(self, run_id: str, after: int, buffer: int) -> EventStream:
        """The run's events after ``after``, read from the store as they are written."""
        ...

    def check_checkpoint(self, record: RunRecord, flow: Flow | None, checkpoint: str) -> None:
        """UnknownCheckpointError if the run's flow, when known here, has no such checkpoint."""
        ...


class _NoPublicConstructor(type):
    """Metaclass of a class that only its package makes, through ``new_run`` (trio's ``NoPublicConstructor``)."""

    def __call__(cls, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError(
            f"{cls.__module__}.{cls.__qualname__} has no public constructor; an engine makes runs: "
            "engine.start(), engine.resume(), engine.attach()."
        )


class _Backend(Protocol):
    @property
    def run_id(self) -> str: ...
    @property
    def flow(self) -> str: ...
    @property
    def state(self) -> FlowState: ...
    @property
    def tasks(self) -> Mapping[str, TaskSummary]: ...
    def events(self, buffer: int) -> EventStream: ...
    def subscribe(self, callback: Callable[[Event], object]) -> Callable[[], None]: ...
    async def wait(self) -> RunResult: ...
    async def view(self, tracebacks: bool) -> RunView: ...
    async def wait_suspended(self) -> RunResult: ...
    async def cancel(self) -> None: ...
    async def suspend(self) -> None: ...
    async def goto(self, checkpoint: str) -> None: ...
    async def revert_to(self, checkpoint: str, retry: bool) -> None: ...
    async def resume(self) -> None: ...


@final
class Run(metaclass=_NoPublicConstructor):
    """A run of an engine. Control it from any task of the engine's event loop.

    Cancelling a task that awaits ``wait()`` never cancels the run: the run
    belongs to the engine. Every control method is idempotent. A handle from
    ``engine.attach()`` may stand for a run that another process runs: its
    control methods then go through the store, and ``state`` and ``tasks``
    are as of the handle's last look at the store.
    """

    __slots__ = ("__weakref__", "_impl")

    _impl: _Backend

    def __init__(self, impl: _Backend) -> None:
        self._impl = impl

    @property
    def id(self) -> str:
        """The run's id."""
        return self._impl.run_id

    @property
    def flow(self) -> str:
        """The name of the flow being run."""
        return self._impl.flow

    @property
    def state(self) -> FlowState:
        """The run's state now (as last seen in the store, for a run in another engine)."""
        return self._impl.state

    @property
    def local(self) -> bool:
        """True when this engine runs the run (False: another engine does, or it has ended elsewhere)."""
        return isinstance(self._impl, _Local)

    @property
    def tasks(self) -> Mapping[str, TaskSummary]:
        """Task name -> a summary of that task now (built on access)."""
        return self._impl.tasks

    def events(self, *, buffer: int = DEFAULT_BUFFER) -> EventStream:
        """Every event of the run from now on, as an async iterator that ends with the run.

        Subscribe before the first ``await`` after ``engine.start()`` to see
        every event. A subscriber more than ``buffer`` events behind is cut
        off (its iterator raises ``EventsOverflowError``); the engine never
        waits. For a run in another engine, the events are read from the
        store as they are written.

        Raises:
            RunStateError: the run has ended.
        """
        if buffer < 1:
            raise ValueError(f"events(buffer={buffer}) must be at least 1.")
        return self._impl.events(buffer)

    def subscribe(self, callback: Callable[[Event], object]) -> Callable[[], None]:
        """Call ``callback(event)`` for every event from now on; returns a function that unsubscribes.

        Raises:
            RunStateError: the run is in another engine (iterate ``events()`` instead).
        """
        return self._impl.subscribe(callback)

    async def wait(self) -> RunResult:
        """Wait until the run has ended (SUCCESS, REVERTED or FAILURE) and return its result.

        Raises:
            RunStateError: this engine stopped running the run (it shut down); it stays resumable.
            LeaseLostError: another engine took the run over.
            StoreError: the store failed; the run stays as the store last recorded it.
        """
        return await self._impl.wait()

    async def view(self, *, tracebacks: bool = False) -> RunView:
        """The run as clients read it now: a ``ckflow.RunView`` (pydantic), whatever the handle.

        Every task of the flow is listed, PENDING with 0 attempts if it never started (for a run in another engine
        whose flow is neither passed to ``engine.attach`` nor registered here, only the tasks its store recorded).
        A run in another engine, or one that ended, is read from the store afresh.

        Args:
            tracebacks: include each failure's traceback (off by default: they show the server's code to clients).
        """
        return await self._impl.view(tracebacks)

    async def wait_suspended(self) -> RunResult:
        """Wait until the run is SUSPENDED (or has ended); returns its result so far."""
        return await self._impl.wait_suspended()

    async def cancel(self) -> None:
        """Revert everything that ran; the run ends REVERTED. Returns once the revert has started."""
        await self._impl.cancel()
        self._adopted()

    async def suspend(self) -> None:
        """Let running tasks finish, start nothing new; returns once the run is SUSPENDED (or ended)."""
        await self._impl.suspend()
        self._adopted()

    async def goto(self, checkpoint: str) -> None:
        """Run forward until ``checkpoint`` is reached, or revert back to it if the run is past it.

        Going back reverts what ran of the checkpoint's scope and downstream of it, as ``revert_to`` does.

        Returns once the run is SUSPENDED there (or has ended); ``resume()`` goes on.

        Raises:
            UnknownCheckpointError: the flow has no such checkpoint.
            RunStateError: the run has ended.
        """
        await self._impl.goto(checkpoint)
        self._adopted()

    async def revert_to(self, checkpoint: str, *, retry: bool = True) -> None:
        """Revert what ran of ``checkpoint``'s scope and downstream of it, other branches untouched.

        With ``retry=True`` the scope then runs again with a fresh budget, and
        this returns once its reverts are done; with ``retry=False`` the run
        is parked SUSPENDED at the checkpoint and this returns once it is.

        Raises:
            UnknownCheckpointError: the flow has no such checkpoint.
            RunStateError: the run has ended.
        """
        await self._impl.revert_to(checkpoint, retry)
        self._adopted()

    async def resume(self) -> None:
        """Go on after a suspension; a checkpoint that parked the run starts with a fresh budget.

        A durable run that no live engine owns (its engine crashed or shut
        down) is taken over and continued by this engine.
        """
        await self._impl.resume()
        self._adopted()

    def _adopted(self) -> None:
        """A stored handle whose run this engine took over becomes a local one."""
        impl = self._impl
        if isinstance(impl, _Stored) and impl.taken is not None:
            self._impl = impl.taken

    def __repr__(self) -> str:
        impl = self._impl
        if isinstance(impl, _Local):
            return f"<ckflow.Run {impl.flow!r} {impl.run_id} {impl.state} {impl.progress()} done>"
        return f"<ckflow.Run {impl.flow!r} {impl.run_id} {impl.state} (in its store)>"


def new_run(impl: _Backend) -> Run:
    """The handle of a run, made by its engine (``Run(...)`` raises TypeError: the metaclass's call is bypassed)."""
    handle: Run = type.__call__(Run, impl)
    return handle


class _Local:
    """The handle's view of a run that this engine runs, and the engine's: the package's one reader of a RunCore.

    The methods from ``progress`` on are the engine's: running the core, its lease, and closing.
    """

    __slots__ = ("core",)

    def __init__(self, core: RunCore) -> None:
        self.core = core

    @property
    def run_id(self) -> str:
        return self.core.run_id

    @property
    def flow(self) -> str:
        return self.core.flow

    @property
    def state(self) -> FlowState:
        return self.core.flow_state

    @property
    def tasks(self) -> Mapping[str, TaskSummary]:
        return self.core.task_summaries()

    def events(self, buffer: int) -> EventStream:
        if self.core.terminal.is_set():
            raise RunStateError(f"Run {self.run_id!r} has ended ({self.state}); it has no more events.")
        return self.core.hub.subscribe(buffer)

    def subscribe(self, callback: Callable[[Event], object]) -> Callable[[], None]:
        return self.core.hub.add_callback(callback)

    def _check_stopped(self) -> None:
        if self.core.stopped is not None:
            raise self.core.stopped

    async def wait(self) -> RunResult:
        await self.core.terminal.wait()
        self._check_stopped()
        return self.core.result()

    async def view(self, tracebacks: bool) -> RunView:
        core = self.core
        ended = core.t_end if core.terminal.is_set() and core.t_end else None
        started = core.t_start or None
        offset = time.time() - time.monotonic()
        tasks = task_view.views(core.run, offset, tracebacks=tracebacks)
        return result_view(
            core.result(), tracebacks=tracebacks, started=started, ended=ended, offset=offset, tasks=tasks
        )

    async def wait_suspended(self) -> RunResult:
        await self.core.suspended.wait()
        self._check_stopped()
        return self.core.result()

    async def cancel(self) -> None:
        self.core.request_cancel()

    async def suspend(self) -> None:
        self.core.request_suspend()
        await self.core.suspended.wait()

    async def goto(self, checkpoint: str) -> None:
        self.core.request_goto(checkpoint)
        await self.core.suspended.wait()

    async def revert_to(self, checkpoint: str, retry: bool) -> None:
        region = self.core.request_revert_to(checkpoint, retry=retry)
        if retry:
            await region.settled.wait()
        else:
            await self.core.suspended.wait()

    async def resume(self) -> None:
        self.core.request_resume()

    # -- the engine's side --------------------------------------------------------

    def progress(self) -> str:
        """How many of the run's tasks succeeded, of how many: "3/5"."""
        core = self.core
        done = sum(1 for n in core.graph.index.values() if core.state[n] == "SUCCESS")
        return f"{done}/{core.graph.task_count}"

    async def main(self, *, stop_on_suspend: bool = False) -> RunResult:
        """Run the run (in the caller's task) until it ends, or is stopped; see ``RunCore.main``."""
        return await self.core.main(stop_on_suspend=stop_on_suspend)

    @property
    def durable(self) -> bool:
        """Whether the run is written to a store."""
        return self.core.durable

    @property
    def ended(self) -> bool:
        """Whether the run has ended (or this engine stopped running it)."""
        return self.core.terminal.is_set()

    @property
    def holds_lease(self) -> bool:
        """Whether the run's lease is still this engine's to release (it is durable, its journal works, and its last
        write did not release it)."""
        core = self.core
        return core.durable and not core.journal_dead and not core.lease_released

    def lease_renewed(self, sent_at: float) -> None:
        """The heartbeat sent at ``sent_at`` renewed the run's lease."""
        journal = self.core.journal
        if journal is not None:
            journal.lease_renewed(sent_at)

    def lease_lost(self, error: LeaseLostError) -> None:
        """Another engine took the run over: stop running it here (unless it ended meanwhile)."""
        # A run that ended meanwhile released its lease itself (a write that lost it says so)
        if self.core.flow_state not in TERMINAL:
            self.core.stop(error)

    def abandon(self) -> None:
        """The engine is left by an exception: a run without a store is reverted; a durable one is left alone.

        A durable run is stopped, not reverted, when its task is cancelled: see RunCore.main.
        """
        if not self.core.durable:
            self.core.request_cancel()

    async def settle_on_close(self) -> None:
        """The engine is closing: a run that is (or becomes) SUSPENDED stops keeping it open.

        A durable run is left in its store, stopped; a run without a store could never be resumed once the engine
        has closed, so it is cancelled (reverted) instead.
        """
        core = self.core
        while not core.terminal.is_set():
            suspended = core.suspended
            await suspended.wait()
            if core.flow_state is FlowState.SUSPENDED and not core.terminal.is_set():
                if core.durable:
                    core.stop(None)
                else:
                    core.request_cancel()
                return


class _Stored:
    """The handle's view of a run through its store: another engine runs it, or it has ended."""

    __slots__ = ("flow_obj", "record", "services", "taken", "task_records")

    def __init__(self, services: EngineServices, record: RunRecord, flow: Flow | None) -> None:
        #: all this handle may ask of its engine
        self.services = services
        self.record = record
        self.flow_obj = flow
        #: the local handle, once this engine took the run over
        self.taken: _Local | None = None
        self.task_records: Mapping[str, TaskSummary] = {}

    @property
    def run_id(self) -> str:
        return self.record.run_id

    @property
    def flow(self) -> str:
        return self.record.flow

    @property
    def state(self) -> FlowState:
        return self.record.state

    @property
    def tasks(self) -> Mapping[str, TaskSummary]:
        return self.task_records

    async def refresh(self) -> RunRecord:
        """Read the run's record and task records again."""
        self.record = await self.services.store.get_run(self.run_id)
        self.task_records = await self.services.summaries(self.run_id)
        return self.record

    def events(self, buffer: int) -> EventStream:
        if self.record.state in TERMINAL:
            raise RunStateError(f"Run {self.run_id!r} has ended ({self.state}); it has no more events.")
        return self.services.tail_events(self.run_id, self.record.next_seq - 1, buffer)

    def subscribe(self, callback: Callable[[Event], object]) -> Callable[[], None]:
        raise RunStateError(
            f"Run {self.run_id!r} runs in engine {self.record.owner!r}, not in this process: callbacks see only "
            "local runs; iterate `run.events()`, which reads the run's events from its store."
        )

    async def _until(self, done: Callable[[RunRecord], bool]) -> RunRecord:
        while True:
            record = await self.refresh()
            if done(record):
                return record
            await anyio.sleep(self.services.poll_interval)

    async def wait(self) -> RunResult:
        local = self.taken
        if local is not None:
            return await local.wait()
        await self._until(lambda r: r.state in TERMINAL)
        return await self.services.stored_result(self.record, self.flow_obj)

    async def view(self, tracebacks: bool) -> RunView:
        local = self.taken
        if local is not None:
            return await local.view(tracebacks)
        record = await self.refresh()
        return await self.services.view(record, self.flow_obj, tracebacks)

    async def wait_suspended(self) -> RunResult:
        await self._until(lambda r: r.state in TERMINAL or r.state is FlowState.SUSPENDED)
        return await self.services.stored_result(self.record, self.flow_obj)

    async def _control(self, op: ControlOp, checkpoint: str | None = None, retry: bool = True) -> bool:
        """Carry out ``op``: here if no live engine owns the run (True), else through its owner (False)."""
        record = await self.refresh()
        if record.state in TERMINAL:
            if op in ("goto", "revert_to"):
                raise RunStateError(
                    f"Run {self.run_id!r} cannot {op.replace('_', ' ')} {checkpoint!r}: it is {record.state}."
                )
            return False
        if checkpoint is not None:
            self.services.check_checkpoint(record, self.flow_obj, checkpoint)
        here = await self._take_over(record, op)
        if here is not None:
            return here
        request = ControlRequest(
            request_id=uuid.uuid4().hex,
            run_id=self.run_id,
            op=op,
            checkpoint=checkpoint,
            retry=retry,
            requested_at=time.time(),
            requested_by=self.services.id,
        )
        store = self.services.store
        await store.request(request)
        while True:
            # The owner marks the request done once it has taken effect (a suspend: once SUSPENDED).
            done = next((r for r in await store.requests(self.run_id) if r.request_id == request.request_id), None)
            if done is not None and done.done_at is not None:
                if done.error is not None:
                    raise RunStateError(done.error)
                await self.refresh()
                return False
            record = await self.refresh()
            if record.state in TERMINAL:
                return False
            if record.lease_expires is not None and record.lease_expires < time.time():
                # The owner died before it carried the request out: take the run over and do it here.
                here = await self._take_over(record, op)
                if here is not None:
                    # Done here: no owner may carry it out again (a second revert_to would revert again).
                    await store.request(request.model_copy(update={"done_at": time.time()}))
                    return here
            await anyio.sleep(self.services.poll_interval)

    async def _take_over(self, record: RunRecord, op: ControlOp) -> bool | None:
        """Run ``op`` here if no live engine owns the run: True (the run now runs here), False (done in the store
        alone: a suspend of a run nobody runs), or None if a live engine owns it."""
        try:
            taken = await self.services.take_over(record, self.flow_obj, op)
        except RunOwnedError:
            return None
        if taken is None:
            await self.refresh()
            return False
        self.taken = taken
        return True

    async def _local_or(self, op: ControlOp, checkpoint: str | None = None, retry: bool = True) -> _Local | None:
        if await self._control(op, checkpoint, retry):
            assert self.taken is not None
            return self.taken
        return None

    async def cancel(self) -> None:
        local = await self._local_or("cancel")
        if local is not None:
            await local.cancel()

    async def suspend(self) -> None:
        local = await self._local_or("suspend")
        if local is not None:
            await local.suspend()

    async def goto(self, checkpoint: str) -> None:
        local = await self._local_or("goto", checkpoint)
        if local is not None:
            await local.goto(checkpoint)

    async def revert_to(self, checkpoint: str, retry: bool) -> None:
        local = await self._local_or("revert_to", checkpoint, retry)
        if local is not None:
            await local.revert_to(checkpoint, retry)

    async def resume(self) -> None:
        local = await self._local_or("resume")
        if local is not None:
            await local.resume()
