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
    from ckflow._runtime._ports import SchedulerPort
    from ckflow._runtime._state import RunState

__all__ = ["Passes"]

SUCCESS = TaskState.SUCCESS
PENDING = TaskState.PENDING


class Passes:
    """Checkpoint passes, their records and retention, and Periodic iterations: this part's own state."""

    __slots__ = (
        "deferred_sleeps",
        "graph",
        "iteration",
        "pass_no",
        "pass_seq",
        "pass_start",
        "remaining",
        "retained",
        "run",
        "sched",
        "sleepers",
    )

    def __init__(self, run: RunState) -> None:
        self.run = run
        graph = self.graph = run.graph
        n_scopes = len(graph.scopes)
        #: the scheduler, set once it exists (it calls into this part, and this part calls back)
        self.sched: SchedulerPort | None = None
        # These four map scope -> number as dicts, not lists: a dict that holds only numbers is not tracked by
        # the cyclic GC, and every live run has them (issue 15, S8).
        #: scope -> the number of its current pass (activation), from 1
        self.pass_no = dict.fromkeys(range(n_scopes), 1)
        #: scope -> time.monotonic() at the start of its current pass (0: the run's start)
        self.pass_start = dict.fromkeys(range(n_scopes), 0.0)
        #: scope -> the sequence number of the run's first event in its current pass
        self.pass_seq = dict.fromkeys(range(n_scopes), 0)
        #: durable runs: scope -> its tasks (and Periodic gates) that are not SUCCESS now
        self.remaining = dict(enumerate(graph.scope_sizes))
        #: scope -> its retained passes: (pass, completed at, first seq, started at), wall-clock times
        self.retained: dict[int, deque[tuple[int, float, int, float]]] = {}
        #: Periodic scope -> its current iteration, from 1
        self.iteration = dict.fromkeys(graph.loops.values(), 1)
        #: Periodic scope -> the cancel scope of its wait for the next iteration
        self.sleepers: dict[int, anyio.CancelScope] = {}
        #: Periodic scope -> seconds still to wait, for waits set up before the run's task group exists
        self.deferred_sleeps: dict[int, float] = {}

    def _sched(self) -> SchedulerPort:
        sched = self.sched
        assert sched is not None, "the run wires its scheduler before anything runs"
        return sched

    # -- activations and their records ----------------------------------------------

    def nested_scopes(self, scope: int) -> list[int]:
        """``scope`` and every scope nested in it."""
        found = [scope]
        for s in found:
            found.extend(self.graph.scopes[s].children)
        return found

    def fresh_activation(self, scope: int, next_at: float | None = None) -> None:
        """``scope`` starts afresh: a new pass without retry history, and a Periodic from its first iteration.

        What an enclosing retry does to the scopes inside, and what a Periodic's next iteration does to its own.
        """
        run = self.run
        run.history.pop(scope, None)
        run.first_failure.pop(scope, None)
        if scope in self.iteration:
            self.iteration[scope] = 1
            sleeper = self.sleepers.pop(scope, None)
            if sleeper is not None:
                sleeper.cancel()
        self.new_pass(scope, next_at)

    def new_pass(self, scope: int, next_at: float | None = None) -> None:
        """``scope`` starts a new activation."""
        self.pass_no[scope] += 1
        self.pass_start[scope] = time.monotonic()
        recorder = self.run.recorder
        if self.run.durable:
            self.pass_seq[scope] = recorder.seq
            self.record_pass(scope, next_at=next_at)

    def record_pass(self, scope: int, *, completed: bool = False, next_at: float | None = None) -> None:
        """Put the record of ``scope``'s current pass in the recorder (a durable run's)."""
        recorder = self.run.recorder
        if self.run.durable:
            name = self.graph.scopes[scope].name
            recorder.checkpoint((name, self.pass_no[scope]), lambda: self._pass_record(scope, name, completed, next_at))

    def _pass_record(self, scope: int, name: str, completed: bool, next_at: float | None) -> CheckpointRecord:
        run = self.run
        wall = run.recorder.wall
        tasks = self.graph.scope_tasks(scope)
        snapshot: str | None = None
        outlines: dict[str, TaskOutline] = {}
        if completed:
            snapshot = self._snapshot(tasks)
            for m in tasks if scope != ROOT else ():  # the root's tasks keep their own records
                result = run.results[m]
                outlines[self.graph.names[m]] = construct(
                    TaskOutline,
                    state=run.state[m],
                    attempts=run.executions[m],
                    started_at=wall(run.started_at(m)),
                    ended_at=wall(run.ended_at(m)),
                    failure=result if isinstance(result, Failure) else None,
                )
        return construct(
            CheckpointRecord,
            run_id=run.run_id,
            checkpoint=name,
            pass_no=self.pass_no[scope],
            state="completed" if completed else "active",
            attempts=max((run.attempt_under(m, scope) for m in tasks), default=1),
            history=list(run.history.get(scope, ())),
            first_failure_at=wall(run.first_failure.get(scope)),
            snapshot=snapshot,
            tasks=outlines,
            started_at=wall(self.pass_start[scope]),
            completed_at=time.time() if completed else None,
            next_at=next_at,
            first_seq=self.pass_seq[scope],
        )

    def _snapshot(self, tasks: list[int]) -> str:
        """The values the tasks provided, as one JSON object (text)."""
        parts: list[str] = []
        run = self.run
        values, provided, recorder = run.values, self.graph.provides, run.recorder
        for m in tasks:
            provides = provided[m]
            text = recorder.result_text(m)
            if len(provides) == 1 and text is not None:
                parts.append(f"{encode_name(provides[0])}:{text}")
            else:
                parts.extend(f"{encode_name(p)}:{encode(values[p])}" for p in provides if p in values)
        return "{" + ",".join(parts) + "}"

    def progress(self, chain: tuple[int, ...]) -> None:
        """A task (or gate) of these scopes succeeded in a durable run: a scope with nothing left has completed."""
        remaining = self.remaining
        for s in chain:
            r = remaining[s] - 1
            remaining[s] = r
            if r == 0:
                self.record_pass(s, completed=True)
                self.retain(s)

    def regress(self, chain: tuple[int, ...]) -> None:
        """A task (or gate) of these scopes is no longer SUCCESS in a durable run (reverted, or reset)."""
        remaining = self.remaining
        for s in chain:
            remaining[s] += 1

    def retain(self, scope: int) -> None:
        """``scope`` completed a pass: forget the passes its retention no longer keeps."""
        info = self.graph.scopes[scope]
        keep_last, max_age = info.keep_last, info.max_age
        if keep_last is None and max_age is None:
            return
        now = time.time()
        wall0 = time.time() - time.monotonic()
        retained = self.retained.setdefault(scope, deque())
        retained.append((self.pass_no[scope], now, self.pass_seq[scope], self.pass_start[scope] + wall0))
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
        names = {self.graph.scopes[s].name for s in self.nested_scopes(scope)}
        run = self.run
        run.recorder.retain(Retention(info.name, oldest_pass, oldest_seq, tuple(sorted(names))))
        # The run's own memory stays bounded too: failures and region reports of forgotten passes go.
        tasks = set(map(self.graph.names.__getitem__, self.graph.scope_tasks(scope)))
        run.failures = [f for f in run.failures if not (f.task in tasks and (f.at or now) < oldest_start)]
        cut = oldest_start - wall0
        run.reports = [r for r in run.reports if not (r.checkpoint in names and r.failure_at < cut)]

    def iteration_of(self, n: int) -> int:
        """The iteration of ``n``'s innermost Periodic (0 outside any)."""
        for s in self.graph.chains[n]:
            it = self.iteration.get(s)
            if it is not None:
                return it
        return 0

    # -- Periodic ----------------------------------------------------------------------

    def iteration_done(self, gate: int) -> bool:
        """Every task of a Periodic's iteration succeeded: True if it was the last iteration."""
        scope = self.graph.loops[gate]
        info = self.graph.scopes[scope]
        if not self.run.durable:
            self.retain(scope)  # a durable run retained it when the scope completed
        iteration = self.iteration[scope]
        if info.times is not None and iteration >= info.times:
            return True
        self.loop_again(scope)
        return False

    def loop_again(self, scope: int) -> None:
        """Reset a Periodic's body for its next iteration, which starts ``every`` after this one started."""
        info = self.graph.scopes[scope]
        run = self.run
        sched = self._sched()
        graph, state = self.graph, run.state
        kinds, chains = graph.kinds, graph.chains
        durable = run.durable
        for m in info.members:
            if state[m] is SUCCESS:
                sched.n_success -= 1
                if durable and kinds[m] != JOIN:
                    self.regress(chains[m])
                if kinds[m] == TASK:
                    run.results[m] = None
                    run.recorder.forget_result(m)
                    run.kwargs[m] = None
                    run.transition(m, PENDING)
                else:
                    run.join_transition(m, PENDING)
            for s in chains[m]:
                run.retries.pop((m, s), None)
                if s == scope:
                    break
        started = self.pass_start[scope]
        delay = max(0.0, started + info.every - time.monotonic())
        wall0 = time.time() - time.monotonic()
        iteration = self.iteration[scope]
        for s in self.nested_scopes(scope):
            self.fresh_activation(s, next_at=started + info.every + wall0 if s == scope else None)
        self.iteration[scope] = iteration + 1
        waiting, held = sched.waiting, run.recorder.held
        for m in (*info.members, info.gate):
            waiting[m] = sum(1 for p in graph.preds[m] if state[p] is not SUCCESS or held(p))
        for e in info.entries:
            waiting[e] += 1  # the next iteration also waits for its time
        run.event(
            "ckflow.periodic.next",
            DEBUG,
            checkpoint=info.name,
            detail={"iteration": self.iteration[scope], "delay": delay},
        )
        self.sleep(scope, delay)

    def sleep(self, scope: int, delay: float) -> None:
        """Wait ``delay`` seconds, without blocking anything, before the Periodic's next iteration."""
        tg = self._sched().tg
        if delay <= 0:
            self.wake(scope)
        elif tg is None:
            self.deferred_sleeps[scope] = delay
        else:
            sleeper = self.sleepers[scope] = anyio.CancelScope()
            tg.start_soon(self._sleeper, scope, sleeper, delay)

    def start_deferred(self) -> None:
        """The run's task group exists now: start the waits set up before it did."""
        for scope, delay in self.deferred_sleeps.items():
            self.sleep(scope, delay)
        self.deferred_sleeps.clear()

    def cancel_sleeps(self) -> None:
        """Cancel every wait for a Periodic's next iteration."""
        for sleeper in self.sleepers.values():
            sleeper.cancel()
        self.sleepers.clear()

    async def _sleeper(self, scope: int, sleeper: anyio.CancelScope, delay: float) -> None:
        with sleeper:
            await anyio.sleep(delay)
        if sleeper.cancel_called or self.sleepers.get(scope) is not sleeper:
            return
        del self.sleepers[scope]
        self.wake(scope)
        await self._sched().worker()

    def wake(self, scope: int) -> None:
        """A Periodic's next iteration is due: its first tasks may start."""
        # The iteration starts now: the next one is due ``every`` after this moment.
        self.pass_start[scope] = time.monotonic()
        self.record_pass(scope)
        sched = self._sched()
        waiting, state = sched.waiting, self.run.state
        for e in self.graph.scopes[scope].entries:
            waiting[e] -= 1
            if waiting[e] == 0 and state[e] is PENDING:
                sched.make_ready(e)
