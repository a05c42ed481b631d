"""Failure injection (``ckflow.testing.inject_failures``): which executions of which tasks fail, decided by a seed.

A ``FaultPlan`` is what one ``inject_failures`` block holds: per task name a
rule (a probability, or the first N executions) and a seed. A run takes the
plans active where it is *started* (``capture``, called once per new run) and
keeps them for its whole life, in this process; nothing is ever written to a
store, so a run rebuilt from its store (resumed after a crash, recovered,
taken over) runs without injected failures.

Whether an execution fails is a pure function of (seed, the run's number in
the plan, the task's name, the execution's number in the run): the same seed
fails the same executions whatever order the tasks run in, and whatever the
store. Runs are numbered 0, 1, 2, ... in the order they start inside the
block. A run without plans pays one ``ContextVar.get`` when it starts and
nothing per task (the scheduler is only swapped for one that asks, see
``_runtime/_faults.py``).
"""

from __future__ import annotations

import hashlib
import itertools
import math
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Final, NamedTuple, final

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from ckflow._compile import ExecutionGraph

__all__ = [
    "ACTIVE",
    "FaultPlan",
    "InjectedFailure",
    "InjectedFault",
    "RunFaults",
    "capture",
    "draw",
    "inject_failures",
    "parse_rule",
]

#: the plans in force where code runs now, outermost first
ACTIVE: ContextVar[tuple[FaultPlan, ...]] = ContextVar("ckflow_fault_plans", default=())

_FIRST: Final = "first"


class InjectedFailure(Exception):
    """The failure ``ckflow.testing.inject_failures`` raises in place of a task's execute.

    Its type name, ``ckflow.testing.InjectedFailure``, is the ``exc_type`` of the
    ``Failure`` in ``result.failures`` and in the failure events, so injected
    failures are told apart from the flow's own. A checkpoint's ``retry_on``
    sees it as any other exception: one that names only specific types does not
    retry it.
    """

    def __init__(self, task: str, attempt: int, run_id: str) -> None:
        self.task = task
        self.attempt = attempt
        self.run_id = run_id
        super().__init__(
            f"injected failure of task {task!r}, its execution {attempt} in the run (ckflow.testing.inject_failures)"
        )

    def __reduce__(self) -> tuple[type[InjectedFailure], tuple[str, int, str]]:
        return (type(self), (self.task, self.attempt, self.run_id))


class InjectedFault(NamedTuple):
    """One execution that an ``inject_failures`` block failed."""

    #: the run's id
    run_id: str
    #: the run's number among the runs started in the block (0 for the first), which the draws depend on
    run_index: int
    #: the task's name
    task: str
    #: the execution's number in the run: 1 for the task's first (``result.tasks[task].attempts`` counts them)
    attempt: int


class _Rule(NamedTuple):
    """A probability per execution, or (``first`` > 0) failure of the first ``first`` executions."""

    probability: float
    first: int


def parse_rule(task: object, rule: object) -> _Rule:
    """``rule`` for ``task`` as given to inject_failures or ``--fail``: a probability, ``"first"`` or ``"first:N"``."""
    if not isinstance(task, str) or not task:
        raise TypeError(f"inject_failures: task names must be non-empty strings, got {task!r}.")
    if isinstance(rule, int | float) and not isinstance(rule, bool):
        if not 0.0 <= rule <= 1.0 or math.isnan(rule):
            raise ValueError(
                f"inject_failures: task {task!r}: {rule!r} is not a probability; give a number from 0 to 1, "
                "'first' or 'first:N'."
            )
        return _Rule(float(rule), 0)
    if isinstance(rule, str):
        head, sep, count = rule.strip().partition(":")
        if head == _FIRST and not sep:
            return _Rule(0.0, 1)
        if head == _FIRST and count.isdecimal() and int(count) >= 1:
            return _Rule(0.0, int(count))
    raise ValueError(
        f"inject_failures: task {task!r}: {rule!r} is not a failure rule; give a probability from 0 to 1, "
        "'first' (fail its first execution) or 'first:N' (its first N executions)."
    )


def draw(seed: int, run_index: int, task: str, attempt: int) -> float:
    """A number in [0, 1) that depends on nothing but its arguments (not on Python's hash seed nor on time)."""
    key = f"{seed}\x00{run_index}\x00{task}\x00{attempt}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") / 2.0**64


@final
class FaultPlan:
    """What one ``inject_failures`` block fails, and the record of what it failed.

    Returned by ``with ckflow.testing.inject_failures(...) as plan``;
    ``plan.injected`` lists every execution it failed, in order.
    """

    __slots__ = ("_numbers", "injected", "rules", "seed")

    def __init__(self, failures: Mapping[str, float | str], seed: int) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"inject_failures(seed=...) must be an int, got {seed!r}.")
        if not hasattr(failures, "items"):
            raise TypeError(
                f"inject_failures takes a mapping of task names to rules, e.g. {{'charge': 0.2}}, got {failures!r}."
            )
        self.rules: dict[str, _Rule] = {task: parse_rule(task, rule) for task, rule in failures.items()}
        self.seed = seed
        #: every execution this plan failed, in order
        self.injected: list[InjectedFault] = []
        self._numbers = itertools.count()

    def fires(self, rule: _Rule, run_index: int, task: str, attempt: int) -> bool:
        """Whether execution ``attempt`` of ``task`` in run ``run_index`` fails."""
        if rule.first:
            return attempt <= rule.first
        return rule.probability > 0.0 and draw(self.seed, run_index, task, attempt) < rule.probability

    def number(self) -> int:
        """The next run's number in this plan."""
        return next(self._numbers)

    def __repr__(self) -> str:
        rules = {t: (f"first:{r.first}" if r.first else r.probability) for t, r in self.rules.items()}
        return f"<ckflow.testing.FaultPlan {rules} seed={self.seed} injected={len(self.injected)}>"


@final
class RunFaults:
    """The faults of one run: per node of its graph, the (plan, run number, rule) that may fail it."""

    __slots__ = ("by_node", "run_id")

    def __init__(self, run_id: str, by_node: dict[int, list[tuple[FaultPlan, int, _Rule]]]) -> None:
        self.run_id = run_id
        self.by_node = by_node

    def fails(self, n: int, task: str, attempt: int) -> InjectedFailure | None:
        """The failure to raise in place of execution ``attempt`` of node ``n`` (None: it runs)."""
        rules = self.by_node.get(n)
        if rules is None:
            return None
        fired = False
        for plan, run_index, rule in rules:
            if plan.fires(rule, run_index, task, attempt):
                plan.injected.append(InjectedFault(self.run_id, run_index, task, attempt))
                fired = True
        return InjectedFailure(task, attempt, self.run_id) if fired else None


def capture(graph: ExecutionGraph, run_id: str) -> RunFaults | None:
    """The faults of a new run of ``graph``: the plans active here, numbered; None (the usual case) without any."""
    plans = ACTIVE.get()
    if not plans:
        return None
    by_node: dict[int, list[tuple[FaultPlan, int, _Rule]]] = {}
    for plan in plans:
        run_index = plan.number()
        for task, rule in plan.rules.items():
            n = graph.index.get(task)
            if n is not None:
                by_node.setdefault(n, []).append((plan, run_index, rule))
    return RunFaults(run_id, by_node) if by_node else None


@contextmanager
def inject_failures(failures: Mapping[str, float | str], *, seed: int = 0) -> Iterator[FaultPlan]:
    """Fail the named tasks in the runs started inside the block, without touching their code.

    In each run started inside the block (by ``ckflow.run`` or ``Engine.start``,
    in this task or in tasks it starts), an execution of a named task raises
    ``InjectedFailure`` in place of the task's body, according to its rule:

    - a probability ``p`` from 0 to 1: each execution fails with probability ``p``;
    - ``"first"``: the task's first execution in the run fails, its retries run;
    - ``"first:N"``: its first N executions fail.

    The failure then goes through the flow's checkpoints like any other: reverted,
    retried, escalated. It is decided by a pure function of ``seed``, the run's
    number among the runs started in the block (0, 1, 2, ... in the order they
    start), the task's name and the execution's number in the run, so the same
    seed fails the same executions whatever order the tasks run in and on any
    store. A run keeps its injected failures for its whole life, even after the
    block has ended (``suspend()`` and ``resume()`` included), and runs started
    outside the block have none. They are never stored: a durable run rebuilt
    from its store (``Engine.resume`` after a crash, recovery, a worker taking it
    over) runs without them, wherever that happens. Blocks nest and overlap: a
    run started inside several gets the failures of each, and each block numbers
    its runs itself. A name that is no task of a run's flow fails nothing there.

    Args:
        failures: task name -> rule, e.g. ``{"charge": 0.2, "ship": "first"}``.
        seed: the seed of the draws of the probability rules.

    Returns:
        A context manager that gives the block's ``FaultPlan``, whose
        ``injected`` lists every execution the block failed.

    Raises:
        ValueError: a rule is not a probability from 0 to 1, ``"first"`` or ``"first:N"``.
        TypeError: ``failures`` is not a mapping of task names, or ``seed`` is not an int.
    """
    plan = FaultPlan(failures, seed)
    ACTIVE.set((*ACTIVE.get(), plan))
    try:
        yield plan
    finally:
        # Not a token reset: blocks that overlap (left in another order than entered) each take only their own.
        ACTIVE.set(tuple(p for p in ACTIVE.get() if p is not plan))
