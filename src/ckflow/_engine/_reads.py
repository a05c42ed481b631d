"""Reading a run from its store, for a run that this engine does not hold: its tasks, its result, its events."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import anyio
import pydantic_core

from ckflow._codec import decode_object, result_adapter, to_jsonable
from ckflow._engine._cores import flow_for
from ckflow._events import Event, EventStream, Feed
from ckflow._models import RunResult, TaskSummary
from ckflow._runtime import _task_view as task_view
from ckflow._states import TERMINAL, FlowState
from ckflow._view import RunView, stored_view

if TYPE_CHECKING:
    from anyio.abc import TaskGroup
    from pydantic import TypeAdapter

    from ckflow._patterns import Flow
    from ckflow._records import RunRecord
    from ckflow.stores import Store

__all__ = ["stored_result", "summaries", "tail_events", "view"]


async def summaries(store: Store, run_id: str) -> dict[str, TaskSummary]:
    """Task name -> a summary of the task as the store recorded it (times on this process's monotonic clock)."""
    offset = time.time() - time.monotonic()

    def mono(wall: float | None) -> float | None:
        return None if wall is None else wall - offset

    return {t.task: task_view.summary_of_record(t, mono) for t in await store.tasks(run_id)}


async def stored_result(store: Store, record: RunRecord, flow: Flow | None) -> RunResult:
    """The result of a run, read from its store (for a run this engine does not hold)."""
    stored = await store.load(record.run_id)
    outputs: dict[str, Any] = {}
    if record.state is FlowState.SUCCESS:
        root = next((c for c in stored.checkpoints if c.checkpoint == record.flow), None)
        if root is not None and root.snapshot is not None:
            found = flow_for(record, flow, required=False)
            adapters: dict[str, TypeAdapter[Any] | None] = {}
            if found is not None:
                for task in found.iter_tasks():
                    if len(task.provided) == 1:
                        adapters[task.provided[0]] = result_adapter(task)
            outputs = decode_object(root.snapshot, adapters)
    end = record.ended_at or record.updated_at
    try:
        inputs = decode_object(record.inputs, {})
    except Exception:
        # Inputs of a codec not registered here: their stored JSON data, so that the result can still be read.
        inputs = to_jsonable(pydantic_core.from_json(record.inputs))
    return RunResult(
        run_id=record.run_id,
        flow=record.flow,
        state=record.state,
        outputs=outputs,
        tasks=await summaries(store, record.run_id),
        failures=list(stored.failures),
        regions=[],
        duration=end - record.created_at,
        inputs=inputs,
    )


async def view(store: Store, record: RunRecord, flow: Flow | None, *, tracebacks: bool) -> RunView:
    """The view of a run as its store holds it, every task of its flow listed when the flow is known here."""
    stored = await store.load(record.run_id)
    found = flow_for(stored.run, flow, required=False)
    names = [] if found is None else [t.name for t in found.iter_tasks()]
    return stored_view(stored, names, tracebacks=tracebacks)


def tail_events(tg: TaskGroup, store: Store, run_id: str, after: int, buffer: int, poll_interval: float) -> EventStream:
    """An events() stream of a run in another engine, read from the store (in a task of ``tg``) as it is written."""
    send, receive = anyio.create_memory_object_stream[Event](buffer)
    feed = Feed(send)
    stream = EventStream(run_id, receive, buffer, feed)
    tg.start_soon(_pump_events, store, run_id, after, feed, poll_interval)
    return stream


async def _pump_events(store: Store, run_id: str, after: int, feed: Feed, poll_interval: float) -> None:
    with feed.send:
        while True:
            ended = (await store.get_run(run_id)).state in TERMINAL
            for event in await store.events(run_id, after=after):
                if not feed.offer(event):
                    return
                after = event.seq if event.seq is not None else after
            if ended:
                return
            await anyio.sleep(poll_interval)
