"""One run of a compiled flow: its parts, wired together, and what the run does as a whole.

A run is composed of parts that own their state (see docs/architecture.md):

- ``RunState``: per-node arrays, the run's mode and its one transition function;
- ``Scheduler``: the ready queue and the workers that execute tasks;
- ``RevertWalker``: the regions being undone, their reverts, and what follows each;
- ``Passes``: checkpoint passes, retention and Periodic iterations;
- a ``Recorder``: the durability observer (the journal of a durable run, else a no-op).

``RunCore`` wires them, drives the run to its end, decides when it has ended,
and carries out control requests (cancel, suspend, resume, goto, revert_to).
The way a failure travels: the scheduler records it (``Scheduler._fail``), the
walker decides and opens a region (``RevertWalker.on_failure``), reverts it,
and retries it (``reset_region``), parks the run, or, at the root, the run
ends here (``maybe_finish``).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio

from ckflow._compile import ROOT
from ckflow._errors import RunStateError, UnknownCheckpointError
from ckflow._events import WARNING, Event
from ckflow._models import RunResult, TaskSummary, _LazyTasks
from ckflow._region import Action, scope_members
from ckflow._runtime import _task_view as task_view
from ckflow._runtime._context import TaskContext
from ckflow._runtime._faults import FaultyScheduler
from ckflow._runtime._otel import capture_context, telemetry_for
from ckflow._runtime._passes import Passes
from ckflow._runtime._recorder import NULL
from ckflow._runtime._regions import Region, settle
from ckflow._runtime._scheduler import NO_BARRIER, Scheduler
from ckflow._runtime._signal import Signal
from ckflow._runtime._state import RunMode, RunState
from ckflow._runtime._walker import RevertWalker
from ckflow._states import PENDING, TERMINAL, FlowState, TaskState

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from ckflow._compile import ExecutionGraph
    from ckflow._faults import RunFaults
    from ckflow._runtime._ports import TelemetryPort
    from ckflow._runtime._recorder import Recorder

__all__ = ["RunCore"]


class RunCore:
    """One run: its parts, its end, and its control. The public handle is ``ckflow.Run``."""

    def __init__(
        self,
        graph: ExecutionGraph,
        run_id: str,
        inputs: Mapping[str, Any],
        *,
        max_concurrency: int | None = None,
        on_event: Callable[[Event], object] | None = None,
        faults: RunFaults | None = None,
    ) -> None:
        run = self.run = RunState(graph, run_id, inputs, NULL)
        # what the engine and the handles read of the run, as plain attributes (they never change)
        self.graph = graph
        self.run_id = run_id
        self.flow = run.flow
        self.inputs = run.inputs
        self.hub = run.hub
        # The parts call back into the run, and the walker and the passes into the scheduler, through weak
        # proxies: a run that has ended is freed by reference counting, not left to the cyclic GC (a thousand
        # runs a second would otherwise make it walk the whole heap far more often).
        owner = weakref.proxy(self)
        self.passes = Passes(run)
        self.walker = RevertWalker(run, self.passes, owner)
        if faults is None:
            self.sched = Scheduler(run, self.walker, self.passes, owner, max_concurrency or 0)
        else:  # started inside ckflow.testing.inject_failures: the one check, made once per run
            self.sched = FaultyScheduler(run, self.walker, self.passes, owner, max_concurrency or 0, faults)
        self.passes.sched = self.walker.sched = weakref.proxy(self.sched)
        if on_event is not None:
            run.hub.add_callback(on_event)
        #: the W3C traceparent of the run's first span, recorded with a durable run: its resumptions continue it
        self.traceparent: str | None = None
        #: goto(): the checkpoint the run is going to
        self.goto_name: str | None = None
        #: ckflow.run(): a run that becomes SUSPENDED ends the drive (there is no handle to resume it with)
        self.stop_on_suspend = False
        self._stop_signalled = False
        #: the run's last write gave up its lease (``Batch.release``): the engine has none to release
        self.lease_released = False
        self.t_start = 0.0
        self.t_end = 0.0
        #: the run has ended (or this engine stopped running it)
        self.terminal = Signal()
        #: the run's drive may stop: when it ends, or also when it is SUSPENDED for ``ckflow.run``, which gives
        #: it a signal of its own (``main``); an engine's run shares ``terminal`` (a signal less a live run)
        self.settled = self.terminal
        self._suspended: Signal | None = None
        self._result: RunResult | None = None
        #: the run is kept in a store (its journal goes once the run has ended; this stays)
        self.durable = False

    # -- what the engine and the handles read ------------------------------------------

    @property
    def suspended(self) -> Signal:
        """Set once the run is SUSPENDED (or has ended); made on first use, as most runs are never waited on so."""
        suspended = self._suspended
        if suspended is None:
            suspended = self._suspended = Signal()
            if self.terminal.is_set():
                suspended.set()
        return suspended

    @property
    def state(self) -> list[TaskState]:
        return self.run.state

    @property
    def flow_state(self) -> FlowState:
        return self.run.flow_state

    @property
    def telemetry(self) -> TelemetryPort | None:
        return self.run.telemetry

    @property
    def stopped(self) -> BaseException | None:
        """Why this engine stopped running the run (shut down, lease lost, store failed); None while it runs."""
        return self.run.stopped

    @property
    def journal(self) -> Recorder | None:
        """The run's durability recorder (None for a run kept in memory only)."""
        recorder = self.run.recorder
        return recorder if recorder.durable else None

    @journal.setter
    def journal(self, recorder: Recorder) -> None:
        self.run.use(recorder)
        self.durable = recorder.durable

    @property
    def journal_dead(self) -> bool:
        """True once nothing more may be written (the store failed, or the lease was lost)."""
        return self.run.recorder.dead

    def start_telemetry(self, traceparent: str | None = None) -> None:
        """Open the run's OpenTelemetry span (if tracing or metrics are on): under the span current here, where
        the run is started, or under ``traceparent``, the recorded span of a durable run resumed here."""
        telemetry = self.run.telemetry = telemetry_for(self.run, self.walker.region_of)
        if telemetry is not None:
            telemetry.run_started(capture_context(), traceparent)
            self.traceparent = traceparent or telemetry.traceparent()

    def task_context(self, n: int) -> TaskContext:
        """What ``ckflow.current()`` gives the task ``n`` (inside its execute or revert)."""
        run = self.run
        scope = run.nodes[n].scope
        return TaskContext(
            run.run_id,
            run.nodes[n].name,
            run.attempt(n),
            run.graph.scopes[scope].name,
            tuple(run.history.get(scope, ())),
            self.passes.iteration_of(n),
        )

    # -- driving the run -------------------------------------------------------------

    async def main(self, *, stop_on_suspend: bool = False) -> RunResult:
        """Run to the end (or to SUSPENDED if asked); revert everything if cancelled from outside."""
        self.stop_on_suspend = stop_on_suspend
        if stop_on_suspend:
            self.settled = Signal()
        self.sched.prepare()
        run = self.run
        telemetry = run.telemetry
        self.t_start = time.monotonic()
        self.passes.pass_start = {s: start or self.t_start for s, start in self.passes.pass_start.items()}
        if run.flow_state is FlowState.PENDING and self.walker.root_region is None:
            run.set_flow(FlowState.RUNNING)
            self.sched.start_ready()
        elif run.flow_state is FlowState.RUNNING:
            self.sched.start_ready()  # a run resumed from its store
        try:
            await self.sched.drive(self.settled)
        except anyio.get_cancelled_exc_class():
            if run.flow_state in TERMINAL:
                # The cancellation arrived once the run had ended (its task group was closing): the work is
                # done, or undone, and the caller gets the result rather than a cancellation that would leave
                # it unknown.
                return self.result()
            if run.durable:
                # A durable run is only interrupted here: it stays in its store, as it is, for this or
                # another engine to resume. Nothing is reverted for it.
                self.stop(None)
            else:
                # The caller hung up: undo everything that ran, then let the cancellation go on.
                self.request_cancel(spawn=False)
            await self._drive_to_end()
            raise
        finally:
            if telemetry is not None:
                telemetry.run_ended(run.flow_state, run.stopped)
        return self.result()

    async def _drive_to_end(self) -> None:
        """Drive the run to its end (its reverts, after a cancellation), whatever this task receives meanwhile.

        A shielded cancel scope keeps anyio's cancellations out, but not a plain asyncio ``task.cancel()``,
        which uvicorn's shutdown and ``asyncio.run``'s clean-up send a second time while the first one is
        being handled: on asyncio the run's end is driven in a task of its own, which this task waits for,
        shielded, through every further cancellation. (The caller's cancellation goes on afterwards.)
        """
        with anyio.CancelScope(shield=True):
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # not asyncio: anyio's shield is the whole story
                await self.sched.drive(self.terminal)
                return
            ending = loop.create_task(self.sched.drive(self.terminal), name=f"ckflow run {self.run_id} ending")
            while True:
                try:
                    await asyncio.shield(ending)
                    return
                except asyncio.CancelledError:
                    if ending.done():
                        ending.result()  # the end itself was cancelled (it never is): say so
                        return

    def caller_gone(self) -> None:
        """The caller of ckflow.run was cancelled while a shielded task ran: the run is cancelled too."""
        self.request_cancel(spawn=False)

    def stop(self, reason: BaseException | None) -> None:
        """Stop running the run in this engine, leaving it in its store for this or another engine to resume.

        Running executes are cancelled (they will run again on resume), running
        reverts finish, nothing new starts and nothing is reverted for it.
        ``reason`` is None when the engine shuts down (what changed is still
        written), or the store error after which nothing more may be written.
        """
        run = self.run
        if run.stopped is not None or (reason is None and run.flow_state in TERMINAL):
            return
        if reason is None:
            reason = RunStateError(
                f"Run {run.run_id!r} was stopped in this engine when it shut down; it stays in its store, "
                f"to be resumed with `engine.resume({run.run_id!r})`."
            )
        else:
            run.recorder.kill()
        run.stop(reason)
        walker = self.walker
        for n in walker.revert_ready:
            walker.revert_queued[n] = 0
        walker.revert_ready.clear()
        for region in walker.regions:
            region.held.clear()  # reverts that waited for a commit: the engine that resumes the run does them
        walker.cancel_waits()
        for n, scope in self.sched.exec_scopes.items():
            if not run.nodes[n].shield:
                scope.cancel()
        run.event("ckflow.run.stopped", WARNING, detail={"reason": str(reason)})
        self.sched.kick()
        self.maybe_finish()

    # -- the end -----------------------------------------------------------------------

    def maybe_finish(self) -> None:
        """The run may have become idle: end it (SUCCESS, REVERTED, FAILURE), or suspend it, if it has."""
        sched, walker, run = self.sched, self.walker, self.run
        if sched.executing or not walker.idle or run.flow_state in TERMINAL:
            return
        if run.mode is RunMode.STOPPED:
            if not self._stop_signalled:
                self._stop_signalled = True
                sched.after_commit(self._finish_events)
            return
        root = walker.root_region
        if run.mode is RunMode.FAILED:
            self._finish(FlowState.FAILURE)
        elif root is not None:
            if root.outstanding == 0:
                self._finish(FlowState.REVERTED, failed=root.report.cause is not None)
        elif sched.n_success == run.total:
            self._finish(FlowState.SUCCESS)
        elif run.mode is RunMode.HALTED and run.flow_state is FlowState.RUNNING:
            run.set_flow(FlowState.SUSPENDED)
            suspended, settled = self.suspended, self.settled

            def signal() -> None:
                suspended.set()
                if self.stop_on_suspend:
                    settled.set()

            sched.after_commit(signal)

    def _finish(self, state: FlowState, *, failed: bool = False) -> None:
        self.run.set_flow(state, failed=failed)
        self.t_end = time.monotonic()
        if state is FlowState.SUCCESS:
            self.passes.record_pass(ROOT, completed=True)  # the root's snapshot: the run's outputs
        self.walker.cancel_waits()
        self.sched.after_commit(self._finish_events)

    def _finish_events(self) -> None:
        # Everything of the run is in its store now: its journal (a dozen containers) can go.
        self.run.use(NULL)
        self.t_end = self.t_end or time.monotonic()
        self.run.hub.close()
        for region in self.walker.regions:
            settle(region)  # a wait for a region the run's end left undone (a revert_to's) ends too
        self.settled.set()
        self.terminal.set()
        if self._suspended is not None:
            self._suspended.set()

    # -- control -----------------------------------------------------------------------

    def _running_again(self) -> None:
        """A SUSPENDED run goes on: RUNNING, and a fresh event for the next suspension."""
        if self.run.flow_state is FlowState.SUSPENDED:
            self.run.set_flow(FlowState.RUNNING)
            self._suspended = None  # a fresh one for the next suspension
            if self.stop_on_suspend:
                self.settled = Signal()

    def request_cancel(self, *, spawn: bool = True) -> None:
        """Revert everything that ran; the run ends REVERTED. Idempotent."""
        run = self.run
        if run.flow_state in TERMINAL or run.failed or self.walker.root_region is not None:
            return
        run.event("ckflow.control.cancel")
        if run.flow_state is FlowState.PENDING:
            self._finish(FlowState.REVERTED)
            return
        if run.flow_state is FlowState.SUSPENDED:
            run.set_flow(FlowState.RUNNING)
            self._suspended = None  # a fresh one for the next suspension
        run.halt(False)
        for region in list(self.walker.regions):
            if region.parked:
                region.parked = False
                self.walker.record_region(region)
        self.walker.open_region(ROOT, set(range(run.total)), Action.END, None, None)
        if spawn:
            self.sched.kick()
        self.maybe_finish()

    def scope_named(self, name: str) -> int:
        """The scope id of checkpoint ``name``; ``UnknownCheckpointError`` naming the known ones otherwise."""
        graph = self.run.graph
        scope = graph.scope_index.get(name)
        if scope is None or scope == ROOT:
            known = sorted(s.name for s in graph.scopes[1:])
            raise UnknownCheckpointError(self.run_id, self.flow, name, known)
        return scope

    def _check_controllable(self, operation: str) -> None:
        run = self.run
        if run.stopped is not None:
            raise RunStateError(f"Run {run.run_id!r} cannot {operation} here: {run.stopped}")
        root = self.walker.root_region
        if run.flow_state in TERMINAL or run.failed or root is not None:
            raise RunStateError(
                f"Run {run.run_id!r} cannot {operation}: it is {run.flow_state}"
                f"{' and reverting everything' if root is not None else ''}."
            )

    def _unpark(self) -> None:
        for region in [r for r in self.walker.regions if r.parked]:
            region.parked = False
            self.walker.record_region(region)

    def request_revert_to(self, name: str, *, retry: bool) -> Region:
        """Revert what ran of checkpoint ``name``'s scope and downstream of it; then run it afresh or park there."""
        scope = self.scope_named(name)
        self._check_controllable(f"revert to {name!r}")
        run = self.run
        run.event("ckflow.control.revert_to", checkpoint=name, detail={"retry": retry})
        if run.flow_state is FlowState.SUSPENDED:
            run.set_flow(FlowState.RUNNING)
            self._suspended = None  # a fresh one for the next suspension
        self.sched.barrier = NO_BARRIER
        self.goto_name = None
        # retry=False parks the run at the checkpoint; retry=True goes on (also from a suspension).
        run.halt(not retry)
        self._unpark()
        # Going back to a checkpoint undoes what came after it too: the tasks that consumed the scope's values
        # (transitively) would otherwise keep values its next pass replaces. Other branches are untouched.
        members = self._with_downstream(set(scope_members(run.graph, scope)))
        # With nothing of the scope left to undo, the region is done at once: retried afresh, or parked.
        region = self.walker.open_region(scope, members, Action.SUSPEND, None, None, auto_resume=retry)
        self.sched.kick()
        self.maybe_finish()
        return region

    def _with_downstream(self, members: set[int]) -> set[int]:
        """``members`` and every node downstream of them."""
        nodes = self.run.nodes
        found = set(members)
        todo = list(members)
        while todo:
            for s in nodes[todo.pop()].succs:
                if s not in found:
                    found.add(s)
                    todo.append(s)
        return found

    def request_goto(self, name: str) -> None:
        """Run forward until checkpoint ``name`` is reached (or revert back to it), then suspend there."""
        scope = self.scope_named(name)
        self._check_controllable(f"go to {name!r}")
        run = self.run
        members = scope_members(run.graph, scope)
        if any(run.state[m] is not PENDING for m in members):
            self.request_revert_to(name, retry=False)
            return
        run.event("ckflow.control.goto", checkpoint=name)
        self.sched.barrier = frozenset(members)
        self.goto_name = name
        if run.flow_state is FlowState.SUSPENDED:
            # Suspended before the checkpoint: go forward to it.
            run.set_flow(FlowState.RUNNING)
            self._suspended = None  # a fresh one for the next suspension
        run.halt(False)
        self._ready_all()
        self.sched.kick()
        self.maybe_finish()

    def _ready_all(self) -> None:
        sched, state = self.sched, self.run.state
        for n in range(self.run.total):
            if state[n] is PENDING and sched.waiting[n] == 0:
                sched.make_ready(n)

    def reach_barrier(self, n: int) -> None:
        """A task of the goto checkpoint's scope is ready: the checkpoint is reached; suspend."""
        sched = self.sched
        sched.queued[n] = 1
        sched.ready.appendleft(n)
        self.run.halt(True)
        self.maybe_finish()

    def request_suspend(self) -> None:
        """Let running tasks finish and start nothing new; the run becomes SUSPENDED."""
        run = self.run
        if run.flow_state in TERMINAL or run.mode is not RunMode.RUNNING:
            return
        run.event("ckflow.control.suspend")
        run.halt(True)
        self.sched.kick()
        self.maybe_finish()

    def request_resume(self) -> None:
        """Go on after a suspension; a parked checkpoint starts a fresh budget."""
        run = self.run
        if run.flow_state in TERMINAL or run.mode is not RunMode.HALTED:
            return
        run.event("ckflow.control.resume")
        run.halt(False)
        self.sched.barrier = NO_BARRIER
        self.goto_name = None
        self._running_again()
        for region in [r for r in self.walker.regions if r.parked]:
            self.walker.reset_region(region, fresh=True)
        self._ready_all()
        self.sched.kick()

    # -- reading -----------------------------------------------------------------------

    def summary(self, n: int) -> TaskSummary:
        return task_view.summary(self.run, n)

    def task_summaries(self) -> Mapping[str, TaskSummary]:
        # built from the run's state, not through this object: a result kept here makes no reference cycle
        return _LazyTasks(self.run.graph.index, partial(task_view.summary, self.run))

    def result(self) -> RunResult:
        run = self.run
        if self._result is not None and run.flow_state in TERMINAL:
            return self._result
        result = RunResult(
            run_id=run.run_id,
            flow=run.flow,
            state=run.flow_state,
            # A run that succeeded changes its values no more: they are its outputs, not copied (S6: 38 B a task).
            outputs=run.values if run.flow_state is FlowState.SUCCESS else {},
            tasks=self.task_summaries(),
            failures=list(run.failures),
            regions=list(run.reports),
            duration=(self.t_end or time.monotonic()) - self.t_start,
            inputs=self.inputs,
        )
        if run.flow_state in TERMINAL:
            self._result = result
        return result
