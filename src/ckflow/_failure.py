"""``Failure``: a serialisable record of an exception raised by a task."""

from __future__ import annotations

import time
import traceback
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, PrivateAttr, field_serializer

from ckflow._errors import Cancelled

__all__ = ["Failure", "FailureKind"]

#: What failed: the task's execute, its revert, or nothing at all (ckflow cancelled it).
FailureKind = Literal["execute", "revert", "timeout", "cancelled"]

#: the fields ``Failure.from_exception`` sets (the traceback is left for its first read)
_FROM_EXCEPTION_FIELDS: Final = frozenset({"task", "kind", "exc_type", "message", "attempt", "at"})


def _utf8(text: str) -> str:
    """``text`` with each lone surrogate written as an escape (``\\ud800``), so that every store can keep it."""
    if text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class Failure(BaseModel):
    """What went wrong in one task, in a form that survives JSON.

    ``exception`` is the live exception object while the process lives; it is
    not serialised (``exc_type``, ``message`` and ``traceback`` are).
    """

    model_config = ConfigDict(frozen=True)

    task: str
    kind: FailureKind
    exc_type: str
    message: str
    traceback: str = ""
    attempt: int = 1
    #: wall-clock time (``time.time()``) of the failure
    at: float | None = None

    _exception: BaseException | None = PrivateAttr(default=None)

    def __getattribute__(self, name: str) -> Any:
        # The traceback is formatted on first read, not when the failure happens: formatting walks
        # and parses the source of every frame, and the revert walker must not wait for it.
        if name == "traceback":
            fields = object.__getattribute__(self, "__dict__")
            text: str = fields["traceback"]
            if not text:
                private = object.__getattribute__(self, "__pydantic_private__") or {}
                exc = private.get("_exception")
                if exc is not None:
                    text = fields["traceback"] = _utf8("".join(traceback.format_exception(exc)))
            return text
        return super().__getattribute__(name)

    @field_serializer("traceback")
    def _serialise_traceback(self, value: str) -> str:
        return self.traceback

    @property
    def exception(self) -> BaseException | None:
        """The original exception, when this failure was recorded in this process."""
        return self._exception

    @property
    def cancelled(self) -> bool:
        """True when ckflow cancelled the task rather than the task failing by itself."""
        return self.kind == "cancelled"

    @classmethod
    def from_exception(cls, task: str, kind: FailureKind, exc: BaseException, attempt: int = 1) -> Failure:
        """Record ``exc``, raised by ``task``, with its formatted traceback."""
        exc_cls = type(exc)
        qualname = exc_cls.__qualname__
        module = exc_cls.__module__
        message = str(exc)
        if not message.isascii():  # (asked here: no call to ``_utf8`` on the way from a failure to its revert)
            message = _utf8(message)
        # Built as ``model_construct`` would, without validation (every field is ckflow's own, of its type): a
        # validated model costs 8 µs, on the path from a task's failure to its revert's start.
        values = {
            "task": task,
            "kind": kind,
            "exc_type": qualname if module == "builtins" else f"{module}.{qualname}",
            "message": message,
            "traceback": "",
            "attempt": attempt,
            "at": time.time(),
        }
        failure = cls.__new__(cls)
        object.__setattr__(failure, "__dict__", values)
        object.__setattr__(failure, "__pydantic_fields_set__", set(_FROM_EXCEPTION_FIELDS))
        object.__setattr__(failure, "__pydantic_extra__", None)
        object.__setattr__(failure, "__pydantic_private__", {"_exception": exc})
        return failure

    @classmethod
    def cancellation(cls, task: str, attempt: int, why: str) -> Failure:
        """The failure recorded for a task that ckflow cancelled."""
        return cls.from_exception(task, "cancelled", Cancelled(why), attempt)

    def __str__(self) -> str:
        return f"{self.task}: {self.exc_type}: {self.message}"
