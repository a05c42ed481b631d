"""The task and flow state machines of DESIGN §2, as data."""

from __future__ import annotations

from enum import StrEnum

import pytest

import ckflow
from ckflow._states import (
    FLOW_TRANSITIONS,
    TASK_TRANSITIONS,
    FlowState,
    TaskState,
    check_flow_transition,
    check_task_transition,
)

T = TaskState
F = FlowState

DESIGN_TASK_EDGES = {
    (T.PENDING, T.RUNNING),
    (T.RUNNING, T.SUCCESS),
    (T.RUNNING, T.FAILURE),
    (T.SUCCESS, T.REVERTING),
    (T.FAILURE, T.REVERTING),
    (T.REVERTING, T.REVERTED),
    (T.REVERTING, T.REVERT_FAILURE),
    (T.REVERTED, T.PENDING),
    (T.PENDING, T.SKIPPED),
}

DESIGN_FLOW_EDGES = {
    (F.PENDING, F.RUNNING),
    (F.RUNNING, F.SUCCESS),
    (F.RUNNING, F.REVERTED),
    (F.RUNNING, F.FAILURE),
    (F.RUNNING, F.SUSPENDED),
    (F.SUSPENDED, F.RUNNING),
}


class TestTables:
    def test_task_table_holds_design_edges(self) -> None:
        """Every task edge that DESIGN §2 draws is a legal transition."""
        assert DESIGN_TASK_EDGES <= TASK_TRANSITIONS

    def test_flow_table_holds_design_edges(self) -> None:
        """Every flow edge that DESIGN §2 draws is a legal transition."""
        assert DESIGN_FLOW_EDGES <= FLOW_TRANSITIONS

    def test_no_flow_reverting_state(self) -> None:
        """There is no flow-level REVERTING state."""
        assert "REVERTING" not in FlowState.__members__

    @pytest.mark.parametrize(
        ("old", "new"),
        [
            (T.PENDING, T.SUCCESS),
            (T.SUCCESS, T.RUNNING),
            (T.REVERTED, T.SUCCESS),
            (T.REVERT_FAILURE, T.REVERTING),
            (T.PENDING, T.REVERTING),
        ],
    )
    def test_task_table_lacks_illegal_edges(self, old: TaskState, new: TaskState) -> None:
        """Edges that skip a step (e.g. PENDING -> SUCCESS) are not in the task table."""
        assert (old, new) not in TASK_TRANSITIONS

    def test_terminal_flow_states_have_no_way_out(self) -> None:
        """SUCCESS, REVERTED and FAILURE are terminal: no flow edge leaves them."""
        terminal = {F.SUCCESS, F.REVERTED, F.FAILURE}
        assert not [edge for edge in FLOW_TRANSITIONS if edge[0] in terminal]


class TestChecks:
    def test_legal_task_transition_passes(self) -> None:
        """check_task_transition accepts a legal edge silently."""
        check_task_transition("a", T.PENDING, T.RUNNING)

    def test_illegal_task_transition_raises_internal_error(self) -> None:
        """An illegal task edge raises CkflowInternalError naming the task and both states."""
        with pytest.raises(ckflow.CkflowInternalError, match=r"'a'.*SUCCESS -> RUNNING"):
            check_task_transition("a", T.SUCCESS, T.RUNNING)

    def test_illegal_flow_transition_raises_internal_error(self) -> None:
        """An illegal flow edge raises CkflowInternalError, a CkflowError."""
        with pytest.raises(ckflow.CkflowInternalError) as info:
            check_flow_transition("boot", F.SUCCESS, F.RUNNING)
        assert isinstance(info.value, ckflow.CkflowError)


class TestEnums:
    def test_states_are_str_enums(self) -> None:
        """TaskState and FlowState are StrEnums that compare equal to their names."""
        assert issubclass(ckflow.TaskState, StrEnum)
        assert issubclass(ckflow.FlowState, StrEnum)
        assert ckflow.TaskState.REVERT_FAILURE == "REVERT_FAILURE"
        assert ckflow.FlowState.SUSPENDED == "SUSPENDED"

    def test_task_states_are_complete(self) -> None:
        """TaskState has exactly the states of DESIGN §2."""
        assert set(TaskState.__members__) == {
            "PENDING",
            "RUNNING",
            "SUCCESS",
            "FAILURE",
            "REVERTING",
            "REVERTED",
            "REVERT_FAILURE",
            "SKIPPED",
        }
