"""``Engine`` (owns runs, and keeps durable ones in a store) and ``run()`` (one run in the caller's task).

Ownership of a durable run
--------------------------
A run in a store is owned by at most one engine at a time, through a lease
(``owner``, ``lease_expires``) that the owner's heartbeat renews every
``heartbeat`` seconds. Every write of the run is fenced by the lease: an
engine that lost it (it stalled past the lease, and another engine took the
run over) finds out at its next write or heartbeat and stops running the run.
Another process controls a run through the store: it records a request that
the owner carries out at its next heartbeat, or, when no live engine owns the
run, takes the run over itself.
"""

from __future__ import annotations

import logging
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
from ckflow._codec import decode_object, encode, input_adapter, result_adapter
from ckflow._durable._journal import Journal
from ckflow._durable._resume import restore
from ckflow._errors import (
    CkflowError,
    FlowDefinitionError,
    FlowNotRegisteredError,
    LeaseLostError,
    MissingRequirementError,
    ResultNotSerializableError,
    RunExistsError,
    RunNotFoundError,
    RunStateError,
    StoreError,
    UnknownCheckpointError,
)
from ckflow._events import Event, EventStream, logger_for, write_log
from ckflow._ids import check_run_id
from ckflow._models import RunResult, TaskSummary
from ckflow._patterns import Flow
from ckflow._records import Batch, RunRecord
from ckflow._registry import registered_flow
from ckflow._run import Run, _Local, _Stored
from ckflow._runtime._core import RunCore
from ckflow._states import TERMINAL, FlowState
from ckflow.stores import Store, open_store

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from types import TracebackType

    from anyio.abc import TaskGroup
    from anyio.streams.memory import MemoryObjectSendStream
    from pydantic import TypeAdapter

    from ckflow._compile import ExecutionGraph
    from ckflow._records import ControlOp, ControlRequest

__all__ = ["Engine", "run"]


def _engine_warning(name: str, **fields: Any) -> None:
    log = logger_for(name)
    if log.isEnabledFor(logging.WARNING):
        write_log(log, logging.WARNING, name, fields)


def _positive(owner: str, name: str, value: float) -> float:
    given: object = value
    if isinstance(given, bool) or not isinstance(given, int | float) or not 0 < given < math.inf:
        raise ValueError(f"{owner}({name}={value!r}) must be a positive, finite number of seconds.")
    return float(value)


def _core(
    flow: Flow,
    inputs: Mapping[str, Any] | None,
    run_id: str | None,
    max_concurrency: int | None,
    on_event: Callable[[Event], object] | None,
    traceparent: str | None = None,
) -> RunCore:
    if not isinstance(flow, Flow):
        raise TypeError(f"ckflow runs a flow (Linear, Parallel, Graph or Periodic), got {flow!r}.")
    if max_concurrency is not None and not _is_positive_int(max_concurrency):
        raise ValueError(f"max_concurrency must be a positive int or None, got {max_concurrency!r}.")
    if run_id is not None:
        check_run_id(run_id)
    graph = flow.compile()
    given = dict(inputs or {})
    missing = {name: tasks for name, tasks in graph.required_inputs.items() if name not in given}
    if missing:
        raise MissingRequirementError(flow.name, missing)
    core = RunCore(
        graph,
        run_id or uuid.uuid4().hex,
        given,
        max_concurrency=max_concurrency,
        on_event=on_event,
    )
    core.start_telemetry(traceparent)
    return core


def _input_adapters(graph: ExecutionGraph) -> dict[str, TypeAdapter[Any] | None]:
    """Input name -> the adapter of a parameter that reads it (for decoding stored inputs)."""
    adapters: dict[str, TypeAdapter[Any] | None] = {}
    for node in graph.nodes:
        if node.task is None:
            continue
        for param, name, _required in node.input_in:
            if adapters.get(name) is None:
                adapters[name] = input_adapter(node.task, param)
    return adapters


def _encode_inputs(inputs: Mapping[str, Any]) -> str:
    try:
        return encode(dict(inputs))
    except TypeError:
        for name, value in inputs.items():
            try:
                encode({name: value})  # the name too: it may be what cannot be encoded
            except TypeError as exc:
                raise ResultNotSerializableError(
                    None, type(value).__qualname__, str(exc), input=name, value=value
                ) from exc
        raise


async def run(
    flow: Flow,
    inputs: Mapping[str, Any] | None = None,
    *,
    run_id: str | None = None,
    max_concurrency: int | None = None,
    on_event: Callable[[Event], object] | None = None,
) -> RunResult:
    """Run ``flow`` to its end in the calling task and return the result (in memory, no store).

    Every ready task starts at once (at most ``max_concurrency`` executing).
    If the caller is cancelled (a client hung up), everything that ran is
    reverted, shielded, and then the cancellation propagates. A run parked by
    a checkpoint with ``on_exhausted="suspend"`` returns with state
    SUSPENDED; use an ``Engine`` to resume such runs.

    Raises:
        FlowDefinitionError: the flow does not compile, or ``inputs`` lack a required value.
        InvalidRunIdError: ``run_id`` is empty, over 200 characters, or holds a control character or a surrogate.
    """
    core = _core(flow, inputs, run_id, max_concurrency, on_event)
    return await core.main(stop_on_suspend=True)


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
    """

    __slots__ = (
        "_carrying",
        "_closing",
        "_ended",
        "_heartbeat",
        "_id",
        "_keep_ended",
        "_lease_ttl",
        "_max_concurrency",
        "_owns_store",
        "_poll_interval",
        "_referenced",
        "_runs",
        "_service",
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
    ) -> None:
        if store is not None and not isinstance(store, str | Store):
            raise TypeError(f"Engine(store=...) takes a URL or a ckflow.stores.Store, got {store!r}.")
        if max_concurrency is not None and not _is_positive_int(max_concurrency):
            raise ValueError(f"Engine(max_concurrency={max_concurrency!r}) must be a positive int or None.")
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
        self._ended: OrderedDict[str, Run] = OrderedDict()
        #: ended runs whose handles someone still holds
        self._referenced: weakref.WeakValueDictionary[str, Run] = weakref.WeakValueDictionary()
        self._keep_ended = keep_ended
        self._carrying: set[str] = set()
        self._closing = False
        self._tg: TaskGroup | None = None
        self._service: TaskGroup | None = None

    @property
    def id(self) -> str:
        """This engine's name, recorded as the owner of the durable runs it runs."""
        return self._id

    @property
    def store(self) -> Store | None:
        """The engine's store while it is open (None for an engine without one)."""
        return self._store

    async def __aenter__(self) -> Engine:
        if self._tg is not None or self._service is not None:
            raise RunStateError("This Engine is already open; an engine is entered once.")
        arg = self._store_arg
        store = open_store(arg) if isinstance(arg, str) else arg
        if store is not None:
            await store.open()
        self._store = store
        self._closing = False
        self._service = anyio.create_task_group()
        await self._service.__aenter__()
        if store is not None:
            self._service.start_soon(self._beat, name=f"ckflow engine {self._id} heartbeat")
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        tg, self._tg = self._tg, None
        # The heartbeat goes on while the runs are waited for: it renews their leases and carries out what
        # other processes ask of them (a remote cancel or suspend of a run this engine is finishing).
        service = self._service
        assert tg is not None
        assert service is not None
        self._closing = True
        live = [h._impl.core for h in self._runs.values() if isinstance(h._impl, _Local)]
        if exc is not None:
            for core in live:
                if not core.durable:
                    core.request_cancel()
                # A durable run is stopped, not reverted, when its task is cancelled: see RunCore.main.
        else:
            for core in live:
                watch = self._leave_when_suspended if core.durable else self._cancel_when_suspended
                tg.start_soon(watch, core)
        try:
            return await tg.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            if exc is not None and len(group.exceptions) == 1 and group.exceptions[0] is exc:
                return False  # the block's own exception, alone: it propagates as it was raised
            raise
        finally:
            self._service = None
            service.cancel_scope.cancel()
            await service.__aexit__(None, None, None)
            store, self._store = self._store, None
            if store is not None and self._owns_store:
                with anyio.CancelScope(shield=True):
                    await store.close()

    # -- starting and resuming ---------------------------------------------------

    def _open_tg(self, operation: str) -> TaskGroup:
        if self._tg is None or self._closing:
            raise RunStateError(
                f"Engine.{operation}() needs an open engine: use `async with ckflow.Engine() as engine:`."
            )
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

        With a store, the run is recorded before this returns, owned by this engine.

        Raises:
            FlowDefinitionError: the flow does not compile, or ``inputs`` lack a required value.
            FlowNotRegisteredError: no flow is registered under that name.
            ResultNotSerializableError: an input cannot be stored as JSON (durable runs).
            RunExistsError: ``run_id`` is taken.
            InvalidRunIdError: ``run_id`` is empty, over 200 characters, or holds a control character or a surrogate.
            RunStateError: the engine is not open.
        """
        self._open_tg("start")
        if isinstance(flow, str):
            flow = registered_flow(flow)
        if run_id is not None and (
            check_run_id(run_id) in self._runs or run_id in self._ended or run_id in self._referenced
        ):
            raise RunExistsError(run_id, "this engine")
        core = _core(flow, inputs, run_id, max_concurrency or self._max_concurrency, on_event)
        store = self._store
        if store is not None:
            lease_from = time.monotonic()
            now = time.time()
            record = RunRecord(
                run_id=core.run_id,
                flow=flow.name,
                state=FlowState.PENDING,
                inputs=_encode_inputs(core.inputs),
                owner=self._id,
                lease_expires=now + self._lease_ttl,
                created_at=now,
                updated_at=now,
                trace=core.traceparent,
            )
            try:
                await store.create_run(record)
            except BaseException:
                if core.telemetry is not None:
                    core.telemetry.run_ended(FlowState.PENDING, RunStateError("the run was not recorded"))
                raise
            core.journal = Journal(core, store, self._id, record, lease_ttl=self._lease_ttl, lease_from=lease_from)
        return self._launch(core)

    def _launch(self, core: RunCore) -> Run:
        tg = self._open_tg("start")
        handle = Run(_Local(core))
        self._runs[core.run_id] = handle
        tg.start_soon(self._main, core, name=f"ckflow run {core.run_id}")
        return handle

    async def _main(self, core: RunCore) -> None:
        try:
            await core.main()
        finally:
            handle = self._runs.pop(core.run_id, None)
            if handle is not None:
                # An ended run stays reachable (get_run, attach) while a caller holds its handle, and the last
                # `keep_ended` ones are kept besides: a service that runs millions of runs stays flat.
                self._referenced[core.run_id] = handle
                if self._keep_ended:
                    self._ended[core.run_id] = handle
                    while len(self._ended) > self._keep_ended:
                        self._ended.popitem(last=False)
            if core.durable and not core.journal_dead and self._store is not None:
                with anyio.CancelScope(shield=True):
                    try:
                        await self._store.release(core.run_id, self._id)
                    except Exception as exc:  # the lease lapses by itself
                        _engine_warning("ckflow.engine.release_failed", run_id=core.run_id, error=str(exc))

    async def _leave_when_suspended(self, core: RunCore) -> None:
        """The engine is closing: a durable run that is (or becomes) SUSPENDED is left in its store."""
        while not core.terminal.is_set():
            suspended = core.suspended
            await suspended.wait()
            if core.flow_state is FlowState.SUSPENDED and not core.terminal.is_set():
                core.stop(None)
                return

    async def _cancel_when_suspended(self, core: RunCore) -> None:
        """The engine is closing: a run without a store that is (or becomes) SUSPENDED could never be resumed
        once the engine has closed, and would keep it from closing: it is cancelled (reverted) instead."""
        while not core.terminal.is_set():
            suspended = core.suspended
            await suspended.wait()
            if core.flow_state is FlowState.SUSPENDED and not core.terminal.is_set():
                core.request_cancel()
                return

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
        that has ended is not run again: its handle gives its result.

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
            return Run(_Stored(self, record, flow))
        handle = await self._take_over(record, flow, "resume", max_concurrency, on_event)
        assert handle is not None  # only a suspend is done without taking the run over
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
        local = self._runs.get(run_id) or self._ended.get(run_id) or self._referenced.get(run_id)
        if local is not None:
            return local
        record = await self._store_or_fail().get_run(run_id)
        if flow is not None:
            self._flow_for(record, flow, required=True)
        impl = _Stored(self, record, flow)
        impl.task_records = await self._summaries(run_id)
        return Run(impl)

    def get_run(self, run_id: str) -> Run:
        """The handle of a run this engine runs, or ran (the last ``keep_ended`` ended runs, and any whose handle
        a caller still holds).

        Raises:
            InvalidRunIdError: ``run_id`` cannot be a run id (see ``Engine.start``).
            RunNotFoundError: this engine has no run with that id (``attach`` finds runs in the store).
        """
        handle = self._runs.get(check_run_id(run_id)) or self._ended.get(run_id) or self._referenced.get(run_id)
        if handle is None:
            raise RunNotFoundError(run_id, "this engine")
        return handle

    @property
    def runs(self) -> Mapping[str, Run]:
        """Every run this engine runs now, then the ended runs it still keeps (``keep_ended``), by id."""
        return {**self._referenced, **self._ended, **self._runs}

    # -- taking over -------------------------------------------------------------

    def _flow_for(self, record: RunRecord, flow: Flow | None, *, required: bool) -> Flow | None:
        if flow is not None:
            if not isinstance(flow, Flow):
                raise TypeError(f"flow= must be a flow (Linear, Parallel, Graph or Periodic), got {flow!r}.")
            if flow.name != record.flow:
                raise FlowDefinitionError(
                    f"Run {record.run_id!r} is a run of flow {record.flow!r}, not of {flow.name!r}; pass its own flow."
                )
            return flow
        try:
            return registered_flow(record.flow)
        except FlowNotRegisteredError:
            if required:
                raise
            return None

    def _check_checkpoint(self, record: RunRecord, flow: Flow | None, checkpoint: str) -> None:
        found = self._flow_for(record, flow, required=False)
        if found is None:
            return  # the engine that runs it checks the name
        graph = found.compile()
        scope = graph.scope_index.get(checkpoint)
        if scope is None or scope == 0:
            raise UnknownCheckpointError(
                record.run_id, record.flow, checkpoint, sorted(s.name for s in graph.scopes[1:])
            )

    async def _take_over(
        self,
        record: RunRecord,
        flow: Flow | None,
        op: ControlOp,
        max_concurrency: int | None = None,
        on_event: Callable[[Event], object] | None = None,
    ) -> Run | None:
        """Claim a run that no live engine owns and run it here; a suspend needs no flow and runs nothing.

        Ownership comes first: a run that a live engine holds is RunOwnedError, whether or not its flow is
        known here.

        Raises:
            RunOwnedError: a live engine owns the run.
        """
        self._open_tg(op)
        store = self._store_or_fail()
        lease_from = time.monotonic()
        claimed = await store.claim(record.run_id, self._id, self._lease_ttl)
        try:
            found = self._flow_for(claimed, flow, required=op != "suspend")
        except BaseException:
            with anyio.CancelScope(shield=True):
                await store.release(claimed.run_id, self._id)
            raise
        if found is None:
            try:
                await self._suspend_in_store(claimed)
            finally:
                with anyio.CancelScope(shield=True):
                    await store.release(claimed.run_id, self._id)
            return None
        return await self._adopt(claimed, found, max_concurrency, on_event, lease_from)

    async def _suspend_in_store(self, record: RunRecord) -> None:
        """Suspend a run that nobody runs, in its store alone: nothing of it starts until it is resumed."""
        if record.halted or record.state is FlowState.SUSPENDED:
            return
        store = self._store_or_fail()
        now = time.time()
        seq = record.next_seq

        def event(name: str, old: str | None = None, new: str | None = None) -> Event:
            return Event(
                name=name,
                run_id=record.run_id,
                flow=record.flow,
                old=old,
                new=new,
                monotonic=time.monotonic(),
                wall=now,
                seq=seq + len(events),
            )

        events: list[Event] = []
        events.append(event("ckflow.control.suspend"))
        state: FlowState = record.state
        if state is FlowState.RUNNING:
            state = FlowState.SUSPENDED
            events.append(event("ckflow.run.suspended", "RUNNING", "SUSPENDED"))
        update = {"state": state, "halted": True, "updated_at": now, "next_seq": seq + len(events)}
        await store.write(Batch(run=record.model_copy(update=update), owner=self._id, events=events))

    async def _adopt(
        self,
        record: RunRecord,
        flow: Flow,
        max_concurrency: int | None,
        on_event: Callable[[Event], object] | None,
        lease_from: float,
    ) -> Run:
        """Rebuild a run this engine has just claimed (its claim sent at ``lease_from``), and run it here."""
        store = self._store_or_fail()
        try:
            stored = await store.load(record.run_id)
            graph = flow.compile()
            retains_by_age = any(s.max_age is not None for s in graph.scopes)
            passes = await store.checkpoints(record.run_id) if retains_by_age else []
            try:
                inputs = decode_object(stored.run.inputs, _input_adapters(graph))
            except Exception as exc:
                raise StoreError(
                    f"Run {record.run_id!r}: its stored inputs do not decode into what the tasks' annotations "
                    f"say ({exc})."
                ) from exc
            core = _core(
                flow, inputs, record.run_id, max_concurrency or self._max_concurrency, on_event, stored.run.trace
            )
            core.journal = Journal(core, store, self._id, stored.run, lease_ttl=self._lease_ttl, lease_from=lease_from)
            restore(core, stored, passes)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await store.release(record.run_id, self._id)
            raise
        return self._launch(core)

    # -- heartbeat and requests from other processes -------------------------------

    def _durable_live(self) -> dict[str, RunCore]:
        cores: dict[str, RunCore] = {}
        for run_id, handle in self._runs.items():
            impl = handle._impl
            if isinstance(impl, _Local) and impl.core.durable and not impl.core.terminal.is_set():
                cores[run_id] = impl.core
        return cores

    async def _beat(self) -> None:
        """Renew the leases of this engine's durable runs, and carry out what other processes asked."""
        store = self._store_or_fail()
        while True:
            await anyio.sleep(self._heartbeat)
            cores = self._durable_live()
            if not cores:
                continue
            sent_at = time.monotonic()
            try:
                renewal = await store.renew(self._id, list(cores), self._lease_ttl)
            except Exception as exc:
                # The store is unreachable: the leases may lapse, and the next write will say so.
                _engine_warning("ckflow.engine.heartbeat_failed", engine=self._id, error=str(exc))
                continue
            lost = set(renewal.lost)
            for run_id, live in cores.items():
                journal = live.journal
                if run_id not in lost and journal is not None:
                    journal.lease_renewed(sent_at)
            for run_id in renewal.lost:
                gone = cores.get(run_id)
                # A run that ended meanwhile released its lease itself (a write that lost it says so)
                if gone is not None and gone.flow_state not in TERMINAL:
                    gone.stop(LeaseLostError(run_id, self._id))
            tg = self._service
            for request in renewal.requests:
                if request.request_id not in self._carrying and tg is not None:
                    self._carrying.add(request.request_id)
                    tg.start_soon(self._carry_out, request)

    async def _carry_out(self, request: ControlRequest) -> None:
        """Do what another process asked of a run this engine runs, then mark the request done."""
        error: str | None = None
        try:
            handle = self._runs.get(request.run_id)
            if handle is None:
                error = f"Run {request.run_id!r} is not running in engine {self._id!r} any more."
            elif request.op == "suspend":
                await handle.suspend()
            elif request.op == "resume":
                await handle.resume()
            elif request.op == "cancel":
                await handle.cancel()
            elif request.op == "goto":
                await handle.goto(request.checkpoint or "")
            else:
                await handle.revert_to(request.checkpoint or "", retry=request.retry)
        except CkflowError as exc:
            error = str(exc)
        try:
            store = self._store_or_fail()
            with anyio.CancelScope(shield=True):
                await store.request(request.model_copy(update={"done_at": time.time(), "error": error}))
        finally:
            self._carrying.discard(request.request_id)

    # -- reading stored runs ---------------------------------------------------------

    async def _summaries(self, run_id: str) -> dict[str, TaskSummary]:
        offset = time.time() - time.monotonic()

        def mono(wall: float | None) -> float | None:
            return None if wall is None else wall - offset

        return {
            t.task: TaskSummary(
                name=t.task,
                state=t.state,
                attempts=t.attempts,
                started=mono(t.started_at),
                ended=mono(t.ended_at),
                revert_started=mono(t.revert_started_at),
                revert_ended=mono(t.revert_ended_at),
                failure=t.failure,
            )
            for t in await self._store_or_fail().tasks(run_id)
        }

    async def _stored_result(self, record: RunRecord, flow: Flow | None) -> RunResult:
        """The result of a run, read from its store (for a run this engine does not hold)."""
        store = self._store_or_fail()
        stored = await store.load(record.run_id)
        outputs: dict[str, Any] = {}
        if record.state is FlowState.SUCCESS:
            root = next((c for c in stored.checkpoints if c.checkpoint == record.flow), None)
            if root is not None and root.snapshot is not None:
                found = self._flow_for(record, flow, required=False)
                adapters: dict[str, TypeAdapter[Any] | None] = {}
                if found is not None:
                    for task in found.iter_tasks():
                        if len(task.provided) == 1:
                            adapters[task.provided[0]] = result_adapter(task)
                outputs = decode_object(root.snapshot, adapters)
        end = record.ended_at or record.updated_at
        return RunResult(
            run_id=record.run_id,
            flow=record.flow,
            state=record.state,
            outputs=outputs,
            tasks=await self._summaries(record.run_id),
            failures=list(stored.failures),
            regions=[],
            duration=end - record.created_at,
        )

    def _tail_events(self, run_id: str, after: int, buffer: int) -> EventStream:
        """An events() stream of a run in another engine, read from the store as it is written."""
        tg = self._open_tg("attach")
        send, receive = anyio.create_memory_object_stream[Event](buffer)
        stream = EventStream(run_id, receive, buffer)
        tg.start_soon(self._pump_events, run_id, after, send, stream)
        return stream

    async def _pump_events(
        self, run_id: str, after: int, send: MemoryObjectSendStream[Event], stream: EventStream
    ) -> None:
        store = self._store_or_fail()
        with send:
            while True:
                ended = (await store.get_run(run_id)).state in TERMINAL
                for event in await store.events(run_id, after=after):
                    try:
                        send.send_nowait(event)
                    except anyio.WouldBlock:
                        stream._overflowed = True
                        return
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                        return
                    after = event.seq if event.seq is not None else after
                if ended:
                    return
                await anyio.sleep(self._poll_interval)

    def __repr__(self) -> str:
        state = "open" if self._tg is not None else "closed"
        store = "" if self._store_arg is None else f" store={getattr(self._store_arg, 'url', self._store_arg)!r}"
        return f"<ckflow.Engine {self._id!r} {state}{store} {len(self._runs)} runs>"
