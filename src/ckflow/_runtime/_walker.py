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

These are functions over the run's ``RunCore``, as ``_control`` and
``_passes`` are, so that the scheduler's module stays readable.
"""

from __future__ import annotations

import time
from functools import partial
from typing import TYPE_CHECKING, Final

import anyio

from ckflow._compile import LOOP, ROOT, TASK
from ckflow._errors import CkflowInternalError
from ckflow._events import DEBUG, INFO, WARNING
from ckflow._failure import Failure
from ckflow._models import RegionReport
from ckflow._records import RegionRecord, construct
from ckflow._region import Action, decide
from ckflow._runtime._context import CURRENT
from ckflow._runtime._coro import resume
from ckflow._runtime._passes import fresh_activation, new_pass, record_pass
from ckflow._states import FAILURE, PENDING, REVERT_FAILURE, REVERTED, REVERTING, RUNNING, SUCCESS

if TYPE_CHECKING:
    from ckflow._checkpoint import Checkpoint
    from ckflow._runtime._core import RunCore

__all__ = [
    "Region",
    "arm_region",
    "enter_failure_mode",
    "member_settled",
    "on_failure",
    "open_region",
    "queue_revert",
    "record_region",
    "region_done",
    "reset_region",
    "revert",
    "schedule_revert",
    "settle",
]


#: states of a node whose revert is still owed once it is in a region
_OUTSTANDING: Final = frozenset({RUNNING, SUCCESS, FAILURE, REVERTING})
#: states from which a revert can start
_REVERTIBLE: Final = frozenset({SUCCESS, FAILURE})
#: how much more severe one action is than another, when regions merge
_SEVERITY: Final = {Action.RETRY: 0, Action.SUSPEND: 1, Action.END: 2}


class Region:
    """A set of nodes being undone together, and what happens once they are."""

    __slots__ = (
        "absorbed",
        "action",
        "auto_resume",
        "backoff",
        "depth",
        "failures",
        "gen",
        "held",
        "id",
        "members",
        "outstanding",
        "parked",
        "report",
        "rev_wait",
        "scope",
        "settled",
    )

    def __init__(
        self, id: int, scope: int, depth: int, action: Action, members: set[int], report: RegionReport
    ) -> None:
        self.id = id
        self.scope = scope
        self.depth = depth
        self.action = action
        self.members = members
        self.report = report
        #: member -> successors in the region whose revert is still outstanding
        self.rev_wait: dict[int, int] = {}
        #: members whose revert is owed and not yet done
        self.outstanding = 0
        self.failures: list[Failure] = []
        self.backoff: anyio.CancelScope | None = None
        self.parked = False
        #: revert_to(..., retry=True): start the scope afresh instead of parking
        self.auto_resume = False
        #: set once every member that ran has been reverted, or the run has ended (``settle``)
        self.settled = anyio.Event()
        #: regions merged into this one: whoever waits for them is done when this one is
        self.absorbed: list[Region] = []
        #: durable runs: the journal generation that records the region (0 once it is committed); its
        #: reverts are held in ``held`` until then
        self.gen = 0
        self.held: list[int] = []


def on_failure(core: RunCore, n: int, exc: BaseException, failure: Failure, failed_at: float, seq: int | None) -> None:
    decision = decide(core.graph, n, exc, core.attempt_under, core.timed_out)
    # An expected failure, which its checkpoint retries, is news (INFO); one that escalates is a warning.
    core.log_failure(n, failure, INFO if decision.action is Action.RETRY else WARNING, seq)
    scopes = core.graph.scopes
    for s in decision.exhausted:
        core.event(
            "ckflow.walker.exhausted",
            WARNING,
            task=core.nodes[n].name,
            checkpoint=scopes[s].name,
            detail={"on_exhausted": _on_exhausted(scopes[s].checkpoint)},
        )
    open_region(core, decision.scope, decision.members, decision.action, n, failure, failed_at)


def open_region(
    core: RunCore,
    scope: int,
    members: set[int],
    action: Action,
    cause: int | None,
    failure: Failure | None,
    failed_at: float | None = None,
    *,
    auto_resume: bool = False,
) -> Region:
    """Undo ``members`` under checkpoint ``scope``, merging with the regions they overlap.

    ``auto_resume`` (``revert_to(..., retry=True)``): once reverted, the scope starts afresh.
    """
    now = time.monotonic() if failed_at is None else failed_at
    scopes = core.graph.scopes
    depth = scopes[scope].depth
    old: dict[int, Region] = {}
    region_of = core.region_of
    for m in members:
        r = region_of[m]
        if r is not None:
            old[id(r)] = r
    failure_at = now
    carried: list[Failure] = []
    journal = core.journal
    for r in old.values():
        # Overlapping regions merge under the outermost checkpoint involved.
        members |= r.members
        if r.depth < depth or (r.depth == depth and _SEVERITY[r.action] > _SEVERITY[action]):
            scope, depth, action = r.scope, r.depth, r.action
        if r.backoff is not None:
            r.backoff.cancel()
        carried.extend(r.failures)
        failure_at = min(failure_at, r.report.failure_at)
        core.regions.discard(r)
        r.report.action = f"merged into {scopes[scope].name}"
        if journal is not None:
            journal.regions.pop(r.id, None)
            journal.drop_regions.append(r.id)
    nodes = core.nodes
    report = RegionReport(
        checkpoint=scopes[scope].name,
        action=action.value,
        cause=None if cause is None else nodes[cause].name,
        members=sorted(nodes[m].name for m in members if nodes[m].kind == TASK),
        failure_at=failure_at,
    )
    core.reports.append(report)
    core.region_ids += 1
    region = Region(core.region_ids, scope, depth, action, members, report)
    region.failures = carried
    region.absorbed = list(old.values())
    region.auto_resume = auto_resume
    if failure is not None:
        region.failures.append(failure)
    core.regions.add(region)
    if scope == ROOT:
        core.root_region = region
    for m in members:
        region_of[m] = region
    core.event(
        "ckflow.walker.region",
        # a region a failure opened and that will not be retried is an escalation; a control request's is news
        INFO if action is Action.RETRY or cause is None else WARNING,
        task=report.cause,
        checkpoint=report.checkpoint,
        detail={"action": action.value, "members": report.members},
    )
    if journal is not None:
        # The decision is stored before any revert starts (see _journal).
        record_region(core, region)
        region.gen = journal.gen
        journal.hold_region(region)
    arm_region(core, region)
    return region


def record_region(core: RunCore, region: Region) -> None:
    """Put the region's current record in the journal (after it opens, and whenever it changes)."""
    journal = core.journal
    if journal is None:
        return
    report = region.report
    journal.regions[region.id] = construct(
        RegionRecord,
        run_id=core.run_id,
        region_id=region.id,
        checkpoint=report.checkpoint,
        action=region.action.value,
        members=report.members,
        cause=report.cause,
        failures=list(region.failures),
        auto_resume=region.auto_resume,
        parked=region.parked,
    )


def arm_region(core: RunCore, region: Region) -> None:
    """Cancel the region's running members and start the reverts that wait for nothing."""
    members = region.members
    nodes = core.nodes
    state = core.state
    for m in members:
        if state[m] is RUNNING and not nodes[m].shield and m not in core.cancel_requested:
            exec_scope = core.exec_scopes.get(m)
            if exec_scope is not None:
                core.cancel_requested.add(m)
                exec_scope.cancel()
                core.event("ckflow.walker.cancel", DEBUG, task=nodes[m].name, checkpoint=region.report.checkpoint)
    rev_wait = region.rev_wait
    outstanding = 0
    for m in members:
        st = state[m]
        if st in _OUTSTANDING:
            outstanding += 1
            if st is not REVERTING:
                rev_wait[m] = sum(1 for s in nodes[m].succs if s in members and state[s] in _OUTSTANDING)
    region.outstanding = outstanding
    for m in [m for m, w in rev_wait.items() if w == 0 and state[m] in _REVERTIBLE]:
        schedule_revert(core, region, m)
    if region.outstanding == 0:
        region_done(core, region)


def member_settled(core: RunCore, region: Region, n: int) -> None:
    """A running member of ``region`` stopped executing: its revert may start now."""
    if region.rev_wait.get(n) == 0:
        schedule_revert(core, region, n)


def schedule_revert(core: RunCore, region: Region, n: int) -> None:
    if core.failure_mode or core.stopped is not None:
        return
    node = core.nodes[n]
    if node.kind == TASK:
        if region.gen:
            region.held.append(n)  # the region's record is not in the store yet
        else:
            queue_revert(core, n)
        return
    # Undoing a join (or a Periodic's gate) is instant.
    core.state[n] = REVERTED
    core.n_success -= 1
    if node.kind == LOOP and node.chain and core.journal is not None:
        for s in node.chain:
            core.remaining[s] += 1
    _revert_finished(core, region, n)


def queue_revert(core: RunCore, n: int) -> None:
    if not core.revert_queued[n] and not core.failure_mode and core.stopped is None:
        core.revert_queued[n] = 1
        core.revert_ready.append(n)


async def revert(core: RunCore, n: int) -> None:
    core.revert_queued[n] = 0
    region = core.region_of[n]
    if region is None or core.state[n] not in _REVERTIBLE:
        raise CkflowInternalError(f"revert of {core.nodes[n].name!r} scheduled outside a region")
    node = core.nodes[n]
    task = node.task
    assert task is not None
    if core.state[n] is SUCCESS:
        core.n_success -= 1
        if core.journal is not None and node.chain:
            remaining = core.remaining
            for s in node.chain:
                remaining[s] += 1
    core.transition(n, REVERTING)
    core.reverting += 1
    t0 = core.rev_started[n] = time.monotonic()
    if region.report.first_revert_at is None:
        region.report.first_revert_at = t0
        if core.telemetry is not None:
            core.telemetry.revert_latency(region.report)
    params = task._sig.revert_params
    if params is None:
        _revert_returned(core, region, n, None)
        return
    given = core.kwargs[n]
    if given is None:
        # A task restored from the store: rebuild its inputs from the values it was given (still there, since
        # what provided them is reverted after it).
        given = core.kwargs[n] = core.task_inputs(node)
    kw = {p: given[p] for p in params if p in given}
    if "result" in params:
        kw["result"] = core.results[n]
    token = CURRENT.set((core, n))
    telemetry = core.telemetry
    otel_token = None if telemetry is None else telemetry.attach(n, reverting=True)
    error: Exception | None = None
    try:
        # Reverts always finish: they are shielded from the cancellation of the run. The scope is
        # entered before the first step so that scopes the revert opens nest inside it.
        with anyio.CancelScope(shield=True):
            try:
                coro = core.start_call(task._call_revert, kw, task._sig.revert_is_async)
                try:
                    yielded = coro.send(None)
                except StopIteration:
                    pass
                else:
                    core.spawn_helpers()
                    await resume(coro, yielded)
            except Exception as exc:
                error = exc
    finally:
        if telemetry is not None:
            telemetry.detach(otel_token)
        CURRENT.reset(token)
    _revert_returned(core, region, n, error)


def _revert_returned(core: RunCore, region: Region, n: int, error: Exception | None) -> None:
    core.reverting -= 1
    core.rev_ended[n] = time.monotonic()
    region = core.region_of[n] or region  # it may have merged into a wider region meanwhile
    if error is not None:
        failure = Failure.from_exception(core.nodes[n].name, "revert", error, core.attempt(n))
        core.failures.append(failure)
        core.results[n] = failure
        core.transition(n, REVERT_FAILURE)
        region.outstanding -= 1
        enter_failure_mode(core)
        core.maybe_finish()
        return
    core.transition(n, REVERTED)
    _revert_finished(core, region, n)
    core.maybe_finish()


def _revert_finished(core: RunCore, region: Region, n: int) -> None:
    region.outstanding -= 1
    rev_wait = region.rev_wait
    state = core.state
    for p in core.nodes[n].preds:
        w = rev_wait.get(p)
        if w is not None:
            w -= 1
            rev_wait[p] = w
            if w == 0 and state[p] in _REVERTIBLE:
                schedule_revert(core, region, p)
    if region.outstanding == 0:
        region_done(core, region)


def settle(region: Region) -> None:
    """Wake whoever waits for ``region``, or for a region merged into it."""
    pending = [region]
    while pending:
        r = pending.pop()
        r.settled.set()
        pending.extend(r.absorbed)


def region_done(core: RunCore, region: Region) -> None:
    """Every member of ``region`` that ran has been reverted: retry, park or end."""
    if region not in core.regions:
        return  # merged away meanwhile
    report = region.report
    report.reverts_done_at = time.monotonic() if report.first_revert_at is not None else None
    settle(region)
    if core.failure_mode or region.action is Action.END:
        return
    scope = core.graph.scopes[region.scope]
    if region.auto_resume:
        reset_region(core, region, fresh=True)
        return
    if region.action is Action.SUSPEND:
        region.parked = True
        core.halted = True
        record_region(core, region)
        core.event("ckflow.walker.parked", WARNING, checkpoint=scope.name)
        return
    checkpoint = scope.checkpoint
    assert checkpoint is not None
    tasks = [m for m in region.members if core.nodes[m].kind == TASK and core.state[m] is REVERTED]
    retry_number = max((core.attempt_under(m, region.scope) for m in tasks), default=1)
    delay = checkpoint.retry.delay_for(retry_number)
    core.event(
        "ckflow.walker.retry",
        checkpoint=scope.name,
        attempt=retry_number + 1,
        detail={"delay": delay, "members": report.members},
    )
    if delay <= 0 or core.tg is None:
        reset_region(core, region, fresh=False)
        return
    region.backoff = anyio.CancelScope()
    core.tg.start_soon(_backoff, core, region, delay)


async def _backoff(core: RunCore, region: Region, delay: float) -> None:
    scope = region.backoff
    assert scope is not None
    with scope:
        await anyio.sleep(delay)
    if scope.cancel_called or region not in core.regions:
        return  # the run was cancelled, or the region merged into a wider one
    reset_region(core, region, fresh=False)
    await core.worker()


def reset_region(core: RunCore, region: Region, *, fresh: bool) -> None:
    """Hand ``region`` back to the scheduler: its members are PENDING again.

    ``fresh`` starts a new activation of the checkpoint (an operator resumed a
    parked run): its budget starts over instead of counting this retry.
    """
    core.regions.discard(region)
    scope = region.scope
    nodes, state, region_of = core.nodes, core.state, core.region_of
    # The scope and the scopes holding it: a member's own scopes below these start a new activation. (A
    # revert_to's region also holds what ran downstream of the scope, outside it.)
    holding = set()
    s = scope
    while s >= 0:
        holding.add(s)
        s = core.graph.scopes[s].parent
    members = region.members
    journal = core.journal
    if journal is not None:
        journal.regions.pop(region.id, None)
        journal.drop_regions.append(region.id)
    chain_cache: dict[int, list[int]] = {}
    for m in members:
        region_of[m] = None
        node = nodes[m]
        if node.kind != TASK:
            if state[m] is REVERTED:
                state[m] = PENDING
            continue
        ran = state[m] is REVERTED
        if ran:
            core.results[m] = None
            core.encoded[m] = None
            core.transition(m, PENDING)
            core.kwargs[m] = None
            core.retry_watch[m] = region.report
        elif journal is not None:
            journal.touch(m)  # its retries change below
        # Nested checkpoints start a new activation whenever an enclosing scope retries.
        chain = chain_cache.get(node.scope)
        if chain is None:
            chain = chain_cache[node.scope] = core.graph.scope_chain(m)
        for s in chain:
            if s in holding:
                break
            core.retries.pop((m, s), None)
        if fresh:
            core.retries.pop((m, scope), None)
        elif ran:
            core.retries[(m, scope)] = core.retries.get((m, scope), 0) + 1
    for inner in {s for chain in chain_cache.values() for s in _below(chain, holding)}:
        fresh_activation(core, inner)  # a Periodic inside too: from its first iteration, without waiting
    if fresh:
        core.history.pop(scope, None)
        core.first_failure.pop(scope, None)
        if scope != ROOT:
            new_pass(core, scope)
    else:
        core.history.setdefault(scope, []).extend(region.failures)
        if journal is not None:
            record_pass(core, scope)
    waiting, hold_gen = core.waiting, core.hold_gen
    touched = set(members)
    for m in members:
        touched.update(nodes[m].succs)
    for m in touched:
        # A predecessor whose success is not yet in the store still counts as unfinished.
        waiting[m] = sum(1 for p in nodes[m].preds if state[p] is not SUCCESS or hold_gen[p])
    first = [m for m in sorted(members) if waiting[m] == 0 and state[m] is PENDING]
    if journal is None:
        for m in first:
            core.make_ready(m)
    else:
        # A durable run's retry starts once its reset (the region's reverts done, the retry counted) is in the
        # store: a crash before that resumes the region as it was recorded, and no execute of the new attempt
        # can have run whose effect the resumed run would not revert.
        core.after_commit(partial(_start_reset, core, first))


def _start_reset(core: RunCore, first: list[int]) -> None:
    """Queue the members of a reset region that wait for nothing (once the reset is committed)."""
    state, waiting, region_of = core.state, core.waiting, core.region_of
    for m in first:
        if state[m] is PENDING and waiting[m] == 0 and region_of[m] is None:
            core.make_ready(m)


def _below(chain: list[int], holding: set[int]) -> list[int]:
    """The scopes of ``chain`` (innermost first) below the first one in ``holding``."""
    for i, s in enumerate(chain):
        if s in holding:
            return chain[:i]
    return chain


def enter_failure_mode(core: RunCore) -> None:
    """A revert raised: the run can neither go on nor go back. Stop what executes; start nothing."""
    if core.failure_mode:
        return
    core.failure_mode = True
    for n in core.revert_ready:
        core.revert_queued[n] = 0
    core.revert_ready.clear()
    for n, scope in core.exec_scopes.items():
        if not core.nodes[n].shield and n not in core.cancel_requested:
            core.cancel_requested.add(n)
            scope.cancel()
    core.cancel_waits()


def _on_exhausted(checkpoint: Checkpoint | None) -> str:
    return "end" if checkpoint is None else checkpoint.on_exhausted
