"""External control of a live run: cancel, suspend, resume, goto and revert_to (DESIGN §6).

Each request is a plain function over the run's core, safe to call from any
task of the run's event loop, and idempotent. Each is recorded as a
``ckflow.control.*`` event (and so, for a durable run, in its store).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from ckflow._compile import ROOT
from ckflow._errors import RunStateError, UnknownCheckpointError
from ckflow._region import Action, scope_members
from ckflow._runtime._walker import open_region, record_region, reset_region
from ckflow._states import PENDING, TERMINAL, FlowState

if TYPE_CHECKING:
    from ckflow._runtime._core import RunCore
    from ckflow._runtime._walker import Region

__all__ = [
    "reach_barrier",
    "request_cancel",
    "request_goto",
    "request_resume",
    "request_revert_to",
    "request_suspend",
    "scope_named",
]


def request_cancel(core: RunCore, *, spawn: bool = True) -> None:
    """Revert everything that ran; the run ends REVERTED. Idempotent."""
    if core.flow_state in TERMINAL or core.failure_mode or core.root_region is not None:
        return
    core.event("ckflow.control.cancel")
    if core.flow_state is FlowState.PENDING:
        core.finish(FlowState.REVERTED)
        return
    if core.flow_state is FlowState.SUSPENDED:
        core.set_flow(FlowState.RUNNING)
        core.suspended = anyio.Event()
    core.halted = False
    for region in list(core.regions):
        if region.parked:
            region.parked = False
            record_region(core, region)
    open_region(core, ROOT, set(range(core.total)), Action.END, None, None)
    if spawn:
        core.kick()
    core.maybe_finish()


def scope_named(core: RunCore, name: str) -> int:
    """The scope id of checkpoint ``name``; ``RunStateError`` naming the known ones otherwise."""
    scope = core.graph.scope_index.get(name)
    if scope is None or scope == ROOT:
        known = sorted(s.name for s in core.graph.scopes[1:])
        raise UnknownCheckpointError(core.run_id, core.flow, name, known)
    return scope


def _check_controllable(core: RunCore, operation: str) -> None:
    if core.stopped is not None:
        raise RunStateError(f"Run {core.run_id!r} cannot {operation} here: {core.stopped}")
    if core.flow_state in TERMINAL or core.failure_mode or core.root_region is not None:
        raise RunStateError(
            f"Run {core.run_id!r} cannot {operation}: it is {core.flow_state}"
            f"{' and reverting everything' if core.root_region is not None else ''}."
        )


def request_revert_to(core: RunCore, name: str, *, retry: bool) -> Region:
    """Revert what ran of checkpoint ``name``'s scope and downstream of it; then run it afresh or park there."""
    scope = scope_named(core, name)
    _check_controllable(core, f"revert to {name!r}")
    core.event("ckflow.control.revert_to", checkpoint=name, detail={"retry": retry})
    if core.flow_state is FlowState.SUSPENDED:
        core.set_flow(FlowState.RUNNING)
        core.suspended = anyio.Event()
    core.barrier = frozenset()
    core.goto_name = None
    # retry=False parks the run at the checkpoint; retry=True goes on (also from a suspension).
    core.halted = not retry
    for region in [r for r in core.regions if r.parked]:
        region.parked = False
        record_region(core, region)
    # Going back to a checkpoint undoes what came after it too: the tasks that consumed the scope's values
    # (transitively) would otherwise keep values its next pass replaces. Other branches are untouched.
    members = _with_downstream(core, set(scope_members(core.graph, scope)))
    # With nothing of the scope left to undo, the region is done at once: retried afresh, or parked.
    region = open_region(core, scope, members, Action.SUSPEND, None, None, auto_resume=retry)
    core.kick()
    core.maybe_finish()
    return region


def _with_downstream(core: RunCore, members: set[int]) -> set[int]:
    """``members`` and every node downstream of them."""
    nodes = core.nodes
    found = set(members)
    todo = list(members)
    while todo:
        for s in nodes[todo.pop()].succs:
            if s not in found:
                found.add(s)
                todo.append(s)
    return found


def request_goto(core: RunCore, name: str) -> None:
    """Run forward until checkpoint ``name`` is reached (or revert back to it), then suspend there."""
    scope = scope_named(core, name)
    _check_controllable(core, f"go to {name!r}")
    members = scope_members(core.graph, scope)
    if any(core.state[m] is not PENDING for m in members):
        request_revert_to(core, name, retry=False)
        return
    core.event("ckflow.control.goto", checkpoint=name)
    core.barrier = frozenset(members)
    core.goto_name = name
    if core.flow_state is FlowState.SUSPENDED:
        # Suspended before the checkpoint: go forward to it.
        core.set_flow(FlowState.RUNNING)
        core.suspended = anyio.Event()
    core.halted = False
    for n in range(core.total):
        if core.state[n] is PENDING and core.waiting[n] == 0:
            core.make_ready(n)
    core.kick()
    core.maybe_finish()


def reach_barrier(core: RunCore, n: int) -> None:
    """A task of the goto checkpoint's scope is ready: the checkpoint is reached; suspend."""
    core.queued[n] = 1
    core.ready.appendleft(n)
    core.halted = True
    core.maybe_finish()


def request_suspend(core: RunCore) -> None:
    """Let running tasks finish and start nothing new; the run becomes SUSPENDED."""
    if core.flow_state in TERMINAL or core.halted:
        return
    core.event("ckflow.control.suspend")
    core.halted = True
    core.kick()
    core.maybe_finish()


def request_resume(core: RunCore) -> None:
    """Go on after a suspension; a parked checkpoint starts a fresh budget."""
    if core.flow_state in TERMINAL or not core.halted or core.failure_mode:
        return
    core.event("ckflow.control.resume")
    core.halted = False
    core.barrier = frozenset()
    core.goto_name = None
    if core.flow_state is FlowState.SUSPENDED:
        core.set_flow(FlowState.RUNNING)
        core.suspended = anyio.Event()
        if core.stop_on_suspend:
            core.settled = anyio.Event()
    for region in [r for r in core.regions if r.parked]:
        reset_region(core, region, fresh=True)
    for n in range(core.total):
        if core.state[n] is PENDING and core.waiting[n] == 0:
            core.make_ready(n)
    core.kick()
