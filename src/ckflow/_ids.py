"""Run ids: the one rule every store keeps them by, checked where an id enters ckflow.

A run id is a non-empty ``str`` of at most ``RUN_ID_MAX_LENGTH`` (200) characters, without control
characters (C0, DEL, C1) and without lone surrogates (it must encode as UTF-8). PostgreSQL refuses
NUL and indexes at most some 2,700 bytes, SQLite would keep anything, and a terminal obeys the
escape sequences a printed id carries: one rule for every store, raised before any store is asked.
"""

from __future__ import annotations

import re
from typing import Final

from ckflow._errors import RUN_ID_MAX_LENGTH, InvalidRunIdError

__all__ = ["RUN_ID_PATTERN", "check_run_id"]

#: C0 controls, DEL and C1 controls
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: the same rule as a pattern that a whole run id matches, for schemas (JSON Schema, OpenAPI): no control character
RUN_ID_PATTERN: Final = r"^[^\x00-\x1f\x7f-\x9f]*$"
_SURROGATE: Final = re.compile(r"[\ud800-\udfff]")


def check_run_id(run_id: object) -> str:
    """``run_id`` itself if it is a valid run id.

    Raises:
        InvalidRunIdError: it is not a string, is empty or too long, holds a control character or a lone surrogate.
    """
    if not isinstance(run_id, str):
        raise InvalidRunIdError(run_id, f"is {type(run_id).__name__}, not a string")
    if not run_id:
        raise InvalidRunIdError(run_id, "is empty")
    if len(run_id) > RUN_ID_MAX_LENGTH:
        raise InvalidRunIdError(run_id, f"is {len(run_id)} characters long, over the limit of {RUN_ID_MAX_LENGTH}")
    found = _CONTROL.search(run_id)
    if found is not None:
        raise InvalidRunIdError(run_id, f"holds the control character {found.group()!r} at {found.start()}")
    found = _SURROGATE.search(run_id)
    if found is not None:
        raise InvalidRunIdError(run_id, f"holds the lone surrogate {found.group()!r}, which UTF-8 cannot encode")
    return run_id
