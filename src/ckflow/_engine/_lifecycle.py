"""``Engine`` (owns runs, and keeps durable ones in a store): its life as an async context manager, and ``run()``.

``Engine`` starts, resumes and attaches runs, runs each in a task of its own, and keeps the handles of the runs
it runs and of the last ones that ended. What it owns of durable runs (leases, the heartbeat, requests from other
processes, taking runs over) is ``_ownership``; reading a run from its store is ``_reads``; handles are
``_handles``, which reach the engine only through ``_Services`` (an ``EngineServices``).
"""

from __future__ import annotations

import enum
import math
import os
import socket
import time
import uuid
import weakref
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, final

import anyio

from ckflow._checkpoint import _is_positive_int
from ckflow._engine import _reads
from ckflow._engine._cores import (
    check_checkpoint,
    first_record,
    flow_for,
    keep_journal,
    new_core,
    not_recorded,
    queued_record,
)
from ckflow._engine._handles import Run, _Local, _Stored, new_run
from ckflow._engine._ownership import Ownership
from ckflow._engine._recovery import Recovery
from ckflow._engine._spawn import RunTasks
from ckflow._errors import RunExistsError, RunNotFoundError, RunStateError
from ckflow._ids import check_run_id
from ckflow._registry import registered_flow
from ckflow._states import TERMINAL, FlowState
from ckflow.stores import Store, open_store

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping
    from types import TracebackType

    from anyio.abc import TaskGroup

    from ckflow._events import Event, EventStream
    from ckflow._models import RunResult, TaskSummary
    from ckflow._patterns import Flow
    from ckflow._records import ControlOp, RunRecord
    from ckflow._runtime._core import RunCore
    from ckflow._view import RunView

__all__ = ["Engine", "EngineState", "run"]


def _positive(owner: str, name: str, value: float) -> float:
    given: object = value
    if isinstance(given, bool) or not isinstance(given, int | float) or not 0 < given < math.inf:
        raise ValueError(f"{owner}({name}={value!r}) must be a positive, finite number of seconds.")
    return float(value)


async def run(
    flow: Flow | str,
    inputs: Mapping[str, Any] | None = None,
    *,
    run_id: str | None = None,
    max_concurrency: int | None = None,
    on_event: Callable[[Event], object] | None = None,
) -> RunResult:
    """Run ``flow`` (a flow, or the name it was registered under) to its end in the calling task and return the
    result (in memory, no store).

    The inputs that tasks read are validated against their parameters'
    annotations first, and the tasks get the validated values (``"7"`` for
    ``n: int`` arrives as ``7``). Every ready task starts at once (at most ``max_concurrency`` executing).
    If the caller is cancelled (a client hung up), everything that ran is
    reverted, shielded, and then the cancellation propagates. A run parked by
    a checkpoint with ``on_exhausted="suspend"`` returns with state
    SUSPENDED; use an ``Engine`` to resume such runs.

    Raises:
        FlowDefinitionError: the flow does not compile, or ``inputs`` lack a required value.
        FlowNotRegisteredError: no flow is registered under that name.
        InvalidInputError: an input does not fit the annotation of a task's parameter that reads it.
        InvalidRunIdError: ``run_id`` is empty, over 200 characters, or holds a control character or a surrogate.
    """
    if isinstance(flow, str):
        flow = registered_flow(flow)
    return await _Local(new_core(flow, inputs, run_id, max_concurrency, on_event)).main(stop_on_suspend=True)


class EngineState(enum.Enum):
    """Where an ``Engine`` is in its life; ``async with`` takes it from NEW to OPEN, then CLOSING and CLOSED."""

    #: made, not entered yet: start, resume and attach refuse; ``async with`` opens it
    NEW = enum.auto()
    #: in its ``async with`` block: runs start, resume and attach; the heartbeat renews leases
    OPEN = enum.auto()
    #: leaving its block: nothing new starts, the runs are waited for (or stopped), the heartbeat goes on
    CLOSING = enum.auto()
    #: left: start, resume and attach refuse; its store is closed (if the engine opened it); it may be entered again
    CLOSED = enum.auto()


@final
class Engine:
    """Runs many flows concurrently in one event loop; use it as an async context manager.

    Without a store, runs live in this process's memory. With one
    (``store="sqlite:///runs.db"``, ``"postgresql://..."``, ``"memory://"`` or a
    ``ckflow.stores.Store``), every run is recorded as it goes, survives the
    process, and can be resumed by this or another engine (``resume``), or
    controlled from another process (``attach``).

    Leaving the ``async with`` block waits for the runs to end; a durable run
    that is SUSPENDED (or becomes so) is left in its store instead. If the
    block is left by an exception or a cancellation, runs without a store
    are reverted (shielded), and durable runs are stopped without reverting
    anything: they stay in their store, for another engine to resume.

    Args:
        store: where runs are kept (a URL, or a store object, which the caller then closes).
        max_concurrency: the default bound on executing tasks per run.
        lease_ttl: seconds a lease on a durable run lasts without a heartbeat; after that
            another engine may take the run over.
        heartbeat: seconds between lease renewals, which also pick up control requests
            from other processes (default: a tenth of ``lease_ttl``).
        poll_interval: seconds between looks at the store while waiting for a run that
            another engine runs.
        id: this engine's name in the store (default: host, process id and a random suffix).
        keep_ended: how many ended runs the engine keeps handles of, newest first, for ``get_run``
            and ``attach``; an ended run whose handle a caller still holds stays reachable too. Older
            ones are forgotten (a store keeps every run it recorded), so memory stays flat however
            many runs a long-lived engine runs.
        recover: adopt and resume, when the engine opens and then every ``lease_ttl / 2`` seconds, the
            store's PENDING and RUNNING runs that no live engine runs: at once if nobody owns them (a
            clean shutdown released them) or their engine was a process of this host that has exited,
            otherwise once their lease lapses. SUSPENDED runs stay as they are; a run whose flow is not
            registered here is named in a warning and left. Off by default: a script's engine that opens
            a service's store should not start running that service's runs; a service turns it on (the
            FastAPI lifespan does).
    """

    __slots__ = (
        "_ended",
        "_heartbeat",
        "_id",
        "_keep_ended",
        "_lease_ttl",
        "_locals",
        "_max_concurrency",
        "_owner",
        "_owns_store",
        "_poll_interval",
        "_recovery",
        "_referenced",
        "_runs",
        "_service",
        "_services",
        "_spawner",
        "_state",
        "_store",
        "_store_arg",
        "_tg",
    )

    def __init__(
        self,
        *,
        store: str | Store | None = None,
        max_concurrency: int | None = None,
        lease_ttl: float = 10.0,
        heartbeat: float | None = None,
        poll_interval: float = 0.1,
        id: str | None = None,
        keep_ended: int = 100,
        recover: bool = False,
    ) -> None:
        if store is not None and not isinstance(store, str | Store):
            raise TypeError(f"Engine(store=...) takes a URL or a ckflow.stores.Store, got {store!r}.")
        if max_concurrency is not None and not _is_positive_int(max_concurrency):
            raise ValueError(f"Engine(max_concurrency={max_concurrency!r}) must be a positive int or None.")
        if recover and store is None:
            raise ValueError("Engine(recover=True) recovers the runs of a store: give the engine one (store=...).")
        if not (keep_ended == 0 or _is_positive_int(keep_ended)):
            raise ValueError(f"Engine(keep_ended={keep_ended!r}) must be an int >= 0.")
        self._lease_ttl = _positive("Engine", "lease_ttl", lease_ttl)
        self._heartbeat = _positive("Engine", "heartbeat", heartbeat if heartbeat is not None else lease_ttl / 10)
        if self._heartbeat >= self._lease_ttl:
            raise ValueError(f"Engine(heartbeat={heartbeat}) must be shorter than lease_ttl={lease_ttl}.")
        self._poll_interval = _positive("Engine", "poll_interval", poll_interval)
        self._id = id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._store_arg = store
        self._store: Store | None = None
        self._owns_store = isinstance(store, str)
        self._max_concurrency = max_concurrency
        self._runs: dict[str, Run] = {}
        #: the live view of each run this engine runs now
        self._locals: dict[str, _Local] = {}
        self._ended: OrderedDict[str, Run] = OrderedDict()
        #: ended runs whose handles someone still holds
        self._referenced: weakref.WeakValueDictionary[str, Run] = weakref.WeakValueDictionary()
        self._keep_ended = keep_ended
        self._state = EngineState.NEW
        self._tg: TaskGroup | None = None
        self._spawner: RunTasks | None = None
        self._service: TaskGroup | None = None
        self._owner = Ownership(
            self._id,
            lease_ttl=self._lease_ttl,
            heartbeat=self._heartbeat,
            runs=self._runs,
            locals=self._locals,
            launch=self._launch,
        )
        self._recovery = Recovery(self._owner, self._runs, self._is_open, max_concurrency) if recover else None
        self._services = _Services(
            id=self._id,
            poll_interval=self._poll_interval,
            store=self._store_or_fail,
            take_over=self._take_over_here,
            open_tg=self._open_tg,
        )

    @property
    def id(self) -> str:
        """This engine's name, recorded as the owner of the durable runs it runs."""
        return self._id

    @property
    def store(self) -> Store | None:
        """The engine's store while it is open (None for an engine without one)."""
        return self._store

    async def __aenter__(self) -> Engine:
        if self._state in (EngineState.OPEN, EngineState.CLOSING):
            raise RunStateError("This Engine is already open; an engine is entered once.")
        arg = self._store_arg
        store = open_store(arg) if isinstance(arg, str) else arg
        if store is not None:
            await store.open()
        self._store = store
        self._service = anyio.create_task_group()
        await self._service.__aenter__()
        if store is not None:
            self._service.start_soon(self._owner.beat, store, self._service, name=f"ckflow engine {self._id} heartbeat")
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._spawner = RunTasks(self._tg)
        self._state = EngineState.OPEN
        if store is not None and self._recovery is not None:
            await self._recover(store, self._service)
        return self

    def _is_open(self) -> bool:
        return self._state is EngineState.OPEN

    async def _recover(self, store: Store, service: TaskGroup) -> None:
        """Take the runs that engines now gone left unfinished, then keep looking (``recover=True``)."""
        recovery = self._recovery
        assert recovery is not None
        try:
            await recovery.sweep(store)
        except BaseException as exc:
            # cancelled while opening: leave as a block left by that exception would (the taken runs stop)
            await self.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        service.start_soon(recovery.watch, store, name=f"ckflow engine {self._id} recovery")

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        tg, service, spawner = self._tg, self._service, self._spawner
        assert tg is not None
        assert service is not None
        assert spawner is not None
        # The heartbeat goes on while the runs are waited for: it renews their leases and carries out what
        # other processes ask of them (a remote cancel or suspend of a run this engine is finishing).
        self._state = EngineState.CLOSING
        spawner.close()
        live = list(self._locals.values())
        for local in live:
            if exc is not None:
                local.abandon()
            else:
                tg.start_soon(local.settle_on_close)
        try:
            return await tg.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            if exc is not None and len(group.exceptions) == 1 and group.exceptions[0] is exc:
                return False  # the block's own exception, alone: it propagates as it was raised
            raise
        finally:
            await self._close(service)

    async def _close(self, service: TaskGroup) -> None:
        """The runs are over: stop the heartbeat, and close the store if the engine opened it."""
        self._tg = self._service = self._spawner = None
        service.cancel_scope.cancel()
        try:
            await service.__aexit__(None, None, None)
        finally:
            self._state = EngineState.CLOSED
        store, self._store = self._store, None
        if store is not None and self._owns_store:
            with anyio.CancelScope(shield=True):
                await store.close()

    # -- starting and resuming ---------------------------------------------------

    def _open_tg(self, operation: str) -> TaskGroup:
        if self._state is not EngineState.OPEN:
            raise RunStateError(
                f"Engine.{operation}() needs an open engine: use `async with ckflow.Engine() as engine:`."
            )
        assert self._tg is not None
        return self._tg

    def _store_or_fail(self) -> Store:
        if self._store is None:
            raise RunStateError(
                "This engine has no store, so its runs live in memory only; give it one, e.g. "
                "`ckflow.Engine(store='sqlite:///runs.db')`, to resume or control runs by id."
            )
        return self._store

    async def start(
        self,
        flow: Flow | str,
        inputs: Mapping[str, Any] | None = None,
        *,
        run_id: str | None = None,
        max_concurrency: int | None = None,
        on_event: Callable[[Event], object] | None = None,
    ) -> Run:
        """Start a run of ``flow`` (a flow, or the name it was registered under) and return its handle at once.

        The inputs that tasks read are validated against their parameters' annotations first (nothing is
        stored if one does not fit), and the run keeps the validated values. With a store, the run is
        recorded before this returns, owned by this engine.

        Raises:
            FlowDefinitionError: the flow does not compile, or ``inputs`` lack a required value.
            FlowNotRegisteredError: no flow is registered under that name.
            InvalidInputError: an input does not fit the annotation of a task's parameter that reads it.
            ResultNotSerializableError: an input cannot be stored as JSON (durable runs).
            RunExistsError: ``run_id`` is taken.
            InvalidRunIdError: ``run_id`` is empty, over 200 characters, or holds a control character or a surrogate.
            RunStateError: the engine is not open.
        """
        self._open_tg("start")
        if isinstance(flow, str):
            flow = registered_flow(flow)
        if run_id is not None and self._holds(check_run_id(run_id)):
            raise RunExistsError(run_id, "this engine")
        core = new_core(flow, inputs, run_id, max_concurrency or self._max_concurrency, on_event)
        store = self._store
        if store is not None:
            lease_from = time.monotonic()
            record = first_record(core, flow.name, self._id, self._lease_ttl)
            try:
                await store.create_run(record)
            except BaseException:
                not_recorded(core)
                raise
            keep_journal(core, store, self._id, record, lease_ttl=self._lease_ttl, lease_from=lease_from)
        return self._launch(core)

    async def submit(
        self,
        flow: Flow | str,
        inputs: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        *,
        queue: str = "default",
        priority: int = 0,
    ) -> Run:
        """Record a run of ``flow`` as QUEUED in the store, for a worker (``ckflow.Worker``) to run, and return
        its handle (through the store: ``wait``, ``events`` and the control calls work on it wherever it runs).

        ``flow`` is a registered flow or its name (``ckflow.register_flow``): a worker rebuilds it by name. The
        inputs are validated as ``start`` validates them, before anything is stored. Workers claim the runs of a
        queue highest ``priority`` first, then oldest first.

        Raises:
            FlowDefinitionError: the flow does not compile, or ``inputs`` lack a required value.
            FlowNotRegisteredError: no flow is registered under the flow's name.
            InvalidInputError: an input does not fit the annotation of a task's parameter that reads it.
            ResultNotSerializableError: an input cannot be stored as JSON.
            RunExistsError: ``run_id`` is taken.
            InvalidRunIdError: ``run_id`` cannot be a run id (see ``start``).
            ValueError: ``queue`` is not a queue name, or ``priority`` not a 32-bit int.
            RunStateError: the engine is not open, or has no store.
        """
        self._open_tg("submit")
        store = self._store_or_fail()
        record = queued_record(
            registered_flow(flow) if isinstance(flow, str) else flow, inputs, run_id, queue, priority
        )
        await store.create_run(record)
        return new_run(_Stored(self._services, record, None))

    def _launch(self, core: RunCore) -> Run:
        self._open_tg("start")
        spawner = self._spawner
        assert spawner is not None
        local = _Local(core)
        handle = new_run(local)
        self._runs[local.run_id] = handle
        self._locals[local.run_id] = local
        spawner.spawn(self._main, local, f"ckflow run {local.run_id}")
        return handle

    async def _main(self, local: _Local) -> None:
        """Run a run in its task, under a scope that the engine cancels as its task group would (``RunTasks``)."""
        spawner = self._spawner
        assert spawner is not None
        with spawner.scope():
            try:
                await local.main()
            finally:
                handle = self._runs.pop(local.run_id, None)
                self._locals.pop(local.run_id, None)
                if handle is not None:
                    self._keep(local.run_id, handle)
                await self._owner.release(self._store, local)

    def _keep(self, run_id: str, handle: Run) -> None:
        """An ended run stays reachable (get_run, attach) while a caller holds its handle, and the last
        ``keep_ended`` ones are kept besides: a service that runs millions of runs stays flat."""
        self._referenced[run_id] = handle
        if self._keep_ended:
            self._ended[run_id] = handle
            while len(self._ended) > self._keep_ended:
                self._ended.popitem(last=False)

    def _held(self, run_id: str) -> Run | None:
        """The handle of a run this engine runs, or ran and still keeps."""
        return self._runs.get(run_id) or self._ended.get(run_id) or self._referenced.get(run_id)

    def _holds(self, run_id: str) -> bool:
        return run_id in self._runs or run_id in self._ended or run_id in self._referenced

    async def _take_over(
        self,
        record: RunRecord,
        flow: Flow | None,
        op: ControlOp,
        max_concurrency: int | None = None,
        on_event: Callable[[Event], object] | None = None,
    ) -> Run | None:
        """Claim a run that no live engine owns and run it here (see ``Ownership.take_over``)."""
        self._open_tg(op)
        store = self._store_or_fail()
        return await self._owner.take_over(store, record, flow, op, max_concurrency or self._max_concurrency, on_event)

    async def _take_over_here(self, record: RunRecord, flow: Flow | None, op: ControlOp) -> _Local | None:
        """``_take_over`` for a handle through the store: the live view of the run it now runs here."""
        taken = await self._take_over(record, flow, op)
        return None if taken is None else self._locals[record.run_id]

    async def resume(
        self,
        run_id: str,
        *,
        flow: Flow | None = None,
        max_concurrency: int | None = None,
        on_event: Callable[[Event], object] | None = None,
    ) -> Run:
        """Go on with a durable run here: after a crash, after its engine shut down, or after a suspension.

        The run is rebuilt from the store (with ``flow``, or the flow registered
        under the run's flow name): tasks that succeeded keep their results and
        are not executed again; tasks that were running are executed again; an
        interrupted revert is called again. A SUSPENDED run is resumed. A run
        that has ended is not run again: its handle gives its result. A QUEUED
        run (``submit``) is left for a worker, its suspension lifted; its handle
        goes through the store.

        Raises:
            InvalidRunIdError: ``run_id`` cannot be a run id (see ``Engine.start``).
            RunNotFoundError: the store has no run with this id.
            RunOwnedError: another engine holds a live lease on the run (it runs there).
            FlowNotRegisteredError: ``flow`` was not given and no flow is registered under the run's flow name.
            FlowDefinitionError: ``flow`` is not the run's flow.
            StoreError: a stored value cannot be decoded.
        """
        check_run_id(run_id)
        self._open_tg("resume")
        local = self._runs.get(run_id)
        if local is not None:
            await local.resume()
            return local
        record = await self._store_or_fail().get_run(run_id)
        if record.state in TERMINAL:
            return new_run(_Stored(self._services, record, flow))
        handle = await self._take_over(record, flow, "resume", max_concurrency, on_event)
        if handle is None:  # a queued run: its suspension (if any) is lifted, and it waits for a worker
            return new_run(_Stored(self._services, await self._store_or_fail().get_run(run_id), flow))
        if handle.state is FlowState.SUSPENDED:
            await handle.resume()
        return handle

    async def attach(self, run_id: str, *, flow: Flow | None = None) -> Run:
        """A handle on any run of the store: the local one if this engine runs it, else one through the store.

        Through such a handle, ``suspend``, ``resume``, ``cancel``, ``goto`` and
        ``revert_to`` reach the engine that runs the run (at its next
        heartbeat) or, if none does, take the run over into this engine
        (which needs ``flow`` or a registered flow, except to suspend).

        Raises:
            InvalidRunIdError: ``run_id`` cannot be a run id (see ``Engine.start``).
            RunNotFoundError: the store has no run with this id.
        """
        check_run_id(run_id)
        self._open_tg("attach")
        local = self._held(run_id)
        if local is not None:
            return local
        record = await self._store_or_fail().get_run(run_id)
        if flow is not None:
            flow_for(record, flow, required=True)
        impl = _Stored(self._services, record, flow)
        impl.task_records = await _reads.summaries(self._store_or_fail(), run_id)
        return new_run(impl)

    def get_run(self, run_id: str) -> Run:
        """The handle of a run this engine runs, or ran (the last ``keep_ended`` ended runs, and any whose handle
        a caller still holds).

        Raises:
            InvalidRunIdError: ``run_id`` cannot be a run id (see ``Engine.start``).
            RunNotFoundError: this engine has no run with that id (``attach`` finds runs in the store).
        """
        handle = self._held(check_run_id(run_id))
        if handle is None:
            raise RunNotFoundError(run_id, "this engine")
        return handle

    @property
    def runs(self) -> Mapping[str, Run]:
        """Every run this engine runs now, then the ended runs it still keeps (``keep_ended``), by id."""
        return {**self._referenced, **self._ended, **self._runs}

    def __repr__(self) -> str:
        state = "open" if self._state is EngineState.OPEN else "closed"
        store = "" if self._store_arg is None else f" store={getattr(self._store_arg, 'url', self._store_arg)!r}"
        return f"<ckflow.Engine {self._id!r} {state}{store} {len(self._runs)} runs>"


@final
class _Services:
    """What an engine's handles may ask of it (an ``EngineServices``), and nothing else of it."""

    __slots__ = ("_open_tg", "_store", "_take_over", "id", "poll_interval")

    def __init__(
        self,
        *,
        id: str,
        poll_interval: float,
        store: Callable[[], Store],
        take_over: Callable[[RunRecord, Flow | None, ControlOp], Awaitable[_Local | None]],
        open_tg: Callable[[str], TaskGroup],
    ) -> None:
        self.id = id
        self.poll_interval = poll_interval
        self._store = store
        self._take_over = take_over
        self._open_tg = open_tg

    @property
    def store(self) -> Store:
        return self._store()

    async def take_over(self, record: RunRecord, flow: Flow | None, op: ControlOp) -> _Local | None:
        taken: _Local | None = await self._take_over(record, flow, op)
        return taken

    async def summaries(self, run_id: str) -> dict[str, TaskSummary]:
        return await _reads.summaries(self.store, run_id)

    async def stored_result(self, record: RunRecord, flow: Flow | None) -> RunResult:
        return await _reads.stored_result(self.store, record, flow)

    async def view(self, record: RunRecord, flow: Flow | None, tracebacks: bool) -> RunView:
        return await _reads.view(self.store, record, flow, tracebacks=tracebacks)

    def tail_events(self, run_id: str, after: int, buffer: int) -> EventStream:
        return _reads.tail_events(self._open_tg("attach"), self.store, run_id, after, buffer, self.poll_interval)

    def check_checkpoint(self, record: RunRecord, flow: Flow | None, checkpoint: str) -> None:
        check_checkpoint(record, flow, checkpoint)
