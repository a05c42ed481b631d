"""A run's state: per-node arrays, the run's mode, and the one function every change of state goes through.

``RunState`` owns what every part of a run reads: each node's state, result,
inputs, execution count and times; the values the tasks provided; the
failures and the walker's reports; the retry counts and histories that make
``current().attempt``. Every task transition, joins included, goes through
``transition``, which checks it against the table of ``ckflow._states`` and
tells the run's observers: the durability recorder, OpenTelemetry and the
event hub (subscribers and the log). The flow's state changes through
``set_flow`` likewise.

A run's *mode* is one value, ``RunMode``, rather than a cloud of flags: it
says whether tasks may start (RUNNING), whether the run waits for an
operator (HALTED), whether a revert raised so that nothing more may start
(FAILED), or whether this engine stopped running the run (STOPPED, with its
reason).
"""

from __future__ import annotations

from array import array
from enum import Enum
from math import isnan, nan
from typing import TYPE_CHECKING, Any, Final, TypeVar

from ckflow._events import DEBUG, ERROR, INFO, TASK_LOG, WARNING, EventHub
from ckflow._failure import Failure
from ckflow._states import (
    FAILURE,
    PENDING,
    REVERT_FAILURE,
    RUNNING,
    SUCCESS,
    TASK_TRANSITIONS,
    FlowState,
    TaskState,
    check_flow_transition,
    check_task_transition,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from ckflow._compile import ExecutionGraph
    from ckflow._graph import NodeList
    from ckflow._models import RegionReport
    from ckflow._runtime._ports import TelemetryPort
    from ckflow._runtime._recorder import Recorder

__all__ = ["JOIN_TRANSITIONS", "UNSET", "RunMode", "RunState", "appended"]

_T = TaskState
_I = TypeVar("_I")
#: a time not taken, in the arrays of times (``RunState.started``, ``RunState.ended``)
UNSET: Final = nan
#: joins and Periodic gates do no work: they succeed when their predecessors have, and are undone at once
JOIN_TRANSITIONS: Final = frozenset(
    {
        (_T.PENDING, _T.SUCCESS),  # its last predecessor succeeded
        (_T.SUCCESS, _T.REVERTED),  # its region is reverted
        (_T.REVERTED, _T.PENDING),  # its region is retried
        (_T.SUCCESS, _T.PENDING),  # a Periodic's next iteration, or a resumed run that derives it again
    }
)
#: each run state's event name, made once (a run moves twice at least: the names are asked for on every run)
_RUN_EVENTS: Final = {state: f"ckflow.run.{state.lower()}" for state in FlowState}


class RunMode(Enum):
    """What a run may do now, one value at a time (the precedence: STOPPED, FAILED, HALTED, RUNNING)."""

    #: ready tasks start at once
    RUNNING = "running"
    #: suspended, parked at a checkpoint, or at a goto's barrier: running tasks finish, nothing new starts
    HALTED = "halted"
    #: a revert raised: running executes are cancelled, running reverts finish, nothing new starts (FAILURE)
    FAILED = "failed"
    #: this engine stopped running the run (it shut down, lost the lease, or the store failed); it stays resumable
    STOPPED = "stopped"


class RunState:
    """The state of one run that every part reads, and the one place it changes."""

    __slots__ = (
        "durable",
        "ended",
        "executions",
        "failures",
        "first_failure",
        "flow",
        "flow_state",
        "graph",
        "history",
        "hub",
        "inputs",
        "kwargs",
        "mode",
        "nodes",
        "recorder",
        "reports",
        "results",
        "retries",
        "rev_ended",
        "rev_started",
        "run_id",
        "started",
        "state",
        "stop_reason",
        "telemetry",
        "total",
        "values",
    )

    def __init__(self, graph: ExecutionGraph, run_id: str, inputs: Mapping[str, Any], recorder: Recorder) -> None:
        self.graph = graph
        self.nodes: NodeList = graph.nodes
        self.run_id = run_id
        self.flow = graph.flow_name
        self.inputs = dict(inputs)
        n = len(graph.names)
        self.total = n
        self.state: list[TaskState] = [PENDING] * n
        self.results: list[Any] = [None] * n
        #: the inputs each task's execute was called with (its revert gets them too)
        self.kwargs: list[dict[str, Any] | None] = [None] * n
        #: every execution of each task in the run, retries included
        self.executions: list[int] = [0] * n
        #: each node's last execute's start and end (time.monotonic(), UNSET if none): arrays of doubles, not
        #: lists of float objects (48 B a task less, S6); read them through ``started_at`` and ``ended_at``
        self.started = array("d", [UNSET]) * n
        self.ended = array("d", [UNSET]) * n
        self.rev_started: dict[int, float] = {}
        self.rev_ended: dict[int, float] = {}
        self.values: dict[str, Any] = {}
        #: made by the first failure or region (``add_failure``, ``add_report``): until then an empty tuple, which a
        #: live run's cyclic-GC passes do not visit
        self.failures: Sequence[Failure] = ()
        self.reports: Sequence[RegionReport] = ()
        #: (node, scope) -> retries of that node by that checkpoint in its current activation
        self.retries: dict[tuple[int, int], int] = {}
        #: scope -> failures of earlier attempts in its current activation
        self.history: dict[int, list[Failure]] = {}
        #: scope -> time.monotonic() of its first failure in this activation (for Retry.timeout)
        self.first_failure: dict[int, float] = {}
        self.flow_state = FlowState.PENDING
        self.mode = RunMode.RUNNING
        #: why this engine stopped running the run (mode STOPPED)
        self.stop_reason: BaseException | None = None
        self.recorder = recorder
        #: ``recorder.durable``, read on the hot path as a plain attribute (``use`` keeps them together)
        self.durable = recorder.durable
        self.hub = EventHub(run_id, graph.flow_name)
        #: OpenTelemetry spans and metrics of the run (None unless the otel extra and a provider are there)
        self.telemetry: TelemetryPort | None = None

    def use(self, recorder: Recorder) -> None:
        """Feed ``recorder`` from now on (a durable run's journal; the no-op one once the run has ended)."""
        self.recorder = recorder
        self.durable = recorder.durable

    # -- the one way state changes --------------------------------------------------

    def transition(self, n: int, new: TaskState, *, log: bool = True) -> int | None:
        """Move task ``n`` to ``new`` (checked against the table); returns its event's seq (durable runs).

        ``log=False``: the transition's log line is written by the caller (a failure's, with the walker's
        decision: ``log_failure``).
        """
        old = self.state[n]
        if (old, new) not in TASK_TRANSITIONS:
            check_task_transition(self.nodes[n].name, old, new)
        self.state[n] = new
        failure: Failure | None = None
        if new is FAILURE or new is REVERT_FAILURE:
            result = self.results[n]
            failure = result if isinstance(result, Failure) else None
        seq = self.recorder.transition(n, old, new, self.attempt(n), failure) if self.durable else None
        telemetry = self.telemetry
        if telemetry is not None:
            telemetry.transition(n, old, new)
        level = ERROR if new is REVERT_FAILURE else DEBUG
        hub = self.hub
        if hub.listening or TASK_LOG.isEnabledFor(level):
            node = self.nodes[n]
            hub.emit(
                level,
                f"ckflow.task.{new.lower()}",
                log=log,
                task=node.name,
                old=old,
                new=new,
                attempt=self.attempt(n),
                checkpoint=self.graph.scopes[node.scope].name,
                failure=failure,
                seq=seq,
            )
        return seq

    def join_transition(self, n: int, new: TaskState) -> None:
        """Move join (or Periodic gate) ``n`` to ``new``: no work of its own, no event, checked all the same."""
        old = self.state[n]
        if (old, new) not in JOIN_TRANSITIONS and old is not new:
            check_task_transition(self.nodes[n].name, old, new)
        self.state[n] = new

    def log_failure(self, n: int, failure: Failure, level: int, seq: int | None) -> None:
        """Write task ``n``'s failure to the log at ``level`` (INFO: its checkpoint retries it; WARNING: it
        escalates or ends the run), once the loop goes round: the walker has started its revert by then."""
        if not TASK_LOG.isEnabledFor(level):
            return  # (asked first: this is on the way from a task's failure to its revert's start)
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

    def set_flow(self, new: FlowState, *, failed: bool = False) -> None:
        """Move the run to ``new``; ``failed``: a failure (not a cancel) brought it to REVERTED."""
        old = self.flow_state
        check_flow_transition(self.flow, old, new)
        self.flow_state = new
        if self.telemetry is not None:
            self.telemetry.run_transition(old, new)
        level = INFO
        if new is FlowState.FAILURE:
            level = ERROR
        elif new is FlowState.REVERTED and failed:
            level = WARNING  # a failure reached the root (a cancel that reverts everything is no failure)
        name = _RUN_EVENTS[new]
        if self.takes_event(name, level):  # (else its fields are not even gathered)
            self.event(name, level, old=old, new=new)

    def takes_event(self, name: str, level: int) -> bool:
        """True if ``event(name, level, ...)`` would reach anyone: the store, telemetry, a subscriber or the log.

        For an event whose fields cost something to build, asked before building them.
        """
        return self.durable or self.telemetry is not None or self.hub.wants(level, name)

    def event(self, name: str, level: int = INFO, **fields: Any) -> None:
        """Emit a run, walker or control event (and record it, for a durable run)."""
        seq = self.recorder.event(name, fields) if self.durable else None
        if self.telemetry is not None:
            self.telemetry.event(name, fields)
        if self.hub.wants(level, name):
            self.hub.emit(level, name, seq=seq, **fields)

    # -- times -----------------------------------------------------------------------

    def started_at(self, n: int) -> float | None:
        """When node ``n``'s last execute started (time.monotonic()); None if it never did."""
        t = self.started[n]
        return None if isnan(t) else t

    def ended_at(self, n: int) -> float | None:
        """When node ``n``'s last execute ended (time.monotonic()); None if it has not."""
        t = self.ended[n]
        return None if isnan(t) else t

    def set_times(self, n: int, started: float | None, ended: float | None) -> None:
        """Set node ``n``'s last execute's start and end (None: not taken)."""
        self.started[n] = UNSET if started is None else started
        self.ended[n] = UNSET if ended is None else ended

    # -- attempts --------------------------------------------------------------------

    def attempt_under(self, n: int, scope: int) -> int:
        """Task ``n``'s attempt (from 1) under checkpoint ``scope`` in its current activation."""
        return 1 + self.retries.get((n, scope), 0)

    def attempt(self, n: int) -> int:
        """Task ``n``'s attempt under its innermost checkpoint."""
        return 1 + self.retries.get((n, self.nodes[n].scope), 0) if self.retries else 1

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

    # -- modes -----------------------------------------------------------------------

    @property
    def halted(self) -> bool:
        """True while nothing new may start on request (suspended, parked, at a barrier)."""
        return self.mode is RunMode.HALTED

    @property
    def failed(self) -> bool:
        """True once a revert raised: the run can neither go on nor go back."""
        return self.mode is RunMode.FAILED

    @property
    def stopped(self) -> BaseException | None:
        """Why this engine stopped running the run; None while it runs here."""
        return self.stop_reason

    def halt(self, halted: bool) -> None:
        """Halt the run (True) or let it go on (False); a FAILED or STOPPED run stays so."""
        if self.mode is RunMode.RUNNING or self.mode is RunMode.HALTED:
            self.mode = RunMode.HALTED if halted else RunMode.RUNNING

    def fail(self) -> None:
        """A revert raised (unless the run is stopped here already)."""
        if self.mode is not RunMode.STOPPED:
            self.mode = RunMode.FAILED

    def stop(self, reason: BaseException) -> None:
        """This engine stops running the run."""
        self.mode = RunMode.STOPPED
        self.stop_reason = reason

    def add_failure(self, failure: Failure) -> None:
        self.failures = appended(self.failures, failure)

    def add_report(self, report: RegionReport) -> None:
        self.reports = appended(self.reports, report)

    def succeeded(self, n: int) -> bool:
        """True if node ``n`` is SUCCESS now."""
        return self.state[n] is SUCCESS


def appended(items: Sequence[_I] | None, item: _I) -> list[_I]:
    """``items`` with ``item`` appended: the same list, or a new one if ``items`` is not a list yet (None or an
    empty tuple: a container made by its first entry, so that a live run keeps no empty ones for the cyclic GC)."""
    if isinstance(items, list):
        items.append(item)
        return items
    return [item]
