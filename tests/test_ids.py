"""Run ids that ckflow makes: random UUIDs (version 4) as 32 hex digits, unique, and not shared with a forked child."""

from __future__ import annotations

import os
import sys
import uuid

import pytest

from ckflow._ids import check_run_id, new_run_id


def test_new_run_ids_are_uuid4_hex_and_unique() -> None:
    ids = [new_run_id() for _ in range(1_000)]  # several batches of the pool
    assert len(set(ids)) == len(ids)
    for run_id in ids:
        parsed = uuid.UUID(hex=run_id)
        assert parsed.hex == run_id
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert check_run_id(run_id) == run_id


@pytest.mark.skipif(sys.platform == "win32", reason="os.fork")
def test_a_forked_child_makes_ids_of_its_own() -> None:
    new_run_id()  # the pool now holds ids made ahead
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first id, to the parent
        os.write(write, new_run_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert child != new_run_id()
