"""``Signal``: a one-shot event whose anyio event is made only when someone waits for it before it is set.

A run has three (settled, terminal, suspended), and most are set before anyone waits: an ``anyio.Event`` is three
objects the cyclic GC tracks (its asyncio event and that one's deque of waiters) and 2.6 µs to make, for each of
a thousand live runs. A ``Signal`` is one object, and its event is made by the first ``wait`` that has to wait.
"""

from __future__ import annotations

from typing import final

import anyio
from anyio.lowlevel import checkpoint

__all__ = ["Signal"]


@final
class Signal:
    """Set once; ``wait`` returns once it is (after a checkpoint, as ``anyio.Event.wait`` does when already set)."""

    __slots__ = ("_event", "_set")

    def __init__(self) -> None:
        self._set = False
        self._event: anyio.Event | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        if self._event is not None:
            self._event.set()

    async def wait(self) -> None:
        if self._set:
            await checkpoint()
            return
        event = self._event
        if event is None:
            event = self._event = anyio.Event()
        await event.wait()
