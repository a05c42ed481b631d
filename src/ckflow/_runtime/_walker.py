"""The revert walker: undo a failed branch back to its checkpoint, then retry, park or end (DESIGN §4).

``_region.decide`` picks the checkpoint and region when a failure arrives
(pure code). ``open_region`` cancels the running members, then reverts every
member that started in reverse topological order by counting, for each
member, the successors in the region whose revert is still outstanding (the
forward scheduler's predecessor count, mirrored). When the count of
outstanding members reaches zero the region is retried, parked or, at the
root, the run ends REVERTED. Nothing outside the region is touched.

For a durable run the region's record is written before its first revert
starts (its reverts are *held* until then, see ``_journal``), and its reset
for a retry is written with the retry count in one transaction.

``RevertWalker`` owns the regions and the revert queue; it reaches the
scheduler through ``SchedulerPort`` and the run's state through ``RunState``.
"""

from __future__ import annotations

import time
from collections import deque
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import anyio

from ckflow import _policy
from ckflow._compile import LOOP, ROOT, TASK
from ckflow._errors import CkflowInternalError
from ckflow._events import DEBUG, INFO, WARNING
from ckflow._failure import Failure
from ckflow._models import RegionReport
from ckflow._records import RegionRecord, construct
from ckflow._region import Action, decide, task_names
from ckflow._runtime._context import CURRENT
from ckflow._runtime._coro import resume
from ckflow._runtime._regions import Region, settle
from ckflow._runtime._state import RunMode
from ckflow._states import FAILURE, PENDING, REVERT_FAILURE, REVERTED, REVERTING, RUNNING, SUCCESS

if TYPE_CHECKING:
    from collections.abc import Set as AbstractSet

    from ckflow._checkpoint import Checkpoint
    from ckflow._runtime._passes import Passes
    from ckflow._runtime._ports import RunPort, SchedulerPort
    from ckflow._runtime._state import RunState

__all__ = ["Region", "RevertWalker"]


#: states of a node whose revert is still owed once it is in a region
_OUTSTANDING: Final = frozenset({RUNNING, SUCCESS, FAILURE, REVERTING})
#: states from which a revert can start
_REVERTIBLE: Final = frozenset({SUCCESS, FAILURE})
#: how much more severe one action is than another, when regions merge
_SEVERITY: Final = {Action.RETRY: 0, Action.SUSPEND: 1, Action.END: 2}


class RevertWalker:
    """Undoes failed branches: the regions being reverted, the revert queue, and what follows each region."""

    __slots__ = (
        "owner",
        "passes",
        "region_ids",
        "region_of",
        "regions",
        "retry_watch",
        "revert_queued",
        "revert_ready",
        "reverting",
        "root_region",
        "run",
        "sched",
    )

    def __init__(self, run: RunState, passes: Passes, owner: RunPort) -> None:
        self.run = run
        self.passes = passes
        #: the run: what ``ckflow.current()`` asks inside a revert, and what this part calls back
        self.owner = owner
        #: the scheduler, set once it exists
        self.sched: SchedulerPort | None = None
        #: called when the walker may have left the run idle (the run then checks whether it has ended)
        n = run.total
        #: the open regions, in the order they opened (a dict as an ordered set: while empty, untracked by the GC)
        self.regions: dict[Region, None] = {}
        #: the region that reverts everything (a failure reached the root, or a cancel)
        self.root_region: Region | None = None
        self.region_of: list[Region | None] = [None] * n
        self.region_ids = 0
        self.revert_ready: deque[int] = deque()
        #: 1 while the node's revert waits in revert_ready, so that merging regions never queue it twice
        self.revert_queued = bytearray(n)
        #: reverts running now
        self.reverting = 0
        #: node -> report whose retry_at its next execute sets
        self.retry_watch: dict[int, RegionReport] = {}

    def _sched(self) -> SchedulerPort:
        sched = self.sched
        assert sched is not None, "the run wires its scheduler before anything runs"
        return sched

    @property
    def idle(self) -> bool:
        """True when no revert runs or waits (for a worker, or for a commit)."""
        return not (self.reverting or self.revert_ready or any(r.held for r in self.regions))

    def on_failure(self, n: int, exc: BaseException, failure: Failure, failed_at: float, seq: int | None) -> None:
        """Task ``n`` failed outside any region: decide (retry, park, escalate) and open its region now."""
        run = self.run
        # Retry.timeout's clock, read when the failure arrived if it is the one read then (the default)
        now = failed_at if _policy.ENV.clock is time.monotonic else _policy.clock()
        # (no attempt to look up for each member until a task has been retried)
        decision = decide(run.graph, n, exc, run.attempt_under if run.retries else None, run.first_failure.get, now)
        if decision.action is Action.RETRY:
            checkpoint = run.graph.scopes[decision.scope].checkpoint
            if checkpoint is not None and checkpoint.retry.timeout is not None:
                run.first_failure.setdefault(decision.scope, now)  # Retry.timeout counts from the first failure
        # An expected failure, which its checkpoint retries, is news (INFO); one that escalates is a warning.
        self.run.log_failure(n, failure, INFO if decision.action is Action.RETRY else WARNING, seq)
        scopes = self.run.graph.scopes
        for s in decision.exhausted:
            self.run.event(
                "ckflow.walker.exhausted",
                WARNING,
                task=self.run.graph.names[n],
                checkpoint=scopes[s].name,
                detail={"on_exhausted": self._on_exhausted(scopes[s].checkpoint)},
            )
        self.open_region(decision.scope, decision.members, decision.action, n, failure, failed_at, names=decision.names)

    def open_region(
        self,
        scope: int,
        members: AbstractSet[int],
        action: Action,
        cause: int | None,
        failure: Failure | None,
        failed_at: float | None = None,
        *,
        auto_resume: bool = False,
        names: tuple[str, ...] | None = None,
    ) -> Region:
        """Undo ``members`` under checkpoint ``scope``, merging with the regions they overlap. ``auto_resume``
        (``revert_to(..., retry=True)``): once reverted, the scope starts afresh. ``names``: the sorted names of
        the tasks among ``members``, when the caller has them (``_region.task_names``)."""
        run, region_of = self.run, self.region_of
        failure_at = time.monotonic() if failed_at is None else failed_at
        absorbed: list[Region] = []
        if self.regions:  # a region still open may overlap these members: it merges into this one
            scope, action, failure_at, members, absorbed = self._merge(members, scope, action, failure_at)
        if absorbed or names is None:
            names = task_names(run.graph, members)
        report = construct(  # without validation: this is on the way from a failure to its revert's start
            RegionReport,
            checkpoint=run.graph.scopes[scope].name,
            action=action._value_,  # (not ``value``: no call through the enum's descriptor)
            cause=None if cause is None else run.graph.names[cause],
            members=list(names),
            failure_at=failure_at,
            first_revert_at=None,
            reverts_done_at=None,
            retry_at=None,
        )
        run.add_report(report)
        self.region_ids += 1
        region = Region(self.region_ids, scope, run.graph.scopes[scope].depth, action, members, report)
        region.auto_resume = auto_resume
        region.absorbed = absorbed
        for r in absorbed:
            region.failures.extend(r.failures)
        if failure is not None:
            region.failures.append(failure)
        self.regions[region] = None
        if scope == ROOT:
            self.root_region = region
        for m in members:
            region_of[m] = region
        # a region a failure opened and that will not be retried is an escalation; a control request's is news
        level = INFO if action is Action.RETRY or cause is None else WARNING
        # Built only if someone takes it: a failure's way to its revert skips four calls and two dicts when none does.
        if run.takes_event("ckflow.walker.region", level):
            self._region_event(report, level)
        if run.durable:
            # The decision is stored before any revert starts (see _journal): its reverts wait for the commit.
            region.gen = self.record_region(region)
            run.recorder.on_commit(partial(self._region_committed, region, region.gen))
        self.arm_region(region)
        return region

    def _region_event(self, report: RegionReport, level: int) -> None:
        """The event of a region being opened."""
        detail = {"action": report.action, "members": report.members}
        self.run.event("ckflow.walker.region", level, task=report.cause, checkpoint=report.checkpoint, detail=detail)

    def _merge(
        self, members: AbstractSet[int], scope: int, action: Action, failure_at: float
    ) -> tuple[int, Action, float, AbstractSet[int], list[Region]]:
        """Merge the regions ``members`` overlap into the one being opened: overlapping regions merge under the
        outermost checkpoint involved, with the most severe action. Returns the merged region's scope, action,
        first failure time and members (a new set if any merged: ``members`` may be the graph's own), and the
        regions merged into it, in the order of their members."""
        region_of = self.region_of
        old: dict[int, Region] = {}
        for m in members:
            r = region_of[m]
            if r is not None:
                old[id(r)] = r
        if not old:
            return scope, action, failure_at, members, []
        scopes = self.run.graph.scopes
        depth = scopes[scope].depth
        merged = set(members)
        for r in old.values():
            merged |= r.members
            if r.depth < depth or (r.depth == depth and _SEVERITY[r.action] > _SEVERITY[action]):
                scope, depth, action = r.scope, r.depth, r.action
            if r.backoff is not None:
                r.backoff.cancel()
            failure_at = min(failure_at, r.report.failure_at)
            self.regions.pop(r, None)
            r.report.action = f"merged into {scopes[scope].name}"
            self.run.recorder.drop_region(r.id)
        return scope, action, failure_at, merged, list(old.values())

    def record_region(self, region: Region) -> int:
        """Put the region's current record in the recorder (after it opens, and whenever it changes); returns
        the generation whose commit holds it (0 without a store)."""
        run = self.run
        report = region.report
        return run.recorder.region(
            region.id,
            lambda: construct(
                RegionRecord,
                run_id=run.run_id,
                region_id=region.id,
                checkpoint=report.checkpoint,
                action=region.action.value,
                members=report.members,
                cause=report.cause,
                failures=list(region.failures),
                auto_resume=region.auto_resume,
                parked=region.parked,
            ),
        )

    def _region_committed(self, region: Region, gen: int) -> None:
        """The region's record (generation ``gen``) is in the store: its held reverts may start."""
        if region.gen == gen:
            region.gen = 0
            if region in self.regions:
                for m in region.held:
                    self.queue_revert(m)
            region.held.clear()

    def arm_region(self, region: Region) -> None:
        """Cancel the region's running members and start the reverts that wait for nothing."""
        members = region.members
        shield = self.run.graph.shield
        state = self.run.state
        for m in members:
            if state[m] is RUNNING and not shield[m] and m not in self._sched().cancel_requested:
                exec_scope = self._sched().exec_scopes.get(m)
                if exec_scope is not None:
                    self._sched().cancel_requested[m] = None
                    exec_scope.cancel()
                    self.run.event(
                        "ckflow.walker.cancel", DEBUG, task=self.run.graph.names[m], checkpoint=region.report.checkpoint
                    )
        rev_wait = region.rev_wait
        outstanding = 0
        # (loops, not generators: this is on the way from a failure to its revert's start)
        start: list[int] = []
        for m in members:
            st = state[m]
            if st in _OUTSTANDING:
                outstanding += 1
                if st is not REVERTING:
                    w = 0
                    for s in self.run.graph.succs[m]:
                        if s in members and state[s] in _OUTSTANDING:
                            w += 1
                    rev_wait[m] = w
                    if w == 0 and st in _REVERTIBLE:
                        start.append(m)
        region.outstanding = outstanding
        for m in start:
            self.schedule_revert(region, m)
        if region.outstanding == 0:
            self.region_done(region)

    def member_settled(self, region: Region, n: int) -> None:
        """A running member of ``region`` stopped executing: its revert may start now."""
        if region.rev_wait.get(n) == 0:
            self.schedule_revert(region, n)

    def schedule_revert(self, region: Region, n: int) -> None:
        if self.run.mode is RunMode.FAILED or self.run.stop_reason is not None:
            return
        graph = self.run.graph
        if graph.kinds[n] == TASK:
            if region.gen:
                region.held.append(n)  # the region's record is not in the store yet
            elif not self.revert_queued[n]:  # (``queue_revert`` without its checks, made above)
                self.revert_queued[n] = 1
                self.revert_ready.append(n)
            return
        # Undoing a join (or a Periodic's gate) is instant.
        self.run.join_transition(n, REVERTED)
        self._sched().n_success -= 1
        if graph.kinds[n] == LOOP and graph.chains[n] and self.run.durable:
            self.passes.regress(graph.chains[n])
        self._revert_finished(region, n)

    def queue_revert(self, n: int) -> None:
        run = self.run
        if not self.revert_queued[n] and run.mode is not RunMode.FAILED and run.stop_reason is None:
            self.revert_queued[n] = 1
            self.revert_ready.append(n)

    async def revert(self, n: int) -> None:
        self.revert_queued[n] = 0
        region = self.region_of[n]
        if region is None or self.run.state[n] not in _REVERTIBLE:
            raise CkflowInternalError(f"revert of {self.run.graph.names[n]!r} scheduled outside a region")
        task = self.run.graph.tasks[n]
        assert task is not None
        if self.run.state[n] is SUCCESS:
            self._sched().n_success -= 1
            chain = self.run.graph.chains[n]
            if self.run.durable and chain:
                self.passes.regress(chain)
        self.run.transition(n, REVERTING)
        self.reverting += 1
        t0 = self.run.rev_started[n] = time.monotonic()
        report = region.report
        if report.first_revert_at is None:
            # What pydantic's ``__setattr__`` does for this field, without its two calls before the revert's body
            vars(report)["first_revert_at"] = t0
            report.__pydantic_fields_set__.add("first_revert_at")
            if self.run.telemetry is not None:
                self.run.telemetry.revert_latency(report)
        params = task.revert_parameters
        if params is None:
            self._revert_returned(region, n, None)
            return
        kw = self._revert_inputs(n, params)
        token = CURRENT.set((self.owner, n))
        telemetry = self.run.telemetry
        otel_token = None if telemetry is None else telemetry.attach(n, reverting=True)
        error: Exception | None = None
        try:
            # Reverts always finish: they are shielded from the cancellation of the run. The scope is
            # entered before the first step so that scopes the revert opens nest inside it. (The event loop's
            # own scope class: ``anyio.CancelScope`` asks for the running library's backend first.)
            sched = self._sched()
            with sched.scope_class(shield=True):
                try:
                    coro = sched.start_call(task.call_revert, kw, task.revert_is_async)
                    try:
                        yielded = coro.send(None)
                    except StopIteration:
                        pass
                    else:
                        sched.spawn_helpers()
                        await resume(coro, yielded)
                except Exception as exc:
                    error = exc
        finally:
            if telemetry is not None:
                telemetry.detach(otel_token)
            CURRENT.reset(token)
        self._revert_returned(region, n, error)

    def _revert_inputs(self, n: int, params: tuple[str, ...]) -> dict[str, Any]:
        """What task ``n``'s revert is called with: the inputs of its execute it names, and ``result``."""
        given = self.run.kwargs[n]
        if given is None and params:
            # A task restored from the store: rebuild its inputs from the values it was given (still there, since
            # what provided them is reverted after it).
            given = self.run.kwargs[n] = self._sched().task_inputs(n)
        kw: dict[str, Any] = {}
        if given:
            for p in params:
                if p in given:
                    kw[p] = given[p]
        if "result" in params:
            kw["result"] = self.run.results[n]
        return kw

    def _revert_returned(self, region: Region, n: int, error: Exception | None) -> None:
        self.reverting -= 1
        self.run.rev_ended[n] = time.monotonic()
        region = self.region_of[n] or region  # it may have merged into a wider region meanwhile
        if error is not None:
            failure = Failure.from_exception(self.run.graph.names[n], "revert", error, self.run.attempt(n))
            self.run.add_failure(failure)
            self.run.results[n] = failure
            self.run.transition(n, REVERT_FAILURE)
            region.outstanding -= 1
            self.enter_failure_mode()
            self.owner.maybe_finish()
            return
        self.run.transition(n, REVERTED)
        self._revert_finished(region, n)
        self.owner.maybe_finish()

    def _revert_finished(self, region: Region, n: int) -> None:
        region.outstanding -= 1
        rev_wait = region.rev_wait
        state = self.run.state
        for p in self.run.graph.preds[n]:
            w = rev_wait.get(p)
            if w is not None:
                w -= 1
                rev_wait[p] = w
                if w == 0 and state[p] in _REVERTIBLE:
                    self.schedule_revert(region, p)
        if region.outstanding == 0:
            self.region_done(region)

    def region_done(self, region: Region) -> None:
        """Every member of ``region`` that ran has been reverted: retry, park or end."""
        if region not in self.regions:
            return  # merged away meanwhile
        report = region.report
        report.reverts_done_at = time.monotonic() if report.first_revert_at is not None else None
        settle(region)
        if self.run.failed or region.action is Action.END:
            return
        scope = self.run.graph.scopes[region.scope]
        if region.auto_resume:
            self.reset_region(region, fresh=True)
            return
        if region.action is Action.SUSPEND:
            region.parked = True
            self.run.halt(True)
            self.record_region(region)
            self.run.event("ckflow.walker.parked", WARNING, checkpoint=scope.name)
            return
        checkpoint = scope.checkpoint
        assert checkpoint is not None
        tasks = [m for m in region.members if self.run.graph.kinds[m] == TASK and self.run.state[m] is REVERTED]
        retry_number = max((self.run.attempt_under(m, region.scope) for m in tasks), default=1)
        delay = _policy.delay(checkpoint.retry, retry_number, _policy.rng())
        self.run.event(
            "ckflow.walker.retry",
            checkpoint=scope.name,
            attempt=retry_number + 1,
            detail={"delay": delay, "members": report.members},
        )
        if delay <= 0 or self._sched().tg is None:
            self.reset_region(region, fresh=False)
            return
        region.backoff = anyio.CancelScope()
        tg = self._sched().tg
        assert tg is not None
        tg.start_soon(self._backoff, region, delay)

    async def _backoff(self, region: Region, delay: float) -> None:
        scope = region.backoff
        assert scope is not None
        with scope:
            await anyio.sleep(delay)
        if scope.cancel_called or region not in self.regions:
            return  # the run was cancelled, or the region merged into a wider one
        self.reset_region(region, fresh=False)
        await self._sched().worker()

    def reset_region(self, region: Region, *, fresh: bool) -> None:
        """Hand ``region`` back to the scheduler: its members are PENDING again.

        ``fresh`` starts a new activation of the checkpoint (an operator resumed a
        parked run): its budget starts over instead of counting this retry.
        """
        self.regions.pop(region, None)
        scope = region.scope
        # The scope and the scopes holding it: a member's own scopes below these start a new activation. (A
        # revert_to's region also holds what ran downstream of the scope, outside it.)
        holding = set()
        s = scope
        while s >= 0:
            holding.add(s)
            s = self.run.graph.scopes[s].parent
        self.run.recorder.drop_region(region.id)
        chain_cache = self._reset_members(region, holding, fresh=fresh)
        for inner in {s for chain in chain_cache.values() for s in self._below(chain, holding)}:
            self.passes.fresh_activation(inner)  # a Periodic inside too: from its first iteration, without waiting
        if fresh:
            self.run.history.pop(scope, None)
            self.run.first_failure.pop(scope, None)
            if scope != ROOT:
                self.passes.new_pass(scope)
        else:
            self.run.history.setdefault(scope, []).extend(region.failures)
            self.passes.record_pass(scope)
        first = self._count_waits(region.members)
        # A durable run's retry starts once its reset (the region's reverts done, the retry counted) is in the
        # store: a crash before that resumes the region as it was recorded, and no execute of the new attempt
        # can have run whose effect the resumed run would not revert. (Without a store: at once.)
        self._sched().after_commit(partial(self._start_reset, first))

    def _reset_members(self, region: Region, holding: set[int], *, fresh: bool) -> dict[int, list[int]]:
        """Each member of ``region`` back to PENDING, its retries counted (or cleared, ``fresh``) and its nested
        checkpoints' counts dropped; returns each member scope's chain (scope ids, innermost first)."""
        run, recorder, scope = self.run, self.run.recorder, region.scope
        graph, state, region_of = run.graph, run.state, self.region_of
        chain_cache: dict[int, list[int]] = {}
        for m in region.members:
            region_of[m] = None
            if graph.kinds[m] != TASK:
                if state[m] is REVERTED:
                    run.join_transition(m, PENDING)
                continue
            ran = state[m] is REVERTED
            if ran:
                run.results[m] = None
                recorder.forget_result(m)
                run.transition(m, PENDING)
                run.kwargs[m] = None
                self.retry_watch[m] = region.report
            else:
                recorder.touch(m)  # its retries change below
            # Nested checkpoints start a new activation whenever an enclosing scope retries.
            node_scope = graph.node_scopes[m]
            chain = chain_cache.get(node_scope)
            if chain is None:
                chain = chain_cache[node_scope] = graph.scope_chain(m)
            for s in chain:
                if s in holding:
                    break
                run.retries.pop((m, s), None)
            if fresh:
                run.retries.pop((m, scope), None)
            elif ran:
                run.retries[(m, scope)] = run.retries.get((m, scope), 0) + 1
        return chain_cache

    def _count_waits(self, members: AbstractSet[int]) -> list[int]:
        """Count again what the reset members and their successors wait for; the members that wait for nothing.

        A predecessor whose success is not yet in the store still counts as unfinished.
        """
        run = self.run
        graph, state, held = run.graph, run.state, run.recorder.held
        waiting = self._sched().waiting
        touched = set(members)
        for m in members:
            touched.update(graph.succs[m])
        for m in touched:
            waiting[m] = sum(1 for p in graph.preds[m] if state[p] is not SUCCESS or held(p))
        return [m for m in sorted(members) if waiting[m] == 0 and state[m] is PENDING]

    def _start_reset(self, first: list[int]) -> None:
        """Queue the members of a reset region that wait for nothing (once the reset is committed)."""
        state, waiting, region_of = self.run.state, self._sched().waiting, self.region_of
        for m in first:
            if state[m] is PENDING and waiting[m] == 0 and region_of[m] is None:
                self._sched().make_ready(m)

    @staticmethod
    def _below(chain: list[int], holding: set[int]) -> list[int]:
        """The scopes of ``chain`` (innermost first) below the first one in ``holding``."""
        for i, s in enumerate(chain):
            if s in holding:
                return chain[:i]
        return chain

    def enter_failure_mode(self) -> None:
        """A revert raised: the run can neither go on nor go back. Stop what executes; start nothing."""
        if self.run.failed:
            return
        self.run.fail()
        for n in self.revert_ready:
            self.revert_queued[n] = 0
        self.revert_ready.clear()
        for n, scope in self._sched().exec_scopes.items():
            if not self.run.graph.shield[n] and n not in self._sched().cancel_requested:
                self._sched().cancel_requested[n] = None
                scope.cancel()
        self.cancel_waits()

    def cancel_waits(self) -> None:
        """Cancel every backoff and every wait for a Periodic's next iteration."""
        for region in self.regions:
            if region.backoff is not None:
                region.backoff.cancel()
        self.passes.cancel_sleeps()

    @staticmethod
    def _on_exhausted(checkpoint: Checkpoint | None) -> str:
        return "end" if checkpoint is None else checkpoint.on_exhausted
