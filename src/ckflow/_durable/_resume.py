"""Rebuild a run's state from its store, so that it goes on where it was (DESIGN §7, Resume).

What the store says, and what the resumed run does with it:

- SUCCESS tasks keep their results and are not executed again; their values
  are decoded through the tasks' return annotations.
- RUNNING tasks were interrupted (a crash, an engine shut down): they go back
  to PENDING and are executed again. Execution is at least once.
- REVERTING tasks were interrupted in their revert: their region is open in
  the store, so the revert is called again. Reverts are at least once too.
- A region's record holds the walker's decision (its checkpoint, members and
  action). If its reverts are all done but the retry's reset did not reach
  the store, the reset happens now, counted once: the reset and the retry
  count are written in one transaction.
- Joins and Periodic gates hold no state of their own: they are derived from
  their predecessors. A Periodic waiting for its next iteration waits for
  what is left of its period.
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Any

from ckflow._codec import decode, result_adapter
from ckflow._compile import JOIN, LOOP, ROOT, TASK
from ckflow._durable._journal import Journal
from ckflow._errors import FlowDefinitionError, StoreError
from ckflow._models import RegionReport
from ckflow._region import Action
from ckflow._runtime import _task_view as task_view
from ckflow._runtime._regions import Region
from ckflow._states import FlowState, TaskState
from ckflow._task import Task

if TYPE_CHECKING:
    from ckflow._records import CheckpointRecord, RegionRecord, StoredRun, TaskRecord
    from ckflow._runtime._core import RunCore

__all__ = ["restore"]


def restore(core: RunCore, stored: StoredRun, passes: list[CheckpointRecord]) -> None:
    """Set ``core`` (fresh, with its journal attached) to the state ``stored`` describes.

    ``passes`` are the run's retained checkpoint passes, for retention by age.

    Raises:
        FlowDefinitionError: the flow lacks a task or checkpoint the run recorded.
        StoreError: a stored value cannot be decoded into what its task's annotations say.
    """
    graph = core.run.graph
    unknown = sorted(t.task for t in stored.tasks if t.task not in graph.index)
    unknown += sorted(r.checkpoint for r in stored.regions if r.checkpoint not in graph.scope_index)
    if unknown:
        raise FlowDefinitionError(
            f"Run {core.run_id!r} cannot be resumed with this flow {core.flow!r}: the run recorded "
            f"{unknown}, which the flow does not have; resume it with the flow it was started with."
        )
    journal = core.journal
    assert isinstance(journal, Journal)
    offset = journal.wall0  # wall - monotonic

    def mono(wall: float | None) -> float | None:
        return None if wall is None else wall - offset

    interrupted: list[str] = []
    for record in stored.tasks:
        n = graph.index[record.task]
        _load_task(core, n, record, mono)
        if record.state is TaskState.RUNNING:
            interrupted.append(record.task)
            journal.transition(n, TaskState.RUNNING, TaskState.PENDING, core.run.attempt(n), None)
    _derive_gates(core, stored)
    _load_passes(core, stored.checkpoints, passes, mono)
    core.run.failures = list(stored.failures)
    _count(core)
    _resume_sleeps(core, stored.checkpoints, mono)
    _load_mode(core, stored)
    core.run.event("ckflow.run.resumed", detail={"interrupted": interrupted, "owner": journal.owner})
    for region in stored.regions:
        _load_region(core, region)
    if core.run.flow_state is FlowState.SUSPENDED:
        core.suspended.set()


def _count(core: RunCore) -> None:
    """Count again, from the loaded states, what succeeded, what each scope has left and what each node waits for."""
    state, nodes = core.run.state, core.run.nodes
    core.sched.n_success = sum(1 for st in state if st is TaskState.SUCCESS)
    remaining = core.passes.remaining
    for n, node in enumerate(nodes):
        if node.kind != JOIN and state[n] is TaskState.SUCCESS:
            remaining[ROOT] -= 1
            for s in node.chain:
                remaining[s] -= 1
    waiting = core.sched.waiting
    for n, node in enumerate(nodes):
        waiting[n] = sum(1 for p in node.preds if state[p] is not TaskState.SUCCESS)


def _load_mode(core: RunCore, stored: StoredRun) -> None:
    """The run's state and mode as recorded: suspended or halted, at a goto's barrier, failed."""
    graph, run = core.run.graph, stored.run
    core.run.flow_state = run.state
    core.run.halt(run.halted or run.state is FlowState.SUSPENDED)
    if run.goto is not None and run.goto in graph.scope_index:
        core.goto_name = run.goto
        barrier = graph.scope_index[run.goto]
        core.sched.barrier = frozenset(n for n in range(core.run.total) if graph.in_scope(n, barrier))
    if any(st is TaskState.REVERT_FAILURE for st in core.run.state):
        core.run.fail()
        core.walker.cancel_waits()


def _load_task(core: RunCore, n: int, record: TaskRecord, mono: Any) -> None:
    node = core.run.nodes[n]
    task = node.task
    assert isinstance(task, Task)
    loaded = task_view.load(core.run, n, record, mono)
    if record.failure is None and record.result is not None and loaded is TaskState.SUCCESS:
        try:
            value = decode(record.result, result_adapter(task))
        except Exception as exc:
            raise StoreError(
                f"Run {core.run_id!r}: the stored result of task {node.name!r} does not decode into what its "
                f"return annotation says ({exc}); fix the annotation, or resume with the code that wrote it."
            ) from exc
        core.run.results[n] = value
        journal = core.journal
        assert isinstance(journal, Journal)
        journal.encoded[n] = record.result
        _provide(core, n, value)


def _provide(core: RunCore, n: int, value: Any) -> None:
    provides = core.run.nodes[n].provides
    if not provides:
        return
    if len(provides) == 1:
        core.run.values[provides[0]] = value
    elif isinstance(value, dict):
        core.run.values.update({p: value[p] for p in provides if p in value})
    elif isinstance(value, list | tuple):
        core.run.values.update(zip(provides, value, strict=False))


def _topological(core: RunCore) -> list[int]:
    nodes = core.run.nodes
    indegree = [len(node.preds) for node in nodes]
    order = [n for n, d in enumerate(indegree) if d == 0]
    for n in order:
        for s in nodes[n].succs:
            indegree[s] -= 1
            if indegree[s] == 0:
                order.append(s)
    return order


def _derive_gates(core: RunCore, stored: StoredRun) -> None:
    """Joins succeed when all their predecessors have; a Periodic's gate once its last iteration has."""
    graph = core.run.graph
    iterations: dict[int, int] = {}
    for record in stored.tasks:
        n = graph.index[record.task]
        for s in core.run.nodes[n].chain:
            if s in core.passes.iteration:
                iterations[s] = max(iterations.get(s, 1), record.iteration or 1)
                break
    core.passes.iteration.update(iterations)
    state, nodes = core.run.state, core.run.nodes
    for n in _topological(core):
        node = nodes[n]
        if node.kind == TASK:
            continue
        done = all(state[p] is TaskState.SUCCESS for p in node.preds)
        if done and node.kind == LOOP:
            scope = graph.scopes[graph.loops[n]]
            done = scope.times is not None and core.passes.iteration[scope.id] >= scope.times
        core.run.join_transition(n, TaskState.SUCCESS if done else TaskState.PENDING)


def _load_passes(core: RunCore, latest: list[CheckpointRecord], passes: list[CheckpointRecord], mono: Any) -> None:
    index = core.run.graph.scope_index
    for record in latest:
        s = index.get(record.checkpoint)
        if s is None or s == ROOT:
            continue
        core.passes.pass_no[s] = record.pass_no
        core.passes.pass_seq[s] = record.first_seq
        start = mono(record.started_at)
        if start is not None:
            core.passes.pass_start[s] = start
        if record.state == "active":
            if record.history:
                core.run.history[s] = list(record.history)
            first = mono(record.first_failure_at)
            if first is not None:
                core.run.first_failure[s] = first
    for record in passes:
        s = index.get(record.checkpoint)
        if s is None or record.state != "completed" or record.completed_at is None:
            continue
        retained = core.passes.retained.setdefault(s, deque())
        retained.append((record.pass_no, record.completed_at, record.first_seq, record.started_at or 0.0))


def _resume_sleeps(core: RunCore, latest: list[CheckpointRecord], mono: Any) -> None:
    """A Periodic whose body waits, untouched, for an iteration that was due at ``next_at`` waits on."""
    graph = core.run.graph
    state, waiting = core.run.state, core.sched.waiting
    for record in latest:
        s = graph.scope_index.get(record.checkpoint)
        if s is None or graph.scopes[s].gate < 0 or record.next_at is None or record.state != "active":
            continue
        scope = graph.scopes[s]
        if any(state[m] is not TaskState.PENDING for m in scope.members if core.run.nodes[m].kind == TASK):
            continue  # the iteration had started
        for e in scope.entries:
            waiting[e] += 1
        core.passes.deferred_sleeps[s] = max(0.0, record.next_at - time.time())


def _load_region(core: RunCore, record: RegionRecord) -> None:
    graph = core.run.graph
    scope = graph.scope_index[record.checkpoint]
    index = graph.index
    members = {index[name] for name in record.members if name in index}
    # Joins and gates of the region are what lies downstream of its tasks inside the scope.
    stack = list(members)
    while stack:
        for s in core.run.nodes[stack.pop()].succs:
            if s not in members and graph.in_scope(s, scope):
                members.add(s)
                stack.append(s)
    action = Action(record.action)
    report = RegionReport(
        checkpoint=record.checkpoint,
        action=action.value,
        cause=record.cause,
        members=sorted(record.members),
        failure_at=time.monotonic(),
    )
    core.run.add_report(report)
    region = Region(record.region_id, scope, graph.scopes[scope].depth, action, members, report)
    region.failures = list(record.failures)
    region.auto_resume = record.auto_resume
    core.walker.region_ids = max(core.walker.region_ids, record.region_id)
    core.walker.regions[region] = None
    if scope == ROOT:
        core.walker.root_region = region
    for m in members:
        core.walker.region_of[m] = region
    if record.parked:
        region.parked = True
        core.run.halt(True)
        region.settled.set()
        return
    core.walker.arm_region(region)
