"""One run of a compiled flow: its state, and the scheduler that runs it.

How tasks run without an anyio task each
-----------------------------------------
A *worker* is a coroutine that takes ready jobs (an execute or a revert) one
after the other. It drives a task's coroutine by hand inside the task's own
cancel scope: the first ``coro.send(None)`` runs the task up to its first real
await. A task that finishes without suspending (most small tasks) costs no
task spawn and no trip through the event loop. A task that suspends is awaited
by the same worker through ``_coro.resume``, and at that moment, if more jobs are
ready, helper workers are spawned so that every ready task starts at once.

A worker's revert jobs, and everything a failure sets off, belong to the
revert walker (``_walker``); external control is in ``_control``, checkpoint
passes and Periodic iterations in ``_passes``, and what a durable run writes
in ``_journal``. Those are functions over this module's ``RunCore``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.to_thread
from anyio.lowlevel import RunVar, checkpoint, checkpoint_if_cancelled

from ckflow._codec import encode
from ckflow._compile import LOOP, ROOT, TASK, ExecutionGraph, Node
from ckflow._errors import ResultNotSerializableError, RunStateError
from ckflow._events import DEBUG, ERROR, INFO, TASK_LOG, WARNING, Event, EventHub
from ckflow._failure import Failure, FailureKind
from ckflow._models import RegionReport, RunResult, TaskSummary, _LazyTasks
from ckflow._region import Action
from ckflow._runtime._context import CURRENT, TaskContext
from ckflow._runtime._control import reach_barrier, request_cancel
from ckflow._runtime._coro import resume
from ckflow._runtime._otel import RunTelemetry, capture_context, telemetry_for
from ckflow._runtime._passes import iteration_done, record_pass, scopes_progress, sleep
from ckflow._runtime._walker import Region, member_settled, on_failure, queue_revert, record_region, revert, settle
from ckflow._states import (
    FAILURE,
    PENDING,
    REVERT_FAILURE,
    RUNNING,
    SUCCESS,
    TASK_TRANSITIONS,
    TERMINAL,
    FlowState,
    TaskState,
    check_flow_transition,
    check_task_transition,
)

if TYPE_CHECKING:
    from ckflow._durable._journal import Journal

__all__ = ["RunCore", "thread_limiter"]


#: a worker that ran this many jobs without suspending lets the event loop breathe
_FAIRNESS_STEPS: Final = 128

_THREADS: RunVar[anyio.CapacityLimiter] = RunVar("ckflow_threads")


def thread_limiter() -> anyio.CapacityLimiter:
    """ckflow's own limiter for plain ``def`` tasks, one per event loop (40 threads)."""
    try:
        return _THREADS.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(40)
        _THREADS.set(limiter)
        return limiter


class RunCore:
    """The state and the machinery of one run. The public handle is ``ckflow.Run``."""

    def __init__(
        self,
        graph: ExecutionGraph,
        run_id: str,
        inputs: Mapping[str, Any],
        *,
        max_concurrency: int | None = None,
        on_event: Callable[[Event], object] | None = None,
    ) -> None:
        self.graph = graph
        self.nodes: list[Node] = graph.nodes
        self.run_id = run_id
        self.flow = graph.flow_name
        self.inputs = dict(inputs)
        self.limit = max_concurrency or 0
        self.hub = EventHub(run_id, graph.flow_name)
        #: OpenTelemetry spans and metrics of the run (None unless the otel extra and a provider are there)
        self.telemetry: RunTelemetry | None = None
        #: the W3C traceparent of the run's first span, recorded with a durable run: its resumptions continue it
        self.traceparent: str | None = None
        if on_event is not None:
            self.hub.add_callback(on_event)
        n = len(graph.nodes)
        self.total = n
        self.state: list[TaskState] = [PENDING] * n
        self.waiting: list[int] = [len(node.preds) for node in graph.nodes]
        self.queued = bytearray(n)
        #: 1 while the node's revert waits in revert_ready, so that merging regions never queue it twice
        self.revert_queued = bytearray(n)
        self.values: dict[str, Any] = {}
        self.results: list[Any] = [None] * n
        self.kwargs: list[dict[str, Any] | None] = [None] * n
        self.executions: list[int] = [0] * n
        self.started: list[float | None] = [None] * n
        self.ended: list[float | None] = [None] * n
        self.rev_started: dict[int, float] = {}
        self.rev_ended: dict[int, float] = {}
        self.region_of: list[Region | None] = [None] * n
        self.failures: list[Failure] = []
        self.reports: list[RegionReport] = []
        #: (node, scope) -> retries of that node by that checkpoint in its current activation
        self.retries: dict[tuple[int, int], int] = {}
        #: scope -> failures of earlier attempts in its current activation
        self.history: dict[int, list[Failure]] = {}
        #: scope -> time.monotonic() of its first failure in this activation (for Retry.timeout)
        self.first_failure: dict[int, float] = {}
        #: node -> report whose retry_at its next execute sets
        self.retry_watch: dict[int, RegionReport] = {}
        self.cancel_requested: set[int] = set()
        self.exec_scopes: dict[int, anyio.CancelScope] = {}
        self.regions: set[Region] = set()
        self.root_region: Region | None = None
        #: goto(): the members of the checkpoint's scope, which nothing may start until resume()
        self.barrier: frozenset[int] = frozenset()
        self.ready: deque[int] = deque()
        self.revert_ready: deque[int] = deque()
        self.executing = 0
        self.reverting = 0
        self.n_success = 0
        self.idle_helpers = 0
        #: workers inside their loop now
        self.workers = 0
        self.halted = False
        self.failure_mode = False
        self.flow_state = FlowState.PENDING
        self.stop_on_suspend = False
        self.t_start = 0.0
        self.t_end = 0.0
        self.limiter: anyio.CapacityLimiter | None = None
        #: the running async library's CancelScope class (set in ``main``)
        self.scope_class: type[anyio.CancelScope] = anyio.CancelScope
        self.tg: anyio.abc.TaskGroup | None = None
        self.settled = anyio.Event()
        self.terminal = anyio.Event()
        self.suspended = anyio.Event()
        self._result: RunResult | None = None
        #: durable runs: the journal of changes not yet in the store (None: in memory only, or ended)
        self.journal: Journal | None = None
        #: the run is kept in a store (its journal goes once the run has ended; this stays)
        self.durable = False
        #: durable runs: each task's last result as JSON text, kept until the task is reset
        self.encoded: list[str | None] = [None] * n
        #: durable runs: the journal generation whose commit releases the node's successors (0: none)
        self.hold_gen: list[int] = [0] * n
        #: goto(): the checkpoint the run is going to
        self.goto_name: str | None = None
        self.region_ids = 0
        #: why this engine stopped running the run (shut down, lease lost, store failed); None while it runs
        self.stopped: BaseException | None = None
        self.stop_signalled = False
        #: the store failed or the lease was lost: nothing more is written
        self.journal_dead = False
        n_scopes = len(graph.scopes)
        #: scope -> the number of its current pass (activation), from 1
        self.pass_no = [1] * n_scopes
        #: scope -> time.monotonic() at the start of its current pass (0: the run's start)
        self.pass_start = [0.0] * n_scopes
        #: scope -> the sequence number of the run's first event in its current pass
        self.pass_seq = [0] * n_scopes
        #: durable runs: scope -> its tasks (and Periodic gates) that are not SUCCESS now
        self.remaining = list(graph.scope_sizes)
        #: scope -> its retained passes: (pass, completed at, first seq, started at), wall-clock times
        self.retained: dict[int, deque[tuple[int, float, int, float]]] = {}
        #: Periodic scope -> its current iteration, from 1
        self.iteration = dict.fromkeys(graph.loops.values(), 1)
        #: Periodic scope -> the cancel scope of its wait for the next iteration
        self.sleepers: dict[int, anyio.CancelScope] = {}
        #: Periodic scope -> seconds still to wait, for waits set up before the run's task group exists
        self.deferred_sleeps: dict[int, float] = {}

    def start_telemetry(self, traceparent: str | None = None) -> None:
        """Open the run's OpenTelemetry span (if tracing or metrics are on): under the span current here, where
        the run is started, or under ``traceparent``, the recorded span of a durable run resumed here."""
        telemetry = self.telemetry = telemetry_for(self)
        if telemetry is not None:
            telemetry.run_started(capture_context(), traceparent)
            self.traceparent = traceparent or telemetry.traceparent()

    # -- transitions -------------------------------------------------------------

    def transition(self, n: int, new: TaskState, *, log: bool = True) -> int | None:
        """Move task ``n`` to ``new`` (checked against the table); returns its event's seq (durable runs).

        ``log=False``: the transition's log line is written by the caller (a failure's, with the walker's
        decision: ``_log_failure``).
        """
        old = self.state[n]
        if (old, new) not in TASK_TRANSITIONS:
            check_task_transition(self.nodes[n].name, old, new)
        self.state[n] = new
        seq: int | None = None
        journal = self.journal
        if journal is not None:
            result = self.results[n] if new is FAILURE or new is REVERT_FAILURE else None
            seq = journal.transition(n, old, new, self.attempt(n), result if isinstance(result, Failure) else None)
        telemetry = self.telemetry
        if telemetry is not None:
            telemetry.transition(n, old, new)
        level = ERROR if new is REVERT_FAILURE else DEBUG
        hub = self.hub
        if hub.listening or TASK_LOG.isEnabledFor(level):
            node = self.nodes[n]
            failure = self.results[n] if new is FAILURE or new is REVERT_FAILURE else None
            hub.emit(
                level,
                f"ckflow.task.{new.lower()}",
                log=log,
                task=node.name,
                old=old,
                new=new,
                attempt=self.attempt(n),
                checkpoint=self.graph.scopes[node.scope].name,
                failure=failure if isinstance(failure, Failure) else None,
                seq=seq,
            )
        return seq

    def log_failure(self, n: int, failure: Failure, level: int, seq: int | None) -> None:
        """Write task ``n``'s failure to the log at ``level`` (INFO: its checkpoint retries it; WARNING: it
        escalates or ends the run), once the loop goes round: the walker has started its revert by then."""
        node = self.nodes[n]
        self.hub.hold_log(
            level,
            "ckflow.task.failure",
            task=node.name,
            old=RUNNING,
            new=FAILURE,
            attempt=failure.attempt,
            checkpoint=self.graph.scopes[node.scope].name,
            failure=failure,
            seq=seq,
        )

    def set_flow(self, new: FlowState) -> None:
        old = self.flow_state
        check_flow_transition(self.flow, old, new)
        self.flow_state = new
        if self.telemetry is not None:
            self.telemetry.run_transition(old, new)
        level = INFO
        if new is FlowState.FAILURE:
            level = ERROR
        elif new is FlowState.REVERTED and self.root_region is not None and self.root_region.report.cause is not None:
            level = WARNING  # a failure reached the root (a cancel that reverts everything is no failure)
        self.event(f"ckflow.run.{new.lower()}", level, old=old, new=new)

    def event(self, name: str, level: int = INFO, **fields: Any) -> None:
        """Emit a run, walker or control event (and record it, for a durable run)."""
        seq = None if self.journal is None else self.journal.event(name, fields)
        if self.telemetry is not None:
            self.telemetry.event(name, fields)
        if self.hub.wants(level, name):
            self.hub.emit(level, name, seq=seq, **fields)

    # -- attempts ------------------------------------------------------------------

    def attempt_under(self, n: int, scope: int) -> int:
        return 1 + self.retries.get((n, scope), 0)

    def attempt(self, n: int) -> int:
        return 1 + self.retries.get((n, self.nodes[n].scope), 0) if self.retries else 1

    def timed_out(self, scope: int) -> bool:
        checkpoint = self.graph.scopes[scope].checkpoint
        if checkpoint is None or checkpoint.retry.timeout is None:
            return False
        first = self.first_failure.setdefault(scope, time.monotonic())
        return time.monotonic() - first >= checkpoint.retry.timeout

    def task_context(self, n: int) -> TaskContext:
        scope = self.nodes[n].scope
        return TaskContext(
            self.run_id,
            self.nodes[n].name,
            self.attempt(n),
            self.graph.scopes[scope].name,
            tuple(self.history.get(scope, ())),
            self.iteration_of(n),
        )

    # -- driving the run ---------------------------------------------------------

    async def main(self, *, stop_on_suspend: bool = False) -> RunResult:
        """Run to the end (or to SUSPENDED if asked); revert everything if cancelled from outside."""
        self.stop_on_suspend = stop_on_suspend
        self.limiter = thread_limiter()
        # The event loop's own cancel-scope class, looked up once: anyio.CancelScope() asks which async
        # library runs (sniffio) and for its backend on every call, some 40 % of a scope's cost per task.
        self.scope_class = type(anyio.CancelScope())
        telemetry = self.telemetry
        self.t_start = time.monotonic()
        self.pass_start = [start or self.t_start for start in self.pass_start]
        if self.flow_state is FlowState.PENDING and self.root_region is None:
            self.set_flow(FlowState.RUNNING)
            self._start_ready()
        elif self.flow_state is FlowState.RUNNING:
            self._start_ready()  # a run resumed from its store
        try:
            await self._drive(self.settled)
        except anyio.get_cancelled_exc_class():
            if self.flow_state in TERMINAL:
                # The cancellation arrived once the run had ended (its task group was closing): the work is
                # done, or undone, and the caller gets the result rather than a cancellation that would leave
                # it unknown.
                return self.result()
            if self.journal is not None:
                # A durable run is only interrupted here: it stays in its store, as it is, for this or
                # another engine to resume. Nothing is reverted for it.
                self.stop(None)
            else:
                # The caller hung up: undo everything that ran, then let the cancellation go on.
                request_cancel(self, spawn=False)
            await self._drive_to_end()
            raise
        finally:
            if telemetry is not None:
                telemetry.run_ended(self.flow_state, self.stopped)
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
                await self._drive(self.terminal)
                return
            ending = loop.create_task(self._drive(self.terminal), name=f"ckflow run {self.run_id} ending")
            while True:
                try:
                    await asyncio.shield(ending)
                    return
                except asyncio.CancelledError:
                    if ending.done():
                        ending.result()  # the end itself was cancelled (it never is): say so
                        return

    def _start_ready(self) -> None:
        """Queue every task that waits for nothing (at the start, and when a run resumes)."""
        state, waiting, region_of = self.state, self.waiting, self.region_of
        for n in range(self.total):
            if waiting[n] == 0 and state[n] is PENDING and region_of[n] is None:
                self.make_ready(n)

    async def _drive(self, until: anyio.Event) -> None:
        try:
            async with anyio.create_task_group() as tg:
                self.tg = tg
                for scope, delay in self.deferred_sleeps.items():
                    sleep(self, scope, delay)
                self.deferred_sleeps.clear()
                self.maybe_finish()
                await self.worker()
                await until.wait()
        finally:
            self.tg = None

    async def _helper(self) -> None:
        self.idle_helpers -= 1
        await self.worker()

    def spawn_helpers(self) -> None:
        """Called when a worker's task suspends: make sure every ready job has a worker."""
        jobs = len(self.revert_ready)
        if not self.halted:
            ready = len(self.ready)
            if self.limit:
                ready = min(ready, max(self.limit - self.executing, 0))
            jobs += ready
        journal = self.journal
        if journal is not None and journal.pending and not journal.flushing and not self.journal_dead:
            jobs += 1  # a write: a worker that finds nothing ready writes the journal
        tg = self.tg
        if tg is None:
            return
        for _ in range(jobs - self.idle_helpers):
            self.idle_helpers += 1
            tg.start_soon(self._helper)

    def kick(self) -> None:
        """Start a worker for jobs that appeared outside any worker (control requests)."""
        if self.tg is not None and self.idle_helpers == 0:
            self.idle_helpers += 1
            self.tg.start_soon(self._helper)

    async def worker(self) -> None:
        self.workers += 1
        try:
            await self._work()
        finally:
            self.workers -= 1

    async def _execute_apart(self, n: int) -> None:
        """A shielded task's execute, in a task of its own (see ``_work``); then this task works on as a worker."""
        self.workers += 1
        try:
            await self._run_execute(n)
            await self._work()
        finally:
            self.workers -= 1

    async def _work(self) -> None:
        """Run ready jobs until none is left, under one cancel scope for the plain tasks this worker runs.

        One scope a worker, not one a task: entering and leaving an anyio scope is most of what a no-op task
        costs. It is entered before any task's first step, so scopes a task opens nest inside it, and only
        the task running in this worker is inside it at any time, so cancelling it (the walker, an engine
        that stops the run) cancels that task alone. After such a cancel the worker goes on under a fresh
        scope. Tasks with a timeout or ``shield=True`` get a scope of their own.
        """
        while True:
            with self.scope_class() as scope:
                if await self._work_in(scope):
                    return
            # the task this worker ran was cancelled through its scope: a fresh scope for the next ones

    async def _work_in(self, scope: anyio.CancelScope) -> bool:
        """Run ready jobs under ``scope``: True once none is left, False after a task cancelled through it."""
        steps = 0
        revert_ready = self.revert_ready
        ready = self.ready
        region_of = self.region_of
        state = self.state
        queued = self.queued
        waiting = self.waiting
        nodes = self.nodes
        while True:
            journal = self.journal
            if (
                journal is not None
                and (revert_ready or ready)
                and journal.lease_until <= time.monotonic()
                and self.stopped is None
            ):
                # This engine's lease may have lapsed (it stalled, and another engine may run the run now):
                # nothing starts before the store says the run is still ours.
                await journal.confirm_lease()
                continue
            if revert_ready:
                await revert(self, revert_ready.popleft())
            else:
                n = -1
                if not (self.halted or self.stopped is not None or (self.limit and self.executing >= self.limit)):
                    while ready:
                        candidate = ready.popleft()
                        queued[candidate] = 0
                        # (a task queued before a region reset its predecessors waits for them again)
                        if region_of[candidate] is None and state[candidate] is PENDING and not waiting[candidate]:
                            if candidate in self.barrier:
                                reach_barrier(self, candidate)
                                break
                            n = candidate
                            break
                if n < 0:
                    # Nothing to run: write what the run changed (its successors may wait for it), then
                    # look again. One write of a run is in flight at a time; what arrives meanwhile
                    # waits for the next one (group commit).
                    journal = self.journal
                    if journal is not None and journal.pending and not journal.flushing and not self.journal_dead:
                        await journal.flush()
                        continue
                    return True
                node = nodes[n]
                tg = self.tg
                if node.shield and tg is not None:
                    # A shielded task runs in a task of its own: a plain asyncio cancellation of the task that
                    # runs this worker (asyncio.timeout around ckflow.run, say) cannot be shielded inside it.
                    self._begin(n)
                    tg.start_soon(self._execute_apart, n)
                else:
                    self._begin(n)
                    await self._run_execute(n, None if node.timeout is not None or node.shield else scope)
                    if scope.cancel_called:
                        return False
            steps += 1
            if steps >= _FAIRNESS_STEPS:
                steps = 0
                journal = self.journal
                if journal is not None and journal.urgent and not journal.flushing:
                    await journal.flush()  # a long stretch of ready work must not keep its successors waiting
                else:
                    await checkpoint()

    def make_ready(self, n: int) -> None:
        """``n`` has no unfinished predecessor: queue it, or pass straight through a join."""
        if self.region_of[n] is not None:
            return
        nodes = self.nodes
        if nodes[n].kind == TASK:
            if not self.queued[n]:
                self.queued[n] = 1
                self.ready.append(n)
            return
        stack = [n]
        while stack:
            j = stack.pop()
            if nodes[j].kind == LOOP and not iteration_done(self, j):
                continue  # the Periodic goes round again; what follows it waits
            # A join does no work: it succeeds the moment its last predecessor has.
            self.state[j] = SUCCESS
            self.n_success += 1
            if nodes[j].kind == LOOP and nodes[j].chain and self.journal is not None:
                scopes_progress(self, nodes[j].chain)
            for s in nodes[j].succs:
                w = self.waiting[s] - 1
                self.waiting[s] = w
                if w == 0 and self.region_of[s] is None:
                    if nodes[s].kind != TASK:
                        stack.append(s)
                    elif not self.queued[s]:
                        self.queued[s] = 1
                        self.ready.append(s)
        if self.n_success == self.total:
            self.maybe_finish()

    # -- execute -----------------------------------------------------------------

    def task_inputs(self, node: Node) -> dict[str, Any]:
        kw: dict[str, Any] = dict(node.const_in) if node.const_in else {}
        if node.value_in:
            values = self.values
            for param, name in node.value_in:
                kw[param] = values[name]
        if node.input_in:
            inputs = self.inputs
            for param, name, _required in node.input_in:
                if name in inputs:
                    kw[param] = inputs[name]
        return kw

    def start_call(self, call: Callable[[dict[str, Any]], Any], kw: dict[str, Any], is_async: bool) -> Any:
        if is_async:
            return call(kw)
        return anyio.to_thread.run_sync(partial(call, kw), limiter=self.limiter)

    def _begin(self, n: int) -> None:
        """``n`` starts: RUNNING, counted, timed."""
        self.transition(n, RUNNING)
        self.executions[n] += 1
        self.executing += 1
        t0 = self.started[n] = time.monotonic()
        if self.retry_watch:
            report = self.retry_watch.pop(n, None)
            if report is not None and report.retry_at is None:
                report.retry_at = t0
                if self.telemetry is not None:
                    self.telemetry.retry_latency(report)

    async def _run_execute(self, n: int, shared: anyio.CancelScope | None = None) -> None:
        """The execute of ``n``, which has begun (``_begin``), to its outcome.

        ``shared``: the worker's scope, which this task runs in (see ``_work``); None for a scope of its own.
        """
        node = self.nodes[n]
        task = node.task
        assert task is not None
        if shared is None:
            # The cancel scope is entered before the task's first step, so that any scope or task group the
            # task itself opens nests inside it; anyio needs scopes to exit in the reverse order of entry.
            deadline = math.inf if node.timeout is None else anyio.current_time() + node.timeout
            # shield=True: the task is awaited, never cut short, whoever cancels (the walker, the caller of
            # ckflow.run, an engine that shuts down); its own timeout still applies.
            scope = self.scope_class(deadline=deadline, shield=node.shield)
            scope.__enter__()
        else:
            scope = shared
        error: Exception | None = None
        value: Any = None
        token = CURRENT.set((self, n))
        telemetry = self.telemetry
        otel_token = None if telemetry is None else telemetry.attach(n)
        try:
            try:
                try:
                    kw = self.kwargs[n] = self.task_inputs(node)
                    coro = self.start_call(task._call_execute, kw, node.is_async)
                    try:
                        yielded = coro.send(None)
                    except StopIteration as stop:
                        value = stop.value
                    else:
                        # The task suspended: from here on it can be cancelled, and other ready
                        # jobs need workers of their own.
                        self.exec_scopes[n] = scope
                        self.spawn_helpers()
                        value = await resume(coro, yielded)
                except Exception as exc:
                    error = exc
            except BaseException as exc:
                if shared is None:
                    if not scope.__exit__(type(exc), exc, exc.__traceback__):
                        raise
                elif not scope.cancel_called:
                    raise
                else:
                    # The worker's scope was cancelled for this task: its cancellation goes on to the scope,
                    # which ends it; the task's outcome is settled below, as for a scope of its own.
                    self._settle_execute(n, scope, None, None)
                    raise
            else:
                if shared is None:
                    scope.__exit__(None, None, None)
        except BaseException:
            # An enclosing scope (the caller of ckflow.run, the engine) cancelled the run itself.
            if self.state[n] is RUNNING:
                self.exec_scopes.pop(n, None)
                if self.journal is not None:
                    self._interrupted(n)
                else:
                    self._cancelled(n, "the run was cancelled from outside")
            raise
        finally:
            if telemetry is not None:
                telemetry.detach(otel_token)
            CURRENT.reset(token)
        if node.shield and self.journal is None and anyio.current_effective_deadline() == -math.inf:
            # The run's caller was cancelled while this task ran shielded: the run is cancelled, and everything
            # that ran, this task included, is reverted; its late success must not end the run SUCCESS, a
            # result its caller will never see.
            request_cancel(self, spawn=False)
        self._settle_execute(n, scope, error, value)
        if node.shield:
            # A cancellation of the run (its caller, its engine) waited for this task: it applies now, before
            # anything else starts.
            await checkpoint_if_cancelled()

    def _settle_execute(self, n: int, scope: anyio.CancelScope, error: Exception | None, value: Any) -> None:
        """The execute of ``n`` has returned, raised or been cancelled through ``scope``: record its outcome."""
        if self.exec_scopes:
            self.exec_scopes.pop(n, None)
        if self.stopped is not None and self.journal is not None and scope.cancel_called:
            # Cancelled because this engine stopped running the run: owed an execution, not a revert.
            self.cancel_requested.discard(n)
            self._interrupted(n)
        elif n in self.cancel_requested:
            self.cancel_requested.discard(n)
            self._cancelled(n, "cancelled by the revert walker")
        elif scope.cancel_called and self.nodes[n].timeout is not None:
            # The deadline passed; a task that ignored it (a thread cannot be interrupted) still timed out.
            name, timeout = self.nodes[n].name, self.nodes[n].timeout
            self._fail(n, TimeoutError(f"task {name!r} timed out after {timeout} s"), "timeout")
        elif error is not None:
            self._fail(n, error, "execute")
        else:
            self._succeed(n, value)

    def _succeed(self, n: int, value: Any) -> None:
        node = self.nodes[n]
        journal = self.journal
        if journal is not None:
            try:
                self.encoded[n] = encode(value)
            except TypeError as exc:
                error = ResultNotSerializableError(node.name, type(value).__qualname__, str(exc), value=value)
                self._fail(n, error, "execute")
                return
        provides = node.provides
        if provides:
            if len(provides) == 1:
                self.values[provides[0]] = value
            else:
                try:
                    unpacked = _unpack(node.name, provides, value)
                except (TypeError, KeyError) as exc:
                    self._fail(n, exc, "execute")
                    return
                self.values.update(unpacked)
        self.results[n] = value
        self.transition(n, SUCCESS)
        self.executing -= 1
        self.ended[n] = time.monotonic()
        self.n_success += 1
        region = self.region_of[n]
        if region is not None:
            # A shielded member finished while its region reverts: now revert it too.
            member_settled(self, region, n)
            self.maybe_finish()
            return
        if journal is not None:
            # The successors start once the result is in the store.
            self.hold_gen[n] = journal.gen
            journal.hold(n)
            if node.chain:
                scopes_progress(self, node.chain)
        else:
            self._release(n)
        if self.n_success == self.total or self.halted:
            self.maybe_finish()

    def _release(self, n: int) -> None:
        """``n`` succeeded (durably, for a durable run): its successors have one predecessor less to wait for."""
        waiting = self.waiting
        for s in self.nodes[n].succs:
            w = waiting[s] - 1
            waiting[s] = w
            if w == 0:
                self.make_ready(s)

    def _interrupted(self, n: int) -> None:
        """A durable run stops in this engine while ``n`` executes: ``n`` is owed an execution, not a revert."""
        self.results[n] = None
        self.transition(n, PENDING)
        self.executing -= 1
        self.maybe_finish()

    def committed(self, gen: int, held: list[int], held_regions: list[Region], after: list[Callable[[], None]]) -> None:
        """The journal's generation ``gen`` is in the store: release what waited for it."""
        state, region_of, hold_gen = self.state, self.region_of, self.hold_gen
        for n in held:
            # A node reverted (and maybe run again) since it was held is no longer this generation's.
            if hold_gen[n] == gen:
                hold_gen[n] = 0
                if state[n] is SUCCESS and region_of[n] is None:
                    self._release(n)
        for region in held_regions:
            if region.gen == gen:
                region.gen = 0
                if region in self.regions:
                    for m in region.held:
                        queue_revert(self, m)
                region.held.clear()
        for callback in after:
            callback()
        self.maybe_finish()

    def _fail(self, n: int, exc: BaseException, kind: FailureKind) -> None:
        # The failure's moment is now, before recording and logging it: latencies count from here.
        failed_at = self.ended[n] = time.monotonic()
        node = self.nodes[n]
        failure = Failure.from_exception(node.name, kind, exc, self.attempt(n))
        self.failures.append(failure)
        self.results[n] = failure
        seq = self.transition(n, FAILURE, log=False)
        self.executing -= 1
        region = self.region_of[n]
        if region is not None:
            # A failure inside a region that is already reverting joins that region.
            self.log_failure(n, failure, INFO if region.action is Action.RETRY else WARNING, seq)
            region.failures.append(failure)
            record_region(self, region)
            member_settled(self, region, n)
        elif not self.failure_mode and self.stopped is None:
            on_failure(self, n, exc, failure, failed_at, seq)
        else:
            self.log_failure(n, failure, WARNING, seq)
        self.maybe_finish()

    def _cancelled(self, n: int, why: str) -> None:
        failure = Failure.cancellation(self.nodes[n].name, self.attempt(n), why)
        self.results[n] = failure
        self.transition(n, FAILURE)
        self.executing -= 1
        self.ended[n] = time.monotonic()
        region = self.region_of[n]
        if region is not None:
            member_settled(self, region, n)
        self.maybe_finish()

    def cancel_waits(self) -> None:
        """Cancel every backoff and every wait for a Periodic's next iteration."""
        for region in self.regions:
            if region.backoff is not None:
                region.backoff.cancel()
        for sleeper in self.sleepers.values():
            sleeper.cancel()
        self.sleepers.clear()

    def stop(self, reason: BaseException | None) -> None:
        """Stop running the run in this engine, leaving it in its store for this or another engine to resume.

        Running executes are cancelled (they will run again on resume), running
        reverts finish, nothing new starts and nothing is reverted for it.
        ``reason`` is None when the engine shuts down (what changed is still
        written), or the store error after which nothing more may be written.
        """
        if self.stopped is not None or (reason is None and self.flow_state in TERMINAL):
            return
        if reason is None:
            reason = RunStateError(
                f"Run {self.run_id!r} was stopped in this engine when it shut down; it stays in its store, "
                f"to be resumed with `engine.resume({self.run_id!r})`."
            )
        else:
            self.journal_dead = True
        self.stopped = reason
        for n in self.revert_ready:
            self.revert_queued[n] = 0
        self.revert_ready.clear()
        for region in self.regions:
            region.held.clear()  # reverts that waited for a commit: the engine that resumes the run does them
        self.cancel_waits()
        for n, scope in self.exec_scopes.items():
            if not self.nodes[n].shield:
                scope.cancel()
        self.event("ckflow.run.stopped", WARNING, detail={"reason": str(reason)})
        self.kick()
        self.maybe_finish()

    # -- checkpoint passes and Periodic iterations -----------------------------------

    def retries_of(self, n: int) -> dict[str, int]:
        """Checkpoint name -> how often that checkpoint retried task ``n`` in its current activation."""
        if not self.retries:
            return {}
        scopes = self.graph.scopes
        found: dict[str, int] = {}
        for s in self.graph.scope_chain(n):
            count = self.retries.get((n, s))
            if count:
                found[scopes[s].name] = count
        return found

    def iteration_of(self, n: int) -> int:
        """The iteration of ``n``'s innermost Periodic (0 outside any)."""
        for s in self.nodes[n].chain:
            it = self.iteration.get(s)
            if it is not None:
                return it
        return 0

    # -- control ---------------------------------------------------------------

    # -- the end -----------------------------------------------------------------

    def maybe_finish(self) -> None:
        if self.executing or self.reverting or self.revert_ready:
            return
        for region in self.regions:
            if region.held:
                return  # its reverts wait for the region's record to be committed: the run is not idle
        if self.flow_state in TERMINAL:
            return
        if self.stopped is not None:
            if not self.stop_signalled:
                self.stop_signalled = True
                self.after_commit(self.finish_events)
            return
        if self.failure_mode:
            self.finish(FlowState.FAILURE)
        elif self.root_region is not None:
            if self.root_region.outstanding == 0:
                self.finish(FlowState.REVERTED)
        elif self.n_success == self.total:
            self.finish(FlowState.SUCCESS)
        elif self.halted and self.flow_state is FlowState.RUNNING:
            self.set_flow(FlowState.SUSPENDED)
            suspended, settled = self.suspended, self.settled

            def signal() -> None:
                suspended.set()
                if self.stop_on_suspend:
                    settled.set()

            self.after_commit(signal)

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once what the run changed is in its store (at once for a run without one)."""
        journal = self.journal
        if journal is None or self.journal_dead:
            callback()
        else:
            journal.on_commit(callback)
            if not self.workers:
                # Nothing executes now (the run is idle or ending), so a running worker is between jobs or
                # writing, and writes this before it returns: only without one is a worker needed.
                self.kick()

    def finish(self, state: FlowState) -> None:
        self.set_flow(state)
        self.t_end = time.monotonic()
        if state is FlowState.SUCCESS and self.journal is not None:
            record_pass(self, ROOT, completed=True)  # the root's snapshot: the run's outputs
        self.cancel_waits()
        self.after_commit(self.finish_events)

    def finish_events(self) -> None:
        # Everything of the run is in its store now: its journal (a dozen containers) can go.
        self.journal = None
        self.t_end = self.t_end or time.monotonic()
        self.hub.close()
        for region in self.regions:
            settle(region)  # a wait for a region the run's end left undone (a revert_to's) ends too
        self.settled.set()
        self.terminal.set()
        self.suspended.set()

    # -- reading -----------------------------------------------------------------

    def summary(self, n: int) -> TaskSummary:
        result = self.results[n]
        return TaskSummary(
            name=self.nodes[n].name,
            state=self.state[n],
            attempts=self.executions[n],
            started=self.started[n],
            ended=self.ended[n],
            revert_started=self.rev_started.get(n),
            revert_ended=self.rev_ended.get(n),
            failure=result if isinstance(result, Failure) else None,
        )

    def task_summaries(self) -> Mapping[str, TaskSummary]:
        return _LazyTasks(self.graph.index, self.summary)

    def result(self) -> RunResult:
        if self._result is not None and self.flow_state in TERMINAL:
            return self._result
        result = RunResult(
            run_id=self.run_id,
            flow=self.flow,
            state=self.flow_state,
            outputs=dict(self.values) if self.flow_state is FlowState.SUCCESS else {},
            tasks=self.task_summaries(),
            failures=list(self.failures),
            regions=list(self.reports),
            duration=(self.t_end or time.monotonic()) - self.t_start,
        )
        if self.flow_state in TERMINAL:
            self._result = result
        return result


def _unpack(task: str, provides: tuple[str, ...], value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        missing = [p for p in provides if p not in value]
        if missing:
            raise KeyError(f"task {task!r} provides {list(provides)} but its returned mapping lacks {missing}")
        return {p: value[p] for p in provides}
    if isinstance(value, tuple | list) and len(value) == len(provides):
        return dict(zip(provides, value, strict=True))
    raise TypeError(
        f"task {task!r} provides {list(provides)}, so it must return a tuple of {len(provides)} values "
        f"or a mapping with those keys, not {type(value).__name__}"
    )
