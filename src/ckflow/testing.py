"""Helpers for testing code that uses ckflow: a zero-delay test mode, an event recorder, failure injection,
and ``bench``, which measures what failures cost in a flow (``ckflow bench`` on the command line).

Example::

    from ckflow.testing import EventRecorder, bench, inject_failures, set_testing

    set_testing(True, attempts=2)  # every Retry delay becomes 0, and no Retry allows more than 2 executions
    events = EventRecorder()
    result = await ckflow.run(flow, on_event=events)
    assert events.tasks("ckflow.task.reverted") == ["b", "a"]

    with inject_failures({"charge": "first"}):  # charge's first execution raises InjectedFailure
        result = await ckflow.run(checkout)
    assert result.tasks["charge"].attempts == 2  # its checkpoint reverted and retried it

    report = await bench(checkout, runs=100, concurrency=10, fail={"charge": 0.2}, seed=7)
    print(report.table())
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, final

from ckflow._bench import bench
from ckflow._bench_report import BenchPhase, BenchReport, TouchedTask, touched_outside_region
from ckflow._faults import FaultPlan, InjectedFailure, InjectedFault, inject_failures
from ckflow._policy import ENV

if TYPE_CHECKING:
    import random
    from collections.abc import Iterator

    from ckflow._events import Event

__all__ = [
    "BenchPhase",
    "BenchReport",
    "EventRecorder",
    "FaultPlan",
    "InjectedFailure",
    "InjectedFault",
    "TouchedTask",
    "bench",
    "inject_failures",
    "is_testing",
    "seed_jitter",
    "set_testing",
    "testing",
    "touched_outside_region",
]

for _public in (
    BenchPhase,
    BenchReport,
    FaultPlan,
    InjectedFailure,
    InjectedFault,
    TouchedTask,
    bench,
    inject_failures,
    touched_outside_region,
):
    _public.__module__ = __name__  # users see them here, and a Failure names ckflow.testing.InjectedFailure
del _public


def set_testing(enabled: bool, *, attempts: int | None = None) -> None:
    """Switch ckflow's test mode on or off for the whole process.

    In test mode every ``Retry`` delay is 0, so retries and backoff happen at
    once while the attempt counting stays exactly as in production.
    ``attempts=N`` also caps every ``Retry`` at N executions per activation
    (``min(retry.attempts, N)``), so a test of a flow written with
    ``Retry(attempts=10)`` does not run a failing task ten times; None (the
    default) keeps each policy's own ``attempts``. Switching test mode off
    drops the cap.
    """
    if attempts is not None:
        if isinstance(attempts, bool) or not isinstance(attempts, int):
            raise TypeError(f"set_testing(attempts=...) must be an int or None, got {attempts!r}.")
        if attempts < 1:
            raise ValueError(f"set_testing(attempts={attempts}) must be >= 1: it counts the first execution too.")
        if not enabled:
            raise ValueError("set_testing(False, attempts=...): the attempts cap applies only in test mode.")
    ENV.zero_delays = bool(enabled)
    ENV.attempts_cap = attempts if enabled else None


def is_testing() -> bool:
    """True while test mode is on."""
    return ENV.zero_delays


@contextmanager
def testing(enabled: bool = True, *, attempts: int | None = None) -> Iterator[None]:
    """Test mode (and its ``attempts`` cap) for a ``with`` block; the previous settings are restored after."""
    before = (ENV.zero_delays, ENV.attempts_cap)
    set_testing(enabled, attempts=attempts)
    try:
        yield
    finally:
        ENV.zero_delays, ENV.attempts_cap = before


def seed_jitter(seed: int | None) -> random.Random:
    """Seed the RNG every ``Retry`` jitter is drawn from, for reproducible delays; return that RNG.

    The RNG stays the same object, so a test using hypothesis can pass it to
    ``hypothesis.register_random``. ``None`` reseeds it from the OS.
    """
    ENV.rng.seed(seed)
    return ENV.rng


@final
class EventRecorder:
    """A callback that keeps every event it is given; pass it as ``on_event=``."""

    __slots__ = ("events",)

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def names(self) -> list[str]:
        """The names of the recorded events, in order."""
        return [e.name for e in self.events]

    def tasks(self, name: str) -> list[str]:
        """The tasks of the recorded events called ``name``, in order."""
        return [e.task for e in self.events if e.name == name and e.task is not None]

    def of(self, name: str) -> list[Event]:
        """The recorded events called ``name``, in order."""
        return [e for e in self.events if e.name == name]
