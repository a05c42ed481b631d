"""Events: one pydantic model per transition, sent to subscribers and to the standard ``logging`` module.

Logging, as a library does it
-----------------------------
ckflow writes through the standard library's ``logging``: the logger
``ckflow`` and one child per family of events (``ckflow.task``,
``ckflow.run``, ``ckflow.walker``, ``ckflow.control``, ``ckflow.periodic``,
``ckflow.engine``, ``ckflow.events``). It adds a ``NullHandler`` to
``ckflow`` and nothing else, so with no handler configured by the
application nothing is written, anywhere, and ``setLevel``, handlers,
filters and log capture (pytest's, uvicorn's) work as for any library. It
never configures logging or structlog.

A line's message is the event's name followed by its fields
(``ckflow.walker.retry run_id=r1 flow=boot checkpoint=disk attempt=2``), and
every field is also on the ``LogRecord`` (``extra``): ``event``, ``run_id``,
``flow``, ``task``, ``attempt``, ``checkpoint``, ``old``, ``new``, ``seq`` and
the event's details. An application that renders stdlib records with
structlog's ``ProcessorFormatter`` and ``structlog.stdlib.ExtraAdder()`` in its
``foreign_pre_chain`` gets each event in its pipeline as those key-values,
``event`` included (structlog's documented way to bring in the records of
libraries that log through the standard library).

Levels: task transitions at DEBUG; a task's failure at INFO when its
checkpoint retries it and at WARNING when it escalates or ends the run;
walker steps (region, retry) at INFO, ``ckflow.walker.exhausted`` and a run
that ends REVERTED at WARNING, a revert that raised and a run that ends
FAILURE at ERROR; run lifecycle and control at INFO.

Nothing is built when nobody listens: the engine asks the family's logger
``isEnabledFor(level)`` (a cached lookup) and checks one flag for
subscribers, and builds an ``Event`` or a log line only when one of them
wants it.

Subscribers never slow the engine down. A ``run.events()`` iterator has a
bounded buffer (``buffer=``, 10,000 events by default); the engine puts events
in it without waiting, and a subscriber whose buffer is full is cut off: it
still receives what was buffered, then its iterator raises
``EventsOverflowError``. A callback runs inline and must be quick; an
exception it raises (``CancelledError`` included) is logged and the callback
is dropped.

A task's failure is written to the log a moment later, when the event loop
next goes round: by then the walker has started undoing the failed branch,
which a log line written first would delay, and has decided the line's level
(retried or not). Lines written meanwhile wait behind it, so the log keeps the
order of the events; subscribers get every event at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Final, final

import anyio
from pydantic import BaseModel, ConfigDict, Field

from ckflow._errors import EventsOverflowError
from ckflow._failure import Failure

if TYPE_CHECKING:
    from collections.abc import Callable

    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = [
    "DEFAULT_BUFFER",
    "ROOT_LOG",
    "TASK_LOG",
    "Event",
    "EventHub",
    "EventStream",
    "Feed",
    "logger_for",
    "write_log",
]

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
class Feed:
    """The producer's end of one ``run.events()`` stream: it sends events without waiting, and cuts the reader
    off (the stream's iterator then raises ``EventsOverflowError``) when its buffer is full."""

    __slots__ = ("closed", "overflowed", "send")

    def __init__(self, send: MemoryObjectSendStream[Event]) -> None:
        self.send = send
        #: the reader fell a whole buffer behind and was cut off
        self.overflowed = False
        self.closed = False

    def offer(self, event: Event) -> bool:
        """Send ``event`` now; False once the stream is closed (the reader left, or was cut off)."""
        try:
            self.send.send_nowait(event)
        except anyio.WouldBlock:
            self.overflowed = True
            self.close()
            return False
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            self.close()
            return False
        return True

    def close(self) -> None:
        self.closed = True
        self.send.close()


class EventStream:
    """Async iterator over a run's events; obtained from ``run.events()``, ends with the run."""

    __slots__ = ("_buffer", "_feed", "_receive", "_run_id")

    def __init__(self, run_id: str, receive: MemoryObjectReceiveStream[Event], buffer: int, feed: Feed) -> None:
        self._run_id = run_id
        self._receive = receive
        self._buffer = buffer
        self._feed = feed

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        try:
            return await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self._receive.close()
            if self._feed.overflowed:
                raise EventsOverflowError(self._run_id, self._buffer) from None
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        """Stop receiving; the engine drops this subscriber."""
        self._receive.close()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._receive.close()


#: the ``ckflow`` logger, with a NullHandler: a library writes nothing until the application configures logging
ROOT_LOG: Final = logging.getLogger("ckflow")
ROOT_LOG.addHandler(logging.NullHandler())
#: the logger of task transitions, asked once per transition on the engine's hot path
TASK_LOG: Final = logging.getLogger("ckflow.task")
_LOGGERS: dict[str, logging.Logger] = {}
#: ``LogRecord`` attributes an event's field may not take: such a field is passed as ``ckflow_<name>``
_RESERVED: Final = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def logger_for(name: str) -> logging.Logger:
    """The logger of event ``name``: ``ckflow.walker.retry`` is written by ``ckflow.walker``."""
    log = _LOGGERS.get(name)
    if log is None:
        family = name.rsplit(".", 1)[0] if name.count(".") >= 2 else name
        log = _LOGGERS[name] = logging.getLogger(family)
    return log


class _Line:
    """A log line's message, rendered only if a handler formats it: the event name, then its fields."""

    __slots__ = ("fields", "name")

    def __init__(self, name: str, fields: dict[str, Any]) -> None:
        self.name = name
        self.fields = fields

    def __str__(self) -> str:
        parts = [self.name]
        for key, value in self.fields.items():
            if key in ("event", "exc_info"):
                continue
            text = value if isinstance(value, str) else repr(value)
            if not text or any(c in text for c in ' ="\n'):
                text = repr(text)
            parts.append(f"{key}={text}")
        return " ".join(parts)


def write_log(log: logging.Logger, level: int, name: str, fields: dict[str, Any]) -> None:
    """Write one event to ``log`` (call only if it is enabled for ``level``); never raises."""
    exc_info = fields.pop("exc_info", None)
    extra = {("ckflow_" + k if k in _RESERVED else k): v for k, v in fields.items()}
    extra["event"] = name
    try:
        # Observability must never break a run: a handler that raises (a closed pipe, a formatter
        # bug) loses this line, not the run. (logging itself reports handler errors on stderr only
        # when logging.raiseExceptions is set, as it is by default; that is the application's switch.)
        log.log(level, _Line(name, fields), exc_info=exc_info, extra=extra)
    except Exception:
        pass


def _exc_info(failure: Failure | None) -> BaseException | None:
    return None if failure is None else failure.exception


@final
class EventHub:
    """Fan-out of one run's events to the log, callbacks and streams."""

    __slots__ = ("_callbacks", "_held", "_streams", "flow", "listening", "run_id")

    def __init__(self, run_id: str, flow: str) -> None:
        self.run_id = run_id
        self.flow = flow
        # tuples, replaced on each change: a run without subscribers keeps the shared empty tuple, not two lists
        # that the cyclic GC would walk (S8: a thousand live runs)
        self._streams: tuple[Feed, ...] = ()
        self._callbacks: tuple[Callable[[Event], object], ...] = ()
        #: log lines waiting for the loop to go round (``hold_log``), in order; None: none wait
        self._held: list[tuple[int, logging.Logger, str, dict[str, Any]]] | None = None
        #: True while a subscriber (stream or callback) is attached: every event is built then
        self.listening = False

    def _refresh(self) -> None:
        self.listening = bool(self._streams or self._callbacks)

    def wants(self, level: int, name: str) -> bool:
        """True if event ``name`` at ``level`` would reach anyone (a subscriber, or an enabled logger)."""
        return self.listening or logger_for(name).isEnabledFor(level)

    def subscribe(self, buffer: int = DEFAULT_BUFFER) -> EventStream:
        if buffer < 1:
            raise ValueError(f"events(buffer={buffer}) must be at least 1.")
        send, receive = anyio.create_memory_object_stream[Event](buffer)
        feed = Feed(send)
        stream = EventStream(self.run_id, receive, buffer, feed)
        self._streams = (*self._streams, feed)
        self._refresh()
        return stream

    def add_callback(self, callback: Callable[[Event], object]) -> Callable[[], None]:
        self._callbacks = (*self._callbacks, callback)
        self._refresh()

        def unsubscribe() -> None:
            self._drop(callback)

        return unsubscribe

    def emit(self, level: int, name: str, *, log: bool = True, **fields: Any) -> None:
        """Hand event ``name`` to everyone who listens (call only if ``wants(level, name)``).

        ``log=False`` leaves the log line to the caller (a failure's, written with the walker's
        decision: ``hold_log``).
        """
        if self.listening:
            event = Event(
                name=name,
                run_id=self.run_id,
                flow=self.flow,
                monotonic=fields.pop("monotonic", None) or time.monotonic(),
                wall=time.time(),
                **fields,
            )
            self._fan_out(event)
        if log:
            logger = logger_for(name)
            if logger.isEnabledFor(level):
                self._write(logger, level, name, self._fields(fields))

    def _drop(self, callback: Callable[[Event], object]) -> None:
        """Unsubscribe ``callback`` (its first subscription, if it subscribed more than once)."""
        callbacks = self._callbacks
        if callback in callbacks:
            i = callbacks.index(callback)
            self._callbacks = callbacks[:i] + callbacks[i + 1 :]
            self._refresh()

    def _fields(self, fields: dict[str, Any]) -> dict[str, Any]:
        kw: dict[str, Any] = {"run_id": self.run_id, "flow": self.flow}
        for key, value in fields.items():
            if value is None or key == "monotonic":
                continue
            if key == "detail":
                kw.update(value)
            elif key == "failure":
                kw["error"] = str(value)
                kw["exc_info"] = _exc_info(value)
            else:
                kw[key] = value
        return kw

    def _fan_out(self, event: Event) -> None:
        for callback in self._callbacks:
            try:
                callback(event)
            except BaseException as exc:
                # A callback that raises, CancelledError included, is dropped; the run goes on. (A
                # cancellation a callback raises is not the run's: re-raising it would end the run's
                # driver in the middle of a transition.)
                if not isinstance(exc, Exception | asyncio.CancelledError):
                    raise
                self._drop(callback)
                logger = logger_for("ckflow.events.callback_failed")
                if logger.isEnabledFor(ERROR):
                    # the exception itself, not True: the line may be written after the handler has ended
                    fields = {"run_id": self.run_id, "flow": self.flow, "callback": repr(callback), "exc_info": exc}
                    self._write(logger, ERROR, "ckflow.events.callback_failed", fields)
        if self._streams:
            alive = tuple(feed for feed in self._streams if feed.offer(event))
            if len(alive) != len(self._streams):
                self._streams = alive
                self._refresh()

    def hold_log(self, level: int, name: str, **fields: Any) -> None:
        """Write event ``name``'s log line once the loop goes round (see the module's docstring)."""
        logger = logger_for(name)
        if not logger.isEnabledFor(level):
            return
        if self._held is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # not on an asyncio loop (trio, say): write it now
                write_log(logger, level, name, self._fields(fields))
                return
            self._held = []
            loop.call_soon(self.flush_log)
        self._held.append((level, logger, name, self._fields(fields)))

    def _write(self, logger: logging.Logger, level: int, name: str, fields: dict[str, Any]) -> None:
        """Write a log line, or queue it behind the lines that wait."""
        if self._held is not None:
            self._held.append((level, logger, name, fields))
        else:
            write_log(logger, level, name, fields)

    def flush_log(self) -> None:
        """Write the log lines that wait, in order (each at its level, if that is still enabled)."""
        held, self._held = self._held, None
        for level, logger, name, fields in held or ():
            if logger.isEnabledFor(level):
                write_log(logger, level, name, fields)

    def close(self) -> None:
        """Write what waits in the log and end every stream: the run is over."""
        self.flush_log()
        for feed in self._streams:
            feed.close()
        self._streams = ()
        self._refresh()
