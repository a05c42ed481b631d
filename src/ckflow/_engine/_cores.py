"""Building a run's ``RunCore``: from a flow and its inputs, or from what a store recorded of the run.

With ``_handles._Local`` (which drives a core once it runs), this is the package's only contact with the run's
internals: creating a core (``RunCore(...)``, ``start_telemetry``), giving it a journal, and rebuilding it from
its store (``restore``). Finding a run's flow, and checking a checkpoint's name against it, live here too.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ckflow._checkpoint import _is_positive_int
from ckflow._codec import decode_object, encode
from ckflow._durable._journal import Journal
from ckflow._durable._resume import restore
from ckflow._errors import (
    FlowDefinitionError,
    FlowNotRegisteredError,
    ResultNotSerializableError,
    RunStateError,
    StoreError,
    UnknownCheckpointError,
)
from ckflow._faults import capture
from ckflow._ids import check_run_id, new_run_id
from ckflow._inputs import input_checks, start_inputs
from ckflow._patterns import Flow
from ckflow._records import RunRecord, construct
from ckflow._registry import registered_flow
from ckflow._runtime._core import RunCore
from ckflow._states import FlowState

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from ckflow._events import Event
    from ckflow._records import CheckpointRecord, StoredRun
    from ckflow.stores import Store

    #: what a journal needs besides its run: the store, the lease's owner, its ttl, and when its claim was sent
    _JournalArgs = tuple[Store, str, float, float]

__all__ = [
    "check_checkpoint",
    "check_queue",
    "first_record",
    "flow_for",
    "keep_journal",
    "new_core",
    "not_recorded",
    "queued_record",
    "restored_core",
    "retains_by_age",
]


def new_core(
    flow: Flow,
    inputs: Mapping[str, Any] | None,
    run_id: str | None,
    max_concurrency: int | None,
    on_event: Callable[[Event], object] | None,
    traceparent: str | None = None,
    *,
    fresh: bool = True,
) -> RunCore:
    """A new core for a run of ``flow``, its inputs checked against what the flow requires.

    ``fresh``: a run starting now, which takes the failures injected where it starts (``inject_failures``); a run
    rebuilt from its store never does.
    """
    if not isinstance(flow, Flow):
        raise TypeError(f"ckflow runs a flow (Linear, Parallel, Graph or Periodic), got {flow!r}.")
    if max_concurrency is not None and not _is_positive_int(max_concurrency):
        raise ValueError(f"max_concurrency must be a positive int or None, got {max_concurrency!r}.")
    if run_id is not None:
        check_run_id(run_id)
    graph = flow.compile()
    # Coerced to what the tasks' annotations say before anything runs or is stored, so a task sees the same
    # values on the first pass and after a resume.
    given = start_inputs(graph, inputs)
    run_id = run_id or new_run_id()
    core = RunCore(
        graph,
        run_id,
        given,
        max_concurrency=max_concurrency,
        on_event=on_event,
        faults=capture(graph, run_id) if fresh else None,
    )
    core.start_telemetry(traceparent)
    return core


def queued_record(
    flow: Flow, inputs: Mapping[str, Any] | None, run_id: str | None, queue: str, priority: int
) -> RunRecord:
    """The record of a submitted run: QUEUED in ``queue``, owned by nobody, its inputs checked and encoded."""
    if not isinstance(flow, Flow):
        raise TypeError(f"ckflow submits a flow (Linear, Parallel, Graph or Periodic), or its name, got {flow!r}.")
    registered_flow(flow.name)  # a worker rebuilds a submitted run's flow from its name
    check_queue(queue)
    given_priority: object = priority
    if isinstance(given_priority, bool) or not isinstance(given_priority, int) or not -(2**31) <= priority < 2**31:
        raise ValueError(f"priority={priority!r} must be an int from -2**31 to 2**31 - 1 (higher runs first).")
    now = time.time()
    return RunRecord(
        run_id=new_run_id() if run_id is None else check_run_id(run_id),
        flow=flow.name,
        state=FlowState.QUEUED,
        inputs=_encode_inputs(start_inputs(flow.compile(), inputs)),
        created_at=now,
        updated_at=now,
        queue=queue,
        priority=priority,
    )


def check_queue(queue: str) -> str:
    """``queue`` if it can name a queue (a non-empty str of at most 200 printable characters), else ValueError."""
    given: object = queue
    if not isinstance(given, str) or not given or len(given) > 200 or not given.isprintable():
        raise ValueError(f"A queue name is a non-empty string of at most 200 printable characters, got {queue!r}.")
    return queue


def first_record(core: RunCore, flow: str, owner: str, lease_ttl: float) -> RunRecord:
    """The record that creates a new durable run in its store, leased to ``owner``."""
    now = time.time()
    # every value is ckflow's own (the inputs were checked and encoded): built without validation
    return construct(
        RunRecord,
        run_id=core.run_id,
        flow=flow,
        state=FlowState.PENDING,
        inputs=_encode_inputs(core.inputs),
        owner=owner,
        lease_expires=now + lease_ttl,
        created_at=now,
        updated_at=now,
        ended_at=None,
        halted=False,
        goto=None,
        next_seq=0,
        trace=core.traceparent,
        queue=None,
        priority=0,
    )


def not_recorded(core: RunCore) -> None:
    """The store refused the run's first record: its telemetry ends the run (it never ran)."""
    if core.telemetry is not None:
        core.telemetry.run_ended(FlowState.PENDING, RunStateError("the run was not recorded"))


def keep_journal(
    core: RunCore, store: Store, owner: str, record: RunRecord, *, lease_ttl: float, lease_from: float
) -> None:
    """From now on the run is written to ``store``, each write fenced by ``owner``'s lease."""
    core.journal = Journal(core, store, owner, record, lease_ttl=lease_ttl, lease_from=lease_from)


def restored_core(
    flow: Flow,
    stored: StoredRun,
    passes: list[CheckpointRecord],
    journal: _JournalArgs,
    max_concurrency: int | None,
    on_event: Callable[[Event], object] | None,
) -> RunCore:
    """The core of a stored run, rebuilt as its store recorded it, written to its store from now on."""
    run_id = stored.run.run_id
    try:
        inputs = decode_object(stored.run.inputs, input_checks(flow.compile()).decoders)
    except Exception as exc:
        raise StoreError(
            f"Run {run_id!r}: its stored inputs do not decode into what the tasks' annotations say ({exc})."
        ) from exc
    core = new_core(flow, inputs, run_id, max_concurrency, on_event, stored.run.trace, fresh=False)
    store, owner, lease_ttl, lease_from = journal
    keep_journal(core, store, owner, stored.run, lease_ttl=lease_ttl, lease_from=lease_from)
    restore(core, stored, passes)
    return core


def retains_by_age(flow: Flow) -> bool:
    """Whether a checkpoint of ``flow`` keeps passes by age (rebuilding its run then needs the stored passes)."""
    return any(s.max_age is not None for s in flow.compile().scopes)


def flow_for(record: RunRecord, flow: Flow | None, *, required: bool) -> Flow | None:
    """The flow of a stored run: ``flow`` (checked to be the run's), or the one registered under its name."""
    if flow is not None:
        if not isinstance(flow, Flow):
            raise TypeError(f"flow= must be a flow (Linear, Parallel, Graph or Periodic), got {flow!r}.")
        if flow.name != record.flow:
            raise FlowDefinitionError(
                f"Run {record.run_id!r} is a run of flow {record.flow!r}, not of {flow.name!r}; pass its own flow."
            )
        return flow
    try:
        return registered_flow(record.flow)
    except FlowNotRegisteredError:
        if required:
            raise
        return None


def check_checkpoint(record: RunRecord, flow: Flow | None, checkpoint: str) -> None:
    """UnknownCheckpointError if the run's flow, when known here, has no checkpoint of that name."""
    found = flow_for(record, flow, required=False)
    if found is None:
        return  # the engine that runs it checks the name
    graph = found.compile()
    scope = graph.scope_index.get(checkpoint)
    if scope is None or scope == 0:
        raise UnknownCheckpointError(record.run_id, record.flow, checkpoint, sorted(s.name for s in graph.scopes[1:]))


def _encode_inputs(inputs: Mapping[str, Any]) -> str:
    try:
        return encode(dict(inputs))
    except TypeError:
        for name, value in inputs.items():
            try:
                encode({name: value})  # the name too: it may be what cannot be encoded
            except TypeError as exc:
                raise ResultNotSerializableError(
                    None, type(value).__qualname__, str(exc), input=name, value=value
                ) from exc
        raise
