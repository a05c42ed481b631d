"""The stores' records: the engine's fast constructor builds exactly what pydantic would."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

import ckflow
from ckflow._records import construct
from ckflow.stores import CheckpointRecord, RegionRecord, RunRecord, TaskOutline, TaskRecord

if TYPE_CHECKING:
    from pydantic import BaseModel

FAILURE = ckflow.Failure(task="t", kind="execute", exc_type="RuntimeError", message="no", attempt=2, at=1.5)

SAMPLES: list[tuple[type[BaseModel], dict[str, Any]]] = [
    (
        RunRecord,
        {
            "run_id": "r",
            "flow": "f",
            "state": ckflow.FlowState.RUNNING,
            "inputs": "{}",
            "owner": "e",
            "lease_expires": 2.0,
            "created_at": 1.0,
            "updated_at": 1.5,
            "ended_at": None,
            "halted": False,
            "goto": None,
            "next_seq": 7,
            "trace": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "queue": "default",
            "priority": 3,
        },
    ),
    (
        TaskRecord,
        {
            "run_id": "r",
            "task": "t",
            "state": ckflow.TaskState.FAILURE,
            "attempts": 2,
            "retries": {"cp": 1},
            "iteration": 0,
            "result": None,
            "failure": FAILURE,
            "started_at": 1.0,
            "ended_at": 1.2,
            "revert_started_at": None,
            "revert_ended_at": None,
        },
    ),
    (
        CheckpointRecord,
        {
            "run_id": "r",
            "checkpoint": "cp",
            "pass_no": 3,
            "state": "completed",
            "attempts": 2,
            "history": [FAILURE],
            "first_failure_at": 1.0,
            "snapshot": '{"v":1}',
            "tasks": {"t": TaskOutline(state=ckflow.TaskState.SUCCESS, attempts=2)},
            "started_at": 0.5,
            "completed_at": 2.0,
            "next_at": None,
            "first_seq": 4,
        },
    ),
    (
        RegionRecord,
        {
            "run_id": "r",
            "region_id": 1,
            "checkpoint": "cp",
            "action": "retry",
            "members": ["t"],
            "cause": "t",
            "failures": [FAILURE],
            "auto_resume": False,
            "parked": False,
        },
    ),
    (
        ckflow.Event,
        {
            "name": "ckflow.task.failure",
            "run_id": "r",
            "flow": "f",
            "task": "t",
            "old": "RUNNING",
            "new": "FAILURE",
            "attempt": 2,
            "checkpoint": "cp",
            "monotonic": 1.0,
            "wall": 2.0,
            "failure": FAILURE,
            "detail": {},
            "seq": 9,
        },
    ),
]


class TestConstruct:
    """construct() is model_construct without the per-field walk, for every record the engine builds."""

    @pytest.mark.parametrize(("model", "values"), SAMPLES, ids=[m.__name__ for m, _ in SAMPLES])
    def test_equals_model_construct_and_validated_model(self, model: type[BaseModel], values: dict[str, Any]) -> None:
        """The record equals model_construct's and the validated model's, and serialises the same."""
        fast = construct(model, **values)
        assert fast == model.model_construct(**values)
        assert fast == model.model_validate(values)
        assert fast.model_dump_json() == model.model_validate(values).model_dump_json()
        assert fast.model_fields_set == set(model.model_fields)

    @pytest.mark.parametrize(("model", "values"), SAMPLES, ids=[m.__name__ for m, _ in SAMPLES])
    def test_samples_give_every_field(self, model: type[BaseModel], values: dict[str, Any]) -> None:
        """The engine gives every field (construct fills in no defaults): the samples mirror that."""
        assert set(values) == set(model.model_fields)


def test_a_new_runs_first_record_is_what_validation_makes() -> None:
    """``engine.start``'s first record of a durable run, built without validation, is the validated record."""
    from ckflow._engine._cores import first_record, new_core

    @ckflow.task
    async def double(n: int) -> int:
        return 2 * n

    core = new_core(ckflow.Linear("first-record", double), {"n": "3"}, None, None, None)
    record = first_record(core, "first-record", "engine-1", 10.0)
    assert record.model_fields_set == set(RunRecord.model_fields)
    assert record == RunRecord.model_validate(record.model_dump())
    assert record.inputs == '{"n":3}'
    assert record.lease_expires == pytest.approx(record.created_at + 10.0)
