"""What a store keeps: pydantic records of runs, tasks, checkpoints, regions and control requests.

User values (task results, run inputs, checkpoint snapshots) are stored as
JSON *text*, encoded and decoded by the engine (``_codec``) so that a store
never needs to know a user's types. Everything else is plain JSON through
pydantic; nothing is ever pickled.

A ``Batch`` is the unit of writing: the engine gathers every change of a run
since its last write into one, and the store applies it in one transaction,
fenced by the run's lease (see ``ckflow.stores.Store.write``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from ckflow._failure import Failure
from ckflow._states import FlowState, TaskState

if TYPE_CHECKING:
    from ckflow._events import Event

__all__ = [
    "Batch",
    "CheckpointRecord",
    "ControlOp",
    "ControlRequest",
    "RegionRecord",
    "Renewal",
    "Retention",
    "RunRecord",
    "StoredRun",
    "TaskOutline",
    "TaskRecord",
    "construct",
]

_M = TypeVar("_M", bound=BaseModel)


def construct(cls: type[_M], **values: Any) -> _M:
    """Build a record from trusted values, every field given: ``model_construct`` without its per-field walk.

    The engine builds several records per task it writes; ``model_construct``
    looks up aliases and defaults field by field, which costs four times
    more. Only for records built by ckflow itself, with every field present
    (tests/test_records.py checks that the result equals ``model_construct``'s).
    """
    record = cls.__new__(cls)
    object.__setattr__(record, "__dict__", values)
    object.__setattr__(record, "__pydantic_fields_set__", set(values))
    object.__setattr__(record, "__pydantic_extra__", None)
    object.__setattr__(record, "__pydantic_private__", None)
    return record


#: The operations another process may ask of a run through the store.
ControlOp = Literal["suspend", "resume", "cancel", "goto", "revert_to"]


class RunRecord(BaseModel):
    """One run: its flow, state, inputs and who runs it now.

    ``owner`` and ``lease_expires`` are written only by the store's lease
    operations (``claim``, ``renew``, ``release``), never by ``write``.
    Times are wall-clock seconds since the epoch.
    """

    model_config = ConfigDict(frozen=True)

    run_id: str
    #: the name of the flow; with ``ckflow.register_flow`` any process can rebuild it
    flow: str
    state: FlowState
    #: the run's inputs as one JSON object (text)
    inputs: str = "{}"
    owner: str | None = None
    lease_expires: float | None = None
    created_at: float
    updated_at: float
    ended_at: float | None = None
    #: a suspension was asked for: running tasks finish and nothing new starts
    halted: bool = False
    #: ``run.goto(checkpoint)`` in progress: nothing of that checkpoint's scope may start
    goto: str | None = None
    #: the sequence number the next event of the run will get
    next_seq: int = 0
    #: the W3C ``traceparent`` of the run's OpenTelemetry span (``ckflow[otel]``), set when the run is created;
    #: an engine that resumes the run continues this trace
    trace: str | None = None
    #: the queue a submitted run waits in for a worker (``engine.submit``); None for a run started in an engine
    queue: str | None = None
    #: workers claim a queue's runs highest priority first, then oldest first
    priority: int = 0


class TaskOutline(BaseModel):
    """A task as a checkpoint pass saw it, kept in the pass record once its detail is compacted."""

    model_config = ConfigDict(frozen=True)

    state: TaskState
    attempts: int
    started_at: float | None = None
    ended_at: float | None = None
    failure: Failure | None = None


class TaskRecord(BaseModel):
    """One task of a run, as of its latest change."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    task: str
    state: TaskState
    #: every execution of the task in this run, retries and re-executions after a crash included
    attempts: int = 0
    #: checkpoint name -> retries of this task by that checkpoint in its current activation
    retries: dict[str, int] = Field(default_factory=dict)
    #: the iteration of its innermost ``Periodic`` (0 outside any)
    iteration: int = 0
    #: what execute returned, as JSON text (None unless it succeeded)
    result: str | None = None
    #: the failure it raised, timed out or was cancelled with
    failure: Failure | None = None
    started_at: float | None = None
    ended_at: float | None = None
    revert_started_at: float | None = None
    revert_ended_at: float | None = None

    def outline(self) -> TaskOutline:
        """The part of the record that a checkpoint pass keeps."""
        return TaskOutline(
            state=self.state,
            attempts=self.attempts,
            started_at=self.started_at,
            ended_at=self.ended_at,
            failure=self.failure,
        )


class CheckpointRecord(BaseModel):
    """One pass of a checkpoint's scope: its attempts and failures, and what it produced.

    A pass is one activation of the scope (a ``Periodic`` iteration, or a
    run of the scope after its enclosing scope was retried). Its record is
    ``"active"`` while it runs and ``"completed"`` once every task of the scope
    succeeded; then ``snapshot`` holds the values the scope produced and
    ``tasks`` an outline of each of its tasks.
    """

    model_config = ConfigDict(frozen=True)

    run_id: str
    checkpoint: str
    pass_no: int
    state: Literal["active", "completed"] = "active"
    #: the highest attempt any task of the scope reached in this pass
    attempts: int = 1
    #: failures of the attempts that were reverted and retried, oldest first
    history: list[Failure] = Field(default_factory=list)
    #: when the first failure of this pass arrived (``Retry.timeout`` counts from it)
    first_failure_at: float | None = None
    #: value name -> value, as one JSON object (text); set when the pass completes
    snapshot: str | None = None
    tasks: dict[str, TaskOutline] = Field(default_factory=dict)
    started_at: float | None = None
    completed_at: float | None = None
    #: ``Periodic``: when the next iteration is due
    next_at: float | None = None
    #: the sequence number of the run's first event in this pass (retention deletes older events)
    first_seq: int = 0


class RegionRecord(BaseModel):
    """A region the revert walker is undoing, recorded before its first revert starts."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    region_id: int
    checkpoint: str
    action: Literal["retry", "suspend", "end"]
    #: the tasks of the region (joins are derived again when the run is resumed)
    members: list[str]
    cause: str | None = None
    failures: list[Failure] = Field(default_factory=list)
    #: ``revert_to(..., retry=True)``: run the scope afresh once it is reverted
    auto_resume: bool = False
    #: the region is reverted and the run waits, SUSPENDED, for ``resume()``
    parked: bool = False


class ControlRequest(BaseModel):
    """A control operation asked by one process of a run that another process runs."""

    model_config = ConfigDict(frozen=True)

    request_id: str
    run_id: str
    op: ControlOp
    checkpoint: str | None = None
    retry: bool = True
    requested_at: float
    requested_by: str = ""
    #: set by the engine that ran the operation, once it has taken effect
    done_at: float | None = None
    #: why the operation could not be done (an unknown checkpoint, say); None if it was
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Retention:
    """Delete what a checkpoint no longer retains: older pass records and their events."""

    checkpoint: str
    #: delete the pass records of ``checkpoint`` with a lower pass number
    keep_from_pass: int
    #: delete the run's events with a lower sequence number ...
    before_seq: int
    #: ... whose checkpoint is one of these (the scope and the scopes nested in it)
    event_checkpoints: tuple[str, ...]


@dataclass(slots=True)
class Batch:
    """Every change of one run since its last write, applied by ``Store.write`` in one transaction."""

    #: the run's record as it is now (its owner and lease are not written: they fence the write)
    run: RunRecord
    #: the engine that writes; the write fails with ``LeaseLostError`` unless it still owns the run
    owner: str
    tasks: list[TaskRecord] = field(default_factory=list)
    checkpoints: list[CheckpointRecord] = field(default_factory=list)
    regions: list[RegionRecord] = field(default_factory=list)
    #: region ids whose records are deleted (the region was retried, or merged into another)
    drop_regions: list[int] = field(default_factory=list)
    #: appended to the run's event history; each has its ``seq``
    events: list[Event] = field(default_factory=list)
    retention: list[Retention] = field(default_factory=list)
    #: control requests that took effect (``done_at``/``error`` set)
    requests: list[ControlRequest] = field(default_factory=list)
    #: the writer gives up its lease with this write, as ``Store.release`` would once it is applied: the run's
    #: last write (its end), which then needs no ``release`` of its own
    release: bool = False


@dataclass(frozen=True, slots=True)
class StoredRun:
    """Everything the engine needs to resume a run, as ``Store.load`` returns it."""

    run: RunRecord
    tasks: list[TaskRecord]
    #: the latest pass record of every checkpoint
    checkpoints: list[CheckpointRecord]
    regions: list[RegionRecord]
    #: every execute and revert failure still in the event history, oldest first
    failures: list[Failure]


@dataclass(frozen=True, slots=True)
class Renewal:
    """What ``Store.renew`` found: runs the engine no longer owns, and requests waiting for it."""

    lost: list[str]
    requests: list[ControlRequest]
