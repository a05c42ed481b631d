"""Task and flow states, and the legal transitions between them, as data.

Every state change in the engine goes through ``check_task_transition`` or
``check_flow_transition``; an edge missing from these tables is a bug in
ckflow and raises ``CkflowInternalError`` at once.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from ckflow._errors import CkflowInternalError

__all__ = [
    "FAILURE",
    "FLOW_TRANSITIONS",
    "PENDING",
    "REVERTED",
    "REVERTING",
    "REVERT_FAILURE",
    "RUNNING",
    "SUCCESS",
    "TASK_TRANSITIONS",
    "TERMINAL",
    "FlowState",
    "TaskState",
]


class TaskState(StrEnum):
    """State of one task of a run."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    REVERTING = "REVERTING"
    REVERTED = "REVERTED"
    REVERT_FAILURE = "REVERT_FAILURE"
    SKIPPED = "SKIPPED"


class FlowState(StrEnum):
    """State of a run as a whole. There is no REVERTING: a run that reverts a branch is RUNNING."""

    #: submitted (``engine.submit``): recorded, waiting for a worker to claim it; nothing of it ran
    QUEUED = "QUEUED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    REVERTED = "REVERTED"
    FAILURE = "FAILURE"
    SUSPENDED = "SUSPENDED"


#: the task states as module constants, for the engine's hot paths (a global, not an attribute, lookup)
PENDING: Final = TaskState.PENDING
RUNNING: Final = TaskState.RUNNING
SUCCESS: Final = TaskState.SUCCESS
FAILURE: Final = TaskState.FAILURE
REVERTING: Final = TaskState.REVERTING
REVERTED: Final = TaskState.REVERTED
REVERT_FAILURE: Final = TaskState.REVERT_FAILURE

#: the states in which a run has ended
TERMINAL: Final = frozenset({FlowState.SUCCESS, FlowState.REVERTED, FlowState.FAILURE})


_T = TaskState
TASK_TRANSITIONS: frozenset[tuple[TaskState, TaskState]] = frozenset(
    {
        (_T.PENDING, _T.RUNNING),  # all predecessors succeeded; execute() is called
        (_T.PENDING, _T.SKIPPED),  # a decider switched the branch off
        (_T.RUNNING, _T.SUCCESS),  # execute() returned and its value was accepted
        (_T.SUCCESS, _T.PENDING),  # a Periodic's iteration completed: its tasks wait for the next one
        (_T.RUNNING, _T.FAILURE),  # execute() raised, timed out, or was cancelled by the walker
        (_T.RUNNING, _T.PENDING),  # interrupted (a crash, the engine shut down): the execute runs again
        (_T.SUCCESS, _T.REVERTING),  # the task is in a region being reverted; revert() is called
        (_T.FAILURE, _T.REVERTING),  # the failed (or cancelled) task's own revert() is called
        (_T.REVERTING, _T.REVERTED),  # revert() returned
        (_T.REVERTING, _T.REVERT_FAILURE),  # revert() raised: the run ends FAILURE
        (_T.REVERTED, _T.PENDING),  # its region is retried
        (_T.SKIPPED, _T.PENDING),  # its region is retried and the decider asked again
    }
)

_F = FlowState
FLOW_TRANSITIONS: frozenset[tuple[FlowState, FlowState]] = frozenset(
    {
        (_F.QUEUED, _F.PENDING),  # a worker claimed the submitted run
        (_F.QUEUED, _F.REVERTED),  # cancelled while queued: nothing ran
        (_F.PENDING, _F.RUNNING),  # the run started
        (_F.PENDING, _F.REVERTED),  # cancelled before any task ran
        (_F.RUNNING, _F.SUCCESS),  # every task succeeded
        (_F.RUNNING, _F.REVERTED),  # a failure reached the root; everything that ran was reverted
        (_F.RUNNING, _F.FAILURE),  # a revert raised: the run cannot go on nor go back
        (_F.RUNNING, _F.SUSPENDED),  # suspended by request or parked by a checkpoint policy
        (_F.SUSPENDED, _F.RUNNING),  # resumed
        (_F.SUSPENDED, _F.REVERTED),  # cancelled while suspended; everything was reverted
        (_F.SUSPENDED, _F.FAILURE),  # cancelled while suspended and a revert raised
    }
)


def check_task_transition(task: str, old: TaskState, new: TaskState) -> None:
    """Raise ``CkflowInternalError`` unless ``old -> new`` is a legal task transition."""
    if (old, new) not in TASK_TRANSITIONS:
        raise CkflowInternalError(f"Illegal transition of task {task!r}: {old} -> {new}.")


def check_flow_transition(flow: str, old: FlowState, new: FlowState) -> None:
    """Raise ``CkflowInternalError`` unless ``old -> new`` is a legal flow transition."""
    if (old, new) not in FLOW_TRANSITIONS:
        raise CkflowInternalError(f"Illegal transition of run of {flow!r}: {old} -> {new}.")
