"""ckflow.Failure: a serialisable record of an exception (DESIGN §7)."""

from __future__ import annotations

import pydantic
import pytest

import ckflow


def _failure() -> ckflow.Failure:
    try:
        raise ValueError("disk full")
    except ValueError as exc:
        return ckflow.Failure.from_exception("attach", "execute", exc, attempt=2)


class TestFailure:
    def test_fields_name_the_task_and_the_exception(self) -> None:
        """A failure keeps the task, the kind, the qualified exception type, the message and the attempt."""
        failure = _failure()
        assert (failure.task, failure.kind, failure.exc_type, failure.message, failure.attempt) == (
            "attach",
            "execute",
            "ValueError",
            "disk full",
            2,
        )
        assert isinstance(failure.exception, ValueError)

    def test_traceback_is_formatted_when_read(self) -> None:
        """The traceback is not formatted on the failure path, yet reading it gives the full text."""
        failure = _failure()
        assert failure.__dict__["traceback"] == ""
        assert "ValueError: disk full" in failure.traceback
        assert "_failure" in failure.traceback

    def test_json_round_trip_keeps_the_traceback(self) -> None:
        """Serialised to JSON and back, a failure keeps its traceback text (the live exception stays behind)."""
        failure = _failure()
        loaded = ckflow.Failure.model_validate_json(failure.model_dump_json())
        assert loaded.traceback == failure.traceback
        assert loaded.exception is None
        assert loaded.model_dump() == failure.model_dump()

    def test_built_without_validation_equals_the_validated_model(self) -> None:
        """from_exception skips pydantic's validation: what it builds equals the validated model, field for field,
        fields set included, and stays frozen."""
        failure = _failure()
        validated = ckflow.Failure(
            task="attach", kind="execute", exc_type="ValueError", message="disk full", attempt=2, at=failure.at
        )
        assert failure.model_dump() == validated.model_dump() | {"traceback": failure.traceback}
        assert failure.model_fields_set == validated.model_fields_set
        with pytest.raises(pydantic.ValidationError):
            failure.task = "other"  # type: ignore[misc]
