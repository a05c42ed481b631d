"""Events: one pydantic model per transition, sent to structlog and to subscribers.

Nothing is built when nobody listens: the engine checks one flag per
transition, and builds an ``Event`` only when a subscriber is attached or the
``ckflow`` logger is enabled for the level of that event.

Subscribers never slow the engine down. A ``run.events()`` iterator has a
bounded buffer (``buffer=``, 10,000 events by default); the engine puts events
in it without waiting, and a subscriber whose buffer is full is cut off: it
still receives what was buffered, then its iterator raises
``EventsOverflowError``. A callback runs inline and must be quick; an
exception it raises is logged and the callback is dropped.

A task's failure is written to the log a moment later, when the event loop
next goes round (``emit(defer_log=True)``): by then the walker has started
undoing the failed branch, which a log line written first (some 0.15 ms for a
JSON line) would delay. Lines written meanwhile wait behind it, so the log
keeps the order of the events; subscribers get every event at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Final, final

import anyio
import structlog
from pydantic import BaseModel, ConfigDict, Field

from ckflow._errors import EventsOverflowError
from ckflow._failure import Failure

if TYPE_CHECKING:
    from collections.abc import Callable

    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = ["DEFAULT_BUFFER", "Event", "EventHub", "EventStream"]

DEFAULT_BUFFER: Final = 10_000

DEBUG: Final = logging.DEBUG
INFO: Final = logging.INFO
WARNING: Final = logging.WARNING
ERROR: Final = logging.ERROR


class Event(BaseModel):
    """One thing that happened in a run.

    ``name`` is dotted: ``ckflow.task.<state>`` and ``ckflow.run.<state>`` for
    transitions (with ``old`` and ``new``), ``ckflow.walker.*`` for the steps
    of the revert walker and ``ckflow.control.*`` for operator requests.
    ``monotonic`` is ``time.monotonic()``; ``wall`` is ``time.time()``. A run
    with a store records every event, numbered by ``seq``.
    """

    model_config = ConfigDict(frozen=True)

    name: str
    run_id: str
    flow: str
    task: str | None = None
    old: str | None = None
    new: str | None = None
    attempt: int | None = None
    checkpoint: str | None = None
    monotonic: float
    wall: float
    failure: Failure | None = None
    detail: dict[str, Any] = Field(default_factory=dict)
    #: the event's place in the run's stored history (None for a run without a store)
    seq: int | None = None


@final
class EventStream:
    """Async iterator over a run's events; obtained from ``run.events()``, ends with the run."""

    __slots__ = ("_buffer", "_overflowed", "_receive", "_run_id")

    def __init__(self, run_id: str, receive: MemoryObjectReceiveStream[Event], buffer: int) -> None:
        self._run_id = run_id
        self._receive = receive
        self._buffer = buffer
        self._overflowed = False

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        try:
            return await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self._receive.close()
            if self._overflowed:
                raise EventsOverflowError(self._run_id, self._buffer) from None
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        """Stop receiving; the engine drops this subscriber."""
        self._receive.close()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._receive.close()


def _level_enabled(log: Any, level: int) -> bool:
    check = getattr(log, "is_enabled_for", None)
    if check is None:
        return True
    return bool(check(level))


@final
class EventHub:
    """Fan-out of one run's events to structlog, callbacks and streams."""

    __slots__ = ("_callbacks", "_held", "_levels", "_log", "_streams", "active", "flow", "run_id")

    def __init__(self, run_id: str, flow: str) -> None:
        self.run_id = run_id
        self.flow = flow
        self._log = structlog.get_logger("ckflow").bind(run_id=run_id, flow=flow)
        self._levels = {lvl: _level_enabled(self._log, lvl) for lvl in (DEBUG, INFO, WARNING, ERROR)}
        self._streams: list[tuple[MemoryObjectSendStream[Event], EventStream]] = []
        self._callbacks: list[Callable[[Event], object]] = []
        #: log lines waiting for the loop to go round (``emit(defer_log=True)``), in order; None: none wait
        self._held: list[tuple[int, str, dict[str, Any]]] | None = None
        self.active = False
        self._refresh()

    def _refresh(self) -> None:
        #: True when a debug-level transition would reach anyone: the engine's only check on its hot path.
        #: (Failures and walker steps are rare and always ask ``wants``.)
        self.active = bool(self._streams or self._callbacks or self._levels[DEBUG])

    def wants(self, level: int) -> bool:
        """True if an event of this level would reach anyone."""
        return bool(self._streams or self._callbacks) or self._levels[level]

    def subscribe(self, buffer: int = DEFAULT_BUFFER) -> EventStream:
        if buffer < 1:
            raise ValueError(f"events(buffer={buffer}) must be at least 1.")
        send, receive = anyio.create_memory_object_stream[Event](buffer)
        stream = EventStream(self.run_id, receive, buffer)
        self._streams.append((send, stream))
        self._refresh()
        return stream

    def add_callback(self, callback: Callable[[Event], object]) -> Callable[[], None]:
        self._callbacks.append(callback)
        self._refresh()

        def unsubscribe() -> None:
            if callback in self._callbacks:
                self._callbacks.remove(callback)
                self._refresh()

        return unsubscribe

    def emit(self, level: int, name: str, *, defer_log: bool = False, **fields: Any) -> None:
        """Build the event and hand it to everyone who listens (call only if ``wants(level)``).

        ``defer_log``: write the log line when the loop next goes round (see the module's docstring).
        """
        event = Event(
            name=name,
            run_id=self.run_id,
            flow=self.flow,
            monotonic=fields.pop("monotonic", None) or time.monotonic(),
            wall=time.time(),
            **fields,
        )
        if self._levels[level]:
            kw = {k: v for k, v in fields.items() if v is not None and k != "failure"}
            if event.failure is not None:
                kw["error"] = str(event.failure)
            if defer_log and self._held is None:
                self._hold((level, name, kw))
            else:
                self._write(level, name, kw)
        for callback in tuple(self._callbacks):
            try:
                callback(event)
            except Exception as exc:
                self._callbacks.remove(callback)
                self._refresh()
                # the exception itself, not True: the line may be written after the handler has ended
                self._write(ERROR, "ckflow.events.callback_failed", {"callback": repr(callback), "exc_info": exc})
        if self._streams:
            dropped = False
            for entry in self._streams:
                send, stream = entry
                try:
                    send.send_nowait(event)
                except anyio.WouldBlock:
                    stream._overflowed = True
                    send.close()
                    dropped = True
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    send.close()
                    dropped = True
            if dropped:
                self._streams = [e for e in self._streams if not e[0]._closed]
                self._refresh()

    def _write(self, level: int, name: str, kw: dict[str, Any]) -> None:
        """Write a log line, or queue it behind the lines that wait."""
        if self._held is not None:
            self._held.append((level, name, kw))
        else:
            self._log_safely(level, name, **kw)

    def _hold(self, line: tuple[int, str, dict[str, Any]]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on an asyncio loop (trio, say): write it now
            self._log_safely(line[0], line[1], **line[2])
            return
        self._held = [line]
        loop.call_soon(self.flush_log)

    def flush_log(self) -> None:
        """Write the log lines that wait, in order."""
        held, self._held = self._held, None
        for level, name, kw in held or ():
            self._log_safely(level, name, **kw)

    def _log_safely(self, level: int, name: str, **kw: Any) -> None:
        # Observability must never break a run: a logging pipeline that raises (a closed pipe, a
        # processor bug) loses this line, not the run.
        try:
            self._log.log(level, name, **kw)
        except Exception:
            pass

    def close(self) -> None:
        """Write what waits in the log and end every stream: the run is over."""
        self.flush_log()
        for send, _ in self._streams:
            send.close()
        self._streams.clear()
        self._refresh()
