"""Ownership of durable runs: leases and the heartbeat, requests from other processes, taking runs over.

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
import time
from typing import TYPE_CHECKING, Any, final

import anyio

from ckflow._engine._cores import flow_for, restored_core, retains_by_age
from ckflow._errors import CkflowError, LeaseLostError, RunOwnedError, RunStateError
from ckflow._events import Event, logger_for, write_log
from ckflow._records import Batch
from ckflow._states import TERMINAL, FlowState
from ckflow.stores import QueueStore

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from anyio.abc import TaskGroup

    from ckflow._engine._handles import Run, _Local
    from ckflow._patterns import Flow
    from ckflow._records import ControlOp, ControlRequest, RunRecord
    from ckflow._runtime._core import RunCore
    from ckflow.stores import Store

__all__ = ["Ownership", "engine_warning"]


def engine_warning(name: str, **fields: Any) -> None:
    """Log a warning of the engine's (``ckflow.engine.*``) with its fields."""
    log = logger_for(name)
    if log.isEnabledFor(logging.WARNING):
        write_log(log, logging.WARNING, name, fields)


@final
class Ownership:
    """An engine's side of the leases on its durable runs.

    ``runs`` is the engine's live mapping of the runs it runs, by id; ``launch`` runs a core in the engine and
    returns its handle.
    """

    __slots__ = ("_carrying", "_launch", "_locals", "_runs", "_taking", "heartbeat", "id", "lease_ttl")

    def __init__(
        self,
        id: str,
        *,
        lease_ttl: float,
        heartbeat: float,
        runs: Mapping[str, Run],
        locals: Mapping[str, _Local],
        launch: Callable[[RunCore], Run],
    ) -> None:
        self.id = id
        self.lease_ttl = lease_ttl
        self.heartbeat = heartbeat
        self._runs = runs
        self._locals = locals
        self._launch = launch
        #: ids of the control requests being carried out
        self._carrying: set[str] = set()
        #: ids of the runs being taken over now (claimed, not yet launched)
        self._taking: set[str] = set()

    # -- taking over -------------------------------------------------------------

    async def take_over(
        self,
        store: Store,
        record: RunRecord,
        flow: Flow | None,
        op: ControlOp,
        max_concurrency: int | None,
        on_event: Callable[[Event], object] | None,
        *,
        replacing: str | None = None,
        unfinished: bool = False,
    ) -> Run | None:
        """Claim a run that no live engine owns and run it here; a suspend needs no flow and runs nothing.

        Ownership comes first: a run that a live engine holds is RunOwnedError, whether or not its flow is
        known here. ``replacing`` names an owner known to be dead, whose live lease may be taken (``Store.claim``).
        A run found ended once claimed is released and left (None; a goto or revert_to of it is RunStateError).
        With ``unfinished``, a run found SUSPENDED or halted once claimed is released and left (None) too.
        A QUEUED run is controlled in the store alone and left for a worker (None): see ``_in_store``.

        Raises:
            RunOwnedError: a live engine owns the run, or this engine runs it or is taking it over already.
        """
        run_id = record.run_id
        if run_id in self._taking or run_id in self._runs:
            # A claim by this engine's own id would succeed again (it renews), and the run would run twice
            # here: a resume beside a recovery, or two resumes at once. Once is enough.
            raise RunOwnedError(run_id, self.id, None)
        self._taking.add(run_id)
        try:
            return await self._take(store, record, flow, op, max_concurrency, on_event, replacing, unfinished)
        finally:
            self._taking.discard(run_id)

    async def _take(
        self,
        store: Store,
        record: RunRecord,
        flow: Flow | None,
        op: ControlOp,
        max_concurrency: int | None,
        on_event: Callable[[Event], object] | None,
        replacing: str | None,
        unfinished: bool,
    ) -> Run | None:
        lease_from = time.monotonic()
        claimed = await store.claim(record.run_id, self.id, self.lease_ttl, replacing=replacing)
        if claimed.state in TERMINAL:
            # It ended between the caller's look and the claim (another resume of it, here or elsewhere, ran it
            # to its end): an ended run is never run again, nor written to.
            with anyio.CancelScope(shield=True):
                await store.release(claimed.run_id, self.id)
            if op in ("goto", "revert_to"):
                raise RunStateError(f"Run {claimed.run_id!r} cannot {op.replace('_', ' ')}: it is {claimed.state}.")
            return None
        try:
            found = flow_for(claimed, flow, required=op != "suspend" and claimed.state is not FlowState.QUEUED)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await store.release(claimed.run_id, self.id)
            raise
        if unfinished and (claimed.halted or claimed.state not in (FlowState.PENDING, FlowState.RUNNING)):
            # it changed between the caller's look and the claim: whoever ended or suspended it is done with it
            with anyio.CancelScope(shield=True):
                await store.release(claimed.run_id, self.id)
            return None
        if found is None or claimed.state is FlowState.QUEUED:
            try:
                claimable = await self._in_store(store, claimed, op)
            finally:
                with anyio.CancelScope(shield=True):
                    await store.release(claimed.run_id, self.id)
            if claimable and isinstance(store, QueueStore) and claimed.queue is not None:
                # claimable again, now that it is nobody's: its workers need not wait for their next look
                await store.notify([claimed.queue])
            return None
        return await self._adopt(store, claimed, found, max_concurrency, on_event, lease_from)

    async def _in_store(self, store: Store, record: RunRecord, op: ControlOp) -> bool:
        """Carry out ``op`` in the store alone: a suspend of a run that nobody runs, or any control of a queued run;
        True if a resume made a queued run claimable again (its workers are to be woken once it is released).

        A queued run is left for a worker: a suspend keeps workers off it until a resume, a cancel ends it
        REVERTED with nothing run; going to or back to a checkpoint of a run that has not started is refused.
        """
        if record.state is not FlowState.QUEUED:
            await self._suspend_in_store(store, record)
        elif op in ("goto", "revert_to"):
            raise RunStateError(
                f"Run {record.run_id!r} is queued and has not started: it cannot {op.replace('_', ' ')} a checkpoint; "
                "cancel it, or wait for a worker to run it."
            )
        elif op == "cancel":
            await self._write_in_store(store, record, FlowState.REVERTED, halted=False, ended=True, control=op)
        elif op == "resume" and record.halted:
            await self._write_in_store(store, record, FlowState.QUEUED, halted=False, ended=False, control=op)
            return True
        elif op == "suspend" and not record.halted:
            await self._write_in_store(store, record, FlowState.QUEUED, halted=True, ended=False, control=op)
        return False

    async def _write_in_store(
        self, store: Store, record: RunRecord, state: FlowState, *, halted: bool, ended: bool, control: ControlOp
    ) -> None:
        """Write a queued run's new state, with the control event and (if it ends) its end's event."""
        now = time.time()
        seq = record.next_seq
        names = [f"ckflow.control.{control}"] + ([f"ckflow.run.{state.lower()}"] if ended else [])
        events = [
            Event(
                name=name,
                run_id=record.run_id,
                flow=record.flow,
                old=str(record.state) if i else None,
                new=str(state) if i else None,
                monotonic=time.monotonic(),
                wall=now,
                seq=seq + i,
            )
            for i, name in enumerate(names)
        ]
        update = {
            "state": state,
            "halted": halted,
            "updated_at": now,
            "ended_at": now if ended else None,
            "next_seq": seq + len(events),
        }
        await store.write(Batch(run=record.model_copy(update=update), owner=self.id, events=events))

    async def _suspend_in_store(self, store: Store, record: RunRecord) -> None:
        """Suspend a run that nobody runs, in its store alone: nothing of it starts until it is resumed."""
        if record.halted or record.state is FlowState.SUSPENDED:
            return
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
        await store.write(Batch(run=record.model_copy(update=update), owner=self.id, events=events))

    async def _adopt(
        self,
        store: Store,
        record: RunRecord,
        flow: Flow,
        max_concurrency: int | None,
        on_event: Callable[[Event], object] | None,
        lease_from: float,
    ) -> Run:
        """Rebuild a run this engine has just claimed (its claim sent at ``lease_from``), and run it here."""
        try:
            stored = await store.load(record.run_id)
            passes = await store.checkpoints(record.run_id) if retains_by_age(flow) else []
            journal = (store, self.id, self.lease_ttl, lease_from)
            core = restored_core(flow, stored, passes, journal, max_concurrency, on_event)
            return self._launch(core)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await store.release(record.run_id, self.id)
            raise

    async def release(self, store: Store | None, local: _Local) -> None:
        """The run has ended (or stopped) here: give its lease back, if it is still this engine's."""
        if local.holds_lease and store is not None:
            with anyio.CancelScope(shield=True):
                try:
                    await store.release(local.run_id, self.id)
                except Exception as exc:  # the lease lapses by itself
                    engine_warning("ckflow.engine.release_failed", run_id=local.run_id, error=str(exc))

    # -- heartbeat and requests from other processes -------------------------------

    def _durable_live(self) -> dict[str, _Local]:
        return {run_id: local for run_id, local in self._locals.items() if local.durable and not local.ended}

    async def beat(self, store: Store, service: TaskGroup) -> None:
        """Renew the leases of this engine's durable runs, and carry out (in ``service``) what others asked."""
        while True:
            await anyio.sleep(self.heartbeat)
            live = self._durable_live()
            if not live:
                continue
            sent_at = time.monotonic()
            try:
                renewal = await store.renew(self.id, list(live), self.lease_ttl)
            except Exception as exc:
                # The store is unreachable: the leases may lapse, and the next write will say so.
                engine_warning("ckflow.engine.heartbeat_failed", engine=self.id, error=str(exc))
                continue
            lost = set(renewal.lost)
            for run_id, local in live.items():
                if run_id not in lost:
                    local.lease_renewed(sent_at)
            for run_id in renewal.lost:
                gone = live.get(run_id)
                if gone is not None:
                    gone.lease_lost(LeaseLostError(run_id, self.id))
            for request in renewal.requests:
                if request.request_id not in self._carrying:
                    self._carrying.add(request.request_id)
                    service.start_soon(self._carry_out, store, request)

    async def _carry_out(self, store: Store, request: ControlRequest) -> None:
        """Do what another process asked of a run this engine runs, then mark the request done."""
        error: str | None = None
        try:
            handle = self._runs.get(request.run_id)
            if handle is None:
                error = f"Run {request.run_id!r} is not running in engine {self.id!r} any more."
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
            with anyio.CancelScope(shield=True):
                await store.request(request.model_copy(update={"done_at": time.time(), "error": error}))
        finally:
            self._carrying.discard(request.request_id)
