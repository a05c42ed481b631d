"""``GET /runs/{id}/events``: a run's events as Server-Sent Events, its stored history first, then live.

Each event is one SSE message: ``id:`` its sequence number in the run's history, ``event:`` its name
(``ckflow.task.success``), ``data:`` the ``ckflow.Event`` as JSON. Once the run has ended and every event is
sent, a last message ``event: end`` with ``data: {"state": ...}`` closes the stream. A client that reconnects
with ``Last-Event-ID`` (browsers' ``EventSource`` does it by itself) gets the events after that one: no gap, no
duplicate.

How the two sources meet: the stream subscribes to the run's live events *before* it reads the history, so
nothing falls between them, and it skips a live event whose number it has already sent. A live event can get
ahead of the history: an event the run emitted just before the subscription may not be committed yet when the
history is read. The missing numbers are then read from the store once they are committed (the store commits a
run's events in order, so the live event's own commit, or its predecessor's, says they are all there, or gone
to history retention). A subscriber that falls a whole buffer behind is cut off by the engine; the stream then
subscribes again and fills the gap the same way.

A run without a store has no history and no numbers: its live events are sent without ``id:``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import anyio
import pydantic_core

from ckflow._errors import EventsOverflowError, LeaseLostError, RunStateError, StoreError
from ckflow._states import TERMINAL, FlowState

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from ckflow._engine import Run
    from ckflow._events import Event, EventStream
    from ckflow.stores import Store

__all__ = ["HEADERS", "sse_events"]

#: sent with the stream: no caching, and no buffering by a proxy in front of the app (nginx reads the second)
HEADERS: Final = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
#: a comment line sent after this long without an event, so that proxies and clients keep the connection
KEEPALIVE: Final = 15.0
#: history is read in pages of this many events
PAGE: Final = 1000
#: how long the stream waits for the store to commit events that a live event got ahead of
GAP_WAIT: Final = 5.0


def message(event: Event, tracebacks: bool = False) -> str:
    """The SSE message of ``event``; a failure's traceback only with ``tracebacks`` (the server's code stays in)."""
    head = "" if event.seq is None else f"id: {event.seq}\n"
    if not tracebacks and event.failure is not None and event.failure.traceback:
        event = event.model_copy(update={"failure": event.failure.model_copy(update={"traceback": ""})})
    return f"{head}event: {event.name}\ndata: {event.model_dump_json()}\n\n"


async def sse_events(run: Run, store: Store | None, after: int, *, tracebacks: bool = False) -> AsyncIterator[str]:
    """The messages of ``run``'s events with a sequence number above ``after``, until the run has ended."""
    live = _subscribe(run)
    sent = after
    if store is not None:
        async for event in _history(store, run.id, sent):
            sent = _seq(event, sent)
            yield message(event, tracebacks)
    while live is not None:
        try:
            async with live:
                async for chunk, cursor in _live(live, store, run.id, sent, tracebacks):
                    sent = cursor
                    yield chunk
            live = None
        except EventsOverflowError:
            live = _subscribe(run)  # cut off a whole buffer behind: again, the gap read from the store
    state = await _ended(run)
    if store is not None:  # what the run committed as it ended, after its live stream closed
        async for event in _history(store, run.id, sent):
            sent = _seq(event, sent)
            yield message(event, tracebacks)
    if state is not None:  # else this engine stopped running it: the client reconnects, with Last-Event-ID
        yield f"event: end\ndata: {pydantic_core.to_json({'state': state.value}).decode()}\n\n"


def _subscribe(run: Run) -> EventStream | None:
    """The run's live events from now on; None when it has ended (it has no more)."""
    if run.state in TERMINAL:
        return None
    try:
        return run.events()
    except RunStateError:  # it ended meanwhile
        return None


def _seq(event: Event, sent: int) -> int:
    return sent if event.seq is None else event.seq


async def _history(store: Store, run_id: str, after: int, *, until: int | None = None) -> AsyncIterator[Event]:
    """The stored events with ``after < seq`` (and ``seq < until``), read a page at a time."""
    while True:
        page = await store.events(run_id, after=after, limit=PAGE)
        for event in page:
            if until is not None and event.seq is not None and event.seq >= until:
                return
            after = _seq(event, after)
            yield event
        if len(page) < PAGE:
            return


async def _live(
    live: EventStream, store: Store | None, run_id: str, sent: int, tracebacks: bool
) -> AsyncIterator[tuple[str, int]]:
    """Messages of the live events not sent yet, each with the cursor after it; the gaps filled from the store."""
    iterator = aiter(live)
    while True:
        event: Event | None = None
        with anyio.move_on_after(KEEPALIVE):
            try:
                event = await anext(iterator)
            except StopAsyncIteration:
                return
        if event is None:
            yield ": keep-alive\n\n", sent
            continue
        if event.seq is not None:
            if event.seq <= sent:
                continue
            if store is not None and event.seq > sent + 1:
                async for missing in _gap(store, run_id, sent, event.seq):
                    sent = _seq(missing, sent)
                    yield message(missing, tracebacks), sent
        sent = _seq(event, sent)
        yield message(event, tracebacks), sent


async def _gap(store: Store, run_id: str, sent: int, upto: int) -> AsyncIterator[Event]:
    """Events ``sent < seq < upto`` from the store, once committed (waits up to ``GAP_WAIT``)."""
    delay = 0.002
    with anyio.move_on_after(GAP_WAIT):
        while True:
            found = await store.events(run_id, after=upto - 2, limit=1)
            if found:  # upto - 1 or a later event is committed: everything before it is too
                break
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.05)
    async for event in _history(store, run_id, sent, until=upto):
        yield event


async def _ended(run: Run) -> FlowState | None:
    """The run's end state once it has ended (its last events committed); None if this engine stopped running it."""
    if run.state in TERMINAL:
        return run.state
    try:
        return (await run.wait()).state
    except (RunStateError, LeaseLostError, StoreError):  # shut down, taken over, or the store failed
        return None
