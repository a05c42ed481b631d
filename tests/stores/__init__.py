"""Records for the store tests, with every field that matters filled in, and a few helpers."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ckflow._events import Event
from ckflow._failure import Failure
from ckflow._records import CheckpointRecord, ControlRequest, RegionRecord, RunRecord, TaskOutline, TaskRecord
from ckflow._states import FlowState, TaskState

#: a fixed creation time, so that listings have a known order
T0 = 1_700_000_000.0
OWNER = "engine-a"
OTHER = "engine-b"


def run_record(run_id: str = "run-1", **fields: Any) -> RunRecord:
    """A RUNNING run owned by ``OWNER`` with a lease that lasts an hour."""
    values: dict[str, Any] = {
        "run_id": run_id,
        "flow": "deploy",
        "state": FlowState.RUNNING,
        "inputs": '{"host": "db-1"}',
        "owner": OWNER,
        "lease_expires": time.time() + 3600,
        "created_at": T0,
        "updated_at": T0,
    }
    values.update(fields)
    return RunRecord(**values)


def failure(task: str = "attach", kind: str = "execute", message: str = "boom") -> Failure:
    """A failure with a real traceback."""
    try:
        raise RuntimeError(message)
    except RuntimeError as exc:
        return Failure.from_exception(task, kind, exc, attempt=2)  # type: ignore[arg-type]


def task_record(run_id: str, task: str, **fields: Any) -> TaskRecord:
    values: dict[str, Any] = {"run_id": run_id, "task": task, "state": TaskState.SUCCESS, "attempts": 1}
    values.update(fields)
    return TaskRecord(**values)


def checkpoint_record(run_id: str, checkpoint: str, pass_no: int, **fields: Any) -> CheckpointRecord:
    values: dict[str, Any] = {"run_id": run_id, "checkpoint": checkpoint, "pass_no": pass_no, "started_at": T0}
    values.update(fields)
    return CheckpointRecord(**values)


def region_record(run_id: str, region_id: int, **fields: Any) -> RegionRecord:
    values: dict[str, Any] = {
        "run_id": run_id,
        "region_id": region_id,
        "checkpoint": "cp",
        "action": "retry",
        "members": ["attach", "mount"],
    }
    values.update(fields)
    return RegionRecord(**values)


def event(run_id: str, seq: int, **fields: Any) -> Event:
    values: dict[str, Any] = {
        "name": "ckflow.task.SUCCESS",
        "run_id": run_id,
        "flow": "deploy",
        "task": "attach",
        "old": "RUNNING",
        "new": "SUCCESS",
        "monotonic": 10.0 + seq,
        "wall": T0 + seq,
        "seq": seq,
    }
    values.update(fields)
    return Event(**values)


def control_request(run_id: str, request_id: str, requested_at: float, **fields: Any) -> ControlRequest:
    values: dict[str, Any] = {
        "request_id": request_id,
        "run_id": run_id,
        "op": "suspend",
        "requested_at": requested_at,
        "requested_by": "cli",
    }
    values.update(fields)
    return ControlRequest(**values)


def full_checkpoint(run_id: str, checkpoint: str, pass_no: int) -> CheckpointRecord:
    """A completed pass with history, snapshot and task outlines."""
    return checkpoint_record(
        run_id,
        checkpoint,
        pass_no,
        state="completed",
        attempts=3,
        history=[failure("attach"), failure("mount", "revert")],
        first_failure_at=T0 + 1.25,
        snapshot='{"volume": {"id": "vol-1", "size": 10}, "note": "é ✓"}',
        tasks={"attach": TaskOutline(state=TaskState.SUCCESS, attempts=2, started_at=T0, ended_at=T0 + 0.5)},
        completed_at=T0 + 2,
        next_at=T0 + 60,
        first_seq=4,
    )


def with_query(url: str, **params: str) -> str:
    """``url`` with query parameters added or replaced."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(params)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))


def without_query(url: str, *names: str) -> str:
    """``url`` without the named query parameters."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in names]
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))
