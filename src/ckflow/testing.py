"""Helpers for testing code that uses ckflow: a zero-delay test mode and an event recorder.

Example::

    from ckflow.testing import EventRecorder, set_testing

    set_testing(True)              # every Retry delay becomes 0
    events = EventRecorder()
    result = await ckflow.run(flow, on_event=events)
    assert events.tasks("ckflow.task.reverted") == ["b", "a"]
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, final

from ckflow._checkpoint import _TESTING

if TYPE_CHECKING:
    from collections.abc import Iterator

    from ckflow._events import Event

__all__ = ["EventRecorder", "is_testing", "set_testing", "testing"]


def set_testing(enabled: bool) -> None:
    """Switch ckflow's test mode on or off for the whole process.

    In test mode every ``Retry`` delay is 0, so retries and backoff happen at
    once while the attempt counting stays exactly as in production.
    """
    _TESTING.zero_delays = bool(enabled)


def is_testing() -> bool:
    """True while test mode is on."""
    return _TESTING.zero_delays


@contextmanager
def testing(enabled: bool = True) -> Iterator[None]:
    """Test mode for the duration of a ``with`` block; the previous mode is restored after."""
    before = _TESTING.zero_delays
    set_testing(enabled)
    try:
        yield
    finally:
        set_testing(before)


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
