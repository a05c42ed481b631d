"""The scheduler: the ready queue and the workers that run a run's executes (and its reverts' jobs).

How tasks run without an anyio task each
-----------------------------------------
A *worker* is a coroutine that takes ready jobs (an execute or a revert) one
after the other. It drives a task's coroutine by hand: the first
``coro.send(None)`` runs the task up to its first real await. A task that
finishes without suspending (most small tasks) costs no task spawn and no trip
through the event loop. A task that suspends is awaited by the same worker
through ``_coro.resume``, and at that moment, if more jobs are ready, helper
workers are spawned so that every ready task starts at once.

The scheduler owns the ready queue, each node's count of unfinished
predecessors, the workers and the cancel scopes of what executes. A task's
outcome goes to the run's state (``RunState.transition``); a failure to the
revert walker, which owns the revert jobs that workers also run.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.to_thread
from anyio.lowlevel import RunVar, checkpoint, checkpoint_if_cancelled

from ckflow._compile import LOOP, TASK
from ckflow._errors import ResultNotSerializableError
from ckflow._events import INFO, WARNING
from ckflow._failure import Failure, FailureKind
from ckflow._region import Action
from ckflow._runtime._context import CURRENT
from ckflow._runtime._coro import resume
from ckflow._runtime._state import UNSET, RunMode
from ckflow._states import FAILURE, PENDING, RUNNING, SUCCESS

if TYPE_CHECKING:
    from ckflow._runtime._passes import Passes
    from ckflow._runtime._ports import RunPort
    from ckflow._runtime._recorder import Recorder
    from ckflow._runtime._signal import Signal
    from ckflow._runtime._state import RunState
    from ckflow._runtime._walker import RevertWalker
    from ckflow._task import Task

__all__ = ["NO_BARRIER", "Scheduler", "thread_limiter"]


#: a worker that ran this many jobs without suspending lets the event loop breathe
_FAIRNESS_STEPS: Final = 128

#: no goto barrier: one shared empty frozenset (``frozenset()`` is a new object the cyclic GC tracks, each run)
NO_BARRIER: Final[frozenset[int]] = frozenset()

_THREADS: RunVar[anyio.CapacityLimiter] = RunVar("ckflow_threads")


def thread_limiter() -> anyio.CapacityLimiter:
    """ckflow's own limiter for plain ``def`` tasks, one per event loop (40 threads)."""
    try:
        return _THREADS.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(40)
        _THREADS.set(limiter)
        return limiter


class Scheduler:
    """The ready queue, the workers, and each execute from its start to its outcome."""

    __slots__ = (
        "__weakref__",
        "barrier",
        "cancel_requested",
        "exec_scopes",
        "executing",
        "graph",
        "idle_helpers",
        "limit",
        "limiter",
        "n_success",
        "owner",
        "passes",
        "queued",
        "ready",
        "run",
        "scope_class",
        "tg",
        "waiting",
        "walker",
        "workers",
    )

    def __init__(
        self,
        run: RunState,
        walker: RevertWalker,
        passes: Passes,
        owner: RunPort,
        max_concurrency: int,
    ) -> None:
        self.run = run
        self.walker = walker
        self.passes = passes
        #: the run: what ``ckflow.current()`` asks, and what this part calls back (it may have ended, ...)
        self.owner = owner
        self.limit = max_concurrency
        n = run.total
        #: the compiled graph, read by its columns (``graph.succs[n]``, ...), never through ``Node`` objects
        self.graph = graph = run.graph
        self.waiting: list[int] = graph.pred_counts[:]
        self.queued = bytearray(n)
        self.ready: deque[int] = deque()
        self.executing = 0
        self.n_success = 0
        self.idle_helpers = 0
        #: workers inside their loop now
        self.workers = 0
        #: nodes the revert walker cancelled; a dict of ints, not a set: the cyclic GC does not track it
        self.cancel_requested: dict[int, None] = {}
        self.exec_scopes: dict[int, anyio.CancelScope] = {}
        #: goto(): the members of the checkpoint's scope, which nothing may start until resume()
        self.barrier: frozenset[int] = NO_BARRIER
        self.limiter: anyio.CapacityLimiter | None = None
        self.tg: anyio.abc.TaskGroup | None = None
        #: the running async library's CancelScope class (set by ``prepare``)
        self.scope_class: type[anyio.CancelScope] = anyio.CancelScope
        #: the run's callbacks: it may have become idle (ended?); a goto's barrier was reached; the caller of
        #: ckflow.run was cancelled while a shielded task ran

    def prepare(self) -> None:
        """Look up, once per run, what every execute uses: the thread limiter and the cancel-scope class."""
        self.limiter = thread_limiter()
        # The event loop's own cancel-scope class, looked up once: anyio.CancelScope() asks which async
        # library runs and for its backend on every call.
        self.scope_class = type(anyio.CancelScope())

    def start_ready(self) -> None:
        """Queue every task that waits for nothing (at the start, and when a run resumes)."""
        state, waiting, region_of = self.run.state, self.waiting, self.walker.region_of
        for n in range(self.run.total):
            if waiting[n] == 0 and state[n] is PENDING and region_of[n] is None:
                self.make_ready(n)

    async def drive(self, until: Signal) -> None:
        """Drive the run in a task group of its own until ``until`` is set."""
        try:
            async with anyio.create_task_group() as tg:
                self.tg = tg
                self.passes.start_deferred()
                self.owner.maybe_finish()
                await self.worker()
                await until.wait()
        finally:
            self.tg = None

    async def _helper(self) -> None:
        self.idle_helpers -= 1
        await self.worker()

    def spawn_helpers(self) -> None:
        """Called when a worker's task suspends: make sure every ready job has a worker."""
        jobs = len(self.walker.revert_ready)
        if self.run.mode is RunMode.RUNNING:
            ready = len(self.ready)
            if self.limit:
                ready = min(ready, max(self.limit - self.executing, 0))
            jobs += ready
        if self.run.recorder.pending:
            jobs += 1  # a write: a worker that finds nothing ready writes it
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
        revert_ready = self.walker.revert_ready
        ready = self.ready
        region_of = self.walker.region_of
        state = self.run.state
        queued = self.queued
        waiting = self.waiting
        shield, timeout = self.graph.shield, self.graph.timeout
        recorder, durable = self.run.recorder, self.run.durable
        while True:
            if durable and (revert_ready or ready) and self._lease_lapsed(recorder):
                # This engine's lease may have lapsed (it stalled, and another engine may run the run now):
                # nothing starts before the store says the run is still ours.
                await recorder.confirm_lease()
                continue
            if revert_ready:
                await self.walker.revert(revert_ready.popleft())
            else:
                n = -1
                if self.run.mode is RunMode.RUNNING and not (self.limit and self.executing >= self.limit):
                    while ready:
                        candidate = ready.popleft()
                        queued[candidate] = 0
                        # (a task queued before a region reset its predecessors waits for them again)
                        if region_of[candidate] is None and state[candidate] is PENDING and not waiting[candidate]:
                            if candidate in self.barrier:
                                self.owner.reach_barrier(candidate)
                                break
                            n = candidate
                            break
                if n < 0:
                    # Nothing to run: write what the run changed (its successors may wait for it), then
                    # look again. One write of a run is in flight at a time; what arrives meanwhile
                    # waits for the next one (group commit).
                    if recorder.pending:
                        await recorder.flush()
                        continue
                    return True
                tg = self.tg
                if shield[n] and tg is not None:
                    # A shielded task runs in a task of its own: a plain asyncio cancellation of the task that
                    # runs this worker (asyncio.timeout around ckflow.run, say) cannot be shielded inside it.
                    self._begin(n)
                    tg.start_soon(self._execute_apart, n)
                else:
                    self._begin(n)
                    await self._run_execute(n, None if timeout[n] is not None or shield[n] else scope)
                    if scope.cancel_called:
                        return False
            steps += 1
            if steps >= _FAIRNESS_STEPS:
                steps = 0
                if recorder.urgent:
                    await recorder.flush()  # a long stretch of ready work must not keep its successors waiting
                else:
                    await checkpoint()

    def _lease_lapsed(self, recorder: Recorder) -> bool:
        """True once the engine's lease has lapsed by its own clock (while the run runs here)."""
        return recorder.lease_until <= time.monotonic() and self.run.stop_reason is None

    def make_ready(self, n: int) -> None:
        """``n`` has no unfinished predecessor: queue it, or pass straight through a join."""
        if self.walker.region_of[n] is not None:
            return
        graph = self.graph
        kinds = graph.kinds
        if kinds[n] == TASK:
            if not self.queued[n]:
                self.queued[n] = 1
                self.ready.append(n)
            return
        stack = [n]
        while stack:
            j = stack.pop()
            if kinds[j] == LOOP and not self.passes.iteration_done(j):
                continue  # the Periodic goes round again; what follows it waits
            # A join does no work: it succeeds the moment its last predecessor has.
            self.run.state[j] = SUCCESS
            self.n_success += 1
            if kinds[j] == LOOP and graph.chains[j] and self.run.durable:
                self.passes.progress(graph.chains[j])
            for s in graph.succs[j]:
                w = self.waiting[s] - 1
                self.waiting[s] = w
                if w == 0 and self.walker.region_of[s] is None:
                    if kinds[s] != TASK:
                        stack.append(s)
                    elif not self.queued[s]:
                        self.queued[s] = 1
                        self.ready.append(s)
        if self.n_success == self.run.total:
            self.owner.maybe_finish()

    # -- execute -----------------------------------------------------------------

    def task_inputs(self, n: int) -> dict[str, Any]:
        graph = self.graph
        const_in = graph.const_in[n]
        kw: dict[str, Any] = dict(const_in) if const_in else {}
        value_in = graph.value_in[n]
        if value_in:
            values = self.run.values
            for param, name in value_in:
                kw[param] = values[name]
        input_in = graph.input_in[n]
        if input_in:
            inputs = self.run.inputs
            for param, name, _required in input_in:
                if name in inputs:
                    kw[param] = inputs[name]
        return kw

    def start_call(self, call: Callable[[dict[str, Any]], Any], kw: dict[str, Any], is_async: bool) -> Any:
        if is_async:
            return call(kw)
        return anyio.to_thread.run_sync(partial(call, kw), limiter=self.limiter)

    def start_execute(self, n: int, task: Task, kw: dict[str, Any], is_async: bool) -> Any:
        """Call the execute of ``task`` (node ``n``): its coroutine, or the coroutine that runs it in a thread.

        A run with injected failures (``_runtime/_faults.py``) overrides this, so that other runs ask nothing.
        """
        if is_async:
            return task.call_execute(kw)
        return anyio.to_thread.run_sync(partial(task.call_execute, kw), limiter=self.limiter)

    def _begin(self, n: int) -> None:
        """``n`` starts: RUNNING, counted, timed."""
        run = self.run
        run.transition(n, RUNNING)
        run.executions[n] += 1
        self.executing += 1
        t0 = run.started[n] = time.monotonic()
        # The last execute's end no longer goes with its start: a task running again has no end (and no
        # duration) until this execute ends, never an end before its start.
        run.ended[n] = UNSET
        if self.walker.retry_watch:
            report = self.walker.retry_watch.pop(n, None)
            if report is not None and report.retry_at is None:
                report.retry_at = t0
                if run.telemetry is not None:
                    run.telemetry.retry_latency(report)

    async def _run_execute(self, n: int, shared: anyio.CancelScope | None = None) -> None:
        """The execute of ``n``, which has begun (``_begin``), to its outcome.

        ``shared``: the worker's scope, which this task runs in (see ``_work``); None for a scope of its own.
        """
        graph = self.graph
        task = graph.tasks[n]
        assert task is not None
        scope = self._own_scope(n) if shared is None else shared
        error: Exception | None = None
        value: Any = None
        token = CURRENT.set((self.owner, n))
        telemetry = self.run.telemetry
        otel_token = None if telemetry is None else telemetry.attach(n)
        try:
            try:
                try:
                    kw = self.task_inputs(n)
                    if kw:
                        self.run.kwargs[n] = kw  # its revert gets them too (an empty dict is not kept)
                    coro = self.start_execute(n, task, kw, graph.is_async[n])
                    try:
                        yielded = coro.send(None)
                    except StopIteration as stop:
                        value = stop.value
                    else:
                        # The task suspended: from here on it can be cancelled, and other ready jobs need
                        # workers of their own.
                        self.exec_scopes[n] = scope
                        self.spawn_helpers()
                        value = await resume(coro, yielded)
                except Exception as exc:
                    error = exc
            except BaseException as exc:
                self._unwound(n, scope, exc, own=shared is None)  # its own deadline passed: a timeout, below
            else:
                if shared is None:
                    scope.__exit__(None, None, None)
        except BaseException:
            self._cancelled_from_outside(n)
            raise
        finally:
            if telemetry is not None:
                telemetry.detach(otel_token)
            CURRENT.reset(token)
        if error is None and shared is not None and self.run.stop_reason is None and n not in self.cancel_requested:
            # The common outcome, a plain task's success (what ``_settle_execute`` would find, asked less)
            if self.exec_scopes:
                self.exec_scopes.pop(n, None)
            self._succeed(n, value)
        else:
            self._settle_execute(n, scope, error, value)
        if graph.shield[n]:
            # A cancellation of the run (its caller, its engine) waited for this task: it applies now, before
            # anything else starts.
            await checkpoint_if_cancelled()

    def _unwound(self, n: int, scope: anyio.CancelScope, exc: BaseException, *, own: bool) -> None:
        """A cancellation unwound ``n``'s execute: re-raise it, unless ``n``'s own scope (its deadline) ends it.

        The worker's scope cancelled for this task: its cancellation goes on to that scope, which ends it, and
        the task's outcome is settled here, as for a scope of its own.
        """
        if own:
            if not scope.__exit__(type(exc), exc, exc.__traceback__):
                raise exc
            return
        if scope.cancel_called:
            self._settle_execute(n, scope, None, None)
        raise exc

    def _own_scope(self, n: int) -> anyio.CancelScope:
        """A cancel scope of the task's own (it has a timeout, or is shielded), entered now.

        It is entered before the task's first step, so that any scope or task group the task itself opens
        nests inside it; anyio needs scopes to exit in the reverse order of entry. shield=True: the task is
        awaited, never cut short, whoever cancels (the walker, the caller of ckflow.run, an engine that shuts
        down); its own timeout still applies.
        """
        timeout = self.graph.timeout[n]
        deadline = math.inf if timeout is None else anyio.current_time() + timeout
        scope = self.scope_class(deadline=deadline, shield=self.graph.shield[n])
        scope.__enter__()
        return scope

    def _cancelled_from_outside(self, n: int) -> None:
        """An enclosing scope (the caller of ckflow.run, the engine) cancelled the run itself while ``n`` ran."""
        if self.run.state[n] is RUNNING:
            self.exec_scopes.pop(n, None)
            if self.run.durable:
                self._interrupted(n)
            else:
                self._cancelled(n, "the run was cancelled from outside")

    def _settle_execute(self, n: int, scope: anyio.CancelScope, error: Exception | None, value: Any) -> None:
        """The execute of ``n`` has returned, raised or been cancelled through ``scope``: record its outcome."""
        if self.graph.shield[n] and not self.run.durable and anyio.current_effective_deadline() == -math.inf:
            # The run's caller was cancelled while this task ran shielded: the run is cancelled, and everything
            # that ran, this task included, is reverted; its late success must not end the run SUCCESS, a
            # result its caller will never see.
            self.owner.caller_gone()
        if self.exec_scopes:
            self.exec_scopes.pop(n, None)
        if self.run.stop_reason is not None and self.run.durable and scope.cancel_called:
            # Cancelled because this engine stopped running the run: owed an execution, not a revert.
            self.cancel_requested.pop(n, None)
            self._interrupted(n)
        elif n in self.cancel_requested:
            self.cancel_requested.pop(n, None)
            self._cancelled(n, "cancelled by the revert walker")
        elif scope.cancel_called and self.graph.timeout[n] is not None:
            # The deadline passed; a task that ignored it (a thread cannot be interrupted) still timed out.
            name, timeout = self.graph.names[n], self.graph.timeout[n]
            self._fail(n, TimeoutError(f"task {name!r} timed out after {timeout} s"), "timeout")
        elif error is not None:
            self._fail(n, error, "execute")
        else:
            self._succeed(n, value)

    def _succeed(self, n: int, value: Any) -> None:
        run = self.run
        graph = self.graph
        recorder = run.recorder
        durable = run.durable
        if durable:
            try:
                recorder.encode_result(n, value)
            except TypeError as exc:
                error = ResultNotSerializableError(graph.names[n], type(value).__qualname__, str(exc), value=value)
                self._fail(n, error, "execute")
                return
        provides = graph.provides[n]
        if provides:
            if len(provides) == 1:
                run.values[provides[0]] = value
            else:
                try:
                    unpacked = _unpack(graph.names[n], provides, value)
                except (TypeError, KeyError) as exc:
                    self._fail(n, exc, "execute")
                    return
                run.values.update(unpacked)
        run.results[n] = value
        run.transition(n, SUCCESS)
        self.executing -= 1
        run.ended[n] = time.monotonic()
        self.n_success += 1
        region = self.walker.region_of[n]
        if region is not None:
            # A shielded member finished while its region reverts: now revert it too.
            self.walker.member_settled(region, n)
            self.owner.maybe_finish()
            return
        if durable and recorder.hold(n):
            # The successors start once the result is in the store (``release``, when it is).
            if graph.chains[n]:
                self.passes.progress(graph.chains[n])
        else:
            self.release(n)
        if self.n_success == run.total or run.mode is RunMode.HALTED:
            self.owner.maybe_finish()

    def release(self, n: int) -> None:
        """``n`` succeeded (durably, for a durable run): its successors have one predecessor less to wait for."""
        waiting = self.waiting
        for s in self.graph.succs[n]:
            w = waiting[s] - 1
            waiting[s] = w
            if w == 0:
                self.make_ready(s)

    def _interrupted(self, n: int) -> None:
        """A durable run stops in this engine while ``n`` executes: ``n`` is owed an execution, not a revert."""
        self.run.results[n] = None
        self.run.transition(n, PENDING)
        self.executing -= 1
        self.owner.maybe_finish()

    def released(self, n: int) -> None:
        """``n``'s success is in the store now: its successors may start, unless it was reverted meanwhile."""
        if self.run.state[n] is SUCCESS and self.walker.region_of[n] is None:
            self.release(n)

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once what the run changed is in its store (at once for a run without one)."""
        if self.run.recorder.on_commit(callback) and not self.workers:
            # Nothing executes now (the run is idle or ending), so a running worker is between jobs or
            # writing, and writes this before it returns: only without one is a worker needed.
            self.kick()

    def _fail(self, n: int, exc: BaseException, kind: FailureKind) -> None:
        # The failure's moment is now, before recording and logging it: latencies count from here.
        failed_at = self.run.ended[n] = time.monotonic()
        failure = Failure.from_exception(self.graph.names[n], kind, exc, self.run.attempt(n))
        self.run.add_failure(failure)
        self.run.results[n] = failure
        seq = self.run.transition(n, FAILURE, log=False)
        self.executing -= 1
        region = self.walker.region_of[n]
        if region is not None:
            # A failure inside a region that is already reverting joins that region.
            self.run.log_failure(n, failure, INFO if region.action is Action.RETRY else WARNING, seq)
            region.failures.append(failure)
            self.walker.record_region(region)
            self.walker.member_settled(region, n)
        elif self.run.mode is not RunMode.FAILED and self.run.stop_reason is None:
            self.walker.on_failure(n, exc, failure, failed_at, seq)
        else:
            self.run.log_failure(n, failure, WARNING, seq)
        self.owner.maybe_finish()

    def _cancelled(self, n: int, why: str) -> None:
        failure = Failure.cancellation(self.graph.names[n], self.run.attempt(n), why)
        self.run.results[n] = failure
        self.run.transition(n, FAILURE)
        self.executing -= 1
        self.run.ended[n] = time.monotonic()
        region = self.walker.region_of[n]
        if region is not None:
            self.walker.member_settled(region, n)
        self.owner.maybe_finish()


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
