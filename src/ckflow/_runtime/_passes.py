"""Checkpoint passes and Periodic iterations: records of scopes as they complete, retention, looping.

A *pass* is one activation of a checkpoint's scope. For a durable run, the
pass's record is written when the scope completes (with a snapshot of the
values it produced) and whenever its retry history changes; the scope's
retention (``keep_last``, ``max_age``) then deletes older passes and their
events, and trims the run's own memory of them. A ``Periodic`` goes round
again when its gate is reached: its body is reset to PENDING for the next
iteration, which waits until ``every`` after the previous one started.
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING

import anyio

from ckflow._codec import encode, encode_name
from ckflow._compile import JOIN, ROOT, TASK
from ckflow._events import DEBUG
from ckflow._failure import Failure
from ckflow._records import CheckpointRecord, Retention, TaskOutline, construct
from ckflow._states import TaskState

if TYPE_CHECKING:
    from ckflow._runtime._core import RunCore

__all__ = [
    "fresh_activation",
    "iteration_done",
    "loop_again",
    "nested_scopes",
    "new_pass",
    "record_pass",
    "retain",
    "scopes_progress",
    "sleep",
    "wake",
]

SUCCESS = TaskState.SUCCESS
PENDING = TaskState.PENDING


def nested_scopes(core: RunCore, scope: int) -> list[int]:
    """``scope`` and every scope nested in it."""
    found = [scope]
    for s in found:
        found.extend(core.graph.scopes[s].children)
    return found


def fresh_activation(core: RunCore, scope: int, next_at: float | None = None) -> None:
    """``scope`` starts afresh: a new pass without retry history, and a Periodic from its first iteration.

    What an enclosing retry does to the scopes inside, and what a Periodic's next iteration does to its own.
    """
    core.history.pop(scope, None)
    core.first_failure.pop(scope, None)
    if scope in core.iteration:
        core.iteration[scope] = 1
        sleeper = core.sleepers.pop(scope, None)
        if sleeper is not None:
            sleeper.cancel()
    new_pass(core, scope, next_at)


def new_pass(core: RunCore, scope: int, next_at: float | None = None) -> None:
    """``scope`` starts a new activation."""
    core.pass_no[scope] += 1
    core.pass_start[scope] = time.monotonic()
    journal = core.journal
    if journal is not None:
        core.pass_seq[scope] = journal.seq
        record_pass(core, scope, next_at=next_at)


def record_pass(core: RunCore, scope: int, *, completed: bool = False, next_at: float | None = None) -> None:
    """Put the record of ``scope``'s current pass in the journal."""
    journal = core.journal
    if journal is None:
        return
    name = core.graph.scopes[scope].name
    tasks = core.graph.scope_tasks(scope)
    snapshot: str | None = None
    outlines: dict[str, TaskOutline] = {}
    if completed:
        snapshot = _snapshot(core, tasks)
        wall = journal.wall
        for m in tasks if scope != ROOT else ():  # the root's tasks keep their own records
            result = core.results[m]
            outlines[core.nodes[m].name] = construct(
                TaskOutline,
                state=core.state[m],
                attempts=core.executions[m],
                started_at=wall(core.started[m]),
                ended_at=wall(core.ended[m]),
                failure=result if isinstance(result, Failure) else None,
            )
    journal.checkpoints[(name, core.pass_no[scope])] = construct(
        CheckpointRecord,
        run_id=core.run_id,
        checkpoint=name,
        pass_no=core.pass_no[scope],
        state="completed" if completed else "active",
        attempts=max((core.attempt_under(m, scope) for m in tasks), default=1),
        history=list(core.history.get(scope, ())),
        first_failure_at=journal.wall(core.first_failure.get(scope)),
        snapshot=snapshot,
        tasks=outlines,
        started_at=journal.wall(core.pass_start[scope]),
        completed_at=time.time() if completed else None,
        next_at=next_at,
        first_seq=core.pass_seq[scope],
    )


def _snapshot(core: RunCore, tasks: list[int]) -> str:
    """The values the tasks provided, as one JSON object (text)."""
    parts: list[str] = []
    values, encoded, nodes = core.values, core.encoded, core.nodes
    for m in tasks:
        provides = nodes[m].provides
        text = encoded[m]
        if len(provides) == 1 and text is not None:
            parts.append(f"{encode_name(provides[0])}:{text}")
        else:
            parts.extend(f"{encode_name(p)}:{encode(values[p])}" for p in provides if p in values)
    return "{" + ",".join(parts) + "}"


def scopes_progress(core: RunCore, chain: tuple[int, ...]) -> None:
    """A task (or gate) of these scopes succeeded: a scope with nothing left has completed."""
    remaining = core.remaining
    for s in chain:
        r = remaining[s] - 1
        remaining[s] = r
        if r == 0:
            record_pass(core, s, completed=True)
            retain(core, s)


def retain(core: RunCore, scope: int) -> None:
    """``scope`` completed a pass: forget the passes its retention no longer keeps."""
    info = core.graph.scopes[scope]
    keep_last, max_age = info.keep_last, info.max_age
    if keep_last is None and max_age is None:
        return
    journal = core.journal
    now = time.time()
    wall0 = time.time() - time.monotonic()
    retained = core.retained.setdefault(scope, deque())
    retained.append((core.pass_no[scope], now, core.pass_seq[scope], core.pass_start[scope] + wall0))
    dropped = False
    while len(retained) > 1 and (
        (keep_last is not None and len(retained) > keep_last)
        or (max_age is not None and retained[0][1] < now - max_age)
    ):
        retained.popleft()
        dropped = True
    if not dropped:
        return
    oldest_pass, _, oldest_seq, oldest_start = retained[0]
    names = {core.graph.scopes[s].name for s in nested_scopes(core, scope)}
    if journal is not None:
        journal.retention.append(Retention(info.name, oldest_pass, oldest_seq, tuple(sorted(names))))
    # The run's own memory stays bounded too: failures and region reports of forgotten passes go.
    tasks = {core.nodes[m].name for m in core.graph.scope_tasks(scope)}
    core.failures = [f for f in core.failures if not (f.task in tasks and (f.at or now) < oldest_start)]
    cut = oldest_start - wall0
    core.reports = [r for r in core.reports if not (r.checkpoint in names and r.failure_at < cut)]


def iteration_done(core: RunCore, gate: int) -> bool:
    """Every task of a Periodic's iteration succeeded: True if it was the last iteration."""
    scope = core.graph.loops[gate]
    info = core.graph.scopes[scope]
    if core.journal is None:
        retain(core, scope)  # a durable run retained it when the scope completed
    iteration = core.iteration[scope]
    if info.times is not None and iteration >= info.times:
        return True
    loop_again(core, scope)
    return False


def loop_again(core: RunCore, scope: int) -> None:
    """Reset a Periodic's body for its next iteration, which starts ``every`` after this one started."""
    info = core.graph.scopes[scope]
    nodes, state = core.nodes, core.state
    journal = core.journal
    remaining = core.remaining
    for m in info.members:
        node = nodes[m]
        if state[m] is SUCCESS:
            core.n_success -= 1
            if journal is not None and node.kind != JOIN:
                for s in node.chain:
                    remaining[s] += 1
            if node.kind == TASK:
                core.results[m] = None
                core.encoded[m] = None
                core.kwargs[m] = None
                core.transition(m, PENDING)
            else:
                state[m] = PENDING
        for s in node.chain:
            core.retries.pop((m, s), None)
            if s == scope:
                break
    started = core.pass_start[scope]
    delay = max(0.0, started + info.every - time.monotonic())
    wall0 = time.time() - time.monotonic()
    iteration = core.iteration[scope]
    for s in nested_scopes(core, scope):
        fresh_activation(core, s, next_at=started + info.every + wall0 if s == scope else None)
    core.iteration[scope] = iteration + 1
    waiting, hold_gen = core.waiting, core.hold_gen
    for m in (*info.members, info.gate):
        waiting[m] = sum(1 for p in nodes[m].preds if state[p] is not SUCCESS or hold_gen[p])
    for e in info.entries:
        waiting[e] += 1  # the next iteration also waits for its time
    core.event(
        "ckflow.periodic.next",
        DEBUG,
        checkpoint=info.name,
        detail={"iteration": core.iteration[scope], "delay": delay},
    )
    sleep(core, scope, delay)


def sleep(core: RunCore, scope: int, delay: float) -> None:
    if delay <= 0:
        wake(core, scope)
    elif core.tg is None:
        core.deferred_sleeps[scope] = delay
    else:
        sleeper = core.sleepers[scope] = anyio.CancelScope()
        core.tg.start_soon(_sleeper, core, scope, sleeper, delay)


async def _sleeper(core: RunCore, scope: int, sleeper: anyio.CancelScope, delay: float) -> None:
    with sleeper:
        await anyio.sleep(delay)
    if sleeper.cancel_called or core.sleepers.get(scope) is not sleeper:
        return
    del core.sleepers[scope]
    wake(core, scope)
    await core.worker()


def wake(core: RunCore, scope: int) -> None:
    """A Periodic's next iteration is due: its first tasks may start."""
    # The iteration starts now: the next one is due ``every`` after this moment.
    core.pass_start[scope] = time.monotonic()
    record_pass(core, scope)
    waiting, state = core.waiting, core.state
    for e in core.graph.scopes[scope].entries:
        waiting[e] -= 1
        if waiting[e] == 0 and state[e] is PENDING:
            core.make_ready(e)
