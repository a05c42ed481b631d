"""Stepping a coroutine by hand: run it to its first suspension, and await the rest only if there is one.

The engine runs a task (and writes to a store) by sending the coroutine its
first step itself: most small tasks, and every write to a memory store,
finish without suspending, which then costs no task spawn, no trip through
the event loop and no cancel scope. ``resume`` awaits the rest of one that did
suspend.
"""

from __future__ import annotations

import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Coroutine, Generator

__all__ = ["resume"]


@types.coroutine
def resume(coro: Coroutine[Any, Any, Any], yielded: Any) -> Generator[Any, Any, Any]:
    """Await ``coro`` from where its first step stopped (what ``yield from`` does, started late)."""
    while True:
        try:
            sent = yield yielded
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # cancellation thrown in by the event loop
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                yielded = coro.send(sent)
            except StopIteration as stop:
                return stop.value
